//! Errors of the hypervisor crate, naming the key, command or device.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("[hypervisor.qemu] {key}: {rule}")]
    Config { key: &'static str, rule: crate::config::Rule },
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
