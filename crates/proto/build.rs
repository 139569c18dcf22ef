//! Generates the Flotilla wire API from `proto/` into OUT_DIR with the vendored protoc,
//! so no system protoc is needed and nothing generated is checked in.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; prost-build reads PROTOC from the environment.
    unsafe { std::env::set_var("PROTOC", protoc) };

    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let protos = ["../../proto/flotilla/v1/flotilla.proto", "../../proto/flotilla/raft/v1/raft.proto"];
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Record batches and Raft payloads are `bytes::Bytes`: decoded without a copy.
        .bytes(".")
        .file_descriptor_set_path(out_dir.join("flotilla_descriptor.bin"))
        .compile_protos(&protos, &["../../proto"])?;
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    Ok(())
}
