//! A tiny stand-in for the VM's NIC: it reads frames from TAP/macvtap queue fds (which carry a
//! 10-byte virtio-net header) and answers ARP requests and ICMP echo requests for one address.

use std::fs::File;
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

/// `sizeof(struct virtio_net_hdr)`, the default header size on TAP and macvtap queues.
pub const VNET_HDR_LEN: usize = 10;

/// What the stand-in saw and did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Seen {
    pub frames: usize,
    pub arp_requests: usize,
    pub echo_requests: usize,
}

/// Read one frame (without the virtio-net header) from any of the queues, waiting up to `wait`.
pub fn read_frame(queues: &mut [File], wait: Duration) -> Option<Vec<u8>> {
    read_frame_with(queues, VNET_HDR_LEN, wait)
}

/// Read one frame behind a header of `hdr` bytes (0 on a packet socket).
fn read_frame_with(queues: &mut [File], hdr: usize, wait: Duration) -> Option<Vec<u8>> {
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        let ready: Vec<usize> = {
            let mut pfds: Vec<PollFd> = queues.iter().map(|f| PollFd::new(f.as_fd(), PollFlags::POLLIN)).collect();
            let ms = PollTimeout::try_from(left.as_millis().min(1000) as u32).unwrap_or(PollTimeout::MAX);
            if poll(&mut pfds, ms).unwrap_or(0) <= 0 {
                continue;
            }
            pfds.iter()
                .enumerate()
                .filter(|(_, p)| p.revents().is_some_and(|r| r.contains(PollFlags::POLLIN)))
                .map(|(i, _)| i)
                .collect()
        };
        for i in ready {
            let mut buf = vec![0u8; 65536];
            if let Ok(n) = queues[i].read(&mut buf) {
                if n > hdr {
                    buf.truncate(n);
                    return Some(buf.split_off(hdr));
                }
            }
        }
    }
}

/// Write one frame, prefixed with an empty virtio-net header, to the first queue.
pub fn write_frame(queue: &mut File, frame: &[u8]) {
    write_frame_with(queue, VNET_HDR_LEN, frame)
}

/// Write `frame` behind a zeroed header of `hdr` bytes (0 on a packet socket).
fn write_frame_with(queue: &mut File, hdr: usize, frame: &[u8]) {
    let mut buf = vec![0u8; hdr];
    buf.extend_from_slice(frame);
    queue.write_all(&buf).expect("write frame to queue");
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for c in data.chunks(2) {
        let w = if c.len() == 2 { u16::from_be_bytes([c[0], c[1]]) } else { u16::from(c[0]) << 8 };
        sum += u32::from(w);
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The reply to `frame` if it is an ARP request or ICMP echo request for `ip`.
pub fn answer(frame: &[u8], mac: [u8; 6], ip: Ipv4Addr, seen: &mut Seen) -> Option<Vec<u8>> {
    seen.frames += 1;
    if frame.len() < 14 {
        return None;
    }
    let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
    let src_mac = &frame[6..12];
    match ethertype {
        0x0806 if frame.len() >= 42 => {
            let op = u16::from_be_bytes([frame[20], frame[21]]);
            if op != 1 || frame[38..42] != ip.octets() {
                return None;
            }
            seen.arp_requests += 1;
            let mut r = Vec::with_capacity(42);
            r.extend_from_slice(src_mac);
            r.extend_from_slice(&mac);
            r.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 2]);
            r.extend_from_slice(&mac);
            r.extend_from_slice(&ip.octets());
            r.extend_from_slice(&frame[22..28]);
            r.extend_from_slice(&frame[28..32]);
            Some(r)
        }
        0x0800 if frame.len() >= 34 => {
            let ihl = usize::from(frame[14] & 0x0f) * 4;
            let ip_start = 14;
            if frame[ip_start + 9] != 1 || frame[ip_start + 16..ip_start + 20] != ip.octets() {
                return None;
            }
            let icmp = ip_start + ihl;
            if frame.len() < icmp + 8 || frame[icmp] != 8 {
                return None;
            }
            seen.echo_requests += 1;
            let mut r = frame.to_vec();
            r[0..6].copy_from_slice(src_mac);
            r[6..12].copy_from_slice(&mac);
            let (s, d) = (ip_start + 12, ip_start + 16);
            let src: [u8; 4] = frame[s..s + 4].try_into().unwrap();
            r[s..s + 4].copy_from_slice(&frame[d..d + 4]);
            r[d..d + 4].copy_from_slice(&src);
            r[icmp] = 0;
            r[icmp + 2] = 0;
            r[icmp + 3] = 0;
            let total = usize::from(u16::from_be_bytes([frame[ip_start + 2], frame[ip_start + 3]]));
            let end = (ip_start + total).min(r.len());
            let c = checksum(&r[icmp..end]);
            r[icmp + 2..icmp + 4].copy_from_slice(&c.to_be_bytes());
            Some(r)
        }
        _ => None,
    }
}

/// Answer ARP and ping for `ip` on the queues until `until` says stop or `limit` passes.
pub fn serve(queues: &mut [File], mac: [u8; 6], ip: Ipv4Addr, limit: Duration, until: impl Fn() -> bool) -> Seen {
    let mut seen = Seen::default();
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline && !until() {
        if let Some(f) = read_frame(queues, Duration::from_millis(100)) {
            if let Some(reply) = answer(&f, mac, ip, &mut seen) {
                write_frame(&mut queues[0], &reply);
            }
        }
    }
    seen
}

/// Open a queue of the TAP `name` in the namespace at `netns` (IFF_TAP | IFF_NO_PI |
/// IFF_VNET_HDR): the wire side of a TAP a CNI plugin made, as its own user would hold it.
pub fn open_tap_in(netns: &str, name: &str) -> File {
    const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
    let ns = File::open(netns).unwrap_or_else(|e| panic!("{netns}: {e}"));
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("enter the namespace");
            let f = std::fs::OpenOptions::new().read(true).write(true).open("/dev/net/tun").expect("/dev/net/tun");
            let mut ifr = [0u8; 40];
            ifr[..name.len()].copy_from_slice(name.as_bytes());
            let flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as u16;
            ifr[16..18].copy_from_slice(&flags.to_ne_bytes());
            // SAFETY: TUNSETIFF reads and writes a struct ifreq, which `ifr` is large enough for.
            let rc = unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&f), TUNSETIFF, ifr.as_mut_ptr()) };
            assert_eq!(rc, 0, "TUNSETIFF {name}: {}", std::io::Error::last_os_error());
            f
        })
        .join()
        .expect("the TAP opener")
    })
}

/// Ping `dst` from `(mac, ip)` over a TAP queue, as a host on that wire would: an ARP request,
/// then `count` ICMP echo requests. Returns the MAC that answered the ARP and how many echo
/// replies came back from `dst` (each waited for up to 5 s).
pub fn ping_over(queue: &mut File, mac: [u8; 6], ip: Ipv4Addr, dst: Ipv4Addr, count: u16) -> ([u8; 6], u16) {
    ping_with(queue, VNET_HDR_LEN, mac, ip, dst, count)
}

/// [`ping_over`] on a packet socket bound to a link (frames without a header): what leaves by the
/// link goes to whoever is at its far end, and what comes back is read before the stack sees it.
pub fn ping_by_packet_socket(sock: &mut File, mac: [u8; 6], ip: Ipv4Addr, dst: Ipv4Addr, count: u16) -> ([u8; 6], u16) {
    ping_with(sock, 0, mac, ip, dst, count)
}

/// A packet socket bound to link `name` in the namespace at `netns` (every protocol).
pub fn packet_socket_in(netns: &str, name: &str) -> File {
    let ns = File::open(netns).unwrap_or_else(|e| panic!("{netns}: {e}"));
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("enter the namespace");
            let proto = (libc::ETH_P_ALL as u16).to_be();
            // SAFETY: plain socket(2) and bind(2) calls on a zeroed sockaddr_ll.
            unsafe {
                let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, i32::from(proto));
                assert!(fd >= 0, "packet socket: {}", std::io::Error::last_os_error());
                let cname = std::ffi::CString::new(name).unwrap();
                let mut sll: libc::sockaddr_ll = std::mem::zeroed();
                sll.sll_family = libc::AF_PACKET as u16;
                sll.sll_protocol = proto;
                sll.sll_ifindex = libc::if_nametoindex(cname.as_ptr()) as i32;
                assert!(sll.sll_ifindex > 0, "no link {name}");
                let len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
                let rc = libc::bind(fd, (&sll as *const libc::sockaddr_ll).cast(), len);
                assert_eq!(rc, 0, "bind to {name}: {}", std::io::Error::last_os_error());
                File::from(<std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd))
            }
        })
        .join()
        .expect("the packet socket opener")
    })
}

fn ping_with(queue: &mut File, hdr: usize, mac: [u8; 6], ip: Ipv4Addr, dst: Ipv4Addr, count: u16) -> ([u8; 6], u16) {
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&mac);
    arp.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    arp.extend_from_slice(&mac);
    arp.extend_from_slice(&ip.octets());
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&dst.octets());
    let mut their = None;
    for _ in 0..10 {
        write_frame_with(queue, hdr, &arp);
        let deadline = Instant::now() + Duration::from_secs(2);
        while let Some(f) =
            read_frame_with(std::slice::from_mut(queue), hdr, deadline.saturating_duration_since(Instant::now()))
        {
            let is_reply =
                f.len() >= 42 && f[12..14] == [0x08, 0x06] && f[20..22] == [0, 2] && f[28..32] == dst.octets();
            if is_reply {
                their = Some(<[u8; 6]>::try_from(&f[22..28]).unwrap());
                break;
            }
        }
        if their.is_some() {
            break;
        }
    }
    let their = their.unwrap_or_else(|| panic!("no ARP reply from {dst}"));
    let mut replies = 0;
    for seq in 1..=count {
        let mut ipv4 = vec![0x45, 0, 0, 28 + 8, 0, 0, 0x40, 0, 64, 1, 0, 0];
        ipv4.extend_from_slice(&ip.octets());
        ipv4.extend_from_slice(&dst.octets());
        let c = checksum(&ipv4);
        ipv4[10..12].copy_from_slice(&c.to_be_bytes());
        let mut icmp = vec![8, 0, 0, 0, 0x6b, 0x6e, 0, 0];
        icmp[6..8].copy_from_slice(&seq.to_be_bytes());
        icmp.extend_from_slice(b"kata-net");
        let c = checksum(&icmp);
        icmp[2..4].copy_from_slice(&c.to_be_bytes());
        ipv4[2..4].copy_from_slice(&((20 + icmp.len()) as u16).to_be_bytes());
        ipv4[10..12].copy_from_slice(&[0, 0]);
        let c = checksum(&ipv4);
        ipv4[10..12].copy_from_slice(&c.to_be_bytes());
        let mut frame = their.to_vec();
        frame.extend_from_slice(&mac);
        frame.extend_from_slice(&[0x08, 0x00]);
        frame.extend_from_slice(&ipv4);
        frame.extend_from_slice(&icmp);
        write_frame_with(queue, hdr, &frame);
        let deadline = Instant::now() + Duration::from_secs(5);
        while let Some(f) =
            read_frame_with(std::slice::from_mut(queue), hdr, deadline.saturating_duration_since(Instant::now()))
        {
            let echo_reply = f.len() >= 42
                && f[12..14] == [0x08, 0x00]
                && f[26..30] == dst.octets()
                && f[34] == 0
                && f[40..42] == seq.to_be_bytes();
            if echo_reply {
                replies += 1;
                break;
            }
        }
    }
    (their, replies)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_of_known_header() {
        // An IPv4 header whose checksum field (0xb861) makes the sum come out to zero.
        let h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8, 0x00, 0x01, 0xc0, 0xa8,
            0x00, 0xc7,
        ];
        assert_eq!(checksum(&h), 0);
    }

    #[test]
    fn answers_arp_for_its_address_only() {
        let mut req = vec![0xff; 6];
        req.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
        req.extend_from_slice(&[2, 0, 0, 0, 0, 1, 10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 10, 0, 0, 5]);
        let mut seen = Seen::default();
        let mac = [2, 0, 0, 0, 0, 5];
        let r = answer(&req, mac, "10.0.0.5".parse().unwrap(), &mut seen).unwrap();
        assert_eq!(&r[0..6], &[2, 0, 0, 0, 0, 1]);
        assert_eq!(&r[22..28], &mac);
        assert_eq!(&r[28..32], &[10, 0, 0, 5]);
        assert!(answer(&req, mac, "10.0.0.6".parse().unwrap(), &mut seen).is_none());
        assert_eq!(seen.arp_requests, 1);
    }
}
