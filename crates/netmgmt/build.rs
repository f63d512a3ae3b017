//! Generate the management protocol's messages and ttrpc stubs in pure Rust (no `protoc`). It
//! imports the agent protocol's `types.proto`; those types come from `agent-client`.

use std::path::{Path, PathBuf};

fn main() {
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("protos");
    std::fs::create_dir_all(&out).unwrap();
    let protos = ["protos/netmgmt.proto"];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    ttrpc_codegen::Codegen::new()
        .out_dir(&out)
        .inputs(protos)
        .include("protos")
        .include("../agent-client/protos")
        .rust_protobuf()
        .customize(ttrpc_codegen::Customize { async_all: true, ..Default::default() })
        .rust_protobuf_customize(ttrpc_codegen::ProtobufCustomize::default().gen_mod_rs(false))
        .run()
        .expect("generate the management protocol code");
    // Generated files start with inner attributes and `//!` docs, which `include!` rejects.
    for entry in std::fs::read_dir(&out).unwrap() {
        let path = entry.unwrap().path();
        strip_inner_attributes(&path);
    }
}

fn strip_inner_attributes(path: &Path) {
    let text = std::fs::read_to_string(path).unwrap();
    let kept: Vec<&str> = text.lines().filter(|l| !l.starts_with("#![") && !l.starts_with("//!")).collect();
    std::fs::write(path, kept.join("\n")).unwrap();
}
