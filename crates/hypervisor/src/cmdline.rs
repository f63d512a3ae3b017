//! The QEMU command line, and the fds it names.
//!
//! Each passed fd is given the number the command line names (3, 4, ...) in the child, without
//! close-on-exec; every other fd above them is closed before exec, so nothing else leaks in.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;

use network::{NicBackend, NicConfig, PciPath, RunDir};

use crate::nic::{Netdev, NicDevice};

use crate::accel::Accel;
use crate::config::{AgentChannel, GuestRoot, MachineType, QemuConfig};
use crate::error::{Error, Result};
use crate::slots::{self, Slots};

/// The QOM id of the agent's vsock device (`/machine/peripheral/<id>`).
pub const VSOCK_DEVICE_ID: &str = "vsock0";

/// Arguments, and the fds to pass: (fd, number in the child).
#[derive(Debug, Default)]
pub(crate) struct CommandLine {
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

/// What the command line is built from, besides the cold-plugged NICs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Machine<'a> {
    pub cfg: &'a QemuConfig,
    pub accel: Accel,
    /// Where QMP's socket and the console's log are.
    pub run_dir: &'a RunDir,
    pub agent: &'a AgentChannel,
    /// The vhost-user-fs socket of the sandbox's virtiofsd.
    pub shared_fs: Option<&'a Path>,
    pub slots: &'a Slots,
}

/// Everything QEMU needs, in order. Returns the command line and the PCI path of each
/// cold-plugged NIC (by id).
pub(crate) fn build(m: &Machine<'_>, nics: Vec<NicConfig>) -> Result<(CommandLine, Vec<(String, PciPath)>)> {
    if nics.len() > slots::MAX_COLD_NICS {
        return Err(Error::Unsupported(format!("{} cold-plugged NICs (at most {})", nics.len(), slots::MAX_COLD_NICS)));
    }
    let cfg = m.cfg;
    let mut c = CommandLine::default();
    let (machine, root_bus) = match cfg.machine_type {
        MachineType::Q35 => ("q35", "pcie.0"),
        MachineType::Pc => ("pc", "pci.0"),
    };
    let root = cfg.root();
    let nvdimm = matches!(root, GuestRoot::Image { nvdimm: true, .. });
    c.arg("-name", "sandbox");
    c.arg("-machine", format!("{machine},accel={}{}", m.accel.as_str(), if nvdimm { ",nvdimm=on" } else { "" }));
    c.arg("-cpu", if m.accel == Accel::Kvm { "host" } else { "max" });
    c.arg("-smp", cfg.default_vcpus.to_string());
    let image_len = memory(&mut c, cfg, root)?;
    c.args.extend(["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"].map(String::from));
    c.arg("-display", "none");
    // The guest's console on QEMU's stdout, which the VM copies into a capped console.log.
    c.arg("-serial", "stdio");
    c.arg("-monitor", "none");
    c.arg("-qmp", format!("unix:{},server=on,wait=off", m.run_dir.qmp_socket().display()));
    c.arg("-kernel", cfg.kernel.display().to_string());
    root_device(&mut c, root, image_len, root_bus)?;
    // As kata writes them: the runtime's own, the root's, then the configuration's kernel_params.
    let append: Vec<&str> = ["console=ttyS0 panic=-1 quiet", root.kernel_params(), cfg.kernel_params.as_str()]
        .into_iter()
        .filter(|p| !p.is_empty())
        .collect();
    c.arg("-append", append.join(" "));
    for d in m.slots.devices() {
        c.arg("-device", d);
    }
    agent_device(&mut c, m.agent, root_bus)?;
    if let Some(socket) = m.shared_fs {
        c.arg("-chardev", format!("socket,id=char-fs,path={}", socket.display()));
        c.arg(
            "-device",
            format!(
                "vhost-user-fs-pci,chardev=char-fs,tag={},bus={root_bus},addr={:#x}",
                crate::config::SHARED_FS_TAG,
                slots::FS_SLOT
            ),
        );
    }
    let paths = nics.into_iter().enumerate().map(|(i, nic)| cold_nic(&mut c, i, nic, root_bus)).collect();
    Ok((c, paths))
}

/// The guest's memory: shared (vhost-user NICs and vsock need it, cold plug and hotplug alike),
/// with a slot and room above the RAM for an NVDIMM root image. Returns the image's length then.
fn memory(c: &mut CommandLine, cfg: &QemuConfig, root: GuestRoot<'_>) -> Result<Option<u64>> {
    let image_len = match root {
        GuestRoot::Image { path, nvdimm: true, .. } => Some(
            std::fs::metadata(path).map_err(|source| Error::Spawn { path: path.display().to_string(), source })?.len(),
        ),
        _ => None,
    };
    match image_len {
        Some(len) => {
            let max = u64::from(cfg.default_memory) + len.div_ceil(1 << 20);
            c.arg("-m", format!("{}M,slots=1,maxmem={max}M", cfg.default_memory))
        }
        None => c.arg("-m", format!("{}M", cfg.default_memory)),
    }
    c.arg("-object", format!("memory-backend-memfd,id=mem0,size={}M,share=on", cfg.default_memory));
    c.arg("-numa", "node,memdev=mem0");
    Ok(image_len)
}

/// The agent's channel: a virtio-serial port, or a vsock device (vhost-user or the kernel's).
fn agent_device(c: &mut CommandLine, agent: &AgentChannel, root_bus: &str) -> Result<()> {
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
                format!(
                    "vhost-user-vsock-pci,id={VSOCK_DEVICE_ID},chardev=vsock,bus={root_bus},addr={:#x}",
                    slots::VSOCK_SLOT
                ),
            );
        }
        AgentChannel::Vsock { cid, vhostfd } => {
            let fd = match vhostfd {
                Some(f) => {
                    let dup =
                        f.try_clone().map_err(|source| Error::Spawn { path: "/dev/vhost-vsock".into(), source })?;
                    format!(",vhostfd={}", c.pass(dup))
                }
                None => String::new(),
            };
            c.arg(
                "-device",
                format!(
                    "vhost-vsock-pci,id={VSOCK_DEVICE_ID},guest-cid={cid}{fd},bus={root_bus},addr={:#x}",
                    slots::VSOCK_SLOT
                ),
            );
        }
    }
    Ok(())
}

/// The `i`th cold-plugged NIC, its fds passed, on its slot; returns its id and PCI path.
fn cold_nic(c: &mut CommandLine, i: usize, nic: NicConfig, root_bus: &str) -> (String, PciPath) {
    let addr = slots::FIRST_COLD_NIC_SLOT + i as u8;
    let netdev = match nic.backend {
        NicBackend::Tap { queues, vhost, .. } => {
            let mut names = |fds: Vec<OwnedFd>| fds.into_iter().map(|f| c.pass(f).to_string()).collect();
            let fds = names(queues);
            Netdev::Tap { fds, vhostfds: names(vhost) }
        }
        NicBackend::VhostUser { socket } => Netdev::VhostUser { socket },
    };
    let dev = NicDevice {
        id: nic.id.clone(),
        mac: nic.guest_mac,
        mtu: nic.mtu,
        bus: root_bus.to_owned(),
        addr: format!("{addr:#x}"),
        netdev,
    };
    c.args.extend(dev.args());
    (nic.id, PciPath::new(vec![addr]).expect("slot below 0x20"))
}

/// The guest's root: `-initrd`, or the image as kata attaches it: an NVDIMM backed by the file
/// (read-only, shared: the host's page cache serves every VM booting it; `unarmed` tells the
/// guest it cannot be written) or a read-only virtio-blk disk.
fn root_device(c: &mut CommandLine, root: GuestRoot<'_>, image_len: Option<u64>, root_bus: &str) -> Result<()> {
    match root {
        GuestRoot::Initrd(p) => c.arg("-initrd", p.display().to_string()),
        GuestRoot::Image { path, nvdimm, boot_initrd } => {
            let file = path.display().to_string();
            if file.contains(',') {
                // QEMU's option syntax would read it as the next property.
                return Err(Error::Config { key: "image", rule: crate::error::Rule::Comma(file) });
            }
            if let (true, Some(len)) = (nvdimm, image_len) {
                c.arg(
                    "-object",
                    format!("memory-backend-file,id=rootimg,mem-path={file},size={len},readonly=on,share=on"),
                );
                c.arg("-device", "nvdimm,id=nv0,memdev=rootimg,unarmed=on");
            } else {
                c.arg("-drive", format!("file={file},format=raw,if=none,id=rootimg,readonly=on"));
                c.arg(
                    "-device",
                    format!("virtio-blk-pci,drive=rootimg,bus={root_bus},addr={:#x}", slots::ROOT_DISK_SLOT),
                );
            }
            if let Some(initrd) = boot_initrd {
                c.arg("-initrd", initrd.display().to_string());
            }
        }
    }
    Ok(())
}

/// Make the command's child join the network namespace open on `ns` before it execs (registered
/// before [`install_fds`], so it runs first; the fd is close-on-exec and closed there anyway).
pub(crate) fn enter_netns(cmd: &mut tokio::process::Command, ns: RawFd) {
    // SAFETY: the closure runs in the child between fork and exec and makes one
    // async-signal-safe system call (setns) on an fd opened before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(ns, libc::CLONE_NEWNET) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Install the fd map in a command: each fd becomes its number, without close-on-exec; all
/// other fds from 3 up are closed before exec.
///
/// Works under any `RLIMIT_NOFILE`: sources are first moved just above the target range (the
/// lowest free numbers there, so a soft limit of 1024 is no obstacle), and where `close_range`
/// fails (ENOSYS before 5.9; EPERM under a seccomp filter that refuses it) the rest are closed
/// one by one up to the limit read before the fork.
pub(crate) fn install_fds(cmd: &mut tokio::process::Command, fds: &[(OwnedFd, RawFd)]) {
    let map: Vec<(RawFd, RawFd)> = fds.iter().map(|(f, n)| (f.as_raw_fd(), *n)).collect();
    let mut temps: Vec<RawFd> = vec![-1; map.len()];
    let first_free = 3 + map.len() as libc::c_int;
    let max_fd = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(soft, _)| soft.min(1 << 20) as libc::c_int)
        .unwrap_or(1 << 16);
    // SAFETY: the closure runs in the child between fork and exec and only makes
    // async-signal-safe system calls (fcntl, dup2, close, close_range) on memory allocated
    // before the fork; it does not allocate.
    unsafe {
        cmd.pre_exec(move || {
            // Move every source above the target range first, so that a source numbered like a
            // target is not overwritten before it is used.
            for (i, (src, _)) in map.iter().enumerate() {
                let t = libc::fcntl(*src, libc::F_DUPFD, first_free);
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
            if libc::syscall(libc::SYS_close_range, first_free as libc::c_uint, libc::c_uint::MAX, 0) < 0 {
                // ENOSYS before 5.9; EPERM where a seccomp filter (a container's) refuses it.
                let e = *libc::__errno_location();
                if e != libc::ENOSYS && e != libc::EPERM {
                    return Err(std::io::Error::last_os_error());
                }
                for fd in first_free..max_fd {
                    libc::close(fd);
                }
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine<'a>(cfg: &'a QemuConfig, agent: &'a AgentChannel, slots: &'a Slots, run_dir: &'a RunDir) -> Machine<'a> {
        Machine { cfg, accel: Accel::Tcg, run_dir, agent, shared_fs: None, slots }
    }

    fn sb() -> RunDir {
        RunDir::at("/run/kata/sb".into())
    }

    fn args_for(agent: &AgentChannel) -> String {
        let cfg = QemuConfig::default();
        let slots = Slots::new(cfg.machine_type, 0);
        let (c, _) = build(&machine(&cfg, agent, &slots, &sb()), Vec::new()).unwrap();
        c.args.join(" ")
    }

    #[test]
    fn an_image_as_an_nvdimm_or_a_disk_with_kernel_params_after_the_root() {
        let img = std::env::temp_dir().join(format!("knt-cmdline-{}.img", std::process::id()));
        std::fs::File::create(&img).unwrap().set_len(128 << 20).unwrap();
        let agent = AgentChannel::Serial { socket: "/run/kata/sb/agent.sock".into() };
        let cfg = QemuConfig { image: img.clone(), kernel_params: "agent.log=debug".into(), ..Default::default() };
        let slots = Slots::new(cfg.machine_type, 0);
        let args = |cfg: &QemuConfig| build(&machine(cfg, &agent, &slots, &sb()), Vec::new()).unwrap().0.args.join(" ");
        let nv = args(&cfg);
        let blk =
            args(&QemuConfig { disable_image_nvdimm: true, image_boot_initrd: "/boot/mods.img".into(), ..cfg.clone() });
        std::fs::remove_file(&img).unwrap();
        let i = img.display();
        assert!(nv.contains("-machine q35,accel=tcg,nvdimm=on "), "{nv}");
        assert!(nv.contains("-m 512M,slots=1,maxmem=640M "), "{nv}");
        assert!(
            nv.contains(&format!(
                "-object memory-backend-file,id=rootimg,mem-path={i},size=134217728,readonly=on,share=on"
            )),
            "{nv}"
        );
        assert!(nv.contains("-device nvdimm,id=nv0,memdev=rootimg,unarmed=on"), "{nv}");
        assert!(!nv.contains("-initrd"), "{nv}");
        assert!(nv.contains("-append console=ttyS0 panic=-1 quiet root=/dev/pmem0p1 rootflags=dax,data=ordered,errors=remount-ro ro rootfstype=ext4 agent.log=debug"), "{nv}");
        assert!(blk.contains(&format!("-drive file={i},format=raw,if=none,id=rootimg,readonly=on")), "{blk}");
        assert!(blk.contains("-device virtio-blk-pci,drive=rootimg,bus=pcie.0,addr=0x1e"), "{blk}");
        assert!(blk.contains("-initrd /boot/mods.img") && !blk.contains("nvdimm"), "{blk}");
        assert!(
            blk.contains(
                "quiet root=/dev/vda1 rootflags=data=ordered,errors=remount-ro ro rootfstype=ext4 agent.log=debug"
            ),
            "{blk}"
        );
    }

    #[test]
    fn the_shared_directory_as_virtio_fs() {
        let cfg = QemuConfig::default();
        let slots = Slots::new(cfg.machine_type, 0);
        let agent = AgentChannel::Serial { socket: "/run/kata/sb/agent.sock".into() };
        let fs = Path::new("/run/kata/sb/virtiofsd.sock");
        let run_dir = sb();
        let (c, _) =
            build(&Machine { shared_fs: Some(fs), ..machine(&cfg, &agent, &slots, &run_dir) }, Vec::new()).unwrap();
        let args = c.args.join(" ");
        assert!(args.contains("-chardev socket,id=char-fs,path=/run/kata/sb/virtiofsd.sock"), "{args}");
        assert!(
            args.contains("-device vhost-user-fs-pci,chardev=char-fs,tag=kataShared,bus=pcie.0,addr=0x5"),
            "{args}"
        );
    }

    #[test]
    fn each_agent_channel_on_the_command_line() {
        let vsock = args_for(&AgentChannel::Vsock { cid: 1234, vhostfd: None });
        assert!(vsock.contains("-device vhost-vsock-pci,id=vsock0,guest-cid=1234,bus=pcie.0,addr="), "{vsock}");
        // With the fd the CID was reserved on: passed as QEMU's fd 3.
        let fd = std::sync::Arc::new(std::os::fd::OwnedFd::from(std::fs::File::open("/dev/null").unwrap()));
        let vsock = args_for(&AgentChannel::Vsock { cid: 1234, vhostfd: Some(fd) });
        assert!(vsock.contains("-device vhost-vsock-pci,id=vsock0,guest-cid=1234,vhostfd=3,bus=pcie.0"), "{vsock}");
        assert!(!vsock.contains("virtserialport"), "{vsock}");
        let hybrid = args_for(&AgentChannel::VhostUserVsock { backend: "/run/kata/sb/vhost-vsock.sock".into() });
        assert!(hybrid.contains("-chardev socket,id=vsock,path=/run/kata/sb/vhost-vsock.sock"), "{hybrid}");
        assert!(hybrid.contains("-device vhost-user-vsock-pci,id=vsock0,chardev=vsock,bus=pcie.0"), "{hybrid}");
        let serial = args_for(&AgentChannel::Serial { socket: "/run/kata/sb/agent.sock".into() });
        assert!(serial.contains("virtserialport,chardev=agent,name=agent.channel.0"), "{serial}");
        assert!(!serial.contains("vsock"), "{serial}");
    }
}
