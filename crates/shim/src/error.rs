//! The shim's error type, and the one place errors become ttrpc statuses (for containerd's Task
//! calls and for the management service alike).

use std::path::PathBuf;

use netmgmt::doc::DocError;
use netmgmt::ipvs::IpvsError;
use ttrpc::Code;

use crate::config::ConfigError;

/// What went wrong, by the object it happened to. Causes stay in `source()`; the message is
/// built once, by [`message`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The configuration was refused when the shim started (the message names the key).
    #[error("{0}")]
    BadConfig(String),
    #[error("bundle {path}")]
    Bundle {
        path: PathBuf,
        #[source]
        source: oci_spec::OciSpecError,
    },
    /// The DNS the spec gives cannot be used (the message names the annotation or file).
    #[error("{0}")]
    Dns(String),
    /// A container's spec the VM cannot run (the message names the field and the rule).
    #[error("container spec: {0}")]
    Spec(String),
    #[error("the spec names no network namespace and disable_new_netns is set")]
    NoNetns,
    #[error("only the sandbox (pause) container runs in this shim")]
    NotSandbox,
    #[error(transparent)]
    Network(#[from] network::Error),
    #[error(transparent)]
    Hypervisor(#[from] hypervisor::Error),
    #[error(transparent)]
    Agent(#[from] agent_client::Error),
    #[error("the agent is not serving")]
    AgentNotServing,
    /// No answer from the guest's agent within `[agent.kata] dial_timeout`.
    #[error("the guest's agent did not answer on {addr} within {secs} s ([agent.kata] dial_timeout; does it serve this agent_channel?): {cause}")]
    AgentSilent { addr: String, secs: u64, cause: String },
    /// The hybrid vsock backend stopped serving the VM (its worker thread ended).
    #[error("the hybrid vsock backend (vhost-device-vsock) stopped serving the VM: its worker thread ended (an error in its event handler; its log: {log})")]
    VsockBackendLost { log: String },
    /// The sandbox's agent does not serve a call the operation needs.
    #[error("the sandbox's agent lacks {0}")]
    AgentLacks(&'static str),
    #[error(transparent)]
    Doc(#[from] DocError),
    #[error(transparent)]
    Ipvs(#[from] IpvsError),
    /// A request that conflicts with what the sandbox has (a name, MAC or device in use).
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Injected(#[from] crate::failpoint::Injected),
    #[error("the request's deadline passed before the operation could start")]
    Deadline,
    /// The shim is ending (SIGTERM, its bundle removed, idle): it makes nothing new.
    #[error("{0}")]
    Unavailable(String),
    /// A bug: a task that ended without its answer (it panicked).
    #[error("{0}")]
    Internal(String),
    #[error("{what} {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("saving the sandbox state {}", path.display())]
    SaveState {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} {} is not one the shim made: left alone", path.display())]
    Confined { what: &'static str, path: PathBuf },
    #[error("sandbox id {:?}: only letters, digits, '_', '-' and '.' (not first), at most 128", .0.0)]
    InvalidId(#[from] network::BadId),
    #[error("management server on {}: {why}", path.display())]
    MgmtServer { path: PathBuf, why: String },
    /// An operation failed and undoing it failed too: both messages, and what is left.
    #[error("{error}; undoing it failed too ({undo}): {left}")]
    UndoFailed { error: String, code: Code, undo: String, left: &'static str },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The ttrpc code a caller sees: bad input, a precondition, a missing object, or internal.
    pub fn code(&self) -> Code {
        use network::Error as N;
        match self {
            Error::Config(_)
            | Error::BadConfig(_)
            | Error::InvalidId(_)
            | Error::Dns(_)
            | Error::Spec(_)
            | Error::Bundle { .. }
            | Error::Doc(_) => Code::INVALID_ARGUMENT,
            Error::NoNetns | Error::AgentNotServing => Code::FAILED_PRECONDITION,
            Error::AgentSilent { .. } => Code::DEADLINE_EXCEEDED,
            Error::VsockBackendLost { .. } | Error::Unavailable(_) => Code::UNAVAILABLE,
            Error::NotSandbox | Error::AgentLacks(_) => Code::UNIMPLEMENTED,
            Error::Network(e) => match e {
                N::UnsupportedKind { .. } | N::Unsupported { .. } | N::TapMtu { .. } => Code::FAILED_PRECONDITION,
                N::NotATap { .. } | N::SingleQueueTap { .. } => Code::INVALID_ARGUMENT,
                N::DeviceExists(_) => Code::ALREADY_EXISTS,
                N::LinkNotFound(_) => Code::NOT_FOUND,
                N::NetnsOpen { source, .. } if source.kind() == std::io::ErrorKind::NotFound => Code::NOT_FOUND,
                N::NetnsOpen { .. } | N::NetnsEnter { .. } => Code::FAILED_PRECONDITION,
                _ => Code::INTERNAL,
            },
            Error::Hypervisor(e) => match e {
                hypervisor::Error::Config { .. } => Code::INVALID_ARGUMENT,
                hypervisor::Error::NoFreeSlot(_) => Code::RESOURCE_EXHAUSTED,
                hypervisor::Error::Dead(_) => Code::UNAVAILABLE,
                hypervisor::Error::Timeout(_) => Code::DEADLINE_EXCEEDED,
                _ => Code::INTERNAL,
            },
            Error::Agent(e) => e.code().unwrap_or(Code::UNAVAILABLE),
            Error::Ipvs(e) => match e {
                IpvsError::Syntax(_) | IpvsError::Line { .. } => Code::INVALID_ARGUMENT,
                IpvsError::Rule(_) | IpvsError::NotEmpty(_) => Code::FAILED_PRECONDITION,
                IpvsError::Limit { .. } => Code::RESOURCE_EXHAUSTED,
            },
            Error::AlreadyExists(_) => Code::ALREADY_EXISTS,
            Error::Injected(_) => Code::INTERNAL,
            Error::Deadline => Code::DEADLINE_EXCEEDED,
            Error::Internal(_) => Code::INTERNAL,
            Error::NotFound(_) => Code::NOT_FOUND,
            Error::UndoFailed { code, .. } => *code,
            Error::Io { .. } | Error::SaveState { .. } | Error::MgmtServer { .. } | Error::Confined { .. } => {
                Code::INTERNAL
            }
        }
    }
}

/// The error and its causes on one line, each cause once: a cause whose text the message
/// already holds (a library that prints its source too) is not repeated. The guest's own
/// refusal is the useful part of an agent error.
pub fn message(e: &(dyn std::error::Error + 'static)) -> String {
    if let Some(Error::Agent(agent_client::Error::Rpc { source: ttrpc::Error::RpcStatus(s), .. })) =
        e.downcast_ref::<Error>()
    {
        // kata's agent appends anyhow's backtrace ("Stack backtrace:" and frames): not the refusal.
        let text = s.message().split("Stack backtrace:").next().unwrap_or_default().trim_end();
        return format!("the VM refused: {}", netmgmt::output::printable(text, false));
    }
    let mut msg = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !text.is_empty() && !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        cur = s.source();
    }
    msg.replace('\n', " ")
}

impl Error {
    /// `error`, whose undo failed with `undo`, leaving `left`.
    pub fn undo_failed(error: &Error, undo: &(dyn std::error::Error + 'static), left: &'static str) -> Self {
        Error::UndoFailed { error: message(error), code: error.code(), undo: message(undo), left }
    }
}

impl From<Error> for ttrpc::Error {
    fn from(e: Error) -> Self {
        ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), message(&e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preconditions_and_bad_input_have_their_codes_and_a_cause_is_printed_once() {
        let unsupported = Error::from(network::Error::UnsupportedKind { name: "br0".into(), kind: "bridge".into() });
        assert_eq!(unsupported.code(), Code::FAILED_PRECONDITION);
        assert_eq!(Error::NoNetns.code(), Code::FAILED_PRECONDITION);
        let bad_key = Error::from(ConfigError::Parse { path: "/etc/x.toml".into(), message: "unknown field".into() });
        assert_eq!(bad_key.code(), Code::INVALID_ARGUMENT);
        let io = std::io::Error::from_raw_os_error(2);
        let e = Error::Io { what: "reading", path: "/x".into(), source: io };
        let m = message(&e);
        assert_eq!(m.matches("No such file").count(), 1, "{m}");
        let nested = Error::from(network::Error::TapMtu {
            dev: "tap-new".into(),
            mtu: 46,
            source: Box::new(network::Error::LinkNotFound("tap-new".into())),
        });
        assert_eq!(message(&nested), "mtu: the new TAP tap-new refused MTU 46: link tap-new not found");
    }
}
