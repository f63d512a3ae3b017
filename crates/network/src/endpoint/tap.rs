//! A TAP given to the VM as it is: a TAP link under the `none` model, or an operator's TAP
//! plugged in with `kata-network add-iface`. The runtime removes it only if it made it.

use crate::endpoint::{Attached, EndpointConfig, EndpointState};
use crate::error::{Error, Result};
use crate::nic::{NicBackend, NicConfig};
use crate::scan::Link;
use crate::types::{IfName, MacAddr};
use crate::{tuntap, NetCtx};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapEndpoint {
    pub id: String,
    pub name: IfName,
    pub guest_mac: MacAddr,
    pub mtu: u32,
    /// The TAP was made with IFF_MULTI_QUEUE; a TAP without it takes one queue only.
    pub multi_queue: bool,
}

impl TapEndpoint {
    /// A TAP found in the namespace, used with the MAC it has.
    pub fn existing(id: String, link: &Link, multi_queue: bool) -> Result<Self> {
        let guest_mac =
            link.mac.ok_or_else(|| Error::Kernel { dev: link.name.to_string(), what: "no MAC address".into() })?;
        Ok(Self { id, name: link.name.clone(), guest_mac, mtu: link.mtu, multi_queue })
    }

    pub async fn attach(&self, ctx: &NetCtx, cfg: &EndpointConfig) -> Result<Attached> {
        let queues = if self.multi_queue { cfg.queues } else { 1 };
        let fds = tuntap::open_tap_queues_in(&ctx.worker, &self.name, queues, self.multi_queue)?;
        let vhost = tuntap::open_vhost_net(queues, cfg.vhost_net)?;
        slog::info!(ctx.log, "endpoint attached"; "endpoint" => &self.id, "if_name" => self.name.as_str());
        Ok(Attached {
            nic: NicConfig {
                id: self.id.clone(),
                guest_mac: self.guest_mac,
                mtu: self.mtu,
                backend: NicBackend::Tap { device: self.name.clone(), queues: fds, vhost },
            },
            state: EndpointState::Tap { link: self.name.clone(), created: false },
        })
    }
}
