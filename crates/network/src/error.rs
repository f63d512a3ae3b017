//! The network crate's error type: one variant per failure, naming the object.

use std::io;
use std::path::PathBuf;

/// What went wrong, with the device or namespace it happened to.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open network namespace {path}")]
    NetnsOpen {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot enter network namespace {path}")]
    NetnsEnter {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("cannot create network namespace {path}")]
    NetnsCreate {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot remove network namespace {path}")]
    NetnsRemove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("worker thread for namespace {path} panicked")]
    NetnsThread { path: PathBuf },
    #[error("cannot open a netlink socket")]
    NetlinkSocket(#[source] io::Error),
    #[error("failed to {op} {dev}")]
    Netlink {
        op: &'static str,
        dev: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("link {0} not found")]
    LinkNotFound(String),
    #[error("device {0} already exists in the namespace")]
    DeviceExists(String),
    #[error("link {name} has kind {kind:?}, which the runtime cannot attach")]
    UnsupportedKind { name: String, kind: String },
    #[error("link {name}: {what} is not supported")]
    Unsupported { name: String, what: &'static str },
    #[error("failed to {op} {dev}")]
    Io {
        op: &'static str,
        dev: String,
        #[source]
        source: io::Error,
    },
    #[error("failed to unplug NIC {id} from the VM")]
    Unplug {
        id: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("device: {dev} exists and is a {kind}, not a TAP")]
    NotATap { dev: String, kind: String },
    #[error("queues: {dev} is a single-queue TAP; it takes 1 queue, not {asked}")]
    SingleQueueTap { dev: String, asked: usize },
    #[error("mtu: the new TAP {dev} refused MTU {mtu}")]
    TapMtu {
        dev: String,
        mtu: u32,
        #[source]
        source: Box<Error>,
    },
    #[error("{}: {why}", path.display())]
    Untrusted { path: PathBuf, why: String },
    /// A step its caller refused (a failure injected by a test build, for one).
    #[error("{0}")]
    Step(String),
    #[error("bad value from the kernel for {dev}: {what}")]
    Kernel { dev: String, what: String },
}

impl Error {
    /// The kernel's errno when the failure was a netlink or system call error.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Netlink { source: rtnetlink::Error::NetlinkError(m), .. } => m.code.map(|c| -c.get()),
            Error::Io { source, .. } => source.raw_os_error(),
            Error::NetnsEnter { source, .. } => Some(*source as i32),
            _ => None,
        }
    }

    pub(crate) fn netlink(op: &'static str, dev: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> Error {
        let dev = dev.into();
        move |source| Error::Netlink { op, dev, source }
    }

    pub(crate) fn io(op: &'static str, dev: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
        let dev = dev.into();
        move |source| Error::Io { op, dev, source }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
