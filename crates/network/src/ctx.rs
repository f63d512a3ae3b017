//! A namespace with a netlink handle bound to it ([`NetCtx`]), and the changes it announces.

use crate::error::{Error, Result};
use crate::netns::{self, NetNs};
use crate::scan::{self, NetworkInfo};

/// A namespace and a netlink handle bound to it: what every network operation runs against.
#[derive(Debug, Clone)]
pub struct NetCtx {
    pub netns: NetNs,
    pub handle: rtnetlink::Handle,
    /// A thread inside the namespace for work that must run there.
    pub worker: netns::NsWorker,
    pub log: slog::Logger,
}

impl NetCtx {
    /// Open a netlink socket inside `netns`. Must be called from within a tokio runtime.
    pub fn open(netns: NetNs, log: slog::Logger) -> Result<Self> {
        let worker = netns::NsWorker::start(&netns)?;
        let sock = worker
            .run(|| netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_ROUTE))?
            .map_err(Error::NetlinkSocket)?;
        let handle = netns::netlink_from_socket(sock)?;
        Ok(Self { netns, handle, worker, log })
    }

    /// Scan the namespace.
    pub async fn scan(&self) -> Result<NetworkInfo> {
        scan::scan(&self.handle).await
    }

    /// Watch the namespace: a netlink socket in it, subscribed to links, IPv4/IPv6 addresses
    /// and routes, and permanent neighbours.
    pub fn watch(&self) -> Result<Changes> {
        const GROUPS: u32 = (libc::RTMGRP_LINK
            | libc::RTMGRP_IPV4_IFADDR
            | libc::RTMGRP_IPV6_IFADDR
            | libc::RTMGRP_IPV4_ROUTE
            | libc::RTMGRP_IPV6_ROUTE
            | libc::RTMGRP_NEIGH) as u32;
        let sock = self
            .worker
            .run(|| {
                let mut s = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_ROUTE)?;
                s.bind(&netlink_sys::SocketAddr::new(0, GROUPS))?;
                Ok(s)
            })?
            .map_err(Error::NetlinkSocket)?;
        sock.set_non_blocking(true).map_err(Error::NetlinkSocket)?;
        use std::os::fd::{FromRawFd, IntoRawFd};
        // SAFETY: the fd was just taken out of a live netlink socket that gives up ownership.
        let sock = unsafe { netlink_sys::TokioSocket::from_raw_fd(sock.into_raw_fd()) };
        let (conn, _handle, events) = rtnetlink::from_socket(sock);
        Ok(Changes { events, conn: tokio::spawn(conn) })
    }
}

/// Changes in a namespace, as the kernel announces them ([`NetCtx::watch`]).
#[derive(Debug)]
pub struct Changes {
    events: futures::channel::mpsc::UnboundedReceiver<(
        netlink_packet_core::NetlinkMessage<netlink_packet_route::RouteNetlinkMessage>,
        netlink_sys::SocketAddr,
    )>,
    conn: tokio::task::JoinHandle<()>,
}

impl Changes {
    /// Wait for the next change; `false` when the socket is gone.
    pub async fn next(&mut self) -> bool {
        futures::StreamExt::next(&mut self.events).await.is_some()
    }

    /// Wait until nothing changes for `quiet`; `false` when the socket is gone.
    pub async fn settle(&mut self, quiet: std::time::Duration) -> bool {
        loop {
            match tokio::time::timeout(quiet, futures::StreamExt::next(&mut self.events)).await {
                Ok(Some(_)) => continue,
                Ok(None) => return false,
                Err(_) => return true,
            }
        }
    }
}

impl Drop for Changes {
    fn drop(&mut self) {
        self.conn.abort();
    }
}
