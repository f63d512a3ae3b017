//! ttrpc over a virtio-serial port: the port is a character device, not a socket, so the
//! listener hands out the opened port as one "connection" at a time. While the host side is not
//! connected the port reads EOF; that connection then ends and the port is opened again a little
//! later.

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

/// The opened port, non-blocking, driven by tokio's reactor.
#[derive(Debug)]
pub struct SerialConn(AsyncFd<OwnedFd>);

impl SerialConn {
    pub fn open(path: &Path) -> io::Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(path)?;
        // SAFETY: an OwnedFd keeps its fd open and unchanged for as long as the AsyncFd owns it.
        let fd = unsafe { AsyncFd::register(OwnedFd::from(f)) }.map_err(|e| io::Error::other(e.to_string()))?;
        Ok(Self(fd))
    }
}

impl AsyncRead for SerialConn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.0.poll_read_ready(cx))?;
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
            let mut guard = ready!(self.0.poll_write_ready(cx))?;
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

/// A listener that yields the port again each time the previous connection ended, at most every
/// 100 ms (the port reads EOF at once while the host is not connected).
pub fn listener(path: PathBuf) -> ttrpc::asynchronous::transport::Listener {
    let stream = futures::stream::unfold((path, true), |(path, first)| async move {
        if !first {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Some((SerialConn::open(&path), (path, false)))
    });
    ttrpc::asynchronous::transport::Listener::new(stream)
}
