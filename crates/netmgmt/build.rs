//! Generate the management protocol from `protos/netmgmt.proto`. It imports the agent protocol's
//! `types.proto`, whose Rust types come from `agent-client` (see `src/lib.rs`).

#[path = "../agent-client/build_protos.rs"]
mod build_protos;

fn main() {
    println!("cargo:rerun-if-changed=../agent-client/build_protos.rs");
    build_protos::generate(&["protos/netmgmt.proto"], &["protos", "../agent-client/protos"]);
}
