//! Protobuf messages and async ttrpc stubs generated in pure Rust (no `protoc`), into
//! `$OUT_DIR/protos`. Shared by the build scripts of `agent-client` and `netmgmt`.

use std::path::{Path, PathBuf};

/// Generate `protos` (paths relative to the crate), looking up imports in `includes`.
pub fn generate(protos: &[&str], includes: &[&str]) {
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("protos");
    std::fs::create_dir_all(&out).unwrap();
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    ttrpc_codegen::Codegen::new()
        .out_dir(&out)
        .inputs(protos)
        .includes(includes)
        .rust_protobuf()
        .customize(ttrpc_codegen::Customize { async_all: true, ..Default::default() })
        .rust_protobuf_customize(ttrpc_codegen::ProtobufCustomize::default().gen_mod_rs(false))
        .run()
        .expect("generate protocol code");
    // Generated files start with inner attributes and `//!` docs, which `include!` rejects.
    for entry in std::fs::read_dir(&out).unwrap() {
        strip_inner_attributes(&entry.unwrap().path());
    }
}

fn strip_inner_attributes(path: &Path) {
    let text = std::fs::read_to_string(path).unwrap();
    let kept: Vec<&str> = text.lines().filter(|l| !l.starts_with("#![") && !l.starts_with("//!")).collect();
    std::fs::write(path, kept.join("\n")).unwrap();
}
