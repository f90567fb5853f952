//! Compiles `proto/` with tonic-build, using a vendored `protoc` so that no
//! system protobuf compiler is needed.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "proto/atomix/primitive/primitive.proto",
    "proto/atomix/primitive/meta/timestamp.proto",
    "proto/atomix/primitive/meta/object.proto",
    "proto/atomix/primitive/leader/latch.proto",
    "proto/atomix/primitive/election/election.proto",
    "proto/baton/v1/session.proto",
    "proto/baton/v1/raft.proto",
    "proto/baton/v1/admin.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let well_known = protoc_bin_vendored::include_path()?;
    std::env::set_var("PROTOC", protoc);
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_build::configure()
        .build_server(true)
        .build_client(true)
        .file_descriptor_set_path(out_dir.join("baton_descriptor.bin"))
        .compile_protos(PROTOS, &[PathBuf::from("proto"), well_known])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
