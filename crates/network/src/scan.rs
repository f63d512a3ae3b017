//! Scan a network namespace into a typed model: links, addresses, routes and neighbours.
//!
//! What is left out, and why:
//! - `lo` (the guest has its own) and the devices the runtime made (`tap<N>_kata`);
//! - IPv6 link-local addresses (the guest derives the same ones from the same MAC);
//! - routes of `proto kernel` (the guest kernel makes them when the address is set), IPv6
//!   link-local routes, routes outside the main table, multipath routes and routes through
//!   links that are not scanned;
//! - neighbours that are not permanent.
//!
//! Routes without a gateway come first, so gateways are reachable when their routes arrive.

use std::net::IpAddr;

use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_core::Nla;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{InfoData, InfoKind, LinkAttribute, LinkInfo, LinkLayerType, LinkMessage};
use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteMetric, RouteProtocol, RouteType,
};
use netlink_packet_route::AddressFamily;
use rtnetlink::{Handle, RouteMessageBuilder};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::types::{IfName, MacAddr};

/// The kind of a link, as netlink's `IFLA_INFO_KIND` names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum LinkKind {
    Veth,
    /// A tun/tap device; `tap` is false for layer-3 tun mode. `pi` and `vnet_hdr` are the
    /// features it has now (the last queue attached set them).
    Tuntap {
        tap: bool,
        multi_queue: bool,
        #[serde(default)]
        pi: bool,
        #[serde(default)]
        vnet_hdr: bool,
    },
    Macvlan,
    Macvtap,
    Ipvlan,
    /// No kind and Ethernet link layer: a physical NIC (or a VF).
    Physical,
    /// Anything else, with the kernel's kind name.
    Other {
        name: String,
    },
}

impl LinkKind {
    /// The name shown to operators and sent as `Interface.type`.
    pub fn type_name(&self) -> &str {
        match self {
            LinkKind::Veth => "veth",
            LinkKind::Tuntap { .. } => "tuntap",
            LinkKind::Macvlan => "macvlan",
            LinkKind::Macvtap => "macvtap",
            LinkKind::Ipvlan => "ipvlan",
            LinkKind::Physical => "physical",
            LinkKind::Other { name } => name,
        }
    }
}

/// One link of the namespace with its addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    pub index: u32,
    pub name: IfName,
    #[serde(flatten)]
    pub kind: LinkKind,
    pub mac: Option<MacAddr>,
    pub mtu: u32,
    /// Raw `IFF_*` flags.
    pub flags: u32,
    pub addresses: Vec<IpNet>,
}

/// A route through one of the scanned links.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// `None` is the default route.
    pub dest: Option<IpNet>,
    pub gateway: Option<IpAddr>,
    pub device: IfName,
    pub source: Option<IpAddr>,
    /// `RT_SCOPE_*`.
    pub scope: u8,
    pub ipv6: bool,
    /// `RTNH_F_*`.
    pub flags: u32,
    pub mtu: u32,
    /// `RTPROT_*`: who made the route (kept so a restored route is the same route).
    pub protocol: u8,
    /// The route's metric (`RTA_PRIORITY`).
    pub metric: u32,
}

/// A permanent neighbour entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Neighbor {
    pub ip: IpAddr,
    pub device: IfName,
    pub lladdr: Option<MacAddr>,
    /// `NUD_*`.
    pub state: u16,
    /// `NTF_*`.
    pub flags: u8,
}

/// What the runtime sees in a namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkInfo {
    pub links: Vec<Link>,
    pub routes: Vec<Route>,
    pub neighbors: Vec<Neighbor>,
}

impl NetworkInfo {
    pub fn link(&self, name: &str) -> Option<&Link> {
        self.links.iter().find(|l| l.name.as_str() == name)
    }

    /// The routes leaving through `name`.
    pub(crate) fn routes_of<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Route> + 'a {
        self.routes.iter().filter(move |r| r.device.as_str() == name)
    }
}

/// The name of the TAP (or macvtap) the runtime makes for the `n`th endpoint: `tap<N>_kata`,
/// as kata names them. `None` when `n` is too large for a device name.
pub(crate) fn runtime_device(n: usize) -> Option<IfName> {
    format!("tap{n}_kata").parse().ok()
}

/// Is this a device the runtime made itself (`tap<N>_kata`)?
pub(crate) fn is_runtime_device(name: &str) -> bool {
    name.strip_prefix("tap")
        .and_then(|r| r.strip_suffix("_kata"))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// The first endpoint number whose runtime device is not among `used`.
pub fn free_device_number<'a>(used: impl IntoIterator<Item = &'a IfName> + Clone) -> usize {
    (0..).find(|n| runtime_device(*n).is_some_and(|d| !used.clone().into_iter().any(|u| *u == d))).unwrap_or(0)
}

const IFLA_TUN_TYPE: u16 = 3;
const IFLA_TUN_PI: u16 = 4;
const IFLA_TUN_VNET_HDR: u16 = 5;
const IFLA_TUN_MULTI_QUEUE: u16 = 7;
const IFF_TAP: u8 = 2;
const RT_TABLE_MAIN: u32 = 254;

/// Read the namespace behind `handle`.
pub async fn scan(handle: &Handle) -> Result<NetworkInfo> {
    let link_msgs: Vec<LinkMessage> =
        handle.link().get().execute().try_collect().await.map_err(Error::netlink("list", "links"))?;
    let mut links: Vec<Link> = link_msgs.iter().filter_map(parse_link).collect::<Result<Vec<_>>>()?;
    links.retain(|l| !is_runtime_device(l.name.as_str()));

    let addrs: Vec<AddressMessage> =
        handle.address().get().execute().try_collect().await.map_err(Error::netlink("list", "addresses"))?;
    for a in &addrs {
        if let Some(link) = links.iter_mut().find(|l| l.index == a.header.index) {
            if let Some(net) = address_of(a) {
                link.addresses.push(net);
            }
        }
    }

    let routes = scan_routes(handle, &links, false).await?;

    let neigh: Vec<NeighbourMessage> =
        handle.neighbours().get().execute().try_collect().await.map_err(Error::netlink("list", "neighbours"))?;
    let neighbors = neigh.iter().filter_map(|n| parse_neighbor(n, &links)).collect();

    Ok(NetworkInfo { links, routes, neighbors })
}

/// The main table's unicast routes through `links`, gateway-less first (the kernel's order kept
/// otherwise). `proto kernel` routes are included only when asked for.
pub async fn scan_routes(handle: &Handle, links: &[Link], include_kernel: bool) -> Result<Vec<Route>> {
    let mut routes = Vec::new();
    for msg in [
        RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
        RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
    ] {
        let dump: Vec<RouteMessage> =
            handle.route().get(msg).execute().try_collect().await.map_err(Error::netlink("list", "routes"))?;
        routes.extend(dump.iter().filter_map(|r| parse_route(r, links, include_kernel)));
    }
    routes.sort_by_key(|r| r.gateway.is_some());
    Ok(routes)
}

/// `None` for `lo`; an error for a name the kernel should never give.
///
/// Longer than most: one pass over the message's attributes, then one match that maps the
/// kernel's link kinds to ours; split, the two halves would share every local.
fn parse_link(msg: &LinkMessage) -> Option<Result<Link>> {
    if msg.header.link_layer_type == LinkLayerType::Loopback {
        return None;
    }
    let mut name = None;
    let mut mac = None;
    let mut mtu = 0;
    let mut kind = None;
    let mut tun = (false, false, false, false);
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => name = Some(n.clone()),
            LinkAttribute::Address(a) => mac = MacAddr::from_bytes(a),
            LinkAttribute::Mtu(m) => mtu = *m,
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    match info {
                        LinkInfo::Kind(k) => kind = Some(k.clone()),
                        LinkInfo::Data(InfoData::Tun(nlas)) => {
                            for nla in nlas {
                                let mut v = vec![0u8; nla.value_len()];
                                nla.emit_value(&mut v);
                                match (nla.kind(), v.first()) {
                                    (IFLA_TUN_TYPE, Some(t)) => tun.0 = *t == IFF_TAP,
                                    (IFLA_TUN_MULTI_QUEUE, Some(m)) => tun.1 = *m != 0,
                                    (IFLA_TUN_PI, Some(p)) => tun.2 = *p != 0,
                                    (IFLA_TUN_VNET_HDR, Some(v)) => tun.3 = *v != 0,
                                    _ => {}
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    let name = name?;
    let kind = match kind {
        Some(InfoKind::Veth) => LinkKind::Veth,
        Some(InfoKind::Tun) => LinkKind::Tuntap { tap: tun.0, multi_queue: tun.1, pi: tun.2, vnet_hdr: tun.3 },
        Some(InfoKind::MacVlan) => LinkKind::Macvlan,
        Some(InfoKind::MacVtap) => LinkKind::Macvtap,
        Some(InfoKind::IpVlan) => LinkKind::Ipvlan,
        Some(other) => LinkKind::Other { name: other.to_string() },
        None if msg.header.link_layer_type == LinkLayerType::Ether => LinkKind::Physical,
        None => LinkKind::Other { name: format!("{:?}", msg.header.link_layer_type).to_lowercase() },
    };
    Some(match name.parse::<IfName>() {
        Ok(name) => Ok(Link {
            index: msg.header.index,
            name,
            kind,
            mac,
            mtu,
            flags: msg.header.flags.bits(),
            addresses: Vec::new(),
        }),
        Err(e) => Err(Error::Kernel { dev: name, what: e.to_string() }),
    })
}

/// The address a message carries, unless it is IPv6 link-local.
pub(crate) fn address_of(msg: &AddressMessage) -> Option<IpNet> {
    let mut address = None;
    let mut local = None;
    for attr in &msg.attributes {
        match attr {
            AddressAttribute::Address(a) => address = Some(*a),
            AddressAttribute::Local(a) => local = Some(*a),
            _ => {}
        }
    }
    // For IPv4, IFA_LOCAL is the interface's own address (IFA_ADDRESS is the peer on p2p links).
    let ip = local.or(address)?;
    if let IpAddr::V6(v6) = ip {
        if v6.is_unicast_link_local() {
            return None;
        }
    }
    IpNet::new(ip, msg.header.prefix_len).ok()
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

fn parse_route(msg: &RouteMessage, links: &[Link], include_kernel: bool) -> Option<Route> {
    let h: &RouteHeader = &msg.header;
    if h.kind != RouteType::Unicast || (h.protocol == RouteProtocol::Kernel && !include_kernel) {
        return None;
    }
    let ipv6 = h.address_family == AddressFamily::Inet6;
    let mut table = u32::from(h.table);
    let (mut dest, mut gateway, mut source, mut oif, mut mtu, mut metric) = (None, None, None, None, 0, 0);
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(d) => dest = route_ip(d),
            RouteAttribute::Gateway(g) => gateway = route_ip(g),
            RouteAttribute::PrefSource(s) => source = route_ip(s),
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Priority(p) => metric = *p,
            RouteAttribute::Metrics(ms) => {
                for m in ms {
                    if let RouteMetric::Mtu(v) = m {
                        mtu = *v;
                    }
                }
            }
            _ => {}
        }
    }
    if table != RT_TABLE_MAIN {
        return None;
    }
    let device = links.iter().find(|l| Some(l.index) == oif)?.name.clone();
    let dest = match dest {
        Some(ip) => Some(IpNet::new(ip, h.destination_prefix_length).ok()?),
        None if h.destination_prefix_length == 0 => None,
        None => return None,
    };
    if let Some(IpNet::V6(n)) = dest {
        if n.addr().is_unicast_link_local() {
            return None;
        }
    }
    Some(Route {
        dest,
        gateway,
        device,
        source,
        scope: u8::from(h.scope),
        ipv6,
        flags: h.flags.bits(),
        mtu,
        protocol: u8::from(h.protocol),
        metric,
    })
}

fn parse_neighbor(msg: &NeighbourMessage, links: &[Link]) -> Option<Neighbor> {
    if msg.header.state != NeighbourState::Permanent {
        return None;
    }
    let device = links.iter().find(|l| l.index == msg.header.ifindex)?.name.clone();
    let mut ip = None;
    let mut lladdr = None;
    for attr in &msg.attributes {
        match attr {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => ip = Some(IpAddr::V4(*v4)),
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => ip = Some(IpAddr::V6(*v6)),
            NeighbourAttribute::LinkLayerAddress(a) => lladdr = MacAddr::from_bytes(a),
            _ => {}
        }
    }
    Some(Neighbor { ip: ip?, device, lladdr, state: u16::from(msg.header.state), flags: msg.header.flags.bits() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_devices() {
        for (name, want) in
            [("tap0_kata", true), ("tap12_kata", true), ("tap_kata", false), ("tapx_kata", false), ("eth0", false)]
        {
            assert_eq!(is_runtime_device(name), want, "{name}");
        }
        assert_eq!(runtime_device(3).unwrap().as_str(), "tap3_kata");
        assert!(is_runtime_device(runtime_device(12345).unwrap().as_str()));
        assert_eq!(runtime_device(10usize.pow(9)), None, "16 bytes: too long for a device name");
        let used: Vec<IfName> = ["tap0_kata", "tap2_kata", "eth0"].iter().map(|n| n.parse().unwrap()).collect();
        assert_eq!(free_device_number(used.iter()), 1);
        assert_eq!(free_device_number(used[..0].iter()), 0);
    }

    #[test]
    fn type_names() {
        assert_eq!(
            LinkKind::Tuntap { tap: true, multi_queue: false, pi: false, vnet_hdr: false }.type_name(),
            "tuntap"
        );
        assert_eq!(LinkKind::Other { name: "dummy".into() }.type_name(), "dummy");
    }
}
