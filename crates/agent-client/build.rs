//! Generate the agent protocol from `protos/` (see `build_protos.rs`).

mod build_protos;

fn main() {
    build_protos::generate(
        &["protos/types.proto", "protos/oci.proto", "protos/agent.proto", "protos/health.proto"],
        &["protos"],
    );
}
