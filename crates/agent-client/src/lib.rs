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

pub use client::{AgentAddr, AgentClient, Error};
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
