//! The management protocol between `kata-runtime` (the operator's command) and the shim that
//! serves a running sandbox, and everything both sides must agree on:
//!
//! - [`protocols`]: the ttrpc service `katanet.v1.NetworkManagement`, generated from
//!   `protos/netmgmt.proto`; addresses are the agent protocol's `types.IPAddress`.
//! - [`doc`]: the operator's JSON documents (`network-cli.md`) and every rule they are checked
//!   against, before anything is touched.
//! - [`ipvs`]: the ipvsadm/conntrack argument parser and a sandbox's IPVS rule table.
//! - [`output`]: what the commands print, and the conversions between documents, protocol
//!   messages and output (each in one place).
//! - [`paths`]: where a sandbox's management socket is, and how a sandbox is named.

pub mod doc;
pub mod ipvs;
pub mod output;
pub mod paths;

/// Code generated from `protos/netmgmt.proto` at build time.
#[allow(clippy::all, unused, nonstandard_style, missing_debug_implementations)]
pub mod protocols {
    /// The agent protocol's `types` package, which `netmgmt.proto` imports.
    pub mod types {
        pub use agent_client::protocols::types::*;
    }
    pub mod netmgmt {
        include!(concat!(env!("OUT_DIR"), "/protos/netmgmt.rs"));
    }
    pub mod netmgmt_ttrpc {
        include!(concat!(env!("OUT_DIR"), "/protos/netmgmt_ttrpc.rs"));
    }
}

pub use protocols::netmgmt as mg;
pub use protocols::types as pb;
