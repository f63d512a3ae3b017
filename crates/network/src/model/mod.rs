//! Interworking models: how a link in the namespace is joined to the VM's NIC.

mod macvtap;
mod none;
pub(crate) mod tc_filter;

use std::os::fd::OwnedFd;

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::rollback::{Rollback, Undo};
use crate::scan::{Link, Neighbor, Route};
use crate::types::{IfName, MacAddr, NetworkModel};
use crate::NetCtx;

/// A link that reaches the VM through a device the runtime makes (veth, macvlan, ipvlan, tap).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bridged {
    pub link: Link,
    /// The link's routes, restored by the macvtap model after it takes the addresses away.
    pub routes: Vec<Route>,
    /// The link's permanent neighbours, which a MAC change flushes.
    pub neighbors: Vec<Neighbor>,
    /// Name of the device the runtime makes for the VM: `tap<N>_kata`.
    pub vm_dev: IfName,
    pub model: NetworkModel,
}

/// What a model made, recorded so that it can be undone, also by a later process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "model")]
pub enum Connection {
    /// A TAP joined to the link with mirred redirects in both directions.
    TcFilter { link: IfName, tap: IfName },
    /// A macvtap on the link that took over its MAC; the link's MAC, addresses and routes
    /// are given back on teardown.
    Macvtap {
        link: IfName,
        macvtap: IfName,
        link_mac: MacAddr,
        addresses: Vec<ipnet::IpNet>,
        routes: Vec<Route>,
        neighbors: Vec<Neighbor>,
    },
    /// A TAP not joined to anything.
    Tap { tap: IfName },
}

impl Connection {
    /// The steps that undo this connection, in the order to run them.
    pub fn teardown(&self) -> Vec<Undo> {
        match self {
            Connection::TcFilter { link, tap } => {
                vec![Undo::DeleteIngress { name: link.clone() }, Undo::DeleteLink { name: tap.clone() }]
            }
            Connection::Macvtap { link, macvtap, link_mac, addresses, routes, neighbors } => vec![
                Undo::DeleteLink { name: macvtap.clone() },
                Undo::SetMac { name: link.clone(), mac: *link_mac },
                Undo::AddAddresses { name: link.clone(), addresses: addresses.clone() },
                Undo::AddRoutes { name: link.clone(), routes: routes.clone() },
                Undo::AddNeighbors { name: link.clone(), neighbors: neighbors.clone() },
            ],
            Connection::Tap { tap } => vec![Undo::DeleteLink { name: tap.clone() }],
        }
    }
}

/// Queue fds for the VM, and the record of what was made.
#[derive(Debug)]
pub struct Connected {
    pub queues: Vec<OwnedFd>,
    pub connection: Connection,
}

impl Bridged {
    /// The connection [`Bridged::connect`] will record, known before anything is made, so that
    /// it can be recorded first (its teardown steps undo a half-made connection too: each step
    /// succeeds when there is nothing to undo). `None` when the link has no MAC (the attach
    /// fails before making anything).
    pub(crate) fn planned_connection(&self) -> Option<Connection> {
        let (link, vm_dev) = (self.link.name.clone(), self.vm_dev.clone());
        Some(match self.model {
            NetworkModel::TcFilter => Connection::TcFilter { link, tap: vm_dev },
            NetworkModel::Macvtap => Connection::Macvtap {
                link,
                macvtap: vm_dev,
                link_mac: self.link.mac?,
                addresses: self.link.addresses.clone(),
                routes: self.routes.clone(),
                neighbors: self.neighbors.clone(),
            },
            NetworkModel::None => Connection::Tap { tap: vm_dev },
        })
    }

    /// Join the link to a new VM-side device by the model; undo steps go onto `rb`.
    pub async fn connect(&self, ctx: &NetCtx, queues: usize, rb: &mut Rollback) -> Result<Connected> {
        match self.model {
            NetworkModel::TcFilter => tc_filter::connect(ctx, self, queues, rb).await,
            NetworkModel::Macvtap => macvtap::connect(ctx, self, queues, rb).await,
            NetworkModel::None => none::connect(ctx, self, queues, rb).await,
        }
    }
}
