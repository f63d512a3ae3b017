//! Generate the messages of containerd's shim bootstrap (2.3+) and CRI's runtime options from
//! `protos/`.

#[path = "../agent-client/build_protos.rs"]
mod build_protos;

fn main() {
    println!("cargo:rerun-if-changed=../agent-client/build_protos.rs");
    build_protos::generate(&["protos/bootstrap.proto", "protos/runtimeoptions.proto"], &["protos"]);
}
