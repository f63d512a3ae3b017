//! Endpoints: one per link of the namespace, by the link's kind. Each kind lives in its own file.

mod bridged_tap;
mod direct_tap;
mod ipvlan;
mod macvlan;
mod macvtap;
mod physical;
mod veth;
mod vhost_user;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use bridged_tap::BridgedTapEndpoint;
pub use direct_tap::{DirectTapEndpoint, OperatorTap, OperatorTapRequest};
pub use ipvlan::IpvlanEndpoint;
pub use macvlan::MacvlanEndpoint;
pub use macvtap::MacvtapEndpoint;
pub use physical::PhysicalEndpoint;
pub use veth::VethEndpoint;
pub use vhost_user::VhostUserEndpoint;

use crate::error::{Error, Result};
use crate::model::{Bridged, Connection};
use crate::nic::{NicBackend, NicConfig};
use crate::rollback::{self, Rollback, Undo};
use crate::scan::{Link, LinkKind, NetworkInfo};
use crate::shaping::{Point, Points};
use crate::types::{IfName, NetworkModel};
use crate::{nic_fds as fds, NetCtx};

/// How endpoints are built and attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointConfig {
    pub model: NetworkModel,
    /// Queue pairs per NIC (one per vCPU); at least 1.
    pub queues: usize,
    /// Use `/dev/vhost-net` when the host has it.
    pub vhost_net: bool,
    /// Where DPDK/OVS leave vhost-user sockets, `<dir>/vhostuser_<ipv4>/vhu.sock`; `None` (the
    /// default) turns the discovery off. A socket found there must pass
    /// [`trust::check_root_socket`](crate::trust::check_root_socket), or the scan fails.
    pub vhost_user_dir: Option<PathBuf>,
    /// Rate limits on every NIC's host side ([`crate::shaping`]).
    pub rate: crate::shaping::RateLimit,
}

impl Default for EndpointConfig {
    fn default() -> Self {
        Self {
            model: NetworkModel::TcFilter,
            queues: 1,
            vhost_net: true,
            vhost_user_dir: None,
            rate: Default::default(),
        }
    }
}

/// A link of the namespace that the VM gets a NIC for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Veth(VethEndpoint),
    /// A TAP given to the VM as it is (`none` model, or an operator's TAP).
    DirectTap(DirectTapEndpoint),
    /// A tap-mode tun/tap link bridged to the VM's own TAP through the model.
    BridgedTap(BridgedTapEndpoint),
    Macvlan(MacvlanEndpoint),
    Macvtap(MacvtapEndpoint),
    Ipvlan(IpvlanEndpoint),
    VhostUser(VhostUserEndpoint),
    Physical(PhysicalEndpoint),
}

/// What an attach made, by kind; serialisable so a later process can undo it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum EndpointState {
    Veth {
        link: IfName,
        connection: Connection,
    },
    /// `created`: the runtime made the TAP and removes it again; `restore`: the TAP's own
    /// features, given back when the VM lets go of it. (`tap` in earlier state files.)
    #[serde(alias = "tap")]
    DirectTap {
        link: IfName,
        created: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        restore: Option<crate::nic_fds::TapFlags>,
    },
    /// (`tuntap` in earlier state files.)
    #[serde(alias = "tuntap")]
    BridgedTap {
        link: IfName,
        connection: Connection,
    },
    Macvlan {
        link: IfName,
        connection: Connection,
    },
    Macvtap {
        link: IfName,
    },
    Ipvlan {
        link: IfName,
        connection: Connection,
    },
    VhostUser {
        link: IfName,
        socket: PathBuf,
    },
}

impl EndpointState {
    /// The same record for its link under a new name (the pod's link was renamed: what the
    /// runtime made on it is found under the name it has now).
    pub fn with_link(mut self, to: IfName) -> Self {
        match &mut self {
            EndpointState::Veth { link, connection }
            | EndpointState::BridgedTap { link, connection }
            | EndpointState::Macvlan { link, connection }
            | EndpointState::Ipvlan { link, connection } => {
                *link = to.clone();
                match connection {
                    Connection::TcFilter { link, .. } | Connection::Macvtap { link, .. } => *link = to,
                    Connection::Tap { .. } => {}
                }
            }
            EndpointState::DirectTap { link, .. }
            | EndpointState::Macvtap { link }
            | EndpointState::VhostUser { link, .. } => *link = to,
        }
        self
    }

    /// The runtime's TAP when the NIC is joined to its link by tc redirects (`tcfilter`).
    pub fn tc_tap(&self) -> Option<&IfName> {
        match self {
            EndpointState::Veth { connection: Connection::TcFilter { tap, .. }, .. }
            | EndpointState::BridgedTap { connection: Connection::TcFilter { tap, .. }, .. }
            | EndpointState::Macvlan { connection: Connection::TcFilter { tap, .. }, .. }
            | EndpointState::Ipvlan { connection: Connection::TcFilter { tap, .. }, .. } => Some(tap),
            _ => None,
        }
    }

    /// Keep the NIC and join it to the pod's link as it is now: `link`, renamed (the same device:
    /// its redirects go by index and hold) or made anew under its name (`made_anew`: the TAP is
    /// joined to the new device). The record under the link's name is returned; `None` when the
    /// NIC is not joined by tc redirects.
    pub async fn rejoin(&self, ctx: &NetCtx, link: &IfName, made_anew: bool) -> Result<Option<EndpointState>> {
        let Some(tap) = self.tc_tap() else { return Ok(None) };
        if made_anew {
            crate::model::tc_filter::rejoin(ctx, link, tap).await?;
        }
        Ok(Some(self.clone().with_link(link.clone())))
    }

    pub fn link(&self) -> &IfName {
        match self {
            EndpointState::Veth { link, .. }
            | EndpointState::DirectTap { link, .. }
            | EndpointState::BridgedTap { link, .. }
            | EndpointState::Macvlan { link, .. }
            | EndpointState::Macvtap { link }
            | EndpointState::Ipvlan { link, .. }
            | EndpointState::VhostUser { link, .. } => link,
        }
    }

    /// The host device the NIC's frames pass through (the runtime's TAP or macvtap, the
    /// operator's TAP), whose counters are the NIC's as the host sees them; `None` for
    /// vhost-user (the frames pass through the switch's process, not a kernel device).
    pub fn host_device(&self) -> Option<&IfName> {
        match self {
            EndpointState::Veth { connection, .. }
            | EndpointState::BridgedTap { connection, .. }
            | EndpointState::Macvlan { connection, .. }
            | EndpointState::Ipvlan { connection, .. } => Some(match connection {
                crate::model::Connection::TcFilter { tap, .. } | crate::model::Connection::Tap { tap } => tap,
                crate::model::Connection::Macvtap { macvtap, .. } => macvtap,
            }),
            EndpointState::DirectTap { link, .. } | EndpointState::Macvtap { link } => Some(link),
            EndpointState::VhostUser { .. } => None,
        }
    }

    /// Whether [`EndpointState::host_device`] is a macvtap (else a TAP).
    pub fn host_device_is_macvtap(&self) -> bool {
        matches!(
            self,
            EndpointState::Macvtap { .. }
                | EndpointState::Veth { connection: crate::model::Connection::Macvtap { .. }, .. }
                | EndpointState::BridgedTap { connection: crate::model::Connection::Macvtap { .. }, .. }
                | EndpointState::Macvlan { connection: crate::model::Connection::Macvtap { .. }, .. }
                | EndpointState::Ipvlan { connection: crate::model::Connection::Macvtap { .. }, .. }
        )
    }

    /// The steps that remove what the attach made, in order.
    pub fn teardown(&self) -> Vec<Undo> {
        match self {
            EndpointState::Veth { connection, .. }
            | EndpointState::BridgedTap { connection, .. }
            | EndpointState::Macvlan { connection, .. }
            | EndpointState::Ipvlan { connection, .. } => connection.teardown(),
            EndpointState::DirectTap { link, created: true, .. } => vec![Undo::DeleteLink { name: link.clone() }],
            EndpointState::DirectTap { link, created: false, restore: Some(flags) } => {
                vec![Undo::RestoreTapFlags { name: link.clone(), flags: *flags }]
            }
            EndpointState::DirectTap { created: false, restore: None, .. }
            | EndpointState::Macvtap { .. }
            | EndpointState::VhostUser { .. } => Vec::new(),
        }
    }

    /// Where a rate limit shapes this NIC ([`crate::shaping`]: what the VM receives, then what
    /// it sends); `None` for vhost-user, whose frames pass no kernel device.
    pub fn shaping_points(&self) -> Option<Points> {
        match self {
            EndpointState::Veth { connection, .. }
            | EndpointState::BridgedTap { connection, .. }
            | EndpointState::Macvlan { connection, .. }
            | EndpointState::Ipvlan { connection, .. } => Some(match connection {
                Connection::TcFilter { link, tap } => (Point::Egress(tap.clone()), Point::Egress(link.clone())),
                Connection::Macvtap { macvtap, .. } => (Point::via_ifb(macvtap), Point::Egress(macvtap.clone())),
                Connection::Tap { tap } => (Point::Egress(tap.clone()), Point::via_ifb(tap)),
            }),
            EndpointState::DirectTap { link, .. } => Some((Point::Egress(link.clone()), Point::via_ifb(link))),
            EndpointState::Macvtap { link } => Some((Point::via_ifb(link), Point::Egress(link.clone()))),
            EndpointState::VhostUser { .. } => None,
        }
    }

    /// Remove what the attach made, its rate limits first. Safe to repeat; every step is tried.
    pub async fn detach(&self, ctx: &NetCtx) -> Result<()> {
        let mut steps = crate::shaping::teardown(self.shaping_points());
        steps.extend(self.teardown());
        rollback::run_all(ctx, &steps).await
    }
}

/// A NIC for the hypervisor and the record of what was made for it.
#[derive(Debug)]
pub struct Attached {
    pub nic: NicConfig,
    pub state: EndpointState,
}

impl Endpoint {
    /// The endpoint for `link`, the `n`th of the namespace. `Ok(None)` for a link the VM does
    /// not need: an address-less tunnel base device (`tunl0`, `gre0`, `sit0`...) that the
    /// kernel makes in every namespace.
    pub fn from_link(n: usize, link: &Link, info: &NetworkInfo, cfg: &EndpointConfig) -> Result<Option<Self>> {
        let id = format!("network-{n}");
        if let Some(socket) = vhost_user_socket(cfg.vhost_user_dir.as_deref(), link)? {
            return Ok(Some(Endpoint::VhostUser(VhostUserEndpoint { id, link: link.clone(), socket })));
        }
        let vm_dev: IfName = crate::scan::runtime_device(n).ok_or_else(|| Error::Kernel {
            dev: link.name.to_string(),
            what: format!("endpoint number {n} too large for a device name"),
        })?;
        let bridged = || Bridged {
            link: link.clone(),
            routes: info.routes_of(link.name.as_str()).cloned().collect(),
            neighbors: info.neighbors.iter().filter(|n| n.device == link.name).cloned().collect(),
            vm_dev: vm_dev.clone(),
            model: cfg.model,
        };
        let ep = match &link.kind {
            LinkKind::Veth => Endpoint::Veth(VethEndpoint { id, bridged: bridged() }),
            LinkKind::Macvlan => Endpoint::Macvlan(MacvlanEndpoint { id, bridged: bridged() }),
            LinkKind::Ipvlan => Endpoint::Ipvlan(IpvlanEndpoint::new(id, bridged())?),
            LinkKind::Macvtap => Endpoint::Macvtap(MacvtapEndpoint { id, link: link.clone() }),
            LinkKind::Tuntap { tap: false, .. } => {
                return Err(Error::Unsupported { name: link.name.to_string(), what: "a tun (layer 3) device" })
            }
            LinkKind::Tuntap { tap: true, multi_queue, .. } => match cfg.model {
                NetworkModel::None => Endpoint::DirectTap(DirectTapEndpoint::existing(id, link, *multi_queue)?),
                _ => Endpoint::BridgedTap(BridgedTapEndpoint { id, bridged: bridged() }),
            },
            LinkKind::Physical => Endpoint::Physical(PhysicalEndpoint { id, link: link.clone() }),
            LinkKind::Other { .. } if link.addresses.is_empty() => return Ok(None),
            LinkKind::Other { name } => {
                return Err(Error::UnsupportedKind { name: link.name.to_string(), kind: name.clone() })
            }
        };
        Ok(Some(ep))
    }

    /// One endpoint per link of the scan, in the scan's order.
    pub fn from_scan(info: &NetworkInfo, cfg: &EndpointConfig) -> Result<Vec<Self>> {
        let mut eps = Vec::new();
        for link in &info.links {
            if let Some(ep) = Self::from_link(eps.len(), link, info, cfg)? {
                eps.push(ep);
            }
        }
        Ok(eps)
    }

    pub fn id(&self) -> &str {
        match self {
            Endpoint::Veth(e) => &e.id,
            Endpoint::DirectTap(e) => &e.id,
            Endpoint::BridgedTap(e) => &e.id,
            Endpoint::Macvlan(e) => &e.id,
            Endpoint::Macvtap(e) => &e.id,
            Endpoint::Ipvlan(e) => &e.id,
            Endpoint::VhostUser(e) => &e.id,
            Endpoint::Physical(e) => &e.id,
        }
    }

    /// The name of the namespace's link this endpoint stands for.
    pub fn link_name(&self) -> &IfName {
        match self {
            Endpoint::Veth(VethEndpoint { bridged, .. })
            | Endpoint::BridgedTap(BridgedTapEndpoint { bridged, .. })
            | Endpoint::Macvlan(MacvlanEndpoint { bridged, .. })
            | Endpoint::Ipvlan(IpvlanEndpoint { bridged, .. }) => &bridged.link.name,
            Endpoint::DirectTap(e) => &e.name,
            Endpoint::Macvtap(MacvtapEndpoint { link, .. })
            | Endpoint::VhostUser(VhostUserEndpoint { link, .. })
            | Endpoint::Physical(PhysicalEndpoint { link, .. }) => &link.name,
        }
    }

    /// What [`Endpoint::attach`] will record, known before it makes anything (`None` for a
    /// kind whose attach is refused, or a link without a MAC).
    pub fn planned_state(&self) -> Option<EndpointState> {
        let bridged = |b: &Bridged, state: fn(IfName, Connection) -> EndpointState| {
            b.planned_connection().map(|c| state(b.link.name.clone(), c))
        };
        match self {
            Endpoint::Veth(e) => bridged(&e.bridged, |link, connection| EndpointState::Veth { link, connection }),
            Endpoint::BridgedTap(e) => {
                bridged(&e.bridged, |link, connection| EndpointState::BridgedTap { link, connection })
            }
            Endpoint::Macvlan(e) => bridged(&e.bridged, |link, connection| EndpointState::Macvlan { link, connection }),
            Endpoint::Ipvlan(e) => bridged(&e.bridged, |link, connection| EndpointState::Ipvlan { link, connection }),
            Endpoint::DirectTap(e) => {
                Some(EndpointState::DirectTap { link: e.name.clone(), created: false, restore: e.restore() })
            }
            Endpoint::Macvtap(e) => Some(EndpointState::Macvtap { link: e.link.name.clone() }),
            Endpoint::VhostUser(e) => {
                Some(EndpointState::VhostUser { link: e.link.name.clone(), socket: e.socket.clone() })
            }
            Endpoint::Physical(_) => None,
        }
    }

    /// Connect the link to a VM NIC. On error nothing the attach made is left behind.
    pub async fn attach(&self, ctx: &NetCtx, cfg: &EndpointConfig) -> Result<Attached> {
        match self {
            Endpoint::Veth(e) => e.attach(ctx, cfg).await,
            Endpoint::DirectTap(e) => e.attach(ctx, cfg).await,
            Endpoint::BridgedTap(e) => e.attach(ctx, cfg).await,
            Endpoint::Macvlan(e) => e.attach(ctx, cfg).await,
            Endpoint::Macvtap(e) => e.attach(ctx, cfg).await,
            Endpoint::Ipvlan(e) => e.attach(ctx, cfg).await,
            Endpoint::VhostUser(e) => e.attach(),
            Endpoint::Physical(e) => e.attach(),
        }
    }
}

/// Attach a link through its interworking model, rolling back on any failure.
async fn attach_bridged(
    ctx: &NetCtx,
    id: &str,
    b: &Bridged,
    cfg: &EndpointConfig,
    state: fn(IfName, Connection) -> EndpointState,
) -> Result<Attached> {
    let guest_mac =
        b.link.mac.ok_or_else(|| Error::Kernel { dev: b.link.name.to_string(), what: "no MAC address".into() })?;
    let mut rb = Rollback::new(ctx);
    let res = async {
        let connected = b.connect(ctx, cfg.queues, &mut rb).await?;
        let vhost = fds::open_vhost_net(cfg.queues, cfg.vhost_net)?;
        Ok::<_, Error>((connected, vhost))
    }
    .await;
    let (connected, vhost) = match res {
        Ok(v) => v,
        Err(e) => {
            let _ = rb.undo().await;
            return Err(e);
        }
    };
    rb.commit();
    slog::info!(ctx.log, "endpoint attached"; "endpoint" => id, "if_name" => b.link.name.as_str(),
        "model" => ?b.model, "vm_dev" => b.vm_dev.as_str(), "queues" => connected.queues.len());
    Ok(Attached {
        nic: NicConfig {
            id: id.to_owned(),
            guest_mac,
            mtu: b.link.mtu,
            backend: NicBackend::Tap { device: b.vm_dev.clone(), queues: connected.queues, vhost },
        },
        state: state(b.link.name.clone(), connected.connection),
    })
}

/// The vhost-user socket DPDK/OVS made for this link, found by the link's IPv4 address.
fn vhost_user_socket(dir: Option<&Path>, link: &Link) -> Result<Option<PathBuf>> {
    let Some(dir) = dir else { return Ok(None) };
    for a in link.addresses.iter().filter(|a| a.addr().is_ipv4()) {
        let p = dir.join(format!("vhostuser_{}", a.addr())).join("vhu.sock");
        if std::fs::symlink_metadata(&p).is_ok() {
            crate::trust::check_root_socket(&p)?;
            return Ok(Some(p));
        }
    }
    Ok(None)
}

/// Detach a whole sandbox: the link-side changes of every endpoint first, then every device
/// the runtime made in one kernel batch, then each endpoint's own steps (which now find their
/// devices gone, or remove ones an older runtime made outside the group). Every step is tried;
/// the first error is returned.
pub async fn detach_all(ctx: &NetCtx, states: &[EndpointState]) -> Result<()> {
    let mut first = Ok(());
    let mut keep = |r: Result<()>| {
        if first.is_ok() {
            first = r;
        }
    };
    for s in states.iter().flat_map(|s| crate::shaping::teardown(s.shaping_points())) {
        keep(s.run(ctx).await);
    }
    let steps: Vec<Vec<Undo>> = states.iter().map(EndpointState::teardown).collect();
    for s in steps.iter().flatten().filter(|u| matches!(u, Undo::DeleteIngress { .. })) {
        keep(s.run(ctx).await);
    }
    if steps.iter().flatten().any(|u| matches!(u, Undo::DeleteLink { .. })) {
        keep(crate::nl::delete_group(&ctx.handle, crate::nl::RUNTIME_LINK_GROUP).await);
    }
    for s in steps.iter().flatten().filter(|u| !matches!(u, Undo::DeleteIngress { .. })) {
        keep(s.run(ctx).await);
    }
    first
}

/// Apply the configured rate limits to an attached NIC; on failure it is detached again.
async fn limit(ctx: &NetCtx, a: Attached, cfg: &EndpointConfig) -> Result<Attached> {
    let mut rb = Rollback::new(ctx);
    match crate::shaping::apply(ctx, a.state.link(), a.state.shaping_points(), cfg.rate, a.nic.mtu, &mut rb).await {
        Ok(()) => {
            rb.commit();
            Ok(a)
        }
        Err(e) => {
            let _ = rb.undo().await;
            let _ = a.state.detach(ctx).await;
            Err(e)
        }
    }
}

/// Remove whatever carries the runtime's tags in the namespace, without a record to go by: every
/// ingress qdisc holding its redirect filters (by their priority), every root HTB of its (by
/// handle), every device of its link group. Every step is tried; the first error is returned.
pub async fn sweep_tags(ctx: &NetCtx) -> Result<()> {
    let ingress = crate::nl::delete_tagged_ingress(&ctx.handle).await;
    let roots = crate::shaping::delete_tagged_roots(&ctx.handle).await;
    let group = crate::nl::delete_group(&ctx.handle, crate::nl::RUNTIME_LINK_GROUP).await;
    ingress.and(roots).and(group)
}

/// Attach every endpoint; when one fails, the ones attached before it are detached again.
pub async fn attach_all(ctx: &NetCtx, eps: &[Endpoint], cfg: &EndpointConfig) -> Result<Vec<Attached>> {
    attach_all_with(ctx, eps, cfg, |_, _| Ok(())).await
}

/// [`attach_all`], calling `after(i, attached)` after the `i`th endpoint is attached; its error
/// fails the whole attach like any other (everything attached so far is detached).
pub async fn attach_all_with(
    ctx: &NetCtx,
    eps: &[Endpoint],
    cfg: &EndpointConfig,
    mut after: impl FnMut(usize, &Attached) -> Result<()>,
) -> Result<Vec<Attached>> {
    let mut done: Vec<Attached> = Vec::with_capacity(eps.len());
    for (i, ep) in eps.iter().enumerate() {
        let attached = ep.attach(ctx, cfg).await;
        let attached = match attached {
            Ok(a) => limit(ctx, a, cfg).await,
            Err(e) => Err(e),
        };
        let attached = attached.and_then(|a| {
            let checked = after(i, &a);
            done.push(a);
            checked
        });
        match attached {
            Ok(()) => {}
            Err(e) => {
                let states: Vec<EndpointState> = done.into_iter().map(|a| a.state).collect();
                // The attach error is what the caller needs; the undo is best effort.
                let _ = detach_all(ctx, &states).await;
                return Err(e);
            }
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> IfName {
        s.parse().unwrap()
    }

    #[test]
    fn persisted_state_has_a_stable_shape_and_round_trips() {
        let cases = [
            (
                EndpointState::Veth {
                    link: name("eth0"),
                    connection: Connection::TcFilter { link: name("eth0"), tap: name("tap0_kata") },
                },
                r#"{"kind":"veth","link":"eth0","connection":{"model":"tc_filter","link":"eth0","tap":"tap0_kata"}}"#,
            ),
            (
                EndpointState::DirectTap { link: name("tap-op"), created: false, restore: None },
                r#"{"kind":"direct_tap","link":"tap-op","created":false}"#,
            ),
            (EndpointState::Macvtap { link: name("mvt0") }, r#"{"kind":"macvtap","link":"mvt0"}"#),
        ];
        for (state, json) in cases {
            assert_eq!(serde_json::to_string(&state).unwrap(), json);
            assert_eq!(serde_json::from_str::<EndpointState>(json).unwrap(), state);
        }
        assert!(serde_json::from_str::<EndpointState>(r#"{"kind":"bond","link":"b0"}"#).is_err());
        // A state file written before the kinds were renamed still reads.
        let old = r#"{"kind":"tap","link":"tap-op","created":true}"#;
        assert_eq!(
            serde_json::from_str::<EndpointState>(old).unwrap(),
            EndpointState::DirectTap { link: name("tap-op"), created: true, restore: None }
        );
    }

    #[test]
    fn teardown_undoes_what_each_kind_made_and_nothing_else() {
        let tc = EndpointState::BridgedTap {
            link: name("tap-cni"),
            connection: Connection::TcFilter { link: name("tap-cni"), tap: name("tap3_kata") },
        };
        assert_eq!(
            tc.teardown(),
            vec![Undo::DeleteIngress { name: name("tap-cni") }, Undo::DeleteLink { name: name("tap3_kata") }]
        );
        assert_eq!(
            EndpointState::DirectTap { link: name("tap-x"), created: true, restore: None }.teardown(),
            vec![Undo::DeleteLink { name: name("tap-x") }]
        );
        assert!(EndpointState::DirectTap { link: name("tap-x"), created: false, restore: None }.teardown().is_empty());
        assert!(EndpointState::VhostUser { link: name("eth0"), socket: "/tmp/s".into() }.teardown().is_empty());
    }

    #[test]
    fn each_connection_is_shaped_where_its_direction_passes() {
        let tc = EndpointState::Veth {
            link: name("eth0"),
            connection: Connection::TcFilter { link: name("eth0"), tap: name("tap0_kata") },
        };
        assert_eq!(tc.shaping_points(), Some((Point::Egress(name("tap0_kata")), Point::Egress(name("eth0")))));
        let direct = EndpointState::DirectTap { link: name("tap-cni"), created: false, restore: None };
        assert_eq!(direct.shaping_points(), Some((Point::Egress(name("tap-cni")), Point::via_ifb(&name("tap-cni")))));
        let mvt = EndpointState::Macvtap { link: name("mvt0") };
        assert_eq!(mvt.shaping_points(), Some((Point::via_ifb(&name("mvt0")), Point::Egress(name("mvt0")))));
        assert!(EndpointState::VhostUser { link: name("eth0"), socket: "/s".into() }.shaping_points().is_none());
    }

    #[test]
    fn physical_links_are_refused_at_attach_with_a_clear_error() {
        let link = Link {
            index: 2,
            name: name("ens3"),
            kind: LinkKind::Physical,
            mac: None,
            mtu: 1500,
            flags: 0,
            addresses: vec![],
        };
        let info = NetworkInfo { links: vec![link.clone()], ..Default::default() };
        let ep = Endpoint::from_link(0, &link, &info, &EndpointConfig::default()).unwrap().unwrap();
        let Endpoint::Physical(p) = ep else { panic!("{ep:?}") };
        let err = p.attach().unwrap_err();
        assert_eq!(err.to_string(), "link ens3: VFIO passthrough of a physical NIC is not supported");
    }
}
