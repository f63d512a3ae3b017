//! Newtypes that carry the rules of the names and addresses the network code handles.
//!
//! Input is parsed into these once, where it enters; code deeper in does not re-check.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a name, MAC address or PCI path was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("interface name {0:?} is empty or longer than 15 bytes")]
    IfNameLength(String),
    #[error("interface name {0:?} contains '/', ':', NUL or whitespace, or is '.' or '..'")]
    IfNameChars(String),
    #[error("MAC address {0:?} is not six colon-separated hex bytes")]
    MacSyntax(String),
    #[error("PCI path {0:?} is not slots of two hex digits separated by '/'")]
    PciPath(String),
}

/// A Linux network interface name: 1..=15 bytes, no `/`, `:`, NUL or whitespace.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IfName(String);

impl IfName {
    /// Longest name the kernel accepts (IFNAMSIZ - 1).
    pub(crate) const MAX_LEN: usize = 15;

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for IfName {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() || s.len() > Self::MAX_LEN {
            return Err(ParseError::IfNameLength(s.to_owned()));
        }
        let bad = |c: char| c == '/' || c == ':' || c == '\0' || c.is_whitespace();
        if s == "." || s == ".." || s.chars().any(bad) {
            return Err(ParseError::IfNameChars(s.to_owned()));
        }
        Ok(Self(s.to_owned()))
    }
}

impl fmt::Display for IfName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A 48-bit Ethernet MAC address, shown as lowercase `aa:bb:cc:dd:ee:ff`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// A locally administered unicast address from the kernel's random source.
    pub(crate) fn random_local() -> std::io::Result<Self> {
        let mut b = [0u8; 6];
        std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut b)?;
        b[0] = (b[0] & 0xfe) | 0x02;
        Ok(Self(b))
    }

    pub fn is_unicast(&self) -> bool {
        self.0[0] & 1 == 0
    }

    pub fn is_zero(&self) -> bool {
        self.0 == [0; 6]
    }

    /// The address of a netlink attribute, if it is six bytes long.
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        <[u8; 6]>::try_from(b).ok().map(Self)
    }
}

impl FromStr for MacAddr {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseError::MacSyntax(s.to_owned());
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in out.iter_mut() {
            let p = parts.next().ok_or_else(err)?;
            // Two hex digits: `from_str_radix` alone would take a sign ("+2").
            if p.len() != 2 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(err());
            }
            *byte = u8::from_str_radix(p, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(Self(out))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], b[3], b[4], b[5])
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Where a device sits in the guest's PCI tree: the slot chain from the root bus (`02/01`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PciPath(Vec<u8>);

impl PciPath {
    pub fn new(slots: Vec<u8>) -> Result<Self, ParseError> {
        if slots.is_empty() || slots.iter().any(|s| *s > 0x1f) {
            return Err(ParseError::PciPath(format!("{slots:?}")));
        }
        Ok(Self(slots))
    }

    pub fn slots(&self) -> &[u8] {
        &self.0
    }
}

impl FromStr for PciPath {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseError::PciPath(s.to_owned());
        let slots = s
            .split('/')
            .map(|p| {
                if p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()) {
                    u8::from_str_radix(p, 16).map_err(|_| err())
                } else {
                    Err(err())
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        Self::new(slots).map_err(|_| err())
    }
}

impl fmt::Display for PciPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("/")?;
            }
            write!(f, "{s:02x}")?;
        }
        Ok(())
    }
}

/// Serde through `Display`/`FromStr`, so the JSON form is the string an operator types.
macro_rules! serde_via_str {
    ($($t:ty),*) => {$(
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    )*};
}
serde_via_str!(IfName, MacAddr, PciPath);

/// How an endpoint's link is connected to the VM's NIC (`[runtime] internetworking_model`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkModel {
    /// A TAP `tap<N>_kata` joined to the link by tc mirred redirect both ways.
    #[default]
    TcFilter,
    /// A macvtap on the link; the VM uses the link's MAC.
    Macvtap,
    /// No connection: a TAP link is used as it is, other links get an unconnected TAP.
    None,
}

impl FromStr for NetworkModel {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "tcfilter" => Ok(Self::TcFilter),
            "macvtap" => Ok(Self::Macvtap),
            "none" => Ok(Self::None),
            other => Err(format!("unknown interworking model {other:?} (expected tcfilter, macvtap or none)")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_names() {
        let cases: &[(&str, Result<(), ParseError>)] = &[
            ("eth0", Ok(())),
            ("tap0_kata", Ok(())),
            ("a23456789012345", Ok(())),
            ("a234567890123456", Err(ParseError::IfNameLength("a234567890123456".into()))),
            ("", Err(ParseError::IfNameLength("".into()))),
            ("a/b", Err(ParseError::IfNameChars("a/b".into()))),
            ("a b", Err(ParseError::IfNameChars("a b".into()))),
            ("..", Err(ParseError::IfNameChars("..".into()))),
        ];
        for (input, want) in cases {
            assert_eq!(input.parse::<IfName>().map(|_| ()), *want, "{input}");
        }
    }

    #[test]
    fn mac_round_trip_and_rejects() {
        for signed in ["+2:42:20:6f:a3:69", "02:42:20:6f:a3:-9", "02:42:20:6f:a3: 9"] {
            assert!(signed.parse::<MacAddr>().is_err(), "{signed}");
        }
        assert!("+1/02".parse::<PciPath>().is_err());
        let m: MacAddr = "02:42:20:6F:a3:69".parse().unwrap();
        assert_eq!(m.to_string(), "02:42:20:6f:a3:69");
        assert!(m.is_unicast());
        for bad in ["02:42:20:6f:a3", "02:42:20:6f:a3:69:00", "0g:42:20:6f:a3:69", "2:42:20:6f:a3:69:0", ""] {
            assert_eq!(bad.parse::<MacAddr>(), Err(ParseError::MacSyntax(bad.into())), "{bad}");
        }
        let j = serde_json::to_string(&m).unwrap();
        assert_eq!(j, "\"02:42:20:6f:a3:69\"");
        assert_eq!(serde_json::from_str::<MacAddr>(&j).unwrap(), m);
        let r = MacAddr::random_local().unwrap();
        assert!(r.is_unicast() && r.0[0] & 2 == 2);
    }

    #[test]
    fn pci_paths() {
        let p: PciPath = "02/01".parse().unwrap();
        assert_eq!(p.slots(), &[2, 1]);
        assert_eq!(p.to_string(), "02/01");
        for bad in ["", "2/1", "02/", "02/20", "zz"] {
            assert!(bad.parse::<PciPath>().is_err(), "{bad}");
        }
    }

    #[test]
    fn models() {
        assert_eq!("tcfilter".parse(), Ok(NetworkModel::TcFilter));
        assert_eq!("macvtap".parse(), Ok(NetworkModel::Macvtap));
        assert_eq!("none".parse(), Ok(NetworkModel::None));
        assert!("bridged".parse::<NetworkModel>().is_err());
        assert_eq!(serde_json::from_str::<NetworkModel>("\"tcfilter\"").unwrap(), NetworkModel::TcFilter);
        assert!(serde_json::from_str::<NetworkModel>("\"TcFilter\"").is_err());
    }
}
