//! Rate limits on a NIC's host side, as kata applies `rx_rate_limiter_max_rate` and
//! `tx_rate_limiter_max_rate`: an HTB qdisc with one class (rate = ceil = the limit) on the
//! device whose egress carries the direction. Where a direction only passes a device's ingress
//! (what the VM sends into a TAP, what a macvtap hands the VM), that ingress redirects to an IFB
//! of the runtime's and the HTB sits on the IFB.
//!
//! | connection | the VM receives (rx) | the VM sends (tx) |
//! |---|---|---|
//! | `tcfilter` (link and TAP) | the TAP's egress | the link's egress (the redirect's target) |
//! | `macvtap` model, a CNI macvtap | the macvtap's ingress, through an IFB | the macvtap's egress |
//! | `none` model's TAP, a CNI TAP used as it is | the TAP's egress | the TAP's ingress, through an IFB |
//!
//! Everything is tagged so that a later process finds it without a record: the HTB's handle is
//! [`HTB_MAJOR`]`:`, the IFB is in the runtime's link group, the ingress redirect has the
//! runtime's filter priority. A root qdisc other than the kernel's default is never replaced: the
//! NIC is refused, naming it.

use futures::{StreamExt, TryStreamExt};
use netlink_packet_core::{
    DefaultNla, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST,
};
use netlink_packet_route::tc::{TcAttribute, TcHandle, TcMessage, TcOption};
use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::Handle;

use crate::error::{Error, Result};
use crate::rollback::{Rollback, Undo};
use crate::types::IfName;
use crate::{nl, NetCtx};

pub use crate::nl::HTB_MAJOR;

/// Limits in bits per second, per direction as the VM sees it; `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateLimit {
    /// What the VM receives (kata's `rx_rate_limiter_max_rate`, Kubernetes' ingress bandwidth).
    pub rx_bps: Option<u64>,
    /// What the VM sends (kata's `tx_rate_limiter_max_rate`, Kubernetes' egress bandwidth).
    pub tx_bps: Option<u64>,
}

impl RateLimit {
    pub fn is_none(&self) -> bool {
        self.rx_bps.is_none() && self.tx_bps.is_none()
    }

    /// Each direction the lower of two limits (a pod may lower the node's limit, not raise it).
    pub fn min(self, other: RateLimit) -> RateLimit {
        let lower = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        RateLimit { rx_bps: lower(self.rx_bps, other.rx_bps), tx_bps: lower(self.tx_bps, other.tx_bps) }
    }
}

/// Where one direction is shaped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Point {
    /// An HTB on this device's egress.
    Egress(IfName),
    /// This device's ingress redirected to the IFB, an HTB on the IFB's egress.
    Ingress { dev: IfName, ifb: IfName },
}

impl Point {
    /// `dev`'s ingress through its IFB.
    pub fn via_ifb(dev: &IfName) -> Point {
        Point::Ingress { dev: dev.clone(), ifb: ifb_name(dev) }
    }
}

/// Where a NIC is shaped: the direction the VM receives, then the one it sends.
pub type Points = (Point, Point);

/// The IFB for `dev`'s ingress: `kifb` and a hash of the device's name, so that the name follows
/// from the endpoint's record alone.
pub(crate) fn ifb_name(dev: &IfName) -> IfName {
    // FNV-1a, 32 bits: stable across builds, unlike std's hasher.
    let h = dev.as_str().bytes().fold(0x811c_9dc5u32, |h, b| (h ^ b as u32).wrapping_mul(0x0100_0193));
    format!("kifb{h:08x}").parse().expect("kifb and 8 hex digits is a valid name")
}

/// Apply `limit` at `points` (`None`: a NIC with no kernel device, which cannot be limited) of
/// the NIC of `link`; undo steps go onto `rb`. `mtu` sizes the burst.
pub async fn apply(
    ctx: &NetCtx,
    link: &IfName,
    points: Option<Points>,
    limit: RateLimit,
    mtu: u32,
    rb: &mut Rollback,
) -> Result<()> {
    if limit.is_none() {
        return Ok(());
    }
    let Some((rx, tx)) = points else {
        return Err(Error::Unsupported {
            name: link.to_string(),
            what: "a rate limit on a vhost-user NIC (its frames pass no kernel device)",
        });
    };
    for (point, bps, way) in [(rx, limit.rx_bps, "rx"), (tx, limit.tx_bps, "tx")] {
        let Some(bps) = bps else { continue };
        let dev = match point {
            Point::Egress(dev) => dev,
            Point::Ingress { dev, ifb } => {
                add_ifb(&ctx.handle, &ifb, rb).await?;
                ctx.step.hit(&format!("shaping:{way}:ifb"))?;
                let from = nl::require_link(&ctx.handle, dev.as_str()).await?;
                let to = nl::require_link(&ctx.handle, ifb.as_str()).await?;
                nl::add_ingress(&ctx.handle, from, dev.as_str()).await?;
                // This ingress is ours whether or not its redirect is added next: the undo takes
                // it by name (the teardown's DeleteOwnIngress would leave one without a filter).
                rb.push(Undo::DeleteIngress { name: dev.clone() });
                nl::add_redirect(&ctx.handle, from, dev.as_str(), to).await?;
                ctx.step.hit(&format!("shaping:{way}:redirect"))?;
                ifb
            }
        };
        add_htb(&ctx.handle, &dev, bps, mtu, rb).await?;
        ctx.step.hit(&format!("shaping:{way}:htb"))?;
    }
    Ok(())
}

/// The steps that remove what [`apply`] may have made at `points`: each finds its own tag first,
/// so they are safe where nothing was limited (and leave an operator's own qdiscs alone).
pub fn teardown(points: Option<Points>) -> Vec<Undo> {
    let Some((rx, tx)) = points else { return Vec::new() };
    let mut steps = Vec::new();
    for p in [rx, tx] {
        match p {
            Point::Egress(dev) => steps.push(Undo::DeleteOwnRoot { name: dev }),
            Point::Ingress { dev, ifb } => {
                steps.push(Undo::DeleteOwnIngress { name: dev });
                steps.push(Undo::DeleteLink { name: ifb });
            }
        }
    }
    steps
}

async fn add_ifb(handle: &Handle, name: &IfName, rb: &mut Rollback) -> Result<()> {
    use rtnetlink::{LinkMessageBuilder, LinkUnspec};
    let msg = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(netlink_packet_route::link::InfoKind::Ifb)
        .name(name.as_str())
        // The kernel's 32 would drop what a TCP burst queues in the HTB's leaf.
        .txqueuelen(1000)
        .link_group(nl::RUNTIME_LINK_GROUP)
        .up()
        .build();
    handle.link().add(msg).execute().await.map_err(|e| match nl::errno(&e) {
        Some(libc::EEXIST) => Error::DeviceExists(name.to_string()),
        _ => Error::netlink("create IFB", name.as_str())(e),
    })?;
    rb.push(Undo::DeleteLink { name: name.clone() });
    Ok(())
}

/// An HTB root `6b61:` on `dev` with one class `6b61:1` (the default) limited to `bps`. A root
/// qdisc someone configured (any handle but the kernel default's 0) is not replaced.
async fn add_htb(handle: &Handle, dev: &IfName, bps: u64, mtu: u32, rb: &mut Rollback) -> Result<()> {
    let index = nl::require_link(handle, dev.as_str()).await?;
    if let Some((major, kind)) = nl::root_qdisc(handle, dev.as_str()).await? {
        if major != 0 {
            return Err(Error::Kernel {
                dev: dev.to_string(),
                what: format!("has a root qdisc of its own ({kind} {major:x}:); a rate limit would replace it"),
            });
        }
    }
    rb.push(Undo::DeleteOwnRoot { name: dev.clone() });
    let qdisc = htb_qdisc_message(index);
    request(handle, RouteNetlinkMessage::NewQueueDiscipline(qdisc), NLM_F_CREATE | NLM_F_EXCL)
        .await
        .map_err(Error::netlink("add an HTB qdisc on", dev.as_str()))?;
    let class = htb_class_message(index, bps, mtu);
    request(handle, RouteNetlinkMessage::NewTrafficClass(class), NLM_F_CREATE | NLM_F_EXCL)
        .await
        .map_err(Error::netlink("add the HTB class on", dev.as_str()))
}

/// Remove every root HTB of the runtime's in the namespace: what `delete` finds without a record.
pub async fn delete_tagged_roots(handle: &Handle) -> Result<()> {
    let links: Vec<netlink_packet_route::link::LinkMessage> =
        handle.link().get().execute().try_collect().await.map_err(Error::netlink("list links of", "the namespace"))?;
    let mut first = Ok(());
    for link in links {
        let name = link.attributes.iter().find_map(|a| match a {
            netlink_packet_route::link::LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        });
        if let Some(name) = name {
            if let Err(e) = nl::delete_own_root(handle, &name).await {
                first = first.and(Err(e));
            }
        }
    }
    first
}

/// Send one request that answers with an ack (`rtnetlink` has no builder for classes).
async fn request(handle: &Handle, msg: RouteNetlinkMessage, flags: u16) -> std::result::Result<(), rtnetlink::Error> {
    let mut req = NetlinkMessage::from(msg);
    req.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
    let mut answers = handle.clone().request(req)?;
    while let Some(m) = answers.next().await {
        if let NetlinkPayload::Error(e) = m.payload {
            if e.code.is_some() {
                return Err(rtnetlink::Error::NetlinkError(e));
            }
        }
    }
    Ok(())
}

// The kernel's HTB attributes and structures (include/uapi/linux/pkt_sched.h).
const TCA_HTB_PARMS: u16 = 1;
const TCA_HTB_INIT: u16 = 2;
const TCA_HTB_RATE64: u16 = 6;
const TCA_HTB_CEIL64: u16 = 7;
const TC_HTB_PROTOVER: u32 = 3;
/// `tc_ratespec.linklayer`: with it set the kernel needs no rate table.
const TC_LINKLAYER_ETHERNET: u8 = 1;
/// A psched tick is 64 ns (`PSCHED_SHIFT`).
const PSCHED_SHIFT: u32 = 6;

fn htb_qdisc_message(index: u32) -> TcMessage {
    let mut m = TcMessage::with_index(index as i32);
    m.header.parent = TcHandle::ROOT;
    m.header.handle = TcHandle { major: HTB_MAJOR, minor: 0 };
    m.attributes.push(TcAttribute::Kind("htb".into()));
    m.attributes.push(TcAttribute::Options(vec![TcOption::Other(DefaultNla::new(TCA_HTB_INIT, htb_glob()))]));
    m
}

/// `struct tc_htb_glob`: version, rate2quantum, the default class (1), debug, direct packets.
fn htb_glob() -> Vec<u8> {
    [TC_HTB_PROTOVER, 10, 1, 0, 0].iter().flat_map(|v| v.to_ne_bytes()).collect()
}

fn htb_class_message(index: u32, bps: u64, mtu: u32) -> TcMessage {
    let bytes_ps = (bps / 8).max(1);
    let mut m = TcMessage::with_index(index as i32);
    m.header.parent = TcHandle { major: HTB_MAJOR, minor: 0 };
    m.header.handle = TcHandle { major: HTB_MAJOR, minor: 1 };
    m.attributes.push(TcAttribute::Kind("htb".into()));
    let mut opts = vec![TcOption::Other(DefaultNla::new(TCA_HTB_PARMS, htb_opt(bytes_ps, mtu)))];
    if bytes_ps > u32::MAX as u64 {
        opts.push(TcOption::Other(DefaultNla::new(TCA_HTB_RATE64, bytes_ps.to_ne_bytes().to_vec())));
        opts.push(TcOption::Other(DefaultNla::new(TCA_HTB_CEIL64, bytes_ps.to_ne_bytes().to_vec())));
    }
    m.attributes.push(TcAttribute::Options(opts));
    m
}

/// `struct tc_htb_opt` for rate = ceil = `bytes_ps`: a burst of a millisecond's worth plus a
/// frame (tc's default), the quantum as the kernel would pick it, without its warning.
fn htb_opt(bytes_ps: u64, mtu: u32) -> Vec<u8> {
    let ratespec = |b: &mut Vec<u8>| {
        b.push(0); // cell_log
        b.push(TC_LINKLAYER_ETHERNET);
        b.extend_from_slice(&0u16.to_ne_bytes()); // overhead
        b.extend_from_slice(&0i16.to_ne_bytes()); // cell_align
        b.extend_from_slice(&0u16.to_ne_bytes()); // mpu
        b.extend_from_slice(&(bytes_ps.min(u32::MAX as u64) as u32).to_ne_bytes());
    };
    let burst = bytes_ps / 1000 + mtu as u64 + 14;
    let buffer = ((burst * 1_000_000_000 / bytes_ps) >> PSCHED_SHIFT).min(u32::MAX as u64) as u32;
    let quantum = (bytes_ps / 10).clamp(1000, 200_000) as u32;
    let mut b = Vec::with_capacity(44);
    ratespec(&mut b);
    ratespec(&mut b);
    for v in [buffer, buffer, quantum, 0, 0] {
        b.extend_from_slice(&v.to_ne_bytes());
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> IfName {
        s.parse().unwrap()
    }

    #[test]
    fn htb_options_are_the_kernels_structures() {
        assert_eq!(htb_glob().len(), 20);
        assert_eq!(&htb_glob()[..4], &3u32.to_ne_bytes());
        // 8 Mbit/s: a million bytes a second, 1000 + 1514 bytes of burst.
        let o = htb_opt(1_000_000, 1500);
        assert_eq!(o.len(), 44);
        assert_eq!(o[1], TC_LINKLAYER_ETHERNET);
        assert_eq!(&o[8..12], &1_000_000u32.to_ne_bytes());
        assert_eq!(&o[20..24], &1_000_000u32.to_ne_bytes(), "ceil = rate");
        let buffer = u32::from_ne_bytes(o[24..28].try_into().unwrap());
        assert_eq!(buffer as u64, (2514u64 * 1000) >> PSCHED_SHIFT, "2.514 ms in 64 ns ticks");
        assert_eq!(u32::from_ne_bytes(o[32..36].try_into().unwrap()), 100_000);
        // Past 4 GB/s the 64-bit rate goes beside the clamped 32-bit one.
        let big = htb_class_message(3, 80_000_000_000, 1500);
        let TcAttribute::Options(opts) = &big.attributes[1] else { panic!() };
        assert_eq!(opts.len(), 3);
    }

    #[test]
    fn an_ingress_point_is_torn_down_with_its_ifb() {
        let ifb = ifb_name(&name("tap-cni"));
        let points = (Point::Egress(name("tap-cni")), Point::via_ifb(&name("tap-cni")));
        assert_eq!(
            teardown(Some(points)),
            vec![
                Undo::DeleteOwnRoot { name: name("tap-cni") },
                Undo::DeleteOwnIngress { name: name("tap-cni") },
                Undo::DeleteLink { name: ifb },
            ]
        );
        assert!(teardown(None).is_empty());
    }

    #[test]
    fn ifb_names_are_stable_valid_and_distinct() {
        let a = ifb_name(&name("tap0_kata"));
        assert_eq!(a, ifb_name(&name("tap0_kata")));
        assert_ne!(a, ifb_name(&name("tap1_kata")));
        assert!(a.as_str().starts_with("kifb") && a.as_str().len() == 12);
    }

    #[test]
    fn a_pod_lowers_the_nodes_limit_and_never_raises_it() {
        let node = RateLimit { rx_bps: Some(10_000_000), tx_bps: None };
        let pod = RateLimit { rx_bps: Some(50_000_000), tx_bps: Some(1_000_000) };
        assert_eq!(node.min(pod), RateLimit { rx_bps: Some(10_000_000), tx_bps: Some(1_000_000) });
        assert!(RateLimit::default().is_none());
    }
}
