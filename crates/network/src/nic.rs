//! What a hypervisor needs to give the VM a NIC, and the hotplug interface it implements.

use std::future::Future;
use std::os::fd::OwnedFd;
use std::path::PathBuf;

use crate::types::{IfName, MacAddr, PciPath};

/// How the NIC's frames reach the host.
#[derive(Debug)]
pub enum NicBackend {
    /// A TAP or macvtap: one fd per queue, and one `/dev/vhost-net` fd per queue when vhost is on
    /// (empty otherwise). `device` is the host device, for logs and for QEMU's `ifname=`.
    Tap { device: IfName, queues: Vec<OwnedFd>, vhost: Vec<OwnedFd> },
    /// A DPDK/OVS vhost-user socket.
    VhostUser { socket: PathBuf },
}

/// A NIC to cold-plug or hotplug.
#[derive(Debug)]
pub struct NicConfig {
    /// Unique in the sandbox; the hypervisor derives its netdev and device ids from it.
    pub id: String,
    /// The MAC the guest NIC gets: the link's, so ARP caches and CNI's view stay right.
    pub guest_mac: MacAddr,
    pub mtu: u32,
    pub backend: NicBackend,
}

impl NicConfig {
    /// Number of queue pairs.
    pub fn queue_count(&self) -> usize {
        match &self.backend {
            NicBackend::Tap { queues, .. } => queues.len(),
            NicBackend::VhostUser { .. } => 1,
        }
    }
}

/// What the network code needs from a hypervisor to plug NICs into a running VM. The
/// `hypervisor` crate implements it; failures come back as the implementor's error.
pub trait NicHotplug: Send + Sync {
    type Error: std::error::Error + Send + Sync + 'static;

    /// Plug the NIC in; returns where the guest finds it.
    fn add_nic(&self, nic: NicConfig) -> impl Future<Output = Result<PciPath, Self::Error>> + Send;

    /// Unplug the NIC with this id and release what the hypervisor held for it.
    fn remove_nic(&self, id: &str) -> impl Future<Output = Result<(), Self::Error>> + Send;
}
