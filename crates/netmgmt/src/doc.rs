//! The input documents of `kata-runtime kata-network` (`network-cli.md`): parsed and checked
//! before anything else happens. Pure: no I/O except [`IfaceDoc::check_host`].
//!
//! Both the shim (the management service) and `kata-runtime` check documents with these.

use std::net::IpAddr;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use ipnet::IpNet;
use network::{IfName, MacAddr};
use serde::{Deserialize, Serialize};

/// Why a document was refused: the field and the rule, with the bad value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocError {
    #[error("{0}")]
    Json(String),
    #[error("{field}: {value:?} must start with a letter and hold only letters, digits, '_', '-' and '.'")]
    NameChars { field: &'static str, value: String },
    #[error("{field}: {value:?} is longer than 15 characters")]
    NameLength { field: &'static str, value: String },
    #[error("IPAddresses: at most one address for now, got {0}")]
    TooManyAddresses(usize),
    #[error("IPAddresses[0].address: {0:?} is not an IP address")]
    Address(String),
    #[error("IPAddresses[0].mask: {0:?} is not a prefix length for that address (1-32 for IPv4, 1-128 for IPv6, digits only)")]
    Mask(String),
    #[error("IPAddresses[0].address: {addr} is {why}, not a unicast host address")]
    Unusable { addr: IpAddr, why: &'static str },
    #[error("gateway: {addr} is {why}, not a unicast host address")]
    UnusableGateway { addr: IpAddr, why: &'static str },
    #[error("gateway: {gateway} is not of the same family as dest {dest}")]
    MixedFamilies { dest: IpNet, gateway: IpAddr },
    #[error("hwAddr: {0:?} is not a unicast MAC address")]
    Mac(String),
    #[error("mtu: {0} is outside [46, 9600]")]
    Mtu(u64),
    #[error("vhostUserSocket: {0:?} is longer than 128 bytes")]
    SocketLength(String),
    #[error("vhostUserSocket: the file name of {0:?} must start with a letter and hold only letters, digits and '-'")]
    SocketName(String),
    #[error("vhostUserSocket: {0:?} does not exist or is not a socket")]
    SocketMissing(String),
    #[error("vhostUserSocket: refused: {0}")]
    SocketUntrusted(String),
    #[error("queues: {0} is more than 16")]
    Queues(u32),
    #[error("name: required")]
    NameMissing,
    #[error("dest: {0:?} is not ip/prefix, ip or \"default\"")]
    Dest(String),
    #[error("gateway: {0:?} is not an IP address")]
    Gateway(String),
    #[error("gateway: required when dest is \"default\"")]
    DefaultWithoutGateway,
    #[error("device: required")]
    DeviceMissing,
    #[error("dest: required")]
    DestMissing,
}

/// One address of the add-iface document.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AddrDoc {
    pub address: String,
    pub mask: String,
}

/// The add-iface / del-iface document, as operators write it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IfaceDoc {
    pub device: String,
    pub name: String,
    #[serde(rename = "IPAddresses", default)]
    pub ip_addresses: Vec<AddrDoc>,
    #[serde(rename = "hwAddr")]
    pub hw_addr: String,
    pub mtu: u64,
    #[serde(rename = "vhostUserSocket", default, skip_serializing_if = "Option::is_none")]
    pub vhost_user_socket: Option<String>,
    #[serde(default)]
    pub queues: u32,
}

/// The del-iface document: the add-iface fields, all optional but `name`, the only one used.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DelIfaceDoc {
    #[serde(default)]
    pub device: String,
    #[serde(default)]
    pub name: String,
    #[serde(rename = "IPAddresses", default)]
    pub ip_addresses: Vec<AddrDoc>,
    #[serde(rename = "hwAddr", default)]
    pub hw_addr: String,
    #[serde(default)]
    pub mtu: u64,
    #[serde(rename = "vhostUserSocket", default)]
    pub vhost_user_socket: Option<String>,
    #[serde(default)]
    pub queues: u32,
}

impl DelIfaceDoc {
    pub fn parse(json: &str) -> Result<Self, DocError> {
        serde_json::from_str(json).map_err(|e| DocError::Json(e.to_string()))
    }

    /// The interface name inside the VM, checked.
    pub fn name(&self) -> Result<&str, DocError> {
        if self.name.is_empty() {
            return Err(DocError::NameMissing);
        }
        check_name("name", &self.name)?;
        Ok(&self.name)
    }
}

/// A checked add-iface request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IfaceRequest {
    pub device: IfName,
    pub name: String,
    pub address: Option<IpNet>,
    pub mac: MacAddr,
    pub mtu: u32,
    pub vhost_user_socket: Option<String>,
    pub queues: u32,
}

/// A number written with ASCII digits only (no sign, no space), at most 3 of them.
fn digits(s: &str) -> Option<u32> {
    (!s.is_empty() && s.len() <= 3 && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok()).flatten()
}

/// Why `ip` cannot be an interface's (or a gateway's) address, if it cannot.
fn not_a_host(ip: &IpAddr) -> Option<&'static str> {
    match ip {
        ip if ip.is_unspecified() => Some("unspecified"),
        ip if ip.is_multicast() => Some("multicast"),
        ip if ip.is_loopback() => Some("loopback"),
        IpAddr::V4(v4) if v4.is_broadcast() => Some("the limited broadcast address"),
        _ => None,
    }
}

/// `ip/prefix` with a prefix of digits only, in range for the family.
fn dest_net(d: &str) -> Option<IpNet> {
    let (ip, prefix) = d.split_once('/')?;
    let ip: IpAddr = ip.parse().ok()?;
    let prefix = digits(prefix)?;
    IpNet::new(ip, u8::try_from(prefix).ok()?).ok()
}

/// `device` and `name`: starts with a letter; letters, digits, `_`, `-`, `.`; at most 15.
fn check_name(field: &'static str, v: &str) -> Result<(), DocError> {
    let ok_chars = v.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && v.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !ok_chars {
        return Err(DocError::NameChars { field, value: v.to_owned() });
    }
    if v.len() > 15 {
        return Err(DocError::NameLength { field, value: v.to_owned() });
    }
    Ok(())
}

/// `v` (checked by the field's own rule first) as a device name.
fn if_name(field: &'static str, v: &str) -> Result<IfName, DocError> {
    v.parse().map_err(|_| DocError::NameChars { field, value: v.to_owned() })
}

impl IfaceDoc {
    pub fn parse(json: &str) -> Result<Self, DocError> {
        serde_json::from_str(json).map_err(|e| DocError::Json(e.to_string()))
    }

    /// Every rule of the document, without touching the host.
    pub fn validate(&self) -> Result<IfaceRequest, DocError> {
        check_name("device", &self.device)?;
        check_name("name", &self.name)?;
        if self.ip_addresses.len() > 1 {
            return Err(DocError::TooManyAddresses(self.ip_addresses.len()));
        }
        let address = match self.ip_addresses.first() {
            None => None,
            Some(a) => {
                let ip: IpAddr = a.address.parse().map_err(|_| DocError::Address(a.address.clone()))?;
                if let Some(why) = not_a_host(&ip) {
                    return Err(DocError::Unusable { addr: ip, why });
                }
                let max = if ip.is_ipv4() { 32 } else { 128 };
                let prefix =
                    digits(&a.mask).filter(|p| (1..=max).contains(p)).ok_or_else(|| DocError::Mask(a.mask.clone()))?;
                Some(IpNet::new(ip, prefix as u8).map_err(|_| DocError::Mask(a.mask.clone()))?)
            }
        };
        let mac: MacAddr = self.hw_addr.parse().map_err(|_| DocError::Mac(self.hw_addr.clone()))?;
        if !mac.is_unicast() || mac.is_zero() {
            return Err(DocError::Mac(self.hw_addr.clone()));
        }
        if !(46..=9600).contains(&self.mtu) {
            return Err(DocError::Mtu(self.mtu));
        }
        if let Some(s) = &self.vhost_user_socket {
            if s.len() > 128 {
                return Err(DocError::SocketLength(s.clone()));
            }
            let file = Path::new(s).file_name().and_then(|f| f.to_str()).unwrap_or("");
            let ok = file.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
                && file.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
            if !ok {
                return Err(DocError::SocketName(s.clone()));
            }
        }
        if self.queues > 16 {
            return Err(DocError::Queues(self.queues));
        }
        Ok(IfaceRequest {
            device: if_name("device", &self.device)?,
            name: self.name.clone(),
            address,
            mac,
            mtu: self.mtu as u32,
            vhost_user_socket: self.vhost_user_socket.clone(),
            queues: self.queues,
        })
    }
}

impl IfaceRequest {
    /// The checks that look at the host: the vhost-user socket must exist, be a socket, and be
    /// root's in directories only root can change (`network::trust`).
    pub fn check_host(&self) -> Result<(), DocError> {
        if let Some(s) = &self.vhost_user_socket {
            let is_socket = std::fs::metadata(s).map(|m| m.file_type().is_socket()).unwrap_or(false);
            if !is_socket {
                return Err(DocError::SocketMissing(s.clone()));
            }
            network::trust::check_root_socket(Path::new(s)).map_err(|e| DocError::SocketUntrusted(e.to_string()))?;
        }
        Ok(())
    }
}

/// The add-route / del-route document.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteDoc {
    #[serde(default)]
    pub dest: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub gateway: String,
    #[serde(default)]
    pub device: String,
}

/// A checked route: `dest` None is the default route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteRequest {
    pub dest: Option<IpNet>,
    pub gateway: Option<IpAddr>,
    pub device: Option<IfName>,
}

impl RouteDoc {
    pub fn parse(json: &str) -> Result<Self, DocError> {
        serde_json::from_str(json).map_err(|e| DocError::Json(e.to_string()))
    }

    /// Rules of add-route (`for_add`: device required) and del-route (dest required; device and
    /// gateway are optional filters).
    pub fn validate(&self, for_add: bool) -> Result<RouteRequest, DocError> {
        let dest = match self.dest.as_str() {
            "" => return Err(DocError::DestMissing),
            "default" => None,
            d if d.contains('/') => Some(dest_net(d).ok_or_else(|| DocError::Dest(d.to_owned()))?),
            d => Some(IpNet::from(d.parse::<IpAddr>().map_err(|_| DocError::Dest(d.to_owned()))?)),
        };
        let gateway = match self.gateway.as_str() {
            "" => None,
            g => Some(g.parse::<IpAddr>().map_err(|_| DocError::Gateway(g.to_owned()))?),
        };
        if dest.is_none() && gateway.is_none() && for_add {
            return Err(DocError::DefaultWithoutGateway);
        }
        if let Some(g) = gateway {
            if let Some(why) = not_a_host(&g) {
                return Err(DocError::UnusableGateway { addr: g, why });
            }
            if let Some(d) = dest.filter(|d| d.addr().is_ipv4() != g.is_ipv4()) {
                return Err(DocError::MixedFamilies { dest: d, gateway: g });
            }
        }
        let device = match self.device.as_str() {
            "" if for_add => return Err(DocError::DeviceMissing),
            "" => None,
            d => {
                if d.len() > 15 {
                    return Err(DocError::NameLength { field: "device", value: d.to_owned() });
                }
                Some(if_name("device", d)?)
            }
        };
        Ok(RouteRequest { dest, gateway, device })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANUAL: &str = r#"{
        "device": "tap-test",
        "name": "eth-test",
        "IPAddresses": [{"address": "172.16.0.3", "mask": "16"}],
        "hwAddr":"02:42:20:6f:a3:69",
        "mtu": 1500,
        "vhostUserSocket":"/usr/local/var/run/openvswitch/vhost-user1",
        "queues":5
    }"#;

    #[test]
    fn the_manuals_example_parses() {
        let r = IfaceDoc::parse(MANUAL).unwrap().validate().unwrap();
        assert_eq!(r.address, Some("172.16.0.3/16".parse().unwrap()));
        assert_eq!((r.mtu, r.queues, r.device.as_str(), r.name.as_str()), (1500, 5, "tap-test", "eth-test"));
        // It names a socket that is not on this machine.
        assert_eq!(r.check_host(), Err(DocError::SocketMissing("/usr/local/var/run/openvswitch/vhost-user1".into())));
    }

    #[test]
    fn every_rule_refuses_with_the_field_named() {
        let base = IfaceDoc::parse(MANUAL).unwrap();
        let with = |f: &dyn Fn(&mut IfaceDoc)| {
            let mut d = base.clone();
            f(&mut d);
            d.validate().unwrap_err()
        };
        let cases: Vec<(DocError, &str)> = vec![
            (with(&|d| d.device = "tap-test-too-long".into()), "device"),
            (with(&|d| d.device = "1tap".into()), "device"),
            (with(&|d| d.device = "tap;rm -rf".into()), "device"),
            (with(&|d| d.name = "eth test".into()), "name"),
            (with(&|d| d.name = "eth$(reboot)".into()), "name"),
            (with(&|d| d.mtu = 45), "mtu"),
            (with(&|d| d.mtu = 9601), "mtu"),
            (with(&|d| d.hw_addr = "02:42:20:6f:a3".into()), "hwAddr"),
            (with(&|d| d.hw_addr = "01:00:5e:00:00:01".into()), "hwAddr"),
            (
                with(&|d| d.ip_addresses.push(AddrDoc { address: "172.16.0.4".into(), mask: "16".into() })),
                "IPAddresses",
            ),
            (with(&|d| d.ip_addresses[0].mask = "33".into()), "IPAddresses[0].mask"),
            (with(&|d| d.ip_addresses[0].address = "172.16.0.300".into()), "IPAddresses[0].address"),
            (with(&|d| d.vhost_user_socket = Some("/run/ovs/1bad".into())), "vhostUserSocket"),
            (with(&|d| d.vhost_user_socket = Some(format!("/{}/sock", "a".repeat(130)))), "vhostUserSocket"),
            (with(&|d| d.hw_addr = "+2:42:20:6f:a3:69".into()), "hwAddr"),
            (with(&|d| d.ip_addresses[0].mask = "+16".into()), "IPAddresses[0].mask"),
            (with(&|d| d.ip_addresses[0].mask = " 16".into()), "IPAddresses[0].mask"),
            (with(&|d| d.ip_addresses[0].mask = "0".into()), "IPAddresses[0].mask"),
            (with(&|d| d.ip_addresses[0].address = "0.0.0.0".into()), "IPAddresses[0].address"),
            (with(&|d| d.ip_addresses[0].address = "224.0.0.5".into()), "IPAddresses[0].address"),
            (with(&|d| d.ip_addresses[0].address = "127.0.0.2".into()), "IPAddresses[0].address"),
            (with(&|d| d.ip_addresses[0].address = "255.255.255.255".into()), "IPAddresses[0].address"),
            (with(&|d| d.ip_addresses[0].address = "::".into()), "IPAddresses[0].address"),
            (with(&|d| d.ip_addresses[0].address = "ff02::1".into()), "IPAddresses[0].address"),
            (with(&|d| d.ip_addresses[0].address = "::1".into()), "IPAddresses[0].address"),
        ];
        for (err, field) in cases {
            assert!(err.to_string().starts_with(field), "{field}: {err}");
        }
        assert_eq!(with(&|d| d.mtu = 45), DocError::Mtu(45));
        assert_eq!(
            with(&|d| d.ip_addresses[0].address = "224.0.0.5".into()).to_string(),
            "IPAddresses[0].address: 224.0.0.5 is multicast, not a unicast host address"
        );
        let v6 = |addr: &str, mask: &str| {
            let mut d = base.clone();
            d.vhost_user_socket = None;
            d.ip_addresses[0] = AddrDoc { address: addr.into(), mask: mask.into() };
            d.validate()
        };
        assert!(v6("fd00::3", "128").is_ok());
        assert_eq!(v6("fd00::3", "129"), Err(DocError::Mask("129".into())));
        assert_eq!(v6("172.16.0.3", "32").map(|r| r.address.unwrap().prefix_len()), Ok(32));
        let mut ok = base.clone();
        ok.mtu = 46;
        ok.vhost_user_socket = None;
        assert!(ok.validate().is_ok());
        ok.mtu = 9600;
        assert!(ok.validate().is_ok());
    }

    #[test]
    fn unknown_fields_and_missing_required_fields_are_refused() {
        let e = IfaceDoc::parse(r#"{"device":"t","name":"n","hwAddr":"02:00:00:00:00:01","mtu":1500,"colour":"red"}"#)
            .unwrap_err();
        assert!(e.to_string().contains("unknown field `colour`"), "{e}");
        let e = IfaceDoc::parse(r#"{"device":"t","name":"n","mtu":1500}"#).unwrap_err();
        assert!(e.to_string().contains("missing field `hwAddr`"), "{e}");
    }

    #[test]
    fn routes() {
        let ok = |j: &str, add: bool| RouteDoc::parse(j).unwrap().validate(add);
        assert_eq!(
            ok(r#"{"dest":"default","gateway":"172.16.0.1","device":"eth-test"}"#, true).unwrap(),
            RouteRequest {
                dest: None,
                gateway: Some("172.16.0.1".parse().unwrap()),
                device: Some("eth-test".parse().unwrap())
            }
        );
        assert_eq!(
            ok(r#"{"dest":"177.17.0.5","device":"lo"}"#, true).unwrap().dest,
            Some("177.17.0.5/32".parse().unwrap())
        );
        assert_eq!(
            ok(r#"{"dest":"fd00::5","device":"eth0"}"#, true).unwrap().dest,
            Some("fd00::5/128".parse().unwrap())
        );
        assert_eq!(ok(r#"{"dest":"default","device":"eth0"}"#, true), Err(DocError::DefaultWithoutGateway));
        assert_eq!(ok(r#"{"dest":"177.17.0.0/24"}"#, true), Err(DocError::DeviceMissing));
        assert!(ok(r#"{"dest":"177.17.0.0/24"}"#, false).is_ok(), "del-route: device is an optional filter");
        assert_eq!(ok(r#"{"device":"eth0"}"#, false), Err(DocError::DestMissing));
        assert_eq!(
            ok(r#"{"dest":"177.17.0.0/33","device":"eth0"}"#, true),
            Err(DocError::Dest("177.17.0.0/33".into()))
        );
        assert_eq!(
            ok(r#"{"dest":"177.17.0.0/+24","device":"eth0"}"#, true),
            Err(DocError::Dest("177.17.0.0/+24".into()))
        );
        let mixed = ok(r#"{"dest":"fd00::/64","gateway":"172.16.0.1","device":"eth0"}"#, true).unwrap_err();
        assert_eq!(mixed.to_string(), "gateway: 172.16.0.1 is not of the same family as dest fd00::/64");
        assert!(matches!(
            ok(r#"{"dest":"default","gateway":"224.0.0.1","device":"eth0"}"#, true),
            Err(DocError::UnusableGateway { .. })
        ));
        assert_eq!(ok(r#"{"dest":"default","gateway":"x","device":"eth0"}"#, true), Err(DocError::Gateway("x".into())));
        assert!(matches!(
            ok(r#"{"dest":"10.0.0.0/8","device":"netport_test_1234"}"#, true),
            Err(DocError::NameLength { .. })
        ));
        assert!(RouteDoc::parse(r#"{"dest":"default","via":"1.2.3.4"}"#).is_err());
    }
}
