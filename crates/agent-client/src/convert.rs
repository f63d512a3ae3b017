//! From the network crate's scan model to agent messages.

use std::net::IpAddr;

use network::{Link, Neighbor, Route as NetRoute};

use crate::types::{ArpNeighbor, Interface, IpAddress, IpFamily, Route};

fn family(ip: &IpAddr) -> IpFamily {
    if ip.is_ipv4() {
        IpFamily::V4
    } else {
        IpFamily::V6
    }
}

/// One `Interface` per link; `devicePath` and `Queues` are filled in once the NIC is plugged.
pub fn interfaces(links: &[Link]) -> Vec<Interface> {
    links
        .iter()
        .map(|l| Interface {
            device: l.name.to_string(),
            name: l.name.to_string(),
            ip_addresses: l
                .addresses
                .iter()
                .map(|a| IpAddress {
                    family: family(&a.addr()),
                    address: a.addr().to_string(),
                    mask: a.prefix_len().to_string(),
                })
                .collect(),
            mtu: u64::from(l.mtu),
            hw_addr: l.mac.map(|m| m.to_string()).unwrap_or_default(),
            device_path: String::new(),
            kind: l.kind.type_name().to_owned(),
            raw_flags: l.flags,
            queues: 0,
        })
        .collect()
}

/// Routes in the scan's order (gateway-less first).
pub fn routes(routes: &[NetRoute]) -> Vec<Route> {
    routes
        .iter()
        .map(|r| Route {
            dest: r.dest.map(|d| d.to_string()).unwrap_or_default(),
            gateway: r.gateway.map(|g| g.to_string()).unwrap_or_default(),
            device: r.device.to_string(),
            source: r.source.map(|s| s.to_string()).unwrap_or_default(),
            scope: u32::from(r.scope),
            family: if r.ipv6 { IpFamily::V6 } else { IpFamily::V4 },
            flags: r.flags,
            mtu: r.mtu,
        })
        .collect()
}

/// Permanent neighbours.
pub fn neighbors(neighbors: &[Neighbor]) -> Vec<ArpNeighbor> {
    neighbors
        .iter()
        .map(|n| ArpNeighbor {
            to_ip_address: Some(IpAddress { family: family(&n.ip), address: n.ip.to_string(), mask: String::new() }),
            device: n.device.to_string(),
            lladdr: n.lladdr.map(|m| m.to_string()).unwrap_or_default(),
            state: i32::from(n.state),
            flags: i32::from(n.flags),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use network::LinkKind;

    #[test]
    fn link_route_and_neighbour_convert_to_protocol_json() {
        let link = Link {
            index: 2,
            name: "eth0".parse().unwrap(),
            kind: LinkKind::Veth,
            mac: Some("02:00:0a:58:00:05".parse().unwrap()),
            mtu: 1450,
            flags: 0x11043,
            addresses: vec!["10.88.0.5/24".parse().unwrap(), "fd00::5/64".parse().unwrap()],
        };
        let j = serde_json::to_string(&interfaces(&[link])).unwrap();
        assert_eq!(
            j,
            r#"[{"device":"eth0","name":"eth0","IPAddresses":[{"family":0,"address":"10.88.0.5","mask":"24"},{"family":1,"address":"fd00::5","mask":"64"}],"mtu":1450,"hwAddr":"02:00:0a:58:00:05","devicePath":"","type":"veth","raw_flags":69699,"Queues":0}]"#
        );
        let r = NetRoute {
            dest: None,
            gateway: Some("fd00::1".parse().unwrap()),
            device: "eth0".parse().unwrap(),
            source: None,
            scope: 0,
            ipv6: true,
            flags: 0,
            mtu: 0,
            protocol: 3,
            metric: 1024,
        };
        let j = serde_json::to_string(&routes(&[r])).unwrap();
        assert_eq!(
            j,
            r#"[{"dest":"","gateway":"fd00::1","device":"eth0","source":"","scope":0,"family":1,"flags":0,"mtu":0}]"#
        );
        let n = Neighbor {
            ip: "10.88.0.9".parse().unwrap(),
            device: "eth0".parse().unwrap(),
            lladdr: Some("02:00:0a:58:00:09".parse().unwrap()),
            state: 0x80,
            flags: 0,
        };
        let j = serde_json::to_string(&neighbors(&[n])).unwrap();
        assert_eq!(
            j,
            r#"[{"toIPAddress":{"family":0,"address":"10.88.0.9","mask":""},"device":"eth0","lladdr":"02:00:0a:58:00:09","state":128,"flags":0}]"#
        );
    }

    #[test]
    fn family_rejects_unknown_numbers() {
        assert!(serde_json::from_str::<IpFamily>("2").is_err());
        assert_eq!(serde_json::from_str::<IpFamily>("1").unwrap(), IpFamily::V6);
    }
}
