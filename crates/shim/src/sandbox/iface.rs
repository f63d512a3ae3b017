//! NICs an operator plugs into a running sandbox (`kata-network add-iface` / `del-iface` /
//! `list-ifaces`). The host side (the operator's TAP, opened or made) and the hotplug go through
//! one `network::Rollback`: each step registers its undo before the next one runs, and a later
//! failure (the guest refusing the configuration) undoes them all, newest first.

use std::time::Instant;

use ipnet::IpNet;
use netmgmt::doc::IfaceRequest;
use netmgmt::mg;
use netmgmt::output::{address, pci_addr};
use network::endpoint::{EndpointState, OperatorTap, OperatorTapRequest};
use network::{IfName, MacAddr, NicBackend, NicConfig, PciPath, Rollback};

use super::{Ops, Sandbox, NIC_WAIT};
use crate::error::{Error, Result};
use crate::failpoint;

/// The NICs the operator plugged in with add-iface, in order.
#[derive(Debug, Default)]
pub struct OperatorNics {
    pub added: Vec<Added>,
}

/// A NIC plugged in with add-iface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Added {
    /// The hypervisor's id for it.
    pub id: String,
    pub device: IfName,
    pub name: String,
    pub mac: MacAddr,
    pub mtu: u32,
    pub address: Option<IpNet>,
    pub pci: PciPath,
    /// The runtime made the TAP (it did not exist); what del-iface undoes on the host is the
    /// TAP's record in the sandbox state.
    pub created: bool,
}

impl Added {
    fn new(req: &IfaceRequest, device: IfName, pci: PciPath, created: bool) -> Self {
        Added {
            id: format!("hp-{}", req.name),
            device,
            name: req.name.clone(),
            mac: req.mac,
            mtu: req.mtu,
            address: req.address,
            pci,
            created,
        }
    }

    /// As the management protocol carries it.
    pub fn to_pb(&self) -> mg::Interface {
        mg::Interface {
            device: self.device.to_string(),
            name: self.name.clone(),
            IPAddresses: self.address.iter().map(address).collect(),
            mtu: self.mtu as u64,
            hwAddr: self.mac.to_string(),
            pciAddr: pci_addr(&self.pci),
            ..Default::default()
        }
    }

    /// As the agent's UpdateInterface takes it.
    fn guest_interface(&self, queues: usize) -> agent_client::protocols::types::Interface {
        agent_client::protocols::types::Interface {
            device: self.device.to_string(),
            name: self.name.clone(),
            IPAddresses: self.address.iter().map(address).collect(),
            mtu: self.mtu as u64,
            hwAddr: self.mac.to_string(),
            devicePath: self.pci.to_string(),
            Queues: queues as u32,
            ..Default::default()
        }
    }
}

impl Sandbox {
    /// Refuse a name, MAC or device the sandbox already has, before anything is touched.
    async fn check_new_iface(&self, req: &IfaceRequest, ops: &Ops) -> Result<IfName> {
        let taken = || Error::AlreadyExists(format!("name: {} is already in the sandbox", req.name));
        if ops.operator.added.iter().any(|a| a.name == req.name) {
            return Err(taken());
        }
        let guest = self.agent.list_interfaces().await?;
        if guest.iter().any(|i| i.name == req.name) {
            return Err(taken());
        }
        if let Some(i) = guest.iter().find(|i| i.hwAddr.parse::<MacAddr>().ok() == Some(req.mac)) {
            return Err(Error::AlreadyExists(format!("hwAddr: {} is already used by {}", req.mac, i.name)));
        }
        let device = req.device.clone();
        if req.vhost_user_socket.is_none()
            && (ops.state.endpoints.iter().any(|e| e.link() == &device)
                || ops.operator.added.iter().any(|a| a.device == device))
        {
            return Err(Error::AlreadyExists(format!("device: {device} is already plugged into this sandbox")));
        }
        Ok(device)
    }

    /// The host side: the vhost-user socket, or the operator's TAP opened or made. What will be
    /// done to the TAP (made, or its features changed) is recorded before it is done, so a
    /// crashed shim's `delete` undoes it.
    async fn host_side(
        &self,
        req: &IfaceRequest,
        device: &IfName,
        ops: &mut Ops,
        rb: &mut Rollback<hypervisor::Vm>,
    ) -> Result<OperatorTap> {
        if let Some(socket) = &req.vhost_user_socket {
            let backend = NicBackend::VhostUser { socket: socket.into() };
            return Ok(OperatorTap { backend, queues: 1, created: false, restore: None });
        }
        let tap = OperatorTapRequest {
            device: device.clone(),
            queues: req.queues as usize,
            default_queues: self.ep_cfg.queues,
            mtu: req.mtu,
            vhost_net: self.ep_cfg.vhost_net,
        };
        let had = tap.inspect(&self.ctx).await?;
        ops.state.endpoints.push(tap.planned_state(had));
        ops.state.save(&self.bundle)?;
        Ok(tap.open(&self.ctx, rb, had).await?)
    }

    /// The record of the operator's TAP `device` goes (its NIC is gone, and so is what the
    /// runtime did to the TAP).
    fn forget_tap(&self, ops: &mut Ops, device: &IfName) {
        ops.state.endpoints.retain(|e| !matches!(e, EndpointState::DirectTap { link, .. } if link == device));
        let _ = ops.state.save(&self.bundle);
    }

    /// add-iface: check, open or make the TAP, hotplug, configure in the guest; undo on failure.
    pub async fn add_iface(&self, req: IfaceRequest, deadline: Option<Instant>) -> Result<Added> {
        req.check_host()?;
        let mut ops = self.ops_by(deadline).await?;
        let device = self.check_new_iface(&req, &ops).await?;
        let mut rb = Rollback::with_nics(&self.ctx, self.vm.clone());
        let mut plugged: Option<Added> = None;
        let res = self.plug(&req, &device, &mut ops, &mut rb, &mut plugged).await;
        match res {
            Ok(()) => {
                rb.commit();
                let added = plugged.expect("plugged on success");
                ops.operator.added.push(added.clone());
                slog::info!(self.log, "interface added"; "name" => &added.name, "device" => added.device.as_str(),
                    "pci_path" => %added.pci, "created_tap" => added.created);
                Ok(added)
            }
            Err(e) => Err(self.undo_add(e, rb, plugged, &device, &mut ops).await),
        }
    }

    async fn plug(
        &self,
        req: &IfaceRequest,
        device: &IfName,
        ops: &mut Ops,
        rb: &mut Rollback<hypervisor::Vm>,
        plugged: &mut Option<Added>,
    ) -> Result<()> {
        let OperatorTap { backend, queues, created, .. } = self.host_side(req, device, ops, rb).await?;
        failpoint::hit_async("add-iface:host").await?;
        let nic = NicConfig { id: format!("hp-{}", req.name), guest_mac: req.mac, mtu: req.mtu, backend };
        let pci = rb.hotplug(nic).await?;
        let added = plugged.insert(Added::new(req, device.clone(), pci, created));
        failpoint::hit_async("add-iface:hotplugged").await?;
        self.agent.update_interface(&added.guest_interface(queues), NIC_WAIT).await?;
        failpoint::hit_async("add-iface:configured").await?;
        Ok(())
    }

    /// Undo a failed add-iface. A NIC the VM would not give back stays listed, so del-iface (or
    /// the sandbox's end) removes it; whatever the undo could not do stays recorded, so the
    /// sandbox's end does it; the error says so.
    async fn undo_add(
        &self,
        e: Error,
        rb: Rollback<hypervisor::Vm>,
        plugged: Option<Added>,
        device: &IfName,
        ops: &mut Ops,
    ) -> Error {
        match rb.undo().await {
            Ok(()) => {
                self.forget_tap(ops, device);
                e
            }
            Err(u) => {
                slog::error!(self.log, "add-iface: undo failed"; "device" => device.as_str(), "error" => %u);
                match (plugged, &u) {
                    (Some(added), network::Error::Unplug { .. }) => {
                        ops.operator.added.push(added);
                        Error::undo_failed(&e, &u, "del-iface removes it")
                    }
                    _ => Error::undo_failed(&e, &u, "the sandbox's end removes the rest"),
                }
            }
        }
    }

    /// del-iface: unplug the NIC added as `name`; remove its TAP if the runtime made it.
    pub async fn del_iface(&self, name: &str, deadline: Option<Instant>) -> Result<()> {
        let mut ops = self.ops_by(deadline).await?;
        let pos = ops.operator.added.iter().position(|a| a.name == name).ok_or_else(|| {
            Error::NotFound(format!("name: no interface {name} was added to this sandbox with add-iface"))
        })?;
        let a = ops.operator.added[pos].clone();
        failpoint::hit_async("del-iface:found").await?;
        self.vm.unplug_nic(&a.id).await?;
        ops.operator.added.remove(pos);
        // The guest's kernel dropped the routes through the NIC with it.
        ops.routes.list.retain(|r| r.device != name);
        // The TAP's record says what to undo on the host: remove a TAP the runtime made, give an
        // operator's TAP its features back.
        let record = (ops.state.endpoints.iter())
            .find(|e| matches!(e, EndpointState::DirectTap { link, .. } if link == &a.device))
            .cloned();
        if let Some(record) = record {
            record.detach(&self.ctx).await?;
            self.forget_tap(&mut ops, &a.device);
        }
        slog::info!(self.log, "interface removed"; "name" => name, "device" => a.device.as_str());
        Ok(())
    }

    /// The added interfaces as the guest has them now (the record where the guest has none).
    pub async fn list_ifaces(&self) -> Result<Vec<mg::Interface>> {
        let ops = self.ops.lock().await;
        if ops.operator.added.is_empty() {
            return Ok(Vec::new());
        }
        let guest = self.agent.list_interfaces().await?;
        Ok(ops
            .operator
            .added
            .iter()
            .map(|a| {
                let mut out = a.to_pb();
                if let Some(g) = guest.iter().find(|g| g.hwAddr.parse::<MacAddr>().ok() == Some(a.mac)) {
                    out.name = g.name.clone();
                    out.mtu = g.mtu;
                    // The addresses given to it: kata's agent lists the kernel's IPv6
                    // link-local one too (ours does not make one).
                    out.IPAddresses = g
                        .IPAddresses
                        .iter()
                        .filter(|a| !a.address.to_ascii_lowercase().starts_with("fe80:"))
                        .cloned()
                        .collect();
                }
                out
            })
            .collect())
    }
}
