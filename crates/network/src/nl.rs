//! The few netlink operations the endpoints need, each naming its device in the error.

use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::link::{LinkMessage, MacVtapMode};
use netlink_packet_route::route::{RouteAttribute, RouteMetric, RouteProtocol, RouteScope};
use netlink_packet_route::tc::{TcAttribute, TcHandle, TcMessage};
use rtnetlink::{Handle, LinkMacVtap, LinkUnspec, RouteMessageBuilder};

use crate::error::{Error, Result};
use crate::scan::{Neighbor, Route};
use crate::types::{IfName, MacAddr};

const ENODEV: i32 = libc::ENODEV;
const ENOENT: i32 = libc::ENOENT;
const EINVAL: i32 = libc::EINVAL;
const EEXIST: i32 = libc::EEXIST;

/// The ingress qdisc's handle, `ffff:`.
const INGRESS_HANDLE: u32 = 0xffff_0000;

pub(crate) fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

/// The index of the link `name`, or `None` when there is no such link.
pub(crate) async fn link_index(handle: &Handle, name: &str) -> Result<Option<u32>> {
    let res: Result<Vec<LinkMessage>, _> =
        handle.link().get().match_name(name.to_owned()).execute().try_collect().await;
    match res {
        Ok(msgs) => Ok(msgs.first().map(|m| m.header.index)),
        Err(e) if errno(&e) == Some(ENODEV) => Ok(None),
        Err(e) => Err(Error::netlink("look up", name)(e)),
    }
}

/// A link's counters, as `ip -s link` shows them for it (its own receive and transmit sides).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct LinkCounters {
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub rx_errors: u64,
    pub rx_dropped: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub tx_errors: u64,
    pub tx_dropped: u64,
}

/// The counters of link `name` (the kernel's 64-bit ones).
pub async fn link_counters(handle: &Handle, name: &str) -> Result<LinkCounters> {
    use netlink_packet_route::link::LinkAttribute;
    let msgs: Vec<LinkMessage> =
        handle.link().get().match_name(name.to_owned()).execute().try_collect().await.map_err(|e| match errno(&e) {
            Some(ENODEV) => Error::LinkNotFound(name.to_owned()),
            _ => Error::netlink("read the counters of", name)(e),
        })?;
    let stats = msgs.first().and_then(|m| {
        m.attributes.iter().find_map(|a| match a {
            LinkAttribute::Stats64(s) => Some(*s),
            _ => None,
        })
    });
    let s = stats.ok_or_else(|| Error::LinkNotFound(name.to_owned()))?;
    Ok(LinkCounters {
        rx_bytes: s.rx_bytes,
        rx_packets: s.rx_packets,
        rx_errors: s.rx_errors,
        rx_dropped: s.rx_dropped,
        tx_bytes: s.tx_bytes,
        tx_packets: s.tx_packets,
        tx_errors: s.tx_errors,
        tx_dropped: s.tx_dropped,
    })
}

/// The index of the link `name`; an error when it does not exist.
pub(crate) async fn require_link(handle: &Handle, name: &str) -> Result<u32> {
    link_index(handle, name).await?.ok_or_else(|| Error::LinkNotFound(name.to_owned()))
}

/// Fail with [`Error::DeviceExists`] when a link named `name` is already there.
pub(crate) async fn ensure_absent(handle: &Handle, name: &IfName) -> Result<()> {
    match link_index(handle, name.as_str()).await? {
        Some(_) => Err(Error::DeviceExists(name.to_string())),
        None => Ok(()),
    }
}

/// Delete the link `name`; a link that is already gone is fine.
pub(crate) async fn delete_link(handle: &Handle, name: &str) -> Result<()> {
    let Some(index) = link_index(handle, name).await? else { return Ok(()) };
    match handle.link().del(index).execute().await {
        Err(e) if errno(&e) != Some(ENODEV) => Err(Error::netlink("delete link", name)(e)),
        _ => Ok(()),
    }
}

/// The link group of the devices the runtime makes ("kata" in ASCII), so that a sandbox's
/// teardown can unregister all of them in one kernel batch ([`delete_group`]).
pub const RUNTIME_LINK_GROUP: u32 = 0x6b61_7461;

/// Put a device the runtime made into [`RUNTIME_LINK_GROUP`], set its MTU and bring it up.
pub(crate) async fn set_runtime_dev_up(handle: &Handle, index: u32, name: &str, mtu: u32) -> Result<()> {
    let msg = LinkUnspec::new_with_index(index).mtu(mtu).link_group(RUNTIME_LINK_GROUP).up().build();
    handle.link().set(msg).execute().await.map_err(Error::netlink("set MTU and up on", name))
}

/// Delete every link of a group in one request (`ip link delete group N`): the kernel
/// unregisters them as one batch, paying its per-unregister wait once.
pub async fn delete_group(handle: &Handle, group: u32) -> Result<()> {
    let mut req = handle.link().del(0);
    req.message_mut().attributes.push(netlink_packet_route::link::LinkAttribute::Group(group));
    match req.execute().await {
        Err(e) if errno(&e) != Some(ENODEV) => {
            Err(Error::netlink("delete the runtime's devices in", "this namespace")(e))
        }
        _ => Ok(()),
    }
}

/// Set the MAC address of a link.
pub(crate) async fn set_mac(handle: &Handle, index: u32, name: &str, mac: MacAddr) -> Result<()> {
    let msg = LinkUnspec::new_with_index(index).address(mac.0.to_vec()).build();
    handle.link().set(msg).execute().await.map_err(Error::netlink("set MAC address of", name))
}

/// Create a bridge-mode macvtap on `parent` with the given MAC and MTU, up.
pub(crate) async fn add_macvtap(handle: &Handle, name: &IfName, parent: u32, mac: MacAddr, mtu: u32) -> Result<()> {
    let msg = LinkMacVtap::new(name.as_str(), parent, MacVtapMode::Bridge)
        .address(mac.0.to_vec())
        .mtu(mtu)
        .link_group(RUNTIME_LINK_GROUP)
        .up()
        .build();
    handle.link().add(msg).execute().await.map_err(|e| match errno(&e) {
        Some(EEXIST) => Error::DeviceExists(name.to_string()),
        _ => Error::netlink("create macvtap", name.as_str())(e),
    })
}

/// `tc qdisc add dev <name> ingress`.
pub(crate) async fn add_ingress(handle: &Handle, index: u32, name: &str) -> Result<()> {
    handle.qdisc().add(index as i32).ingress().execute().await.map_err(Error::netlink("add ingress qdisc on", name))
}

/// `tc qdisc del dev <name> ingress`; a missing qdisc or link is fine.
pub(crate) async fn del_ingress(handle: &Handle, name: &str) -> Result<()> {
    let Some(index) = link_index(handle, name).await? else { return Ok(()) };
    del_ingress_of(handle, index, name).await
}

/// `tc filter add dev <from> parent ffff: protocol all u32 match u32 0 0 action mirred egress
/// redirect dev <to>`. The protocol goes in network byte order, or the filter matches nothing.
pub(crate) async fn add_redirect(handle: &Handle, from: u32, from_name: &str, to: u32) -> Result<()> {
    handle
        .traffic_filter(from as i32)
        .add()
        .parent(INGRESS_HANDLE)
        .priority(RUNTIME_FILTER_PRIORITY)
        .protocol((libc::ETH_P_ALL as u16).to_be())
        .redirect(to)
        .map_err(Error::netlink("build redirect filter on", from_name))?
        .execute()
        .await
        .map_err(Error::netlink("add redirect filter on", from_name))
}

/// The major number of the runtime's HTB qdiscs (rate limits: `crate::shaping`), "ka" as its
/// filters' priority.
pub const HTB_MAJOR: u16 = 0x6b61;

/// The priority (`pref`) of the runtime's redirect filters: its tag, as the link group is its
/// devices' (a qdisc has no group).
pub(crate) const RUNTIME_FILTER_PRIORITY: u16 = 0x6b61;

/// Whether the link's ingress holds one of the runtime's filters (by their priority).
async fn holds_own_filter(handle: &Handle, index: u32) -> bool {
    let filters: Vec<_> = match handle.traffic_filter(index as i32).get().ingress().execute().try_collect().await {
        Ok(f) => f,
        Err(_) => return false,
    };
    filters.iter().any(|f| (f.header.info >> 16) as u16 == RUNTIME_FILTER_PRIORITY)
}

async fn del_ingress_of(handle: &Handle, index: u32, name: &str) -> Result<()> {
    let mut req = handle.qdisc().del(index as i32);
    req.message_mut().header.parent = TcHandle::INGRESS;
    req.message_mut().header.handle = TcHandle::from(INGRESS_HANDLE);
    match req.execute().await {
        Err(e) if !matches!(errno(&e), Some(ENOENT | EINVAL | ENODEV)) => {
            Err(Error::netlink("delete ingress qdisc on", name)(e))
        }
        _ => Ok(()),
    }
}

/// Delete the link's ingress qdisc when it holds one of the runtime's filters; another's ingress,
/// or no link, is left as it is.
pub(crate) async fn del_own_ingress(handle: &Handle, name: &str) -> Result<()> {
    let Some(index) = link_index(handle, name).await? else { return Ok(()) };
    if holds_own_filter(handle, index).await {
        del_ingress_of(handle, index, name).await?;
    }
    Ok(())
}

/// Remove the ingress qdisc of every link that holds one of the runtime's redirect filters (the
/// tc filter model and a rate limit's IFB make their own ingress qdisc and refuse a link that has
/// one): what `delete` finds of them without a state file.
pub async fn delete_tagged_ingress(handle: &Handle) -> Result<()> {
    let links: Vec<LinkMessage> =
        handle.link().get().execute().try_collect().await.map_err(Error::netlink("list links of", "the namespace"))?;
    for link in links {
        let index = link.header.index;
        if holds_own_filter(handle, index).await {
            del_ingress_of(handle, index, &format!("link {index}")).await?;
        }
    }
    Ok(())
}

/// Remove these addresses from the link; addresses already gone are fine.
pub async fn del_addresses(handle: &Handle, index: u32, name: &str, nets: &[IpNet]) -> Result<()> {
    let msgs: Vec<_> = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .map_err(Error::netlink("list addresses of", name))?;
    for msg in msgs {
        if crate::scan::address_of(&msg).is_some_and(|n| nets.contains(&n)) {
            match handle.address().del(msg).execute().await {
                Err(e) if errno(&e) != Some(EADDRNOTAVAIL) => return Err(Error::netlink("delete address of", name)(e)),
                _ => {}
            }
        }
    }
    Ok(())
}
const EADDRNOTAVAIL: i32 = libc::EADDRNOTAVAIL;

/// Give addresses back to the link; an address that is already there is fine. IPv6 ones skip
/// duplicate address detection: they were in use on this very link a moment ago.
pub async fn add_addresses(handle: &Handle, index: u32, name: &str, nets: &[IpNet]) -> Result<()> {
    use netlink_packet_route::address::{AddressAttribute, AddressFlags};
    for net in nets {
        let mut req = handle.address().add(index, net.addr(), net.prefix_len());
        if net.addr().is_ipv6() {
            req.message_mut().attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        match req.execute().await {
            Err(e) if errno(&e) != Some(EEXIST) => return Err(Error::netlink("add address to", name)(e)),
            _ => {}
        }
    }
    Ok(())
}

/// The netlink message for route `r` through link `index`, in the main table.
pub(crate) fn route_message(r: &Route, index: u32) -> Result<netlink_packet_route::route::RouteMessage> {
    fn bad<E: std::fmt::Debug>(r: &Route) -> impl FnOnce(E) -> Error + '_ {
        move |e| Error::Kernel { dev: r.device.to_string(), what: format!("{e:?}") }
    }
    let mut b = RouteMessageBuilder::<std::net::IpAddr>::new().output_interface(index);
    if let Some(d) = r.dest {
        b = b.destination_prefix(d.addr(), d.prefix_len()).map_err(bad(r))?;
    } else {
        b.get_mut().header.address_family =
            if r.ipv6 { netlink_packet_route::AddressFamily::Inet6 } else { netlink_packet_route::AddressFamily::Inet };
    }
    if let Some(g) = r.gateway {
        b = b.gateway(g).map_err(bad(r))?;
    }
    if let Some(s) = r.source {
        b = b.pref_source(s).map_err(bad(r))?;
    }
    b = b.scope(RouteScope::from(r.scope)).protocol(RouteProtocol::from(r.protocol));
    if r.metric != 0 {
        b = b.priority(r.metric);
    }
    if r.mtu != 0 {
        // The route's own MTU (`ip route ... mtu N`; Cilium sets them).
        b.get_mut().attributes.push(RouteAttribute::Metrics(vec![RouteMetric::Mtu(r.mtu)]));
    }
    Ok(b.build())
}

/// Add (or replace) routes through the link `index`.
pub async fn replace_routes(handle: &Handle, index: u32, routes: &[Route]) -> Result<()> {
    for r in routes {
        handle
            .route()
            .add(route_message(r, index)?)
            .replace()
            .execute()
            .await
            .map_err(Error::netlink("add a route through", r.device.as_str()))?;
    }
    Ok(())
}

/// Delete a route through link `index`; a route already gone is fine.
pub async fn delete_route(handle: &Handle, index: u32, r: &Route) -> Result<()> {
    match handle.route().del(route_message(r, index)?).execute().await {
        Err(e) if errno(&e) != Some(libc::ESRCH) => Err(Error::netlink("delete a route through", r.device.as_str())(e)),
        _ => Ok(()),
    }
}

/// Add (or replace) permanent neighbour entries on the link.
pub async fn replace_neighbors(handle: &Handle, index: u32, name: &str, neighbors: &[Neighbor]) -> Result<()> {
    use netlink_packet_route::neighbour::NeighbourState;
    for n in neighbors {
        let mut req = handle.neighbours().add(index, n.ip).state(NeighbourState::Permanent).replace();
        if let Some(mac) = n.lladdr {
            req = req.link_layer_address(&mac.0);
        }
        req.execute().await.map_err(Error::netlink("restore a neighbour on", name))?;
    }
    Ok(())
}

/// The root qdisc of `dev`: its handle's major and kind. `None` when the device is gone.
pub(crate) async fn root_qdisc(handle: &Handle, dev: &str) -> Result<Option<(u16, String)>> {
    let Some(index) = link_index(handle, dev).await? else { return Ok(None) };
    let msgs: Vec<TcMessage> = handle
        .qdisc()
        .get()
        .index(index as i32)
        .execute()
        .try_collect()
        .await
        .map_err(Error::netlink("list qdiscs of", dev))?;
    Ok(msgs.iter().find(|m| m.header.index == index as i32 && m.header.parent == TcHandle::ROOT).map(|m| {
        let kind = m.attributes.iter().find_map(|a| match a {
            TcAttribute::Kind(k) => Some(k.clone()),
            _ => None,
        });
        (m.header.handle.major, kind.unwrap_or_default())
    }))
}

/// Delete `dev`'s root qdisc when it is the runtime's HTB; anything else (or no device) is left.
pub(crate) async fn delete_own_root(handle: &Handle, dev: &str) -> Result<()> {
    let Some(index) = link_index(handle, dev).await? else { return Ok(()) };
    match root_qdisc(handle, dev).await? {
        Some((major, _)) if major == HTB_MAJOR => {}
        _ => return Ok(()),
    }
    let mut req = handle.qdisc().del(index as i32);
    req.message_mut().header.parent = TcHandle::ROOT;
    req.message_mut().header.handle = TcHandle { major: HTB_MAJOR, minor: 0 };
    match req.execute().await {
        Err(e) if !matches!(errno(&e), Some(libc::ENOENT | libc::EINVAL | libc::ENODEV)) => {
            Err(Error::netlink("delete the HTB qdisc on", dev)(e))
        }
        _ => Ok(()),
    }
}
