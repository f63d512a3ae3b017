//! The management service of a running sandbox (`network-cli.md`): add and remove NICs, manage
//! the VM's routes, load IPVS rules. Served on a root-only unix socket in the sandbox's run
//! directory, `<run_dir>/<id>/mgmt.sock`, by a second ttrpc server of the shim (the
//! containerd-shim crate's own server cannot take another service).
//!
//! Every operation holds the sandbox's `ops` lock from its first check to its last step, so
//! operations on one sandbox never interleave: the rule count and the interface list cannot
//! drift. Every operation checks all it can before changing anything, and undoes what it did
//! when a later step fails.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use agent_client::protocols::netmgmt as mg;
use agent_client::protocols::netmgmt_ttrpc::{create_network_management, NetworkManagement};
use agent_client::protocols::types as pb;
use ipnet::IpNet;
use network::endpoint::EndpointState;
use network::nic::{NicBackend, NicConfig};
use network::{nl, tuntap, IfName, LinkKind, MacAddr, PciPath};
use ttrpc::asynchronous::TtrpcContext;
use ttrpc::Code;

use crate::ipvs::{IpvsCommand, IpvsError, Restore};
use crate::netdoc::{AddrDoc, DocError, IfaceDoc, IfaceRequest, RouteDoc, RouteRequest};
use crate::sandbox::{Ops, Sandbox, NIC_WAIT};

pub const MGMT_SOCKET: &str = "mgmt.sock";

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
    /// The runtime made the TAP (it did not exist) and removes it on del-iface.
    pub created: bool,
}

/// A refused or failed operation: the ttrpc code and the one-line message the CLI prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub code: Code,
    pub msg: String,
}

type R<T> = Result<T, Failure>;

fn fail(code: Code, msg: impl Into<String>) -> Failure {
    Failure { code, msg: msg.into() }
}

fn internal(e: impl std::fmt::Display) -> Failure {
    fail(Code::INTERNAL, e.to_string())
}

/// An error and its causes on one line.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut msg = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        cur = s.source();
    }
    msg
}

impl From<DocError> for Failure {
    fn from(e: DocError) -> Self {
        fail(Code::INVALID_ARGUMENT, e.to_string())
    }
}

impl From<IpvsError> for Failure {
    fn from(e: IpvsError) -> Self {
        let code = match &e {
            IpvsError::Syntax(_) | IpvsError::Line { .. } => Code::INVALID_ARGUMENT,
            IpvsError::Rule(_) | IpvsError::NotEmpty(_) => Code::FAILED_PRECONDITION,
            IpvsError::Limit { .. } => Code::RESOURCE_EXHAUSTED,
        };
        fail(code, e.to_string())
    }
}

impl From<agent_client::Error> for Failure {
    fn from(e: agent_client::Error) -> Self {
        // The guest's own refusal is the useful part of the message.
        let msg = match &e {
            agent_client::Error::Rpc { source: ttrpc::Error::RpcStatus(s), .. } => {
                format!("the VM refused: {}", s.message())
            }
            other => chain(other),
        };
        fail(e.code().unwrap_or(Code::UNAVAILABLE), msg)
    }
}

impl From<Failure> for ttrpc::Error {
    fn from(f: Failure) -> Self {
        ttrpc::Error::RpcStatus(ttrpc::get_status(f.code, f.msg))
    }
}

/// Family as the CLI prints it: 2 (AF_INET) or 10 (AF_INET6).
pub fn af(ip: &IpAddr) -> u32 {
    if ip.is_ipv6() {
        10
    } else {
        2
    }
}

impl Added {
    /// As the management protocol carries it.
    pub fn to_pb(&self) -> mg::Interface {
        mg::Interface {
            device: self.device.to_string(),
            name: self.name.clone(),
            IPAddresses: self
                .address
                .iter()
                .map(|a| mg::IPAddress {
                    family: af(&a.addr()),
                    address: a.addr().to_string(),
                    mask: a.prefix_len().to_string(),
                    ..Default::default()
                })
                .collect(),
            mtu: self.mtu as u64,
            hwAddr: self.mac.to_string(),
            pciAddr: pci_addr(&self.pci),
            ..Default::default()
        }
    }
}

/// `pciAddr` as kata prints it: `<bridge slot>.0/<device slot>` (`10/01` → `10.0/01`).
pub fn pci_addr(p: &PciPath) -> String {
    match p.slots() {
        [bus, rest @ ..] if !rest.is_empty() => {
            let tail: Vec<String> = rest.iter().map(|s| format!("{s:02x}")).collect();
            format!("{bus:02x}.0/{}", tail.join("/"))
        }
        _ => p.to_string(),
    }
}

/// The management protocol's interface as the operator's document.
pub fn doc_from_pb(i: &mg::Interface) -> IfaceDoc {
    IfaceDoc {
        device: i.device.clone(),
        name: i.name.clone(),
        ip_addresses: i
            .IPAddresses
            .iter()
            .map(|a| AddrDoc { address: a.address.clone(), mask: a.mask.clone() })
            .collect(),
        hw_addr: i.hwAddr.clone(),
        mtu: i.mtu,
        vhost_user_socket: (!i.vhostUserSocket.is_empty()).then(|| i.vhostUserSocket.clone()),
        queues: i.queues,
    }
}

/// The operator's document as the management protocol carries it.
pub fn doc_to_pb(d: &IfaceDoc) -> mg::Interface {
    mg::Interface {
        device: d.device.clone(),
        name: d.name.clone(),
        IPAddresses: d
            .ip_addresses
            .iter()
            .map(|a| mg::IPAddress { address: a.address.clone(), mask: a.mask.clone(), ..Default::default() })
            .collect(),
        mtu: d.mtu,
        hwAddr: d.hw_addr.clone(),
        vhostUserSocket: d.vhost_user_socket.clone().unwrap_or_default(),
        queues: d.queues,
        ..Default::default()
    }
}

/// A guest route as the CLI prints it: `dest` is `default` for the default route.
fn route_out(r: &pb::Route) -> mg::Route {
    let dest = if r.dest.is_empty() { "default".to_owned() } else { r.dest.clone() };
    mg::Route { dest, gateway: r.gateway.clone(), device: r.device.clone(), ..Default::default() }
}

fn route_pb(r: &RouteRequest, delete: bool) -> pb::Route {
    let dest = r.dest.map_or_else(|| "default".to_owned(), |d| d.to_string());
    let v6 = r.dest.map(|d| d.addr().is_ipv6()).or(r.gateway.map(|g| g.is_ipv6())).unwrap_or(false);
    pb::Route {
        dest: if delete { format!("-{dest}") } else { dest },
        gateway: r.gateway.map(|g| g.to_string()).unwrap_or_default(),
        device: r.device.clone().unwrap_or_default(),
        family: (if v6 { pb::IPFamily::v6 } else { pb::IPFamily::v4 }).into(),
        ..Default::default()
    }
}

/// The host side of a NIC being plugged: its backend, and the TAP it made (if any), which the
/// caller removes on a later failure.
struct HostSide {
    backend: NicBackend,
    queues: usize,
    /// The TAP this operation made.
    created: Option<IfName>,
}

impl Sandbox {
    async fn save(&self, ops: &Ops) -> R<()> {
        ops.state.save(&self.bundle).map_err(|e| internal(format!("saving the sandbox state: {e}")))
    }

    /// Open the operator's TAP `device` in the sandbox's namespace, or make it.
    async fn host_side(&self, req: &IfaceRequest, dev: &IfName, ops: &Ops) -> R<HostSide> {
        if let Some(socket) = &req.vhost_user_socket {
            return Ok(HostSide { backend: NicBackend::VhostUser { socket: socket.into() }, queues: 1, created: None });
        }
        if ops.state.endpoints.iter().any(|e| e.link() == dev) || ops.added.iter().any(|a| &a.device == dev) {
            return Err(fail(Code::ALREADY_EXISTS, format!("device: {dev} is already plugged into this sandbox")));
        }
        let wanted = |mq: bool| -> R<usize> {
            match (req.queues as usize, mq) {
                (0, true) => Ok(self.queues),
                (0 | 1, false) => Ok(1),
                (n, true) => Ok(n),
                (n, false) => Err(fail(
                    Code::INVALID_ARGUMENT,
                    format!("queues: {dev} is a single-queue TAP; it takes 1 queue, not {n}"),
                )),
            }
        };
        // One dump finds the operator's TAP; a name it does not show is made, unless the kernel
        // has a device of that name after all (one the runtime made: the scan leaves those out).
        let info = self.ctx.scan().await.map_err(|e| internal(chain(&e)))?;
        let (fds, queues, created) = match info.link(dev.as_str()) {
            Some(link) => {
                let multi_queue = match &link.kind {
                    LinkKind::Tuntap { tap: true, multi_queue } => *multi_queue,
                    other => {
                        return Err(fail(
                            Code::INVALID_ARGUMENT,
                            format!("device: {dev} exists and is a {}, not a TAP", other.type_name()),
                        ))
                    }
                };
                let queues = wanted(multi_queue)?;
                let fds = tuntap::open_tap_queues_in(&self.ctx.worker, dev, queues, multi_queue)
                    .map_err(|e| fail(Code::FAILED_PRECONDITION, chain(&e)))?;
                (fds, queues, None)
            }
            None => {
                let queues = wanted(req.queues != 1)?.max(1);
                let (fds, index) =
                    tuntap::create_tap_in(&self.ctx.worker, dev, queues, queues > 1).map_err(|e| match e {
                        network::Error::DeviceExists(_) => fail(
                            Code::ALREADY_EXISTS,
                            format!("device: {dev} exists and is not an operator's TAP the runtime can plug in"),
                        ),
                        e => internal(chain(&e)),
                    })?;
                // Without persistence the TAP goes with its last fd, on any failure below.
                nl::set_runtime_dev_up(&self.ctx.handle, index, dev.as_str(), req.mtu).await.map_err(|e| {
                    fail(
                        Code::FAILED_PRECONDITION,
                        format!("mtu: the new TAP {dev} refused MTU {}: {}", req.mtu, chain(&e)),
                    )
                })?;
                (fds, queues, Some(dev.clone()))
            }
        };
        let vhost = tuntap::open_vhost_net(queues, self.vhost_net).map_err(|e| internal(chain(&e)))?;
        Ok(HostSide { backend: NicBackend::Tap { device: dev.clone(), queues: fds, vhost }, queues, created })
    }

    /// Remove a TAP this runtime made, if it is still there (it normally goes with QEMU's fds).
    async fn remove_created(&self, dev: &IfName) {
        let _ = nl::delete_link(&self.ctx.handle, dev.as_str()).await;
    }

    /// add-iface: check, open or make the TAP, hotplug, configure in the guest; undo on failure.
    pub async fn add_iface(&self, req: IfaceRequest) -> R<Added> {
        req.check_host()?;
        let mut ops = self.ops.lock().await;
        if ops.added.iter().any(|a| a.name == req.name) {
            return Err(fail(Code::ALREADY_EXISTS, format!("name: {} is already in the sandbox", req.name)));
        }
        let guest = self.agent.list_interfaces().await?;
        if guest.iter().any(|i| i.name == req.name) {
            return Err(fail(Code::ALREADY_EXISTS, format!("name: {} is already in the sandbox", req.name)));
        }
        if let Some(i) = guest.iter().find(|i| i.hwAddr.parse::<MacAddr>().ok() == Some(req.mac)) {
            return Err(fail(Code::ALREADY_EXISTS, format!("hwAddr: {} is already used by {}", req.mac, i.name)));
        }
        let device: IfName = req.device.parse().map_err(|e| fail(Code::INVALID_ARGUMENT, format!("device: {e}")))?;
        let host = self.host_side(&req, &device, &ops).await?;
        let id = format!("hp-{}", req.name);
        if let Some(dev) = &host.created {
            ops.state.endpoints.push(EndpointState::Tap { link: dev.clone(), created: true });
            if let Err(e) = self.save(&ops).await {
                ops.state.endpoints.pop();
                return Err(e);
            }
        }
        let undo_host = |ops: &mut Ops, created: &Option<IfName>| {
            if let Some(dev) = created {
                ops.state.endpoints.retain(|e| e.link() != dev);
            }
        };
        let nic = NicConfig { id: id.clone(), guest_mac: req.mac, mtu: req.mtu, backend: host.backend };
        let pci = match self.vm.hotplug_nic(nic).await {
            Ok(p) => p,
            Err(e) => {
                if let Some(dev) = &host.created {
                    self.remove_created(dev).await;
                }
                undo_host(&mut ops, &host.created);
                let _ = self.save(&ops).await;
                return Err(fail(Code::INTERNAL, format!("hotplug into the VM: {}", chain(&e))));
            }
        };
        let iface = pb::Interface {
            device: req.device.clone(),
            name: req.name.clone(),
            IPAddresses: req
                .address
                .iter()
                .map(|a| pb::IPAddress {
                    family: (if a.addr().is_ipv6() { pb::IPFamily::v6 } else { pb::IPFamily::v4 }).into(),
                    address: a.addr().to_string(),
                    mask: a.prefix_len().to_string(),
                    ..Default::default()
                })
                .collect(),
            mtu: req.mtu as u64,
            hwAddr: req.mac.to_string(),
            devicePath: pci.to_string(),
            Queues: host.queues as u32,
            ..Default::default()
        };
        if let Err(e) = self.agent.update_interface(&iface, NIC_WAIT).await {
            let mut failure = Failure::from(e);
            if let Err(u) = self.vm.unplug_nic(&id).await {
                // Still in the VM: keep it listed, so del-iface (or the sandbox's end) removes it.
                slog::error!(self.log, "add-iface: undoing the hotplug failed"; "name" => &req.name, "error" => %u);
                failure.msg = format!("{}; undoing the hotplug failed too ({u}): del-iface removes it", failure.msg);
                ops.added.push(Added {
                    id,
                    device,
                    name: req.name.clone(),
                    mac: req.mac,
                    mtu: req.mtu,
                    address: req.address,
                    pci,
                    created: host.created.is_some(),
                });
                return Err(failure);
            }
            if let Some(dev) = &host.created {
                self.remove_created(dev).await;
            }
            undo_host(&mut ops, &host.created);
            let _ = self.save(&ops).await;
            return Err(failure);
        }
        let added = Added {
            id,
            device,
            name: req.name.clone(),
            mac: req.mac,
            mtu: req.mtu,
            address: req.address,
            pci,
            created: host.created.is_some(),
        };
        ops.added.push(added.clone());
        slog::info!(self.log, "interface added"; "name" => &added.name, "device" => added.device.as_str(),
            "pci_path" => %added.pci, "created_tap" => added.created);
        Ok(added)
    }

    /// del-iface: unplug the NIC added as `name`; remove its TAP if the runtime made it.
    pub async fn del_iface(&self, name: &str) -> R<()> {
        let mut ops = self.ops.lock().await;
        let pos = ops.added.iter().position(|a| a.name == name).ok_or_else(|| {
            fail(Code::NOT_FOUND, format!("name: no interface {name} was added to this sandbox with add-iface"))
        })?;
        let a = ops.added[pos].clone();
        self.vm.unplug_nic(&a.id).await.map_err(|e| internal(format!("unplug from the VM: {}", chain(&e))))?;
        ops.added.remove(pos);
        if a.created {
            self.remove_created(&a.device).await;
            ops.state.endpoints.retain(|e| e.link() != &a.device);
            self.save(&ops).await?;
        }
        slog::info!(self.log, "interface removed"; "name" => name, "device" => a.device.as_str());
        Ok(())
    }

    /// The added interfaces as the guest has them now (the record where the guest has none).
    pub async fn list_ifaces(&self) -> R<Vec<mg::Interface>> {
        let ops = self.ops.lock().await;
        if ops.added.is_empty() {
            return Ok(Vec::new());
        }
        let guest = self.agent.list_interfaces().await?;
        Ok(ops
            .added
            .iter()
            .map(|a| {
                let mut out = a.to_pb();
                if let Some(g) = guest.iter().find(|g| g.hwAddr.parse::<MacAddr>().ok() == Some(a.mac)) {
                    out.name = g.name.clone();
                    out.mtu = g.mtu;
                    out.IPAddresses = g
                        .IPAddresses
                        .iter()
                        .filter_map(|ip| {
                            let addr: IpAddr = ip.address.parse().ok()?;
                            Some(mg::IPAddress {
                                family: af(&addr),
                                address: ip.address.clone(),
                                mask: ip.mask.clone(),
                                ..Default::default()
                            })
                        })
                        .collect();
                }
                out
            })
            .collect())
    }

    pub async fn add_route(&self, r: RouteRequest) -> R<Vec<mg::Route>> {
        let _ops = self.ops.lock().await;
        let route = route_pb(&r, false);
        self.agent.update_routes(vec![route.clone()], true).await?;
        Ok(vec![route_out(&route)])
    }

    /// del-route: every route that matches all given fields; returns the routes deleted.
    pub async fn del_route(&self, r: RouteRequest) -> R<Vec<mg::Route>> {
        let _ops = self.ops.lock().await;
        let before = self.agent.list_routes().await?;
        let after = self.agent.update_routes(vec![route_pb(&r, true)], true).await?;
        Ok(before.iter().filter(|b| !after.contains(b)).map(route_out).collect())
    }

    pub async fn list_routes(&self) -> R<Vec<mg::Route>> {
        let _ops = self.ops.lock().await;
        Ok(self.agent.list_routes().await?.iter().map(route_out).collect())
    }

    /// One ipvsadm command, checked against the sandbox's rule table first.
    pub async fn ipvsadm(&self, cmd: IpvsCommand) -> R<(String, usize)> {
        let mut ops = self.ops.lock().await;
        ops.ipvs.check(&cmd)?;
        let out = self.agent.update_ipvs_rule(&cmd.request()).await?;
        ops.ipvs.apply(&cmd);
        Ok((out, ops.ipvs.rules()))
    }

    /// A whole rule file in one request, only into an empty table.
    pub async fn ipvs_restore(&self, restore: Restore) -> R<(String, usize)> {
        let mut ops = self.ops.lock().await;
        if ops.ipvs.rules() > 0 {
            return Err(IpvsError::NotEmpty(ops.ipvs.rules()).into());
        }
        let out = self.agent.update_ipvs_rule(&restore.request()).await?;
        ops.ipvs = restore.table;
        Ok((out, ops.ipvs.rules()))
    }

    pub async fn conntrack_cleanup(&self, request: String) -> R<(String, usize)> {
        let ops = self.ops.lock().await;
        let out = self.agent.update_ipvs_rule(&request).await?;
        Ok((out, ops.ipvs.rules()))
    }
}

/// The ttrpc face of a sandbox's management operations.
struct Service {
    sb: Arc<Sandbox>,
}

fn ipvs_reply((output, rules): (String, usize)) -> mg::IpvsReply {
    mg::IpvsReply { output, rules: rules as u32, ..Default::default() }
}

#[async_trait::async_trait]
impl NetworkManagement for Service {
    async fn add_interface(&self, _: &TtrpcContext, req: mg::Interface) -> ttrpc::Result<mg::Interface> {
        let checked = doc_from_pb(&req).validate().map_err(Failure::from)?;
        Ok(self.sb.add_iface(checked).await?.to_pb())
    }

    async fn delete_interface(&self, _: &TtrpcContext, req: mg::Interface) -> ttrpc::Result<mg::Interface> {
        let name = crate::netdoc::DelIfaceDoc { name: req.name.clone(), ..Default::default() }
            .name()
            .map_err(Failure::from)?
            .to_owned();
        self.sb.del_iface(&name).await?;
        Ok(mg::Interface::default())
    }

    async fn list_interfaces(&self, _: &TtrpcContext, _: mg::Nothing) -> ttrpc::Result<mg::Interfaces> {
        Ok(mg::Interfaces { interfaces: self.sb.list_ifaces().await?, ..Default::default() })
    }

    async fn add_route(&self, _: &TtrpcContext, req: mg::Route) -> ttrpc::Result<mg::Routes> {
        let doc = RouteDoc { dest: req.dest, gateway: req.gateway, device: req.device };
        let r = doc.validate(true).map_err(Failure::from)?;
        Ok(mg::Routes { routes: self.sb.add_route(r).await?, ..Default::default() })
    }

    async fn delete_route(&self, _: &TtrpcContext, req: mg::Route) -> ttrpc::Result<mg::Routes> {
        let doc = RouteDoc { dest: req.dest, gateway: req.gateway, device: req.device };
        let r = doc.validate(false).map_err(Failure::from)?;
        Ok(mg::Routes { routes: self.sb.del_route(r).await?, ..Default::default() })
    }

    async fn list_routes(&self, _: &TtrpcContext, _: mg::Nothing) -> ttrpc::Result<mg::Routes> {
        Ok(mg::Routes { routes: self.sb.list_routes().await?, ..Default::default() })
    }

    async fn ipvsadm(&self, _: &TtrpcContext, req: mg::IpvsRequest) -> ttrpc::Result<mg::IpvsReply> {
        let cmd = IpvsCommand::parse(&req.parameters).map_err(Failure::from)?;
        Ok(ipvs_reply(self.sb.ipvsadm(cmd).await?))
    }

    async fn ipvs_restore(&self, _: &TtrpcContext, req: mg::IpvsRestoreRequest) -> ttrpc::Result<mg::IpvsReply> {
        let restore = Restore::parse(&req.rules).map_err(Failure::from)?;
        Ok(ipvs_reply(self.sb.ipvs_restore(restore).await?))
    }

    async fn conntrack_cleanup(&self, _: &TtrpcContext, req: mg::IpvsRequest) -> ttrpc::Result<mg::IpvsReply> {
        let request = crate::ipvs::cleanup_request(&req.parameters).map_err(Failure::from)?;
        Ok(ipvs_reply(self.sb.conntrack_cleanup(request).await?))
    }
}

/// The running management server of one sandbox.
pub struct MgmtServer {
    server: ttrpc::asynchronous::Server,
}

impl std::fmt::Debug for MgmtServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MgmtServer").finish_non_exhaustive()
    }
}

impl MgmtServer {
    /// Serve `sb` on `<dir>/mgmt.sock`, readable and writable by root only (the directory is
    /// root's with mode 0700 as well).
    pub async fn start(sb: Arc<Sandbox>, dir: &Path) -> anyhow::Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(MGMT_SOCKET);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        let service = create_network_management(Arc::new(Service { sb }));
        let mut server = ttrpc::asynchronous::Server::new()
            .bind(&format!("unix://{}", path.display()))
            .map_err(|e| anyhow::anyhow!("management socket {}: {e}", path.display()))?
            .register_service(service);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        server.start().await.map_err(|e| anyhow::anyhow!("management server: {e}"))?;
        Ok(Self { server })
    }

    pub async fn stop(mut self) {
        let _ = self.server.shutdown().await;
    }
}
