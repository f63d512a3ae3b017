//! Network messages of the agent protocol's `types` package. JSON keys are the protocol's field
//! names (`IPAddresses`, `hwAddr`, `devicePath`, `raw_flags`, `toIPAddress`, ...), as kata's
//! tools print them.

use serde::{Deserialize, Serialize};

/// `types.IPFamily`: v4 = 0, v6 = 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(into = "i32", try_from = "i32")]
pub enum IpFamily {
    #[default]
    V4,
    V6,
}

impl From<IpFamily> for i32 {
    fn from(f: IpFamily) -> i32 {
        match f {
            IpFamily::V4 => 0,
            IpFamily::V6 => 1,
        }
    }
}

impl TryFrom<i32> for IpFamily {
    type Error = String;

    fn try_from(v: i32) -> Result<Self, String> {
        match v {
            0 => Ok(IpFamily::V4),
            1 => Ok(IpFamily::V6),
            other => Err(format!("IP family {other} is neither 0 (v4) nor 1 (v6)")),
        }
    }
}

/// `types.IPAddress`: 1 family, 2 address, 3 mask (a prefix length, as a string).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct IpAddress {
    pub family: IpFamily,
    pub address: String,
    pub mask: String,
}

/// `types.Interface`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Interface {
    pub device: String,
    pub name: String,
    #[serde(rename = "IPAddresses")]
    pub ip_addresses: Vec<IpAddress>,
    pub mtu: u64,
    #[serde(rename = "hwAddr")]
    pub hw_addr: String,
    /// The guest PCI path (`02/01`); empty until the NIC is plugged in.
    #[serde(rename = "devicePath")]
    pub device_path: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub raw_flags: u32,
    #[serde(rename = "Queues")]
    pub queues: u32,
}

/// `types.Route`. An empty `dest` is the default route.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Route {
    pub dest: String,
    pub gateway: String,
    pub device: String,
    pub source: String,
    pub scope: u32,
    pub family: IpFamily,
    pub flags: u32,
    pub mtu: u32,
}

/// `types.ARPNeighbor`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ArpNeighbor {
    #[serde(rename = "toIPAddress")]
    pub to_ip_address: Option<IpAddress>,
    pub device: String,
    pub lladdr: String,
    pub state: i32,
    pub flags: i32,
}

use crate::protocols::types as pb;

fn pb_family(f: IpFamily) -> protobuf::EnumOrUnknown<pb::IPFamily> {
    protobuf::EnumOrUnknown::new(match f {
        IpFamily::V4 => pb::IPFamily::v4,
        IpFamily::V6 => pb::IPFamily::v6,
    })
}

impl From<&IpAddress> for pb::IPAddress {
    fn from(a: &IpAddress) -> Self {
        pb::IPAddress {
            family: pb_family(a.family),
            address: a.address.clone(),
            mask: a.mask.clone(),
            ..Default::default()
        }
    }
}

impl From<&Interface> for pb::Interface {
    fn from(i: &Interface) -> Self {
        pb::Interface {
            device: i.device.clone(),
            name: i.name.clone(),
            IPAddresses: i.ip_addresses.iter().map(pb::IPAddress::from).collect(),
            mtu: i.mtu,
            hwAddr: i.hw_addr.clone(),
            devicePath: i.device_path.clone(),
            type_: i.kind.clone(),
            raw_flags: i.raw_flags,
            Queues: i.queues,
            ..Default::default()
        }
    }
}

impl From<&Route> for pb::Route {
    fn from(r: &Route) -> Self {
        pb::Route {
            dest: r.dest.clone(),
            gateway: r.gateway.clone(),
            device: r.device.clone(),
            source: r.source.clone(),
            scope: r.scope,
            family: pb_family(r.family),
            flags: r.flags,
            mtu: r.mtu,
            ..Default::default()
        }
    }
}

impl From<&ArpNeighbor> for pb::ARPNeighbor {
    fn from(n: &ArpNeighbor) -> Self {
        pb::ARPNeighbor {
            toIPAddress: n.to_ip_address.as_ref().map(pb::IPAddress::from).into(),
            device: n.device.clone(),
            lladdr: n.lladdr.clone(),
            state: n.state,
            flags: n.flags,
            ..Default::default()
        }
    }
}
