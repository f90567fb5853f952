//! Compiles Baton's peer protocol (`proto/baton/v1/raft.proto`) with
//! tonic-build and a vendored `protoc`. The client-facing packages are
//! compiled once, by `crates/baton-client`, and shared from there.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_build::configure()
        .build_server(true)
        .build_client(true)
        .file_descriptor_set_path(out_dir.join("baton_peer_descriptor.bin"))
        .compile_protos(&["proto/baton/v1/raft.proto"], &[PathBuf::from("proto")])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
