//! The guest's end of `kubectl port-forward` (see `docs/network.md`, "Port forwarding"): on vsock
//! port [`agent_client::PORT_FORWARD_PORT`], each connection names a TCP port in its first line
//! (`<port>\n`); the agent dials that port on the guest's loopback (the pod's network namespace
//! is the guest's), writes the host's frames to it (an empty one: the client closed, passed on
//! as a half-close) and copies what the port sends back as it comes.

use std::io::{BufRead, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nix::sys::socket::{accept, bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, VsockAddr};

/// The longest first line taken: a port number and its newline.
const MAX_LINE: u64 = 8;

/// Serve port forwarding in a thread of its own (a thread per connection: a forward is rare).
pub fn serve(port: u32) -> anyhow::Result<()> {
    let s = socket(AddressFamily::Vsock, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    bind(s.as_raw_fd(), &VsockAddr::new(libc::VMADDR_CID_ANY, port))?;
    listen(&s, Backlog::new(64)?)?;
    std::thread::spawn(move || loop {
        let Ok(fd) = accept(s.as_raw_fd()) else {
            // Out of descriptors, say: tried again in a moment, not in a busy loop.
            std::thread::sleep(std::time::Duration::from_millis(100));
            continue;
        };
        // SAFETY: accept returned a new descriptor that nothing else owns.
        let conn = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        std::thread::spawn(move || {
            if let Err(e) = forward(conn) {
                eprintln!("guest-agent: port-forward: {e:#}");
            }
        });
    });
    Ok(())
}

/// One forwarded connection: the port read, the local port dialled, bytes copied both ways.
fn forward(vsock: std::fs::File) -> anyhow::Result<()> {
    let mut line = String::new();
    let mut head = std::io::BufReader::new((&vsock).take(MAX_LINE));
    head.read_line(&mut line)?;
    // What the reader took past the line is the start of the first frame: read first below.
    let early = head.buffer().to_vec();
    let port: u16 = line
        .trim_end_matches('\n')
        .parse()
        .map_err(|_| anyhow::anyhow!("the first line must be a TCP port number, not {line:?}"))?;
    let local = [SocketAddr::from((Ipv4Addr::LOCALHOST, port)), SocketAddr::from((Ipv6Addr::LOCALHOST, port))];
    let tcp = TcpStream::connect(&local[..]).map_err(|e| anyhow::anyhow!("nothing answers on port {port}: {e}"))?;
    tcp.set_nodelay(true)?;
    let (mut to_tcp, mut from_tcp) = (tcp.try_clone()?, tcp);
    let (mut from_vsock, mut to_vsock) = (vsock.try_clone()?, vsock);
    let up = std::thread::spawn(move || {
        let mut frames = std::io::Cursor::new(early).chain(&mut from_vsock);
        let copied = unframe(&mut frames, &mut to_tcp);
        let _ = to_tcp.shutdown(Shutdown::Write);
        copied
    });
    let down = std::io::copy(&mut from_tcp, &mut to_vsock);
    // SAFETY: shutdown on a descriptor this function owns.
    unsafe { libc::shutdown(to_vsock.as_raw_fd(), libc::SHUT_WR) };
    let up = up.join().map_err(|_| anyhow::anyhow!("the copy to port {port} panicked"))?;
    down?;
    up?;
    Ok(())
}

/// The host's frames (a 4-byte big-endian length, then the bytes) written out until the empty
/// frame that says the client closed.
fn unframe(from: &mut impl Read, to: &mut impl Write) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let mut len = [0u8; 4];
        from.read_exact(&mut len)?;
        let mut left = u32::from_be_bytes(len) as usize;
        if left == 0 {
            return Ok(());
        }
        while left > 0 {
            let want = left.min(buf.len());
            let n = from.read(&mut buf[..want])?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            to.write_all(&buf[..n])?;
            left -= n;
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn frames_until_the_empty_one() {
        let mut input: Vec<u8> = Vec::new();
        for chunk in [&b"abc"[..], b"", b"ignored"] {
            input.extend((chunk.len() as u32).to_be_bytes());
            input.extend(chunk);
        }
        let mut out = Vec::new();
        super::unframe(&mut &input[..], &mut out).unwrap();
        assert_eq!(out, b"abc");
        let mut cut = &input[..5];
        assert!(super::unframe(&mut cut, &mut Vec::new()).is_err(), "a frame cut short is an error");
    }
}
