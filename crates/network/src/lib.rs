//! The sandbox network: scan a namespace, build one endpoint per link, connect each to a VM NIC
//! by an interworking model, and undo exactly that again.

pub mod ctx;
pub mod endpoint;
pub mod error;
pub mod model;
pub mod netns;
pub mod nic;
pub mod nic_fds;
pub mod nl;
pub mod portfwd;
pub mod rollback;
pub mod run_dir;
pub mod scan;
pub mod shaping;
pub mod trust;
pub mod types;

pub use ctx::{Changes, NetCtx, StepHook};
pub use endpoint::{
    attach_all, attach_all_with, detach_all, sweep_tags, Attached, Endpoint, EndpointConfig, EndpointState,
};
pub use error::{Error, Result};
pub use model::Connection;
pub use netns::NetNs;
pub use nic::{NicBackend, NicConfig, NicHotplug};
pub use rollback::{NoNics, Rollback, Undo};
pub use run_dir::{BadId, RunDir, SandboxId};
pub use scan::{scan, scan_routes, Link, LinkKind, Neighbor, NetworkInfo, Route};
pub use shaping::RateLimit;
pub use types::{IfName, MacAddr, NetworkModel, ParseError, PciPath};
