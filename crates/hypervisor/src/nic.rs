//! One description of a virtio-net NIC, rendered both ways QEMU takes it: command-line
//! arguments (cold plug) and QMP `chardev-add` / `netdev_add` / `device_add` arguments
//! (hotplug). The ids QEMU knows a NIC's parts by are made here only.

use std::path::PathBuf;

use network::MacAddr;
use serde_json::{json, Map, Value};

/// How the NIC's frames reach the host, by the names QEMU knows its fds by: their numbers on
/// the command line, their `getfd` names over QMP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Netdev {
    /// One TAP fd per queue; one vhost-net fd per queue, or none for `vhost=off`.
    Tap {
        fds: Vec<String>,
        vhostfds: Vec<String>,
    },
    VhostUser {
        socket: PathBuf,
    },
}

/// Entries of each receive virtqueue.
pub(crate) const RX_QUEUE_SIZE: u64 = 1024;

/// A virtio-net-pci device and its netdev.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NicDevice {
    pub id: String,
    pub mac: MacAddr,
    pub mtu: u32,
    pub bus: String,
    /// The slot on `bus`, as QEMU writes it (`0x6`).
    pub addr: String,
    pub netdev: Netdev,
}

/// A property value; rendered `k=v` on the command line, typed in QMP.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Prop {
    Str(String),
    Num(u64),
    Bool(bool),
}

impl Prop {
    fn arg(&self) -> String {
        match self {
            Prop::Str(s) => s.clone(),
            Prop::Num(n) => n.to_string(),
            Prop::Bool(b) => (if *b { "on" } else { "off" }).to_owned(),
        }
    }

    fn json(&self) -> Value {
        match self {
            Prop::Str(s) => json!(s),
            Prop::Num(n) => json!(n),
            Prop::Bool(b) => json!(b),
        }
    }
}

type Props = Vec<(&'static str, Prop)>;

fn s(v: impl Into<String>) -> Prop {
    Prop::Str(v.into())
}

/// `type,k=v,...` for `-netdev`, or `k=v,...` for `-device`.
fn render_arg(head: Option<&str>, props: &Props) -> String {
    let mut parts: Vec<String> = head.map(str::to_owned).into_iter().collect();
    parts.extend(props.iter().map(|(k, v)| format!("{k}={}", v.arg())));
    parts.join(",")
}

fn render_json(props: &Props) -> Value {
    Value::Object(props.iter().map(|(k, v)| ((*k).to_owned(), v.json())).collect::<Map<_, _>>())
}

impl NicDevice {
    pub(crate) fn netdev_id(&self) -> String {
        netdev_id(&self.id)
    }

    pub(crate) fn chardev_id(&self) -> String {
        format!("char-{}", self.id)
    }

    fn queues(&self) -> usize {
        match &self.netdev {
            Netdev::Tap { fds, .. } => fds.len().max(1),
            Netdev::VhostUser { .. } => 1,
        }
    }

    /// The netdev's type and properties.
    fn netdev_props(&self) -> (&'static str, Props) {
        let mut p: Props = vec![("id", s(self.netdev_id()))];
        match &self.netdev {
            Netdev::Tap { fds, vhostfds } => {
                match fds.as_slice() {
                    [one] => p.push(("fd", s(one))),
                    many => p.push(("fds", s(many.join(":")))),
                }
                p.push(("vhost", Prop::Bool(!vhostfds.is_empty())));
                match vhostfds.as_slice() {
                    [] => {}
                    [one] => p.push(("vhostfd", s(one))),
                    many => p.push(("vhostfds", s(many.join(":")))),
                }
                ("tap", p)
            }
            Netdev::VhostUser { .. } => {
                p.push(("chardev", s(self.chardev_id())));
                p.push(("vhostforce", Prop::Bool(true)));
                ("vhost-user", p)
            }
        }
    }

    fn device_props(&self) -> Props {
        let mut p: Props = vec![
            ("driver", s("virtio-net-pci")),
            ("id", s(&self.id)),
            ("netdev", s(self.netdev_id())),
            ("mac", s(self.mac.to_string())),
            ("disable-modern", Prop::Bool(false)),
            ("host_mtu", Prop::Num(self.mtu.into())),
            ("romfile", s("")),
            ("bus", s(&self.bus)),
            ("addr", s(&self.addr)),
            // The largest receive ring virtio-net takes (256 by default): fewer drops when the
            // guest is slow to refill it, as under TCG or on a busy node. (The transmit ring
            // stays 256: QEMU takes more only for vhost-user and vDPA backends.)
            ("rx_queue_size", Prop::Num(RX_QUEUE_SIZE)),
        ];
        let queues = self.queues();
        if queues > 1 {
            p.push(("mq", Prop::Bool(true)));
            p.push(("vectors", Prop::Num(2 * queues as u64 + 2)));
        }
        p
    }

    /// `-chardev` (vhost-user only), `-netdev` and `-device`.
    pub fn args(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Netdev::VhostUser { socket } = &self.netdev {
            out.push("-chardev".to_owned());
            out.push(format!("socket,id={},path={}", self.chardev_id(), socket.display()));
        }
        let (kind, netdev) = self.netdev_props();
        out.extend(["-netdev".to_owned(), render_arg(Some(kind), &netdev)]);
        out.extend(["-device".to_owned(), render_arg(None, &self.device_props())]);
        out
    }

    /// `chardev-add` arguments (vhost-user only).
    pub(crate) fn qmp_chardev(&self) -> Option<Value> {
        match &self.netdev {
            Netdev::VhostUser { socket } => Some(json!({"id": self.chardev_id(), "backend": {"type": "socket",
                "data": {"addr": {"type": "unix", "data": {"path": socket}}, "server": false}}})),
            Netdev::Tap { .. } => None,
        }
    }

    /// `netdev_add` arguments.
    pub(crate) fn qmp_netdev(&self) -> Value {
        let (kind, props) = self.netdev_props();
        let mut v = render_json(&props);
        v["type"] = json!(kind);
        v
    }

    /// `device_add` arguments.
    pub(crate) fn qmp_device(&self) -> Value {
        render_json(&self.device_props())
    }
}

/// The netdev id of NIC `id`.
pub(crate) fn netdev_id(id: &str) -> String {
    format!("nd-{id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tap(queues: usize, vhost: bool) -> NicDevice {
        let names = |from: usize| (from..from + queues).map(|n| n.to_string()).collect();
        NicDevice {
            id: "network-0".into(),
            mac: "02:00:0a:58:00:05".parse().unwrap(),
            mtu: 1450,
            bus: "pcie.0".into(),
            addr: "0x6".into(),
            netdev: Netdev::Tap { fds: names(3), vhostfds: if vhost { names(3 + queues) } else { vec![] } },
        }
    }

    #[test]
    fn one_value_as_command_line_and_as_qmp() {
        let n = tap(2, true);
        assert_eq!(
            n.args(),
            vec![
                "-netdev",
                "tap,id=nd-network-0,fds=3:4,vhost=on,vhostfds=5:6",
                "-device",
                "driver=virtio-net-pci,id=network-0,netdev=nd-network-0,mac=02:00:0a:58:00:05,disable-modern=off,host_mtu=1450,romfile=,bus=pcie.0,addr=0x6,rx_queue_size=1024,mq=on,vectors=6",
            ]
        );
        assert_eq!(n.qmp_chardev(), None);
        assert_eq!(
            n.qmp_netdev(),
            json!({"type": "tap", "id": "nd-network-0", "fds": "3:4", "vhost": true, "vhostfds": "5:6"})
        );
        assert_eq!(
            n.qmp_device(),
            json!({"driver": "virtio-net-pci", "id": "network-0", "netdev": "nd-network-0",
                "mac": "02:00:0a:58:00:05", "disable-modern": false, "host_mtu": 1450, "romfile": "",
                "bus": "pcie.0", "addr": "0x6", "rx_queue_size": 1024, "mq": true, "vectors": 6})
        );
    }

    #[test]
    fn tap_shapes() {
        let dev = "driver=virtio-net-pci,id=network-0,netdev=nd-network-0,mac=02:00:0a:58:00:05,disable-modern=off,host_mtu=1450,romfile=,bus=pcie.0,addr=0x6,rx_queue_size=1024";
        let cases: Vec<(usize, bool, &str, String)> = vec![
            (1, false, "tap,id=nd-network-0,fd=3,vhost=off", dev.to_owned()),
            (1, true, "tap,id=nd-network-0,fd=3,vhost=on,vhostfd=4", dev.to_owned()),
            (2, false, "tap,id=nd-network-0,fds=3:4,vhost=off", format!("{dev},mq=on,vectors=6")),
            (4, true, "tap,id=nd-network-0,fds=3:4:5:6,vhost=on,vhostfds=7:8:9:10", format!("{dev},mq=on,vectors=10")),
        ];
        for (queues, vhost, netdev, device) in cases {
            let args = tap(queues, vhost).args();
            assert_eq!(
                args,
                vec!["-netdev".to_owned(), netdev.to_owned(), "-device".to_owned(), device],
                "{queues} {vhost}"
            );
        }
        assert_eq!(tap(1, false).qmp_netdev(), json!({"type": "tap", "id": "nd-network-0", "fd": "3", "vhost": false}));
    }

    #[test]
    fn vhost_user_shape() {
        let n = NicDevice {
            id: "network-1".into(),
            mac: "02:00:0a:58:00:06".parse().unwrap(),
            mtu: 1500,
            bus: "pci.0".into(),
            addr: "0x7".into(),
            netdev: Netdev::VhostUser { socket: "/run/ovs/vhu1".into() },
        };
        assert_eq!(
            n.args(),
            vec![
                "-chardev",
                "socket,id=char-network-1,path=/run/ovs/vhu1",
                "-netdev",
                "vhost-user,id=nd-network-1,chardev=char-network-1,vhostforce=on",
                "-device",
                "driver=virtio-net-pci,id=network-1,netdev=nd-network-1,mac=02:00:0a:58:00:06,disable-modern=off,host_mtu=1500,romfile=,bus=pci.0,addr=0x7,rx_queue_size=1024",
            ]
        );
        assert_eq!(n.qmp_chardev().unwrap()["backend"]["data"]["addr"]["data"]["path"], json!("/run/ovs/vhu1"));
        assert_eq!(
            n.qmp_netdev(),
            json!({"type": "vhost-user", "id": "nd-network-1", "chardev": "char-network-1", "vhostforce": true})
        );
    }
}
