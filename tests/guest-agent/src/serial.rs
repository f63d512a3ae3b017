//! ttrpc over a virtio-serial port: the port is a character device, not a socket, so the
//! listener hands out the opened port as one "connection" at a time. While the host side is not
//! connected the port reads EOF; that connection then ends and a new one starts a little later.
//!
//! The port itself stays open for the agent's life: each connection is a duplicate of one fd.
//! Closing the port would discard what the host has already sent: a host that connects and
//! writes a request just after the guest read EOF, and before the guest closed the port, would
//! lose that request and wait for an answer forever (seen under load, as agent-call timeouts).

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Find the port named `name` (`/sys/class/virtio-ports/*/name`) and return its device node.
pub fn find_port(name: &str) -> Option<PathBuf> {
    let dir = std::fs::read_dir("/sys/class/virtio-ports").ok()?;
    for entry in dir.flatten() {
        let n = std::fs::read_to_string(entry.path().join("name")).unwrap_or_default();
        if n.trim() == name {
            return Some(Path::new("/dev").join(entry.file_name()));
        }
    }
    None
}

/// The opened port, non-blocking, driven by tokio's reactor. `_turn` is the listener's one
/// permit (`_turn`): the next connection starts only when this one is dropped, so two connections never
/// read from the port at once.
#[derive(Debug)]
pub struct SerialConn {
    fd: AsyncFd<OwnedFd>,
    _turn: tokio::sync::OwnedSemaphorePermit,
}

/// Open the port, non-blocking.
fn open_port(path: &Path) -> io::Result<OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    Ok(OwnedFd::from(f))
}

impl SerialConn {
    /// A connection on the open port `port` (a duplicate of its fd: dropping the connection
    /// leaves the port open).
    fn on(port: &OwnedFd, turn: tokio::sync::OwnedSemaphorePermit) -> io::Result<Self> {
        let fd = port.try_clone()?;
        // SAFETY: an OwnedFd keeps its fd open and unchanged for as long as the AsyncFd owns it.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(|e| io::Error::other(e.to_string()))?;
        Ok(Self { fd, _turn: turn })
    }
}

impl AsyncRead for SerialConn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            let res = guard.try_io(|fd| nix::unistd::read(fd.get_ref(), unfilled).map_err(io::Error::from));
            match res {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for SerialConn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.fd.poll_write_ready(cx))?;
            match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(io::Error::from)) {
                Ok(r) => return Poll::Ready(r),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// A listener that yields the port again each time the previous connection ended (dropped), at
/// most every 100 ms (the port reads EOF at once while the host is not connected).
pub fn listener(path: PathBuf) -> ttrpc::asynchronous::transport::Listener {
    let turns = std::sync::Arc::new(tokio::sync::Semaphore::new(1));
    let stream = futures::stream::unfold((path, None::<OwnedFd>, true), move |(path, port, first)| {
        let turns = turns.clone();
        async move {
            let Ok(turn) = turns.acquire_owned().await else { return None };
            if !first {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let port = match port {
                Some(p) => p,
                None => match open_port(&path) {
                    Ok(p) => p,
                    Err(e) => return Some((Err(e), (path, None, false))),
                },
            };
            let conn = SerialConn::on(&port, turn);
            Some((conn, (path, Some(port), false)))
        }
    });
    ttrpc::asynchronous::transport::Listener::new(stream)
}
