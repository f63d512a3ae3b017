//! slog drains for the shim. The containerd-shim crate points the `log` crate at containerd's
//! shim log; slog records are bridged into it, so ttrpc's and our own logs end up together.

/// Logger for the running shim: slog → `log` → containerd's shim log.
pub fn shim_logger() -> slog::Logger {
    slog::Logger::root(slog_stdlog::StdLog.fuse(), slog::o!())
}

/// Logger for the `delete` subcommand, whose stderr containerd logs.
pub fn stderr_logger() -> slog::Logger {
    let decorator = slog_term::PlainSyncDecorator::new(std::io::stderr());
    slog::Logger::root(slog_term::FullFormat::new(decorator).build().fuse(), slog::o!())
}

use slog::Drain;
