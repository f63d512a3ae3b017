//! A TAP given to the VM as it is: a TAP link under the `none` model, or an operator's TAP
//! plugged in with `kata-network add-iface`. The runtime removes it only if it made it.

use crate::endpoint::{Attached, EndpointConfig, EndpointState};
use crate::error::{Error, Result};
use crate::nic::NicHotplug;
use crate::nic::{NicBackend, NicConfig};
use crate::nic_fds::TapFlags;
use crate::nl;
use crate::rollback::{Rollback, Undo};
use crate::scan::{Link, LinkKind};
use crate::types::{IfName, MacAddr};
use crate::{nic_fds, NetCtx};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectTapEndpoint {
    pub id: String,
    pub name: IfName,
    pub guest_mac: MacAddr,
    pub mtu: u32,
    /// The TAP was made with IFF_MULTI_QUEUE; a TAP without it takes one queue only.
    pub multi_queue: bool,
    /// Its features as found (opening its queues gives it the VM's; teardown gives these back).
    pub had: TapFlags,
}

impl DirectTapEndpoint {
    /// A TAP found in the namespace, used with the MAC it has.
    pub fn existing(id: String, link: &Link, multi_queue: bool) -> Result<Self> {
        let guest_mac =
            link.mac.ok_or_else(|| Error::Kernel { dev: link.name.to_string(), what: "no MAC address".into() })?;
        let had = match link.kind {
            LinkKind::Tuntap { pi, vnet_hdr, .. } => TapFlags { pi, vnet_hdr, multi_queue },
            _ => TapFlags::for_vm(multi_queue),
        };
        Ok(Self { id, name: link.name.clone(), guest_mac, mtu: link.mtu, multi_queue, had })
    }

    /// The features to give back at teardown, if opening the queues changes them.
    pub fn restore(&self) -> Option<TapFlags> {
        Some(self.had).filter(|h| *h != TapFlags::for_vm(h.multi_queue))
    }

    pub async fn attach(&self, ctx: &NetCtx, cfg: &EndpointConfig) -> Result<Attached> {
        let queues = if self.multi_queue { cfg.queues } else { 1 };
        let fds = nic_fds::open_tap_queues_in(&ctx.worker, &self.name, queues, self.multi_queue)?;
        let vhost = nic_fds::open_vhost_net(queues, cfg.vhost_net)?;
        slog::info!(ctx.log, "endpoint attached"; "endpoint" => &self.id, "if_name" => self.name.as_str());
        Ok(Attached {
            nic: NicConfig {
                id: self.id.clone(),
                guest_mac: self.guest_mac,
                mtu: self.mtu,
                backend: NicBackend::Tap { device: self.name.clone(), queues: fds, vhost },
            },
            state: EndpointState::DirectTap { link: self.name.clone(), created: false, restore: self.restore() },
        })
    }
}

/// An operator's request for a TAP-backed NIC (`kata-network add-iface`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorTapRequest {
    pub device: IfName,
    /// Queue pairs asked for; 0 means `default_queues` for a multi-queue TAP, 1 otherwise.
    pub queues: usize,
    pub default_queues: usize,
    /// The MTU of a TAP the runtime makes.
    pub mtu: u32,
    pub vhost_net: bool,
}

/// The host side of an operator's NIC, ready to hotplug.
#[derive(Debug)]
pub struct OperatorTap {
    pub backend: NicBackend,
    pub queues: usize,
    /// The runtime made the TAP (its removal is registered on the rollback).
    pub created: bool,
    /// The operator's TAP had other features: what to give it back once the NIC is gone.
    pub restore: Option<TapFlags>,
}

impl OperatorTapRequest {
    fn queues_for(&self, multi_queue: bool) -> Result<usize> {
        match (self.queues, multi_queue) {
            (0, true) => Ok(self.default_queues.max(1)),
            (0 | 1, false) => Ok(1),
            (n, true) => Ok(n),
            (n, false) => Err(Error::SingleQueueTap { dev: self.device.to_string(), asked: n }),
        }
    }

    /// What [`open`](Self::open) will do, found with one dump and changing nothing: open the
    /// operator's TAP (`Some` of its features now) or make one (`None`: the namespace shows no
    /// device of that name). The caller records it before the open.
    pub async fn inspect(&self, ctx: &NetCtx) -> Result<Option<TapFlags>> {
        let dev = &self.device;
        let info = ctx.scan().await?;
        match info.link(dev.as_str()) {
            Some(link) => match &link.kind {
                LinkKind::Tuntap { tap: true, multi_queue, pi, vnet_hdr } => {
                    let had = TapFlags { pi: *pi, vnet_hdr: *vnet_hdr, multi_queue: *multi_queue };
                    self.queues_for(had.multi_queue)?;
                    Ok(Some(had))
                }
                other => Err(Error::NotATap { dev: dev.to_string(), kind: other.type_name().to_owned() }),
            },
            None => Ok(None),
        }
    }

    /// The state to record for this TAP before [`open`](Self::open) changes anything.
    pub fn planned_state(&self, had: Option<TapFlags>) -> EndpointState {
        EndpointState::DirectTap {
            link: self.device.clone(),
            created: had.is_none(),
            restore: had.filter(|h| *h != TapFlags::for_vm(h.multi_queue)),
        }
    }

    /// Open the operator's TAP (`had`: its features, from [`inspect`](Self::inspect)), or make
    /// it. A made TAP's removal, or the features to give back, go onto `rb` before the change.
    pub async fn open<H: NicHotplug>(
        &self,
        ctx: &NetCtx,
        rb: &mut Rollback<H>,
        had: Option<TapFlags>,
    ) -> Result<OperatorTap> {
        let dev = &self.device;
        let (fds, queues, restore) = match had {
            Some(had) => {
                let queues = self.queues_for(had.multi_queue)?;
                // Opening the queues gives the TAP the VM's features: it gets its own back when
                // the NIC is gone (undo here; del-iface for a NIC that stayed).
                if had != TapFlags::for_vm(had.multi_queue) {
                    rb.push(Undo::RestoreTapFlags { name: dev.clone(), flags: had });
                }
                (nic_fds::open_tap_queues_in(&ctx.worker, dev, queues, had.multi_queue)?, queues, Some(had))
            }
            None => {
                // The scan leaves out the runtime's own devices: `create_tap_in` refuses a name
                // the kernel already has.
                let queues = self.queues_for(self.queues != 1)?;
                let (fds, index) = nic_fds::create_tap_in(&ctx.worker, dev, queues, queues > 1)?;
                rb.push(Undo::DeleteLink { name: dev.clone() });
                nl::set_runtime_dev_up(&ctx.handle, index, dev.as_str(), self.mtu)
                    .await
                    .map_err(|e| Error::TapMtu { dev: dev.to_string(), mtu: self.mtu, source: Box::new(e) })?;
                (fds, queues, None)
            }
        };
        let vhost = nic_fds::open_vhost_net(queues, self.vhost_net)?;
        let created = restore.is_none();
        Ok(OperatorTap {
            backend: NicBackend::Tap { device: dev.clone(), queues: fds, vhost },
            queues,
            created,
            restore: restore.filter(|had| *had != TapFlags::for_vm(had.multi_queue)),
        })
    }
}
