//! Following the pod's namespace after start (`[runtime] follow_netns`, issue 14, first part):
//! a netlink socket in the sandbox's namespace, subscribed to links, addresses and routes; after
//! a quiet moment (`DEBOUNCE`) the namespace is scanned again and the VM brought in line, under
//! the sandbox's operation lock (so operator commands and this never interleave):
//! - a new veth, macvlan or ipvlan link gets an endpoint (recorded before it is made), a
//!   hotplugged NIC and its configuration in the guest; a failure undoes all three;
//! - a link that went away: its hotplugged NIC is unplugged and the host side removed;
//! - a pod link whose addresses or MTU changed is configured again in the guest;
//! - the pod's routes are sent again when they changed (the whole table, as for kata's agent).
//!
//! TAPs that appear after start are an operator's (add-iface plugs them), never a pod change;
//! devices the runtime made are not scanned. A cold-plugged NIC cannot leave the VM (q35's root
//! bus has no hotplug): its link's removal takes the host side away and leaves the NIC.

use std::sync::{Arc, Weak};
use std::time::Duration;

use agent_client::protocols::types as pb;
use network::endpoint::{Endpoint, EndpointState};
use network::{LinkKind, NetworkInfo, Rollback};

use super::{Sandbox, NIC_WAIT};
use crate::error::Result;

/// The pod's links with a NIC in the VM, and the part of the VM's route table that is the
/// pod's (as the namespace had them when last synced).
#[derive(Debug, Default)]
pub struct PodLinks {
    pub nics: Vec<PodNic>,
    pub routes: Vec<agent_client::protocols::types::Route>,
    /// The pod's permanent neighbours given to the guest.
    pub neighbors: Vec<network::Neighbor>,
    /// New pod links whose plugging failed (and was undone), by name and interface index: not
    /// tried again until the link is made again, so a refusal does not turn into a loop (the
    /// undo's own netlink events would start the next attempt).
    pub refused: Vec<(network::IfName, u32)>,
}

/// A pod link with a NIC in the VM.
#[derive(Debug, Clone)]
pub struct PodNic {
    /// The link as last synced to the guest.
    pub link: network::Link,
    pub nic_id: String,
    /// Hotplugged (factory mode, or after start): it can leave the VM again.
    pub hotplugged: bool,
}

/// How long the namespace must stay quiet before the VM is brought in line.
const DEBOUNCE: Duration = Duration::from_millis(200);

/// Start following the sandbox's namespace; the task ends with the sandbox.
pub fn follow(sb: &Arc<Sandbox>) -> Result<()> {
    let mut changes = sb.ctx.watch()?;
    let weak: Weak<Sandbox> = Arc::downgrade(sb);
    tokio::spawn(async move {
        while changes.next().await && changes.settle(DEBOUNCE).await {
            let Some(sb) = weak.upgrade() else { break };
            if let Err(e) = sb.bring_in_line().await {
                slog::error!(sb.log, "following the namespace"; "error" => crate::error::message(&e));
            }
        }
    });
    Ok(())
}

/// Did the runtime itself take the link's addresses and routes (the macvtap model moves them to
/// the VM)? Then the namespace no longer says what the guest should have: left as synced.
fn moved_by_runtime(ops: &super::Ops, link: &network::IfName) -> bool {
    ops.state
        .endpoints
        .iter()
        .any(|e| e.link() == link && e.host_device_is_macvtap() && !matches!(e, EndpointState::Macvtap { .. }))
}

/// Link kinds that are a pod's change when they appear after start.
fn pod_kind(kind: &LinkKind) -> bool {
    matches!(kind, LinkKind::Veth | LinkKind::Macvlan | LinkKind::Ipvlan)
}

impl Sandbox {
    /// Scan the namespace and bring the VM in line with it (see the module's text). Each part
    /// runs whatever an earlier one gave (a failed step is logged and the next change tries it
    /// again); the first error is returned.
    pub async fn bring_in_line(&self) -> Result<()> {
        let mut ops = self.ops.lock().await;
        if ops.closed {
            return Ok(());
        }
        let info = self.ctx.scan().await?;
        let mut first: Result<()> = Ok(());
        let mut note = |r: Result<()>, what: &str, log: &slog::Logger| {
            if let Err(e) = r {
                slog::error!(log, "following the namespace: a step failed; the others go on";
                    "step" => what, "error" => crate::error::message(&e));
                if first.is_ok() {
                    first = Err(e);
                }
            }
        };
        // Gone: no link of that name and index any more. A link renamed (same index, new name)
        // or removed and made again under its name (new index) is a new link: the old NIC and
        // what the runtime made for it go, found by the name the device has now.
        let same = |p: &PodNic| info.link(p.link.name.as_str()).is_some_and(|l| l.index == p.link.index);
        let gone: Vec<PodNic> = ops.pod.nics.iter().filter(|p| !same(p)).cloned().collect();
        for p in gone {
            let renamed = info.links.iter().find(|l| l.index == p.link.index).cloned();
            // A cold-plugged NIC cannot leave the VM: it is joined to the link as it is now,
            // renamed or made anew under its name, when the link kept its MAC (the guest's NIC
            // has it).
            if !p.hotplugged {
                let anew = info.link(p.link.name.as_str()).filter(|l| l.index != p.link.index).cloned();
                let now = renamed.clone().map(|l| (l, false)).or(anew.map(|l| (l, true)));
                if let Some((now, made_anew)) = now.filter(|(l, _)| l.mac == p.link.mac) {
                    match self.pod_link_rejoin(&mut ops, &p, &now, made_anew).await {
                        Ok(true) => continue,
                        Ok(false) => {}
                        Err(e) => {
                            note(Err(e), "a link joined again", &self.log);
                            continue;
                        }
                    }
                }
            }
            let renamed = renamed.map(|l| l.name);
            note(self.pod_link_gone(&mut ops, &p, renamed).await, "a link gone", &self.log);
        }
        let known = |name: &str, ops: &super::Ops| {
            ops.pod.nics.iter().any(|p| p.link.name.as_str() == name)
                || ops.operator.added.iter().any(|a| a.device.as_str() == name)
        };
        ops.pod.refused.retain(|(name, index)| info.link(name.as_str()).is_some_and(|l| l.index == *index));
        let new: Vec<network::Link> = (info.links.iter())
            .filter(|l| pod_kind(&l.kind) && !known(l.name.as_str(), &ops))
            .filter(|l| !ops.pod.refused.contains(&(l.name.clone(), l.index)))
            .cloned()
            .collect();
        for link in new {
            if let Err(e) = self.pod_link_new(&mut ops, &info, &link).await {
                ops.pod.refused.push((link.name.clone(), link.index));
                slog::error!(self.log, "a new pod link could not be plugged in (undone; tried again when the link is made again)";
                    "link" => link.name.as_str(), "error" => crate::error::message(&e));
            }
        }
        for i in 0..ops.pod.nics.len() {
            if moved_by_runtime(&ops, &ops.pod.nics[i].link.name) {
                continue;
            }
            let Some(now) = info.link(ops.pod.nics[i].link.name.as_str()).cloned() else { continue };
            if now.addresses != ops.pod.nics[i].link.addresses || now.mtu != ops.pod.nics[i].link.mtu {
                let configured = self.configure(&now, None).await;
                if configured.is_ok() {
                    slog::info!(self.log, "pod link changed"; "link" => now.name.as_str());
                    ops.pod.nics[i].link = now;
                }
                note(configured, "a link's addresses or MTU", &self.log);
            }
        }
        let routes = self.pod_routes(&mut ops, &info).await;
        note(routes, "the pod's routes", &self.log);
        let neighbors = self.pod_neighbors(&mut ops, &info).await;
        note(neighbors, "the pod's neighbours", &self.log);
        first
    }

    /// Permanent neighbours that appeared on pod links reach the guest (kata's protocol has no
    /// call to delete one: a removed neighbour stays in the guest until its NIC goes).
    async fn pod_neighbors(&self, ops: &mut super::Ops, info: &NetworkInfo) -> Result<()> {
        let ours = |dev: &network::IfName| ops.pod.nics.iter().any(|p| &p.link.name == dev);
        let now: Vec<network::Neighbor> = info.neighbors.iter().filter(|n| ours(&n.device)).cloned().collect();
        let new: Vec<network::Neighbor> = now.iter().filter(|n| !ops.pod.neighbors.contains(n)).cloned().collect();
        if !new.is_empty() {
            self.agent
                .add_arp_neighbors(agent_client::neighbors(&new).iter().map(pb::ARPNeighbor::from).collect())
                .await?;
            slog::info!(self.log, "pod neighbours synced"; "added" => new.len());
        }
        ops.pod.neighbors = now;
        Ok(())
    }

    /// The guest's configuration of `link` (at `pci`, when just plugged).
    async fn configure(&self, link: &network::Link, pci: Option<&network::PciPath>) -> Result<()> {
        let mut iface = agent_client::interfaces(std::slice::from_ref(link)).remove(0);
        if let Some(p) = pci {
            iface.device_path = p.to_string();
        }
        iface.queues = self.ep_cfg.queues as u32;
        self.agent.update_interface(&pb::Interface::from(&iface), NIC_WAIT).await?;
        Ok(())
    }

    /// A new pod link: endpoint (intent recorded first), NIC, guest configuration; all undone on
    /// failure.
    async fn pod_link_new(&self, ops: &mut super::Ops, info: &NetworkInfo, link: &network::Link) -> Result<()> {
        let used: Vec<&network::IfName> = ops.state.endpoints.iter().filter_map(|e| e.host_device()).collect();
        let n = network::scan::free_device_number(used.iter().copied());
        let Some(ep) = Endpoint::from_link(n, link, info, &self.ep_cfg)? else { return Ok(()) };
        let Some(planned) = ep.planned_state() else { return Ok(()) };
        ops.state.endpoints.push(planned);
        ops.state.save(&self.bundle)?;
        let attached = match network::attach_all(&self.ctx, std::slice::from_ref(&ep), &self.ep_cfg).await {
            Ok(mut a) => a.remove(0),
            Err(e) => {
                ops.state.endpoints.pop();
                let _ = ops.state.save(&self.bundle);
                return Err(e.into());
            }
        };
        let state = attached.state.clone();
        *ops.state.endpoints.last_mut().expect("pushed above") = state.clone();
        ops.state.save(&self.bundle)?;
        if let Err(e) = crate::failpoint::hit_async("follow:attached").await {
            let _ = state.detach(&self.ctx).await;
            ops.state.endpoints.pop();
            let _ = ops.state.save(&self.bundle);
            return Err(e.into());
        }
        let mut nic = attached.nic;
        nic.id = format!("pod-{}", link.name);
        let id = nic.id.clone();
        let mut rb = Rollback::with_nics(&self.ctx, self.vm.clone());
        let plugged = async {
            let pci = rb.hotplug(nic).await?;
            crate::failpoint::hit_async("follow:hotplugged").await?;
            self.configure(link, Some(&pci)).await
        }
        .await;
        if let Err(e) = plugged {
            let undone = rb.undo().await;
            let detached = state.detach(&self.ctx).await;
            if undone.is_ok() && detached.is_ok() {
                ops.state.endpoints.pop();
                let _ = ops.state.save(&self.bundle);
            }
            return Err(e);
        }
        rb.commit();
        ops.pod.nics.push(PodNic { link: link.clone(), nic_id: id, hotplugged: true });
        slog::info!(self.log, "pod link plugged in"; "link" => link.name.as_str());
        Ok(())
    }

    /// A cold-plugged NIC's link renamed, or made anew under its name (`made_anew`): the NIC
    /// stays, joined to `now` (the TAP's redirects, for a new device), its record under the new
    /// name, the guest's NIC renamed to match. `false`: the NIC is not joined by tc redirects.
    async fn pod_link_rejoin(
        &self,
        ops: &mut super::Ops,
        p: &PodNic,
        now: &network::Link,
        made_anew: bool,
    ) -> Result<bool> {
        let old = p.link.name.clone();
        let Some(i) = ops.state.endpoints.iter().position(|e| e.link() == &old) else { return Ok(false) };
        let Some(record) = ops.state.endpoints[i].rejoin(&self.ctx, &now.name, made_anew).await? else {
            return Ok(false);
        };
        ops.state.endpoints[i] = record;
        ops.state.save(&self.bundle)?;
        self.configure(now, None).await?;
        if let Some(n) = ops.pod.nics.iter_mut().find(|q| q.link.name == old) {
            n.link = now.clone();
        }
        // The operator's routes through the old name go as with a link gone; the pod's are
        // sent again under the new name below.
        ops.routes.list.retain(|r| r.device != old.as_str() || ops.pod.routes.contains(r));
        slog::info!(self.log, "pod link joined again"; "link" => now.name.as_str(), "was" => old.as_str(),
            "made_anew" => made_anew);
        Ok(true)
    }

    /// A pod link that went away (or is now `renamed`): its NIC out of the VM (if hotplugged),
    /// its host side removed (on the device under its new name, if renamed).
    async fn pod_link_gone(&self, ops: &mut super::Ops, p: &PodNic, renamed: Option<network::IfName>) -> Result<()> {
        if p.hotplugged {
            self.vm.unplug_nic(&p.nic_id).await?;
        }
        let record = ops.state.endpoints.iter().find(|e| e.link() == &p.link.name).cloned();
        if let Some(record) = record {
            let record = match renamed {
                Some(to) => record.with_link(to),
                None => record,
            };
            record.detach(&self.ctx).await?;
        }
        ops.state.endpoints.retain(|e: &EndpointState| e.link() != &p.link.name);
        ops.state.save(&self.bundle)?;
        ops.pod.nics.retain(|q| q.link.name != p.link.name);
        ops.routes.list.retain(|r| r.device != p.link.name.as_str());
        ops.pod.routes.retain(|r| r.device != p.link.name.as_str());
        slog::info!(self.log, "pod link gone"; "link" => p.link.name.as_str(), "unplugged" => p.hotplugged);
        Ok(())
    }

    /// The pod's routes as the namespace has them now; the operator's routes stay.
    async fn pod_routes(&self, ops: &mut super::Ops, info: &NetworkInfo) -> Result<()> {
        crate::failpoint::hit_async("follow:routes").await?;
        let moved: Vec<String> = ops
            .pod
            .nics
            .iter()
            .filter(|p| moved_by_runtime(ops, &p.link.name))
            .map(|p| p.link.name.to_string())
            .collect();
        let ours =
            |dev: &str| ops.pod.nics.iter().any(|p| p.link.name.as_str() == dev) && !moved.iter().any(|m| m == dev);
        let pod: Vec<network::Route> = info.routes.iter().filter(|r| ours(r.device.as_str())).cloned().collect();
        let mut pod: Vec<pb::Route> = agent_client::routes(&pod).iter().map(pb::Route::from).collect();
        // The routes the runtime itself took off a link (macvtap model) stay as they were synced.
        pod.extend(ops.pod.routes.iter().filter(|r| moved.contains(&r.device)).cloned());
        if pod == ops.pod.routes {
            return Ok(());
        }
        let mut table = pod.clone();
        table.extend(ops.routes.list.iter().filter(|r| !ops.pod.routes.contains(r)).cloned());
        self.agent.update_routes(table.clone(), false).await?;
        ops.routes.list = table;
        ops.pod.routes = pod;
        slog::info!(self.log, "pod routes synced"; "routes" => ops.pod.routes.len());
        Ok(())
    }
}
