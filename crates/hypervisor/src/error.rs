//! Errors of the hypervisor crate, naming the key, command or device.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("[hypervisor.qemu] {key}: {rule}")]
    Config { key: &'static str, rule: Rule },
    #[error("cannot start QEMU ({path})")]
    Spawn {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("QMP {command} failed: {desc}")]
    Qmp { command: String, desc: String },
    #[error("QMP connection to {path}")]
    QmpIo {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("QEMU is not running ({0})")]
    Dead(String),
    #[error("timed out waiting for {0}")]
    Timeout(String),
    #[error("no free hotplug slot (all {0} in use)")]
    NoFreeSlot(usize),
    #[error("NIC {0} is not plugged in")]
    UnknownNic(String),
    #[error("{0}")]
    Unsupported(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a key's value is refused: each rule with the value that broke it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rule {
    #[error("{} must be an absolute path", .0.display())]
    NotAbsolute(PathBuf),
    #[error("{} does not exist", .0.display())]
    Missing(PathBuf),
    /// A file QEMU is given that another user could have written (`network::trust`).
    #[error("refused: {0}")]
    Untrusted(String),
    #[error("is exclusive with {0} (as in kata): set one of them")]
    Exclusive(&'static str),
    #[error("neither initrd nor image is set")]
    NoRoot,
    #[error("{} is {len} bytes: a guest image is a whole number of 2 MiB blocks (kata's layout)", path.display())]
    ImageSize { path: PathBuf, len: u64 },
    #[error("is only for an image")]
    OnlyForImage,
    #[error("{value}{unit} is outside {min}..={max}")]
    OutOfRange { value: u64, unit: &'static str, min: u64, max: u64 },
    #[error("{value} is more than the {max} this machine type offers")]
    TooManySlots { value: u64, max: u64 },
    #[error("{0:?}: each is one option, starting with '-'")]
    NotAnOption(String),
    #[error("must be one line")]
    NotOneLine,
    /// QEMU's option syntax cannot carry a comma in this path.
    #[error("{0}: a path with a comma")]
    Comma(String),
}
