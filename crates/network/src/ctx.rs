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
    /// Called between the steps of a multi-step change (a failure-injection point of the
    /// caller's; none by default).
    pub step: StepHook,
}

/// A caller's hook run between the steps of a change: an error fails the change there (undone
/// like any other failure).
#[derive(Clone, Default)]
pub struct StepHook(Option<std::sync::Arc<StepFn>>);

/// What a [`StepHook`] calls: the step's name in, a refusal's message out.
type StepFn = dyn Fn(&str) -> std::result::Result<(), String> + Send + Sync;

impl std::fmt::Debug for StepHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "StepHook(set)" } else { "StepHook(none)" })
    }
}

impl StepHook {
    pub fn new(f: impl Fn(&str) -> std::result::Result<(), String> + Send + Sync + 'static) -> Self {
        Self(Some(std::sync::Arc::new(f)))
    }

    /// The step `name` is reached.
    pub fn hit(&self, name: &str) -> Result<()> {
        match &self.0 {
            Some(f) => f(name).map_err(Error::Step),
            None => Ok(()),
        }
    }
}

impl NetCtx {
    /// Open a netlink socket inside `netns`. Must be called from within a tokio runtime.
    pub fn open(netns: NetNs, log: slog::Logger) -> Result<Self> {
        let worker = netns::NsWorker::start(&netns)?;
        let sock = worker
            .run(|| netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_ROUTE))?
            .map_err(Error::NetlinkSocket)?;
        let handle = netns::netlink_from_socket(sock)?;
        Ok(Self { netns, handle, worker, log, step: StepHook::default() })
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
                s.set_non_blocking(true)?;
                Ok(s)
            })?
            .map_err(Error::NetlinkSocket)?;
        use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
        // SAFETY: the fd was just taken out of a live netlink socket that gives up ownership.
        let fd = unsafe { OwnedFd::from_raw_fd(sock.into_raw_fd()) };
        // SAFETY: `fd` is open and owned by the AsyncFd for its whole life.
        let fd = unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
            .map_err(|e| Error::NetlinkSocket(e.into()))?;
        let shared = std::sync::Arc::new(Shared::default());
        let reader = tokio::spawn(read_changes(fd, shared.clone()));
        Ok(Changes { shared, reader })
    }
}

/// What the reader and the watcher share: a flag, never a queue.
#[derive(Debug, Default)]
struct Shared {
    /// Set by each message (many messages, one wake-up), taken by the watcher.
    changed: tokio::sync::Notify,
    closed: std::sync::atomic::AtomicBool,
    /// Messages read, and how often the kernel dropped some (ENOBUFS: the socket overran).
    messages: std::sync::atomic::AtomicU64,
    overruns: std::sync::atomic::AtomicU64,
}

/// Read the socket until it fails: each datagram only marks the namespace changed (the
/// watcher scans it again anyway), so a storm costs one buffer, however long nobody reads. A
/// socket the kernel overran (ENOBUFS: messages were dropped) counts as a change too.
async fn read_changes(fd: tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>, shared: std::sync::Arc<Shared>) {
    use std::os::fd::AsRawFd;
    use std::sync::atomic::Ordering;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let Ok(mut ready) = fd.readable().await else { break };
        // SAFETY: recv into a buffer this function owns, on a socket it owns.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        if n > 0 {
            shared.messages.fetch_add(1, Ordering::Relaxed);
            shared.changed.notify_one();
            continue;
        }
        match std::io::Error::last_os_error().raw_os_error() {
            _ if n == 0 => break,
            Some(libc::EAGAIN) => ready.clear_ready(),
            Some(libc::EINTR) => {}
            Some(libc::ENOBUFS) => {
                shared.overruns.fetch_add(1, Ordering::Relaxed);
                shared.changed.notify_one();
            }
            _ => break,
        }
    }
    shared.closed.store(true, Ordering::Release);
    shared.changed.notify_one();
}

/// Changes in a namespace, as the kernel announces them ([`NetCtx::watch`]). Bounded: however
/// many the kernel sends while nobody waits, what is kept is one flag ("something changed").
#[derive(Debug)]
pub struct Changes {
    shared: std::sync::Arc<Shared>,
    reader: tokio::task::JoinHandle<()>,
}

impl Changes {
    fn closed(&self) -> bool {
        self.shared.closed.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Wait for the next change; `false` when the socket is gone.
    pub async fn next(&mut self) -> bool {
        if self.closed() {
            return false;
        }
        self.shared.changed.notified().await;
        !self.closed()
    }

    /// Wait until nothing changes for `quiet`; `false` when the socket is gone.
    pub async fn settle(&mut self, quiet: std::time::Duration) -> bool {
        loop {
            match tokio::time::timeout(quiet, self.shared.changed.notified()).await {
                Ok(()) if self.closed() => return false,
                Ok(()) => continue,
                Err(_) => return !self.closed(),
            }
        }
    }

    /// The messages read so far and the kernel's overruns (for tests and the log).
    pub fn counts(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering;
        (self.shared.messages.load(Ordering::Relaxed), self.shared.overruns.load(Ordering::Relaxed))
    }
}

impl Drop for Changes {
    fn drop(&mut self) {
        self.reader.abort();
    }
}
