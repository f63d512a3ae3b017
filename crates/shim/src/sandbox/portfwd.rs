//! `kubectl port-forward` into the VM (see `docs/network.md`, "Port forwarding"). containerd's
//! CRI dials `localhost:<port>` inside the pod's namespace; the runtime's nftables table there
//! (`network::portfwd`) redirects that to a listener of this forwarder in the same namespace,
//! which reads the port asked for (`SO_ORIGINAL_DST`) and opens a stream to the guest agent's
//! port-forward service over the hybrid vsock ([`agent_client::PORT_FORWARD_PORT`]): the port's
//! line, then bytes both ways, each side's close passed on as a half-close.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;

use network::portfwd::Listeners;
use network::NetCtx;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::error::Result;

/// The forwarder's listeners in the pod's namespace; they stop when it is dropped (connections
/// under way end with the VM).
#[derive(Debug)]
pub struct PortForward {
    pub listeners: Listeners,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for PortForward {
    fn drop(&mut self) {
        self.tasks.iter().for_each(JoinHandle::abort);
    }
}

/// Listen in the namespace of `ctx`, on loopback ports the kernel picks: IPv4, and IPv6 where the
/// namespace has `::1`. Nothing in the namespace changes (the redirect is installed afterwards).
pub fn listen(ctx: &NetCtx) -> Result<(std::net::TcpListener, Option<std::net::TcpListener>)> {
    let bound = ctx.netns.run(|| {
        let v4 = std::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
        let v6 = std::net::TcpListener::bind(SocketAddr::from((Ipv6Addr::LOCALHOST, 0))).ok();
        std::io::Result::Ok((v4, v6))
    })?;
    bound.map_err(|source| crate::error::Error::Io {
        what: "listening for port-forward connections in",
        path: ctx.netns.path().to_owned(),
        source,
    })
}

impl PortForward {
    /// Serve the listeners: each connection goes to the guest through the hybrid vsock socket `uds`.
    pub fn serve(
        v4: std::net::TcpListener,
        v6: Option<std::net::TcpListener>,
        uds: PathBuf,
        log: slog::Logger,
    ) -> Result<Self> {
        let port = |l: &std::net::TcpListener| l.local_addr().map(|a| a.port());
        let io = |source| crate::error::Error::Io { what: "serving port-forward on", path: uds.clone(), source };
        let listeners = Listeners { v4: port(&v4).map_err(io)?, v6: v6.as_ref().map(port).transpose().map_err(io)? };
        let mut tasks = Vec::new();
        for l in std::iter::once(v4).chain(v6) {
            l.set_nonblocking(true).map_err(io)?;
            let l = TcpListener::from_std(l).map_err(io)?;
            tasks.push(tokio::spawn(accept_loop(l, uds.clone(), log.clone())));
        }
        Ok(Self { listeners, tasks })
    }
}

async fn accept_loop(l: TcpListener, uds: PathBuf, log: slog::Logger) {
    loop {
        let conn = match l.accept().await {
            Ok((conn, _)) => conn,
            // Out of descriptors, say: not a busy loop, the next connection is tried in a moment.
            Err(e) => {
                slog::warn!(log, "port-forward: accept failed"; "error" => %e);
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let (uds, log) = (uds.clone(), log.clone());
        tokio::spawn(async move {
            if let Err(e) = forward(conn, &uds).await {
                slog::warn!(log, "a port-forward connection failed"; "error" => e);
            }
        });
    }
}

/// The port the client asked for, before the redirect.
fn original_port(conn: &TcpStream) -> std::io::Result<u16> {
    use nix::sys::socket::{getsockopt, sockopt};
    let port = match conn.local_addr()? {
        SocketAddr::V4(_) => getsockopt(conn, sockopt::OriginalDst)?.sin_port,
        SocketAddr::V6(_) => getsockopt(conn, sockopt::Ip6tOriginalDst)?.sin6_port,
    };
    Ok(u16::from_be(port))
}

/// One connection: its port read, a stream to the guest's service, bytes copied both ways: to
/// the guest in frames (the hybrid vsock backend turns a half-close into a full close, so the
/// client's close travels as an empty frame), from the guest as they come.
async fn forward(conn: TcpStream, uds: &std::path::Path) -> std::result::Result<(), String> {
    let port = original_port(&conn).map_err(|e| format!("the port asked for: {e}"))?;
    let guest = agent_client::hybrid_vsock_connect(uds, agent_client::PORT_FORWARD_PORT)
        .await
        .map_err(|e| format!("port {port}: the guest's port-forward service: {e}"))?;
    let _ = conn.set_nodelay(true);
    let (mut from_client, mut to_client) = conn.into_split();
    let (mut from_guest, mut to_guest) = guest.into_split();
    let up = async {
        to_guest.write_all(format!("{port}\n").as_bytes()).await?;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = from_client.read(&mut buf).await?;
            to_guest.write_all(&u32::try_from(n).unwrap_or(u32::MAX).to_be_bytes()).await?;
            if n == 0 {
                return std::io::Result::Ok(());
            }
            to_guest.write_all(&buf[..n]).await?;
        }
    };
    let down = async {
        let copied = tokio::io::copy(&mut from_guest, &mut to_client).await;
        let _ = to_client.shutdown().await;
        copied.map(|_| ())
    };
    let (up, down) = tokio::join!(up, down);
    up.and(down).map_err(|e| format!("port {port}: {e}"))
}
