//! File descriptors the VM's NIC reads and writes: TAP queues from `/dev/net/tun`, macvtap
//! queues from its character device, and `/dev/vhost-net` handles.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::netns::{NetNs, NsWorker};
use crate::types::IfName;

const TUN_DEVICE: &str = "/dev/net/tun";
const VHOST_NET_DEVICE: &str = "/dev/vhost-net";

/// `struct ifreq` as TUNSETIFF reads it: the name, then the flags, padded to 40 bytes.
#[repr(C)]
struct IfReqFlags {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// The features of a TAP device that attaching a queue sets (`TUN_FEATURES` in the kernel): each
/// TUNSETIFF on an existing TAP replaces them with the caller's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TapFlags {
    /// Packet information header (`IFF_NO_PI` off).
    pub pi: bool,
    pub vnet_hdr: bool,
    pub multi_queue: bool,
}

impl TapFlags {
    /// What the VM's NIC needs: no PI header, a virtio-net header.
    pub(crate) fn for_vm(multi_queue: bool) -> Self {
        Self { pi: false, vnet_hdr: true, multi_queue }
    }

    fn bits(self) -> libc::c_int {
        let mut flags = libc::IFF_TAP;
        if !self.pi {
            flags |= libc::IFF_NO_PI;
        }
        if self.vnet_hdr {
            flags |= libc::IFF_VNET_HDR;
        }
        if self.multi_queue {
            flags |= libc::IFF_MULTI_QUEUE;
        }
        flags
    }
}

/// Attach one fd to the TAP `name` with `flags`, in the calling thread's namespace.
fn attach_tap(name: &IfName, flags: TapFlags) -> io::Result<OwnedFd> {
    let mut ifr = IfReqFlags { name: [0; libc::IFNAMSIZ], flags: flags.bits() as libc::c_short, _pad: [0; 22] };
    // IfName guarantees at most 15 bytes, so the name stays NUL-terminated.
    ifr.name[..name.as_str().len()].copy_from_slice(name.as_str().as_bytes());
    let f = OpenOptions::new().read(true).write(true).custom_flags(libc::O_NONBLOCK).open(TUN_DEVICE)?;
    // SAFETY: TUNSETIFF reads and writes a `struct ifreq`; `ifr` is one, properly sized, and
    // outlives the call. `f` is an open /dev/net/tun fd.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), libc::TUNSETIFF, &mut ifr as *mut IfReqFlags) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(OwnedFd::from(f))
}

/// Give the TAP `name` (in the worker's namespace) its features back: attach once with them and
/// let go. Nothing to do when the TAP is gone.
pub(crate) fn restore_tap_flags_in(ns: &NsWorker, name: &IfName, flags: TapFlags) -> Result<()> {
    let n = name.clone();
    match ns.run(move || attach_tap(&n, flags).map(drop))? {
        Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(()),
        other => other.map_err(Error::io("restore the flags of", name.as_str())),
    }
}

/// Open `queues` queues of the TAP `name` in the calling thread's namespace, creating a
/// non-persistent TAP when none exists (it vanishes with its last fd). Flags are those QEMU
/// expects: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, plus IFF_MULTI_QUEUE when `multi_queue`.
///
/// Call it on a thread inside the target namespace ([`NetNs::run`]).
pub(crate) fn open_tap_queues(name: &IfName, queues: usize, multi_queue: bool) -> io::Result<Vec<OwnedFd>> {
    (0..queues.max(1)).map(|_| attach_tap(name, TapFlags::for_vm(multi_queue))).collect()
}

/// Open queues of an existing TAP inside the worker's namespace; the error names the device.
pub(crate) fn open_tap_queues_in(
    ns: &NsWorker,
    name: &IfName,
    queues: usize,
    multi_queue: bool,
) -> Result<Vec<OwnedFd>> {
    let n = name.clone();
    ns.run(move || open_tap_queues(&n, queues, multi_queue))?.map_err(Error::io("open TAP queues of", name.as_str()))
}

/// Create a new TAP `name` inside `ns` with its queues open, and return them with its ifindex.
/// A device of that name already there is [`Error::DeviceExists`]: attaching to it with
/// TUNSETIFF would silently share someone else's device. The check and the index lookup are
/// ioctls on the namespace thread that opens the queues anyway, not extra netlink round trips.
pub(crate) fn create_tap_in(
    ns: &NsWorker,
    name: &IfName,
    queues: usize,
    multi_queue: bool,
) -> Result<(Vec<OwnedFd>, u32)> {
    let name = name.clone();
    ns.run(move || {
        let dev = name.as_str();
        if nix::net::if_::if_nametoindex(dev).is_ok() {
            return Err(Error::DeviceExists(dev.to_owned()));
        }
        let fds = open_tap_queues(&name, queues, multi_queue).map_err(Error::io("create TAP", dev))?;
        let index = nix::net::if_::if_nametoindex(dev).map_err(|e| Error::io("look up", dev)(e.into()))?;
        Ok((fds, index))
    })?
}

/// One `/dev/vhost-net` fd per queue, or none when the device is missing or vhost is disabled.
/// QEMU aborts on `vhost=on` without it, so the caller must pass `vhost=off` when this is empty.
pub(crate) fn open_vhost_net(queues: usize, enabled: bool) -> Result<Vec<OwnedFd>> {
    if !enabled || !Path::new(VHOST_NET_DEVICE).exists() {
        return Ok(Vec::new());
    }
    (0..queues.max(1))
        .map(|_| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(VHOST_NET_DEVICE)
                .map(OwnedFd::from)
                .map_err(Error::io("open", VHOST_NET_DEVICE))
        })
        .collect()
}

/// Open `queues` fds on the character device of the macvtap `name` (index `ifindex`) in `ns`.
///
/// The node is normally `/dev/tap<ifindex>`, made by udev; there is no udev here and ifindexes
/// repeat across namespaces, so the major:minor is read from the namespace's own sysfs and the
/// node is made on a private tmpfs that exists only for this call.
pub(crate) fn open_macvtap_queues(ns: &NetNs, name: &IfName, ifindex: u32, queues: usize) -> Result<Vec<OwnedFd>> {
    let dev = name.as_str();
    ns.run_with_sysfs(|| -> Result<Vec<OwnedFd>> {
        let sys = format!("/sys/class/net/{dev}/macvtap/tap{ifindex}/dev");
        let text = std::fs::read_to_string(&sys).map_err(Error::io("read the device number of", dev))?;
        let (major, minor) = text
            .trim()
            .split_once(':')
            .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)))
            .ok_or_else(|| Error::Kernel { dev: dev.to_owned(), what: format!("device number {text:?}") })?;
        let scratch = Path::new("/tmp");
        nix::mount::mount(Some("tmpfs"), scratch, Some("tmpfs"), nix::mount::MsFlags::empty(), Some("size=64k"))
            .map_err(|e| Error::io("mount a scratch tmpfs for", dev)(e.into()))?;
        let node = scratch.join(format!("tap{ifindex}"));
        nix::sys::stat::mknod(
            &node,
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o600),
            nix::sys::stat::makedev(major, minor),
        )
        .map_err(|e| Error::io("make the device node of", dev)(e.into()))?;
        (0..queues.max(1))
            .map(|_| {
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .custom_flags(libc::O_NONBLOCK)
                    .open(&node)
                    .map(OwnedFd::from)
                    .map_err(Error::io("open a queue of", dev))
            })
            .collect()
    })?
}
