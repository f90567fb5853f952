//! Compiles the client-facing protobuf files of the workspace's `proto/`
//! (the upstream Atomix contract plus Baton's sessions and administration)
//! with a vendored `protoc`. The peer protocol stays in the server crate.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "atomix/primitive/primitive.proto",
    "atomix/primitive/meta/timestamp.proto",
    "atomix/primitive/meta/object.proto",
    "atomix/primitive/leader/latch.proto",
    "atomix/primitive/election/election.proto",
    "baton/v1/session.proto",
    "baton/v1/admin.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    let well_known = protoc_bin_vendored::include_path()?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let files: Vec<PathBuf> = PROTOS.iter().map(|p| root.join(p)).collect();
    tonic_build::configure()
        .build_server(true)
        .build_client(true)
        .file_descriptor_set_path(out_dir.join("baton_client_descriptor.bin"))
        .compile_protos(&files, &[root.clone(), well_known])?;
    println!("cargo:rerun-if-changed={}", root.display());
    Ok(())
}
