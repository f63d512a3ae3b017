//! A macvtap that is already in the namespace (CNI's macvtap plugin): the VM reads and writes
//! its queues directly; nothing is made, so nothing is removed.

use crate::endpoint::{Attached, EndpointConfig, EndpointState};
use crate::error::{Error, Result};
use crate::nic::{NicBackend, NicConfig};
use crate::scan::Link;
use crate::{nic_fds, NetCtx};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MacvtapEndpoint {
    pub id: String,
    pub link: Link,
}

impl MacvtapEndpoint {
    pub async fn attach(&self, ctx: &NetCtx, cfg: &EndpointConfig) -> Result<Attached> {
        let link = &self.link;
        let guest_mac =
            link.mac.ok_or_else(|| Error::Kernel { dev: link.name.to_string(), what: "no MAC address".into() })?;
        let queues = nic_fds::open_macvtap_queues(&ctx.netns, &link.name, link.index, cfg.queues)?;
        let vhost = nic_fds::open_vhost_net(cfg.queues, cfg.vhost_net)?;
        slog::info!(ctx.log, "endpoint attached"; "endpoint" => &self.id, "if_name" => link.name.as_str());
        Ok(Attached {
            nic: NicConfig {
                id: self.id.clone(),
                guest_mac,
                mtu: link.mtu,
                backend: NicBackend::Tap { device: link.name.clone(), queues, vhost },
            },
            state: EndpointState::Macvtap { link: link.name.clone() },
        })
    }
}
