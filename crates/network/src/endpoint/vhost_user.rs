//! A link served by a DPDK/OVS vhost-user socket: the VM's NIC talks to the socket, the link
//! stays as it is.

use std::path::PathBuf;

use crate::endpoint::{Attached, EndpointState};
use crate::error::{Error, Result};
use crate::nic::{NicBackend, NicConfig};
use crate::scan::Link;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VhostUserEndpoint {
    pub id: String,
    pub link: Link,
    pub socket: PathBuf,
}

impl VhostUserEndpoint {
    pub fn attach(&self) -> Result<Attached> {
        let guest_mac = self
            .link
            .mac
            .ok_or_else(|| Error::Kernel { dev: self.link.name.to_string(), what: "no MAC address".into() })?;
        Ok(Attached {
            nic: NicConfig {
                id: self.id.clone(),
                guest_mac,
                mtu: self.link.mtu,
                backend: NicBackend::VhostUser { socket: self.socket.clone() },
            },
            state: EndpointState::VhostUser { link: self.link.name.clone(), socket: self.socket.clone() },
        })
    }
}
