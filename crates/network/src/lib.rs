//! The sandbox network: scan a namespace, build one endpoint per link, connect each to a VM NIC
//! by an interworking model, and undo exactly that again.

pub mod endpoint;
pub mod error;
pub mod model;
pub mod netns;
pub mod nic;
pub mod nic_fds;
pub mod nl;
pub mod rollback;
pub mod scan;
pub mod trust;
pub mod types;

pub use endpoint::{attach_all, attach_all_with, detach_all, Attached, Endpoint, EndpointConfig, EndpointState};
pub use error::{Error, Result};
pub use model::Connection;
pub use netns::NetNs;
pub use nic::{NicBackend, NicConfig, NicHotplug};
pub use rollback::{NoNics, Rollback, Undo};
pub use scan::{scan, scan_routes, Link, LinkKind, Neighbor, NetworkInfo, Route};
pub use types::{IfName, MacAddr, NetworkModel, ParseError, PciPath};

/// A namespace and a netlink handle bound to it: what every network operation runs against.
#[derive(Debug, Clone)]
pub struct NetCtx {
    pub netns: NetNs,
    pub handle: rtnetlink::Handle,
    /// A thread inside the namespace for work that must run there.
    pub worker: netns::NsWorker,
    pub log: slog::Logger,
}

impl NetCtx {
    /// Open a netlink socket inside `netns`. Must be called from within a tokio runtime.
    pub fn open(netns: NetNs, log: slog::Logger) -> Result<Self> {
        let worker = netns::NsWorker::start(&netns)?;
        let sock = worker
            .run(|| netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_ROUTE))?
            .map_err(Error::NetlinkSocket)?;
        let handle = netns::netlink_from_socket(sock)?;
        Ok(Self { netns, handle, worker, log })
    }

    /// Scan the namespace.
    pub async fn scan(&self) -> Result<NetworkInfo> {
        scan::scan(&self.handle).await
    }
}
