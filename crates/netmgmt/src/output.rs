//! What the operator's commands print (`network-cli.md`), and the conversions between the
//! operator's documents, the management protocol and that output. Every conversion of an
//! address's family lives here: the protocol carries the agent protocol's `types.IPAddress`
//! (v4 = 0, v6 = 1), the CLI prints AF_INET (2) / AF_INET6 (10).

use ipnet::IpNet;
use network::nl::LinkCounters;
use network::{IfName, PciPath};
use serde::Serialize;

use crate::doc::{AddrDoc, IfaceDoc, RouteRequest};
use crate::{mg, pb};

/// The protocol's family for an address given as text (v6 when it has a ':').
fn family_of(address: &str) -> pb::IPFamily {
    if address.contains(':') {
        pb::IPFamily::v6
    } else {
        pb::IPFamily::v4
    }
}

/// An address with its prefix as the protocols carry it.
pub fn address(net: &IpNet) -> pb::IPAddress {
    let address = net.addr().to_string();
    pb::IPAddress {
        family: family_of(&address).into(),
        address,
        mask: net.prefix_len().to_string(),
        ..Default::default()
    }
}

/// The family as the CLI prints it: 2 (AF_INET) or 10 (AF_INET6).
pub fn af(a: &pb::IPAddress) -> u32 {
    match a.family.enum_value() {
        Ok(pb::IPFamily::v6) => 10,
        _ => 2,
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

/// The management protocol's interface as the operator's document (the shim checks it then).
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
            .map(|a| pb::IPAddress {
                family: family_of(&a.address).into(),
                address: a.address.clone(),
                mask: a.mask.clone(),
                ..Default::default()
            })
            .collect(),
        mtu: d.mtu,
        hwAddr: d.hw_addr.clone(),
        vhostUserSocket: d.vhost_user_socket.clone().unwrap_or_default(),
        queues: d.queues,
        ..Default::default()
    }
}

/// A guest route as the route commands print it: `dest` is `default` for the default route.
pub fn route_out(r: &pb::Route) -> mg::Route {
    let dest = if r.dest.is_empty() { "default".to_owned() } else { r.dest.clone() };
    mg::Route { dest, gateway: r.gateway.clone(), device: r.device.clone(), ..Default::default() }
}

/// A checked route request as the agent takes it: a default route's `dest` empty (kata's agent
/// reads an empty `dest` as the default route and cannot parse `default`). With `delete`, the
/// openEuler increment mode's delete request (`-<dest>`).
pub fn route_pb(r: &RouteRequest, delete: bool) -> pb::Route {
    let dest = r.dest.map_or_else(|| if delete { "default".to_owned() } else { String::new() }, |d| d.to_string());
    let v6 = r.dest.map(|d| d.addr().is_ipv6()).or(r.gateway.map(|g| g.is_ipv6())).unwrap_or(false);
    pb::Route {
        dest: if delete { format!("-{dest}") } else { dest },
        gateway: r.gateway.map(|g| g.to_string()).unwrap_or_default(),
        device: r.device.as_ref().map(IfName::to_string).unwrap_or_default(),
        family: (if v6 { pb::IPFamily::v6 } else { pb::IPFamily::v4 }).into(),
        ..Default::default()
    }
}

/// One address of an interface as add-iface prints it.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct AddrOut {
    #[serde(rename = "Family")]
    pub family: u32,
    #[serde(rename = "Address")]
    pub address: String,
    #[serde(rename = "Mask")]
    pub mask: String,
}

/// An interface as add-iface prints it (and del-iface, for the one it could not remove).
/// `IPAddresses` is `null` when there is none, as kata's Go tools print an empty list.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct IfaceOut {
    pub device: String,
    pub name: String,
    #[serde(rename = "IPAddresses")]
    pub ip_addresses: Option<Vec<AddrOut>>,
    pub mtu: u64,
    #[serde(rename = "hwAddr")]
    pub hw_addr: String,
    #[serde(rename = "pciAddr", skip_serializing_if = "String::is_empty")]
    pub pci_addr: String,
}

impl From<&mg::Interface> for IfaceOut {
    fn from(i: &mg::Interface) -> Self {
        let addrs: Vec<AddrOut> = i
            .IPAddresses
            .iter()
            .map(|a| AddrOut { family: af(a), address: a.address.clone(), mask: a.mask.clone() })
            .collect();
        IfaceOut {
            device: i.device.clone(),
            name: i.name.clone(),
            ip_addresses: (!addrs.is_empty()).then_some(addrs),
            mtu: i.mtu,
            hw_addr: i.hwAddr.clone(),
            pci_addr: i.pciAddr.clone(),
        }
    }
}

/// One entry of list-ifaces.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct ListedIface {
    pub name: String,
    pub mac: String,
    pub ip: Option<Vec<String>>,
    pub mtu: u64,
}

impl From<&mg::Interface> for ListedIface {
    fn from(i: &mg::Interface) -> Self {
        let ip: Vec<String> = i.IPAddresses.iter().map(|a| format!("{}/{}", a.address, a.mask)).collect();
        ListedIface { name: i.name.clone(), mac: i.hwAddr.clone(), ip: (!ip.is_empty()).then_some(ip), mtu: i.mtu }
    }
}

/// A route as the route commands print it.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct RouteOut {
    pub dest: String,
    pub gateway: String,
    pub device: String,
}

impl From<&mg::Route> for RouteOut {
    fn from(r: &mg::Route) -> Self {
        RouteOut { dest: r.dest.clone(), gateway: r.gateway.clone(), device: r.device.clone() }
    }
}

/// Text from the guest (a command's output, a refusal) made safe for the operator's terminal:
/// control characters (escape sequences, carriage returns, ...) become `?`; newlines stay only
/// where `multi_line` (a listing), else they become spaces.
pub fn printable(text: &str, multi_line: bool) -> String {
    text.chars()
        .map(|c| match c {
            '\n' if multi_line => '\n',
            '\n' => ' ',
            '\t' => '\t',
            c if c.is_control() => '?',
            c => c,
        })
        .collect()
}

/// One NIC as `kata-network stats` prints it: its name in the guest, the host device, that
/// device's counters (its own receive and transmit sides, as `ip -s link` shows them), and the
/// guest's own counters (`null` when its agent gives none).
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct NicStatsOut {
    pub name: String,
    pub device: String,
    pub kind: String,
    pub host: LinkCounters,
    pub guest: Option<LinkCounters>,
}

/// Counters as the management protocol carries them, and back: the one place their fields are
/// listed.
pub fn counters_pb(c: &LinkCounters) -> mg::LinkCounters {
    mg::LinkCounters {
        rx_bytes: c.rx_bytes,
        rx_packets: c.rx_packets,
        rx_errors: c.rx_errors,
        rx_dropped: c.rx_dropped,
        tx_bytes: c.tx_bytes,
        tx_packets: c.tx_packets,
        tx_errors: c.tx_errors,
        tx_dropped: c.tx_dropped,
        ..Default::default()
    }
}

pub fn counters_of(c: &mg::LinkCounters) -> LinkCounters {
    LinkCounters {
        rx_bytes: c.rx_bytes,
        rx_packets: c.rx_packets,
        rx_errors: c.rx_errors,
        rx_dropped: c.rx_dropped,
        tx_bytes: c.tx_bytes,
        tx_packets: c.tx_packets,
        tx_errors: c.tx_errors,
        tx_dropped: c.tx_dropped,
    }
}

impl From<&mg::NicStats> for NicStatsOut {
    fn from(n: &mg::NicStats) -> Self {
        NicStatsOut {
            name: n.name.clone(),
            device: n.device.clone(),
            kind: n.kind.clone(),
            host: n.host.as_ref().map(counters_of).unwrap_or_default(),
            guest: n.guest.as_ref().map(counters_of),
        }
    }
}

/// JSON, or `null` for an empty list (list commands).
pub fn list_json<T: Serialize>(v: &[T]) -> serde_json::Result<String> {
    if v.is_empty() {
        Ok("null".into())
    } else {
        serde_json::to_string(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_manuals_add_iface_output_shape() {
        let i = mg::Interface {
            device: "tap_test".into(),
            name: "eth-test".into(),
            IPAddresses: vec![address(&"173.85.100.1/24".parse().unwrap())],
            mtu: 1500,
            hwAddr: "02:42:20:6e:03:01".into(),
            pciAddr: "01.0/00".into(),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_string(&IfaceOut::from(&i)).unwrap(),
            r#"{"device":"tap_test","name":"eth-test","IPAddresses":[{"Family":2,"Address":"173.85.100.1","Mask":"24"}],"mtu":1500,"hwAddr":"02:42:20:6e:03:01","pciAddr":"01.0/00"}"#
        );
    }

    #[test]
    fn families_as_the_protocol_carries_them_and_as_the_cli_prints_them() {
        for (net, proto, cli) in [("10.0.0.2/24", pb::IPFamily::v4, 2), ("fd00::2/64", pb::IPFamily::v6, 10)] {
            let a = address(&net.parse().unwrap());
            assert_eq!(a.family.enum_value(), Ok(proto), "{net}");
            assert_eq!(af(&a), cli, "{net}");
        }
        let doc = IfaceDoc {
            ip_addresses: vec![AddrDoc { address: "fd00::5".into(), mask: "64".into() }],
            ..Default::default()
        };
        assert_eq!(af(&doc_to_pb(&doc).IPAddresses[0]), 10);
    }

    #[test]
    fn list_outputs_and_null() {
        let mut i = mg::Interface::new();
        i.name = "eth-test".into();
        i.hwAddr = "02:42:20:6f:a3:69".into();
        i.IPAddresses.push(address(&"172.16.0.3/16".parse().unwrap()));
        i.mtu = 1500;
        let l = [ListedIface::from(&i)];
        assert_eq!(
            list_json(&l).unwrap(),
            r#"[{"name":"eth-test","mac":"02:42:20:6f:a3:69","ip":["172.16.0.3/16"],"mtu":1500}]"#
        );
        assert_eq!(list_json::<ListedIface>(&[]).unwrap(), "null");
        let r = [RouteOut { dest: "default".into(), gateway: "172.16.0.1".into(), device: "eth-test".into() }];
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"[{"dest":"default","gateway":"172.16.0.1","device":"eth-test"}]"#
        );
    }

    #[test]
    fn guest_text_reaches_the_terminal_without_control_characters() {
        let evil = "IP Virtual Server\x1b]0;owned\x07\r\n-> 10.0.0.1:80\x1b[2J\u{9b}31m";
        assert_eq!(printable(evil, true), "IP Virtual Server?]0;owned??\n-> 10.0.0.1:80?[2J?31m");
        assert_eq!(printable("refused:\nline two\x1b[1m", false), "refused: line two?[1m");
    }

    #[test]
    fn pci_addr_as_kata_prints_it() {
        assert_eq!(pci_addr(&"10/01".parse().unwrap()), "10.0/01");
        assert_eq!(pci_addr(&"06".parse().unwrap()), "06");
    }
}
