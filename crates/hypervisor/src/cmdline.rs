//! The QEMU command line, and the fds it names.
//!
//! Each passed fd is given the number the command line names (3, 4, ...) in the child, without
//! close-on-exec; every other fd above them is closed before exec, so nothing else leaks in.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;

use network::{NicBackend, NicConfig, PciPath};

use crate::accel::Accel;
use crate::config::{AgentChannel, MachineType, QemuConfig};
use crate::error::{Error, Result};
use crate::slots::{self, Slots};

/// Arguments, and the fds to pass: (fd, number in the child).
#[derive(Debug, Default)]
pub struct CommandLine {
    pub args: Vec<String>,
    pub fds: Vec<(OwnedFd, RawFd)>,
}

impl CommandLine {
    fn arg(&mut self, a: &str, b: impl Into<String>) {
        self.args.push(a.to_owned());
        self.args.push(b.into());
    }

    /// Take an fd and return the number it will have in QEMU.
    fn pass(&mut self, fd: OwnedFd) -> RawFd {
        let n = 3 + self.fds.len() as RawFd;
        self.fds.push((fd, n));
        n
    }
}

fn join(ns: &[RawFd]) -> String {
    ns.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(":")
}

/// `-netdev` and `-device` for one cold-plugged NIC at `addr` on the root bus; `queue_fds` and
/// `vhost_fds` are the numbers the fds have in QEMU. Multi-queue adds `mq=on,vectors=2N+2`; fds and vhostfds are joined with `:`.
pub fn nic_args(nic: &NicConfig, queue_fds: &[RawFd], vhost_fds: &[RawFd], bus: &str, addr: u8) -> Vec<String> {
    let netdev_id = format!("nd-{}", nic.id);
    let netdev = match &nic.backend {
        NicBackend::Tap { .. } => {
            let mut s = format!("tap,id={netdev_id}");
            if queue_fds.len() == 1 {
                s += &format!(",fd={}", queue_fds[0]);
            } else {
                s += &format!(",fds={}", join(queue_fds));
            }
            match vhost_fds.len() {
                0 => s += ",vhost=off",
                1 => s += &format!(",vhost=on,vhostfd={}", vhost_fds[0]),
                _ => s += &format!(",vhost=on,vhostfds={}", join(vhost_fds)),
            }
            s
        }
        NicBackend::VhostUser { .. } => format!("vhost-user,id={netdev_id},chardev=char-{},vhostforce=on", nic.id),
    };
    let mut device = format!(
        "driver=virtio-net-pci,id={},netdev={netdev_id},mac={},disable-modern=false,host_mtu={},romfile=,bus={bus},addr={addr:#x}",
        nic.id, nic.guest_mac, nic.mtu
    );
    let queues = match &nic.backend {
        NicBackend::Tap { .. } => queue_fds.len(),
        NicBackend::VhostUser { .. } => 1,
    };
    if queues > 1 {
        device += &format!(",mq=on,vectors={}", 2 * queues + 2);
    }
    let mut out = Vec::new();
    if let NicBackend::VhostUser { socket } = &nic.backend {
        out.push("-chardev".into());
        out.push(format!("socket,id=char-{},path={}", nic.id, socket.display()));
    }
    out.extend(["-netdev".into(), netdev, "-device".into(), device]);
    out
}

/// Everything QEMU needs, in order. Returns the command line and the PCI path of each
/// cold-plugged NIC (by id).
pub fn build(
    cfg: &QemuConfig,
    accel: Accel,
    run_dir: &Path,
    agent: &AgentChannel,
    slots: &Slots,
    nics: Vec<NicConfig>,
) -> Result<(CommandLine, Vec<(String, PciPath)>)> {
    if nics.len() > slots::MAX_COLD_NICS {
        return Err(Error::Unsupported(format!("{} cold-plugged NICs (at most {})", nics.len(), slots::MAX_COLD_NICS)));
    }
    let mut c = CommandLine::default();
    let (machine, root_bus) = match cfg.machine_type {
        MachineType::Q35 => ("q35", "pcie.0"),
        MachineType::Pc => ("pc", "pci.0"),
    };
    c.arg("-name", "sandbox");
    c.arg("-machine", format!("{machine},accel={}", accel.as_str()));
    c.arg("-cpu", if accel == Accel::Kvm { "host" } else { "max" });
    c.arg("-smp", cfg.default_vcpus.to_string());
    c.arg("-m", format!("{}M", cfg.default_memory));
    // Shared guest memory: vhost-user (NICs, vsock) needs it, for cold plug and hotplug alike.
    c.arg("-object", format!("memory-backend-memfd,id=mem0,size={}M,share=on", cfg.default_memory));
    c.arg("-numa", "node,memdev=mem0");
    c.args.extend(["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"].map(String::from));
    c.arg("-display", "none");
    c.arg("-serial", format!("file:{}", run_dir.join("console.log").display()));
    c.arg("-monitor", "none");
    c.arg("-qmp", format!("unix:{},server=on,wait=off", run_dir.join("qmp.sock").display()));
    c.arg("-kernel", cfg.kernel.display().to_string());
    c.arg("-initrd", cfg.initrd.display().to_string());
    let mut append = "console=ttyS0 panic=-1 quiet".to_owned();
    if !cfg.kernel_params.is_empty() {
        append = format!("{append} {}", cfg.kernel_params);
    }
    c.arg("-append", append);
    for d in slots.devices() {
        c.arg("-device", d);
    }
    match agent {
        AgentChannel::Serial { socket } => {
            c.arg("-device", format!("virtio-serial-pci,id=vser0,bus={root_bus},addr={:#x}", slots::SERIAL_SLOT));
            c.arg("-chardev", format!("socket,id=agent,path={},server=on,wait=off", socket.display()));
            c.arg("-device", "virtserialport,chardev=agent,name=agent.channel.0");
        }
        AgentChannel::VhostUserVsock { backend } => {
            c.arg("-chardev", format!("socket,id=vsock,path={}", backend.display()));
            c.arg(
                "-device",
                format!("vhost-user-vsock-pci,chardev=vsock,bus={root_bus},addr={:#x}", slots::VSOCK_SLOT),
            );
        }
        AgentChannel::Vsock { cid } => {
            c.arg("-device", format!("vhost-vsock-pci,guest-cid={cid},bus={root_bus},addr={:#x}", slots::VSOCK_SLOT));
        }
    }
    let mut paths = Vec::new();
    for (i, nic) in nics.into_iter().enumerate() {
        let addr = slots::FIRST_COLD_NIC_SLOT + i as u8;
        let (args, id) = match nic.backend {
            NicBackend::Tap { device, queues, vhost } => {
                let q: Vec<RawFd> = queues.into_iter().map(|f| c.pass(f)).collect();
                let v: Vec<RawFd> = vhost.into_iter().map(|f| c.pass(f)).collect();
                let shape = NicConfig {
                    id: nic.id.clone(),
                    guest_mac: nic.guest_mac,
                    mtu: nic.mtu,
                    backend: NicBackend::Tap { device, queues: Vec::new(), vhost: Vec::new() },
                };
                (nic_args(&shape, &q, &v, root_bus, addr), nic.id)
            }
            backend @ NicBackend::VhostUser { .. } => {
                let shape = NicConfig { id: nic.id.clone(), guest_mac: nic.guest_mac, mtu: nic.mtu, backend };
                (nic_args(&shape, &[], &[], root_bus, addr), nic.id)
            }
        };
        c.args.extend(args);
        paths.push((id, PciPath::new(vec![addr]).expect("slot below 0x20")));
    }
    Ok((c, paths))
}

/// Install the fd map in a command: each fd becomes its number, without close-on-exec; all
/// other fds from 3 up are closed before exec.
pub fn install_fds(cmd: &mut tokio::process::Command, fds: &[(OwnedFd, RawFd)]) {
    let map: Vec<(RawFd, RawFd)> = fds.iter().map(|(f, n)| (f.as_raw_fd(), *n)).collect();
    let mut temps: Vec<RawFd> = vec![-1; map.len()];
    let first_free = 3 + map.len() as libc::c_uint;
    // SAFETY: the closure runs in the child between fork and exec and only makes
    // async-signal-safe system calls (fcntl, dup2, close, close_range) on memory allocated
    // before the fork; it does not allocate.
    unsafe {
        cmd.pre_exec(move || {
            // Move every source out of the target range first, so that a source numbered like a
            // target is not overwritten before it is used.
            for (i, (src, _)) in map.iter().enumerate() {
                let t = libc::fcntl(*src, libc::F_DUPFD, 1024);
                if t < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                temps[i] = t;
            }
            for (i, (_, dst)) in map.iter().enumerate() {
                if libc::dup2(temps[i], *dst) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if libc::syscall(libc::SYS_close_range, first_free, libc::c_uint::MAX, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nic(queues: usize, vhost: bool) -> (NicConfig, Vec<RawFd>, Vec<RawFd>) {
        let q: Vec<RawFd> = (0..queues as RawFd).map(|i| 3 + i).collect();
        let v: Vec<RawFd> =
            if vhost { (0..queues as RawFd).map(|i| 3 + queues as RawFd + i).collect() } else { vec![] };
        let n = NicConfig {
            id: "network-0".into(),
            guest_mac: "02:00:0a:58:00:05".parse().unwrap(),
            mtu: 1450,
            backend: NicBackend::Tap { device: "tap0_kata".parse().unwrap(), queues: vec![], vhost: vec![] },
        };
        (n, q, v)
    }

    #[test]
    fn nic_shapes() {
        let dev = "driver=virtio-net-pci,id=network-0,netdev=nd-network-0,mac=02:00:0a:58:00:05,disable-modern=false,host_mtu=1450,romfile=,bus=pcie.0,addr=0x6";
        let cases: Vec<(usize, bool, &str, String)> = vec![
            (1, false, "tap,id=nd-network-0,fd=3,vhost=off", dev.to_owned()),
            (1, true, "tap,id=nd-network-0,fd=3,vhost=on,vhostfd=4", dev.to_owned()),
            (2, false, "tap,id=nd-network-0,fds=3:4,vhost=off", format!("{dev},mq=on,vectors=6")),
            (4, true, "tap,id=nd-network-0,fds=3:4:5:6,vhost=on,vhostfds=7:8:9:10", format!("{dev},mq=on,vectors=10")),
        ];
        for (queues, vhost, netdev, device) in cases {
            let (n, q, v) = nic(queues, vhost);
            let args = nic_args(&n, &q, &v, "pcie.0", 6);
            assert_eq!(
                args,
                vec!["-netdev".to_owned(), netdev.to_owned(), "-device".to_owned(), device],
                "{queues} {vhost}"
            );
        }
    }

    #[test]
    fn vhost_user_shape() {
        let n = NicConfig {
            id: "network-1".into(),
            guest_mac: "02:00:0a:58:00:06".parse().unwrap(),
            mtu: 1500,
            backend: NicBackend::VhostUser { socket: "/run/ovs/vhu1".into() },
        };
        assert_eq!(
            nic_args(&n, &[], &[], "pci.0", 7),
            vec![
                "-chardev",
                "socket,id=char-network-1,path=/run/ovs/vhu1",
                "-netdev",
                "vhost-user,id=nd-network-1,chardev=char-network-1,vhostforce=on",
                "-device",
                "driver=virtio-net-pci,id=network-1,netdev=nd-network-1,mac=02:00:0a:58:00:06,disable-modern=false,host_mtu=1500,romfile=,bus=pci.0,addr=0x7",
            ]
        );
    }
}
