//! The kata agent protocol as the shim speaks it (the management protocol between
//! `kata-runtime` and the shim is the `netmgmt` crate's).
//!
//! `types` holds the network messages of package `types` (Interface, Route, ARPNeighbor, ...)
//! with the protocol's field names as JSON keys, and `convert` builds them from the network
//! crate's scan model.

pub mod client;
pub mod convert;
pub mod metrics;
pub mod network_agent;
pub mod types;

/// The guest's vsock port for `kubectl port-forward`. Each connection's first line names the
/// container's TCP port (`<port>\n`); then the host sends the client's bytes in frames (a
/// 4-byte big-endian length, then that many bytes; an empty frame is the client's close) and
/// the guest sends the port's bytes as they come, closing the stream when the port closes. A
/// half-close cannot cross the hybrid vsock backend (it closes the whole stream), hence the
/// frames. Our agent serves it; kata's agent does not (see `docs/network.md`, "Port forwarding").
pub const PORT_FORWARD_PORT: u32 = 1027;

pub use client::{hybrid_vsock_connect, AgentAddr, AgentClient, Error};
pub use convert::{interfaces, neighbors, routes};
pub use network_agent::NetworkAgent;

/// Code generated from `protos/` at build time.
#[allow(
    clippy::all,
    unused,
    nonstandard_style,
    missing_debug_implementations,
    unused_qualifications,
    non_camel_case_types,
    unreachable_pub
)]
pub mod protocols {
    /// `google.protobuf.Empty`, where the generated stubs look for it.
    pub mod empty {
        pub use ::protobuf::well_known_types::empty::*;
    }
    pub mod types {
        include!(concat!(env!("OUT_DIR"), "/protos/types.rs"));
    }
    pub mod oci {
        include!(concat!(env!("OUT_DIR"), "/protos/oci.rs"));
    }
    pub mod agent {
        include!(concat!(env!("OUT_DIR"), "/protos/agent.rs"));
    }
    pub mod health {
        include!(concat!(env!("OUT_DIR"), "/protos/health.rs"));
    }
    pub mod agent_ttrpc {
        include!(concat!(env!("OUT_DIR"), "/protos/agent_ttrpc.rs"));
    }
    pub mod health_ttrpc {
        include!(concat!(env!("OUT_DIR"), "/protos/health_ttrpc.rs"));
    }
}
