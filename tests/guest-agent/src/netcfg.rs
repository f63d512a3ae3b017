//! What the agent does to the guest's network: every request is checked in full before anything
//! is changed, and a change that fails half-way is undone.

use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use agent_client::protocols::types as pb;
use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use network::{IfName, MacAddr, PciPath};
use rtnetlink::{Handle, LinkUnspec};
use ttrpc::Code;

/// A ttrpc status: code and message.
pub type Status = (Code, String);
type R<T> = Result<T, Status>;

fn invalid(field: &str, why: impl std::fmt::Display) -> Status {
    (Code::INVALID_ARGUMENT, format!("{field}: {why}"))
}

fn internal(e: impl std::fmt::Display) -> Status {
    (Code::INTERNAL, e.to_string())
}

/// How long UpdateInterface waits for a PCI path before answering NOT_FOUND (the shim retries).
const PCI_WAIT: Duration = Duration::from_secs(2);

struct IfaceReq {
    mac: MacAddr,
    name: IfName,
    mtu: Option<u32>,
    addrs: Vec<IpNet>,
    pci: Option<PciPath>,
}

fn parse_net(field: &str, address: &str, mask: &str, want_v6: Option<bool>) -> R<IpNet> {
    let ip: IpAddr = address.parse().map_err(|_| invalid(field, format!("{address:?} is not an IP address")))?;
    let prefix: u8 = mask.parse().map_err(|_| invalid(field, format!("mask {mask:?} is not a prefix length")))?;
    if want_v6.is_some_and(|v6| v6 != ip.is_ipv6()) {
        return Err(invalid(field, "family does not match the address"));
    }
    IpNet::new(ip, prefix).map_err(|_| invalid(field, format!("prefix length {prefix} is too long for {ip}")))
}

fn parse_iface(i: &pb::Interface) -> R<IfaceReq> {
    let mac: MacAddr = i.hwAddr.parse().map_err(|e| invalid("hwAddr", e))?;
    let name: IfName = i.name.parse().map_err(|e| invalid("name", e))?;
    let mtu = match i.mtu {
        0 => None,
        m @ 68..=65535 => Some(m as u32),
        m => return Err(invalid("mtu", format!("{m} is outside 68..=65535"))),
    };
    let addrs = i
        .IPAddresses
        .iter()
        .enumerate()
        .map(|(n, a)| {
            let v6 = a.family.enum_value().map(|f| f == pb::IPFamily::v6).ok();
            parse_net(&format!("IPAddresses[{n}]"), &a.address, &a.mask, v6)
        })
        .collect::<R<Vec<_>>>()?;
    let pci = match i.devicePath.as_str() {
        "" => None,
        p => Some(p.parse().map_err(|e| invalid("devicePath", e))?),
    };
    Ok(IfaceReq { mac, name, mtu, addrs, pci })
}

/// The interface name under the PCI path (`02/01`: slot 2 on the root bus, then slot 1 below).
fn pci_ifname(path: &PciPath) -> Option<String> {
    let mut dir = std::path::PathBuf::from("/sys/devices/pci0000:00");
    for slot in path.slots() {
        let suffix = format!(":{slot:02x}.0");
        let next = std::fs::read_dir(&dir)
            .ok()?
            .flatten()
            .find(|e| e.file_name().to_str().is_some_and(|n| n.starts_with("0000:") && n.ends_with(&suffix)))?;
        dir = next.path();
    }
    // virtio-net sits one level below its PCI function (virtioN/net/<ifname>).
    for entry in std::fs::read_dir(&dir).ok()?.flatten() {
        let net = entry.path().join("net");
        if let Some(name) = std::fs::read_dir(&net).ok().and_then(|mut d| d.next()).and_then(|e| e.ok()) {
            return name.file_name().into_string().ok();
        }
    }
    let net = dir.join("net");
    std::fs::read_dir(net).ok()?.flatten().next()?.file_name().into_string().ok()
}

async fn links(handle: &Handle) -> R<Vec<LinkMessage>> {
    handle.link().get().execute().try_collect().await.map_err(internal)
}

fn link_name(m: &LinkMessage) -> Option<&str> {
    m.attributes.iter().find_map(|a| if let LinkAttribute::IfName(n) = a { Some(n.as_str()) } else { None })
}

fn link_mac(m: &LinkMessage) -> Option<MacAddr> {
    m.attributes.iter().find_map(|a| if let LinkAttribute::Address(b) = a { MacAddr::from_bytes(b) } else { None })
}

fn link_mtu(m: &LinkMessage) -> u32 {
    m.attributes.iter().find_map(|a| if let LinkAttribute::Mtu(v) = a { Some(*v) } else { None }).unwrap_or(0)
}

async fn index_of(handle: &Handle, field: &str, name: &str) -> R<u32> {
    let all = links(handle).await?;
    all.iter()
        .find(|m| link_name(m) == Some(name))
        .map(|m| m.header.index)
        .ok_or_else(|| invalid(field, format!("no interface named {name:?}")))
}

async fn addresses_of(handle: &Handle, index: u32) -> R<Vec<IpNet>> {
    let info = network::scan(handle).await.map_err(internal)?;
    Ok(info.links.into_iter().find(|l| l.index == index).map(|l| l.addresses).unwrap_or_default())
}

async fn set_link(handle: &Handle, msg: LinkMessage) -> Result<(), String> {
    handle.link().set(msg).execute().await.map_err(|e| e.to_string())
}

/// Find the NIC by MAC (waiting for its PCI path when one is given), rename it, set MTU and
/// addresses, bring it up.
pub async fn update_interface(handle: &Handle, i: &pb::Interface) -> R<pb::Interface> {
    let req = parse_iface(i)?;
    if let Some(path) = &req.pci {
        let start = Instant::now();
        while pci_ifname(path).is_none() {
            if start.elapsed() > PCI_WAIT {
                return Err((Code::NOT_FOUND, format!("no device at PCI path {path} yet")));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let all = links(handle).await?;
    let link = all
        .iter()
        .find(|m| link_mac(m) == Some(req.mac))
        .ok_or_else(|| (Code::NOT_FOUND, format!("no interface with MAC {}", req.mac)))?;
    let (index, old_name, old_mtu) = (link.header.index, link_name(link).unwrap_or("").to_owned(), link_mtu(link));
    if old_name != req.name.as_str() {
        if let Some(holder) = all.iter().find(|m| link_name(m) == Some(req.name.as_str())) {
            // A NIC the kernel named and nobody configured yet (down, `eth<N>`) holds the name: the
            // kernel names NICs in the order they probe, not the pod's, so the pod's `eth1` may
            // have been named `eth3` while another is `eth1`. It steps aside (its own turn renames
            // it by its MAC); a configured interface keeps its name and the request is refused.
            let kernel_named = req.name.as_str().strip_prefix("eth").is_some_and(|n| n.parse::<u32>().is_ok());
            let down = !holder.header.flags.contains(netlink_packet_route::link::LinkFlags::Up);
            if !(kernel_named && down) {
                return Err((Code::ALREADY_EXISTS, format!("name: another interface is already called {}", req.name)));
            }
            let aside = format!("kt{}", holder.header.index);
            set_link(handle, LinkUnspec::new_with_index(holder.header.index).name(aside).build())
                .await
                .map_err(|e| internal(format!("moving {} aside: {e}", req.name)))?;
        }
    }
    let old_addrs = addresses_of(handle, index).await?;

    let apply = async {
        set_link(handle, LinkUnspec::new_with_index(index).down().build()).await?;
        let mut msg = LinkUnspec::new_with_index(index).name(req.name.to_string());
        if let Some(mtu) = req.mtu {
            msg = msg.mtu(mtu);
        }
        set_link(handle, msg.build()).await?;
        let stale: Vec<IpNet> = old_addrs.iter().filter(|a| !req.addrs.contains(a)).cloned().collect();
        network::nl::del_addresses(handle, index, req.name.as_str(), &stale).await.map_err(|e| e.to_string())?;
        let new: Vec<IpNet> = req.addrs.iter().filter(|a| !old_addrs.contains(a)).cloned().collect();
        network::nl::add_addresses(handle, index, req.name.as_str(), &new)
            .await
            .map_err(|e| format!("{e}: {:?}", std::error::Error::source(&e)))?;
        set_link(handle, LinkUnspec::new_with_index(index).up().build()).await
    };
    if let Err(e) = apply.await {
        // Put back what was there: name, MTU, addresses.
        let _ = set_link(handle, LinkUnspec::new_with_index(index).down().build()).await;
        let _ = set_link(handle, LinkUnspec::new_with_index(index).name(old_name.clone()).mtu(old_mtu).build()).await;
        let now = addresses_of(handle, index).await.unwrap_or_default();
        let extra: Vec<IpNet> = now.iter().filter(|a| !old_addrs.contains(a)).cloned().collect();
        let _ = network::nl::del_addresses(handle, index, &old_name, &extra).await;
        let _ = network::nl::add_addresses(handle, index, &old_name, &old_addrs).await;
        return Err(internal(format!("configuring {}: {e}", req.name)));
    }
    let info = network::scan(handle).await.map_err(internal)?;
    let link = info.links.iter().find(|l| l.index == index).ok_or_else(|| internal("interface vanished"))?;
    let mut out = pb::Interface::from(&agent_client::interfaces(std::slice::from_ref(link))[0]);
    out.devicePath = i.devicePath.clone();
    Ok(out)
}

pub async fn list_interfaces(handle: &Handle) -> R<Vec<pb::Interface>> {
    let info = network::scan(handle).await.map_err(internal)?;
    Ok(agent_client::interfaces(&info.links).iter().map(pb::Interface::from).collect())
}

/// The scanned links plus the loopback, which the scan leaves out but routes may use
/// (`"device": "lo"` in the operator's route documents).
async fn route_links(handle: &Handle) -> R<Vec<network::Link>> {
    let mut links = network::scan(handle).await.map_err(internal)?.links;
    if let Ok(index) = index_of(handle, "device", "lo").await {
        links.push(network::Link {
            index,
            name: "lo".parse().map_err(internal)?,
            kind: network::LinkKind::Other { name: "loopback".into() },
            mac: None,
            mtu: 65536,
            flags: 0,
            addresses: Vec::new(),
        });
    }
    Ok(links)
}

/// The guest's routes (main table, kernel-made ones included).
pub async fn list_routes(handle: &Handle) -> R<Vec<pb::Route>> {
    let links = route_links(handle).await?;
    let routes = network::scan_routes(handle, &links, true).await.map_err(internal)?;
    Ok(agent_client::routes(&routes).iter().map(pb::Route::from).collect())
}

/// A route request, checked: `delete` for a `-dest` in increment mode.
struct RouteReq {
    route: network::Route,
    index: Option<u32>,
    delete: bool,
}

async fn parse_route(handle: &Handle, n: usize, r: &pb::Route, increment: bool) -> R<RouteReq> {
    let f = |name: &str| format!("routes[{n}].{name}");
    let (delete, dest) = match r.dest.strip_prefix('-') {
        Some(rest) if increment => (true, rest),
        _ => (false, r.dest.as_str()),
    };
    let dest = match dest {
        "" | "default" => None,
        d if d.contains('/') => {
            Some(d.parse::<IpNet>().map_err(|_| invalid(&f("dest"), format!("{d:?} is not ip/prefix")))?)
        }
        d => {
            Some(IpNet::from(d.parse::<IpAddr>().map_err(|_| invalid(&f("dest"), format!("{d:?} is not an address")))?))
        }
    };
    let gateway = match r.gateway.as_str() {
        "" => None,
        g => Some(g.parse::<IpAddr>().map_err(|_| invalid(&f("gateway"), format!("{g:?} is not an address")))?),
    };
    let source = match r.source.as_str() {
        "" => None,
        s => Some(s.parse::<IpAddr>().map_err(|_| invalid(&f("source"), format!("{s:?} is not an address")))?),
    };
    let ipv6 = match (dest, gateway) {
        (Some(d), Some(g)) if d.addr().is_ipv6() != g.is_ipv6() => {
            return Err(invalid(&f("gateway"), "family differs from dest"))
        }
        (Some(d), _) => d.addr().is_ipv6(),
        (None, Some(g)) => g.is_ipv6(),
        (None, None) => r.family.enum_value() == Ok(pb::IPFamily::v6),
    };
    if dest.is_none() && gateway.is_none() && !delete {
        return Err(invalid(&f("gateway"), "a default route needs a gateway"));
    }
    let index = match r.device.as_str() {
        "" if delete => None,
        "" => return Err(invalid(&f("device"), "required")),
        d => Some(index_of(handle, &f("device"), d).await?),
    };
    let device: IfName = if r.device.is_empty() {
        "any".parse().unwrap()
    } else {
        r.device.parse().map_err(|e| invalid(&f("device"), e))?
    };
    let scope = match (r.scope, gateway) {
        (0, None) if dest.is_some() => 253,
        (s, _) => s as u8,
    };
    // The route's MTU (field 8), applied as kata's agent does since 3.17; 0 means none.
    let mtu = match r.mtu {
        0 => 0,
        m @ 68..=65535 => m,
        m => return Err(invalid(&f("mtu"), format!("{m} is outside 68..=65535"))),
    };
    let route = network::Route { dest, gateway, device, source, scope, ipv6, flags: 0, mtu, protocol: 3, metric: 0 };
    Ok(RouteReq { route, index, delete })
}

/// Current routes (not kernel-made) that a delete request matches: same dest, and the device
/// and gateway when given.
async fn matching(handle: &Handle, want: &RouteReq) -> R<Vec<(u32, network::Route)>> {
    let links = route_links(handle).await?;
    let have = network::scan_routes(handle, &links, false).await.map_err(internal)?;
    let idx = |name: &IfName| links.iter().find(|l| &l.name == name).map(|l| l.index).unwrap_or(0);
    Ok(have
        .into_iter()
        .filter(|r| r.dest == want.route.dest && r.ipv6 == want.route.ipv6)
        .filter(|r| want.index.is_none() || r.device == want.route.device)
        .filter(|r| want.route.gateway.is_none() || r.gateway == want.route.gateway)
        .map(|r| (idx(&r.device), r))
        .collect())
}

enum Done {
    Added(u32, network::Route),
    Deleted(u32, network::Route),
}

async fn undo(handle: &Handle, done: Vec<Done>) {
    for d in done.into_iter().rev() {
        let _ = match d {
            Done::Added(i, r) => network::nl::delete_route(handle, i, &r).await,
            Done::Deleted(i, r) => network::nl::replace_routes(handle, i, &[r]).await,
        };
    }
}

/// Replace the guest's routes (kata's semantics: all but the kernel's and lo's), or (increment)
/// add and `-dest`-delete routes.
/// Returns the guest's routes afterwards.
pub async fn update_routes(handle: &Handle, routes: &[pb::Route], increment: bool) -> R<Vec<pb::Route>> {
    let mut reqs = Vec::with_capacity(routes.len());
    for (n, r) in routes.iter().enumerate() {
        reqs.push(parse_route(handle, n, r, increment).await?);
    }
    reqs.sort_by_key(|r| r.route.gateway.is_some());
    let mut done = Vec::new();
    let result: R<()> = async {
        if !increment {
            // As kata's agent does: every route not made by the kernel goes, on every device but lo.
            let info = network::scan(handle).await.map_err(internal)?;
            let have = network::scan_routes(handle, &info.links, false).await.map_err(internal)?;
            for r in have {
                let Some(l) = info.links.iter().find(|l| l.name == r.device) else { continue };
                if l.name.as_str() != "lo" {
                    network::nl::delete_route(handle, l.index, &r).await.map_err(internal)?;
                    done.push(Done::Deleted(l.index, r));
                }
            }
        }
        for req in &reqs {
            if req.delete {
                let found = matching(handle, req).await?;
                if found.is_empty() {
                    return Err((
                        Code::NOT_FOUND,
                        format!("no route to {} to delete", req.route.dest.map_or("default".into(), |d| d.to_string())),
                    ));
                }
                for (i, r) in found {
                    network::nl::delete_route(handle, i, &r).await.map_err(internal)?;
                    done.push(Done::Deleted(i, r));
                }
            } else {
                let i = req.index.expect("checked: adds name a device");
                network::nl::replace_routes(handle, i, std::slice::from_ref(&req.route)).await.map_err(|e| {
                    internal(format!(
                        "{e}: {}",
                        std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_default()
                    ))
                })?;
                done.push(Done::Added(i, req.route.clone()));
            }
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        undo(handle, done).await;
        return Err(e);
    }
    list_routes(handle).await
}

/// Add permanent neighbours, all checked first.
pub async fn add_neighbors(handle: &Handle, ns: &[pb::ARPNeighbor]) -> R<()> {
    let mut parsed = Vec::with_capacity(ns.len());
    for (n, a) in ns.iter().enumerate() {
        let f = |name: &str| format!("neighbors[{n}].{name}");
        let to = a.toIPAddress.as_ref().ok_or_else(|| invalid(&f("toIPAddress"), "missing"))?;
        let ip: IpAddr = to
            .address
            .parse()
            .map_err(|_| invalid(&f("toIPAddress"), format!("{:?} is not an address", to.address)))?;
        let lladdr: MacAddr = a.lladdr.parse().map_err(|e| invalid(&f("lladdr"), e))?;
        let index = index_of(handle, &f("device"), &a.device).await?;
        let device: IfName = a.device.parse().map_err(|e| invalid(&f("device"), e))?;
        parsed.push((index, network::Neighbor { ip, device, lladdr: Some(lladdr), state: 0x80, flags: 0 }));
    }
    for (index, n) in &parsed {
        network::nl::replace_neighbors(handle, *index, n.device.as_str(), std::slice::from_ref(n))
            .await
            .map_err(internal)?;
    }
    Ok(())
}

/// Hostname (cut to 64 characters) and resolv.conf lines.
pub fn apply_hostname_and_dns(hostname: &str, dns: &[String], resolv_conf: &Path) -> R<()> {
    if let Some((n, _)) = dns.iter().enumerate().find(|(_, l)| l.contains('\n') || l.contains('\0')) {
        return Err(invalid(&format!("dns[{n}]"), "a line must not contain a newline or NUL"));
    }
    if !hostname.is_empty() {
        let h: String = hostname.chars().take(64).collect();
        nix::unistd::sethostname(&h).map_err(|e| internal(format!("sethostname: {e}")))?;
    }
    if !dns.is_empty() {
        let mut text = dns.join("\n");
        text.push('\n');
        std::fs::write(resolv_conf, text).map_err(|e| internal(format!("write {}: {e}", resolv_conf.display())))?;
    }
    Ok(())
}
