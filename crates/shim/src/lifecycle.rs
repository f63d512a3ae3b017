//! How a serving shim ends when containerd does not end it: on SIGTERM (systemd stopping the
//! node's services, an operator), when its bundle is removed (containerd cleaned the sandbox up as
//! dead: after its own restart during the start, its `delete` found this shim alive), and when it
//! has held no container for a while (`containers::end`: 10 s after the last one went, 60 s after
//! a start that no Create followed), containerd having restarted between them. Each ends the
//! same way: every sandbox is shut down in full, then the process exits.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use containerd_shim::asynchronous::ExitSignal;
use tokio::signal::unix::{signal, SignalKind};

use crate::containers::Containers;

/// How often the bundle and the idleness are looked at.
const LOOK_EVERY: Duration = Duration::from_secs(2);

/// The bundle directory the shim was started in, by path and identity.
struct Bundle {
    path: PathBuf,
    id: Option<(u64, u64)>,
}

impl Bundle {
    fn current() -> Self {
        let path = std::env::current_dir().unwrap_or_default();
        let id = std::fs::metadata(&path).ok().map(|m| (m.dev(), m.ino()));
        Bundle { path, id }
    }

    /// Removed, moved away, or made again (another sandbox's now).
    fn gone(&self) -> bool {
        self.id.is_some() && std::fs::metadata(&self.path).ok().map(|m| (m.dev(), m.ino())) != self.id
    }
}

/// Watch for the shim's end; when it comes, shut every sandbox down and let the process exit.
pub(crate) fn watch(containers: Arc<Containers>, exit: Arc<ExitSignal>, log: slog::Logger) {
    let bundle = Bundle::current();
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            slog::error!(log, "SIGTERM cannot be watched: the shim will not end on it"; "error" => %e);
            return;
        }
    };
    tokio::spawn(async move {
        let mut idle_for = Duration::ZERO;
        let why = loop {
            tokio::select! {
                _ = term.recv() => break "SIGTERM",
                _ = tokio::time::sleep(LOOK_EVERY) => {}
            }
            if bundle.gone() {
                break "its bundle was removed (containerd cleaned the sandbox up)";
            }
            let limit = containers.idle_limit().await;
            idle_for = match limit {
                Some(_) => idle_for + LOOK_EVERY,
                None => Duration::ZERO,
            };
            if limit.is_some_and(|l| idle_for >= l) {
                break "idle: no container and no Shutdown";
            }
        };
        slog::warn!(log, "the shim is ending: its sandboxes are shut down"; "why" => why,
            "bundle" => %bundle.path.display());
        containers.end_all().await;
        slog::info!(log, "the shim ended");
        exit.signal();
    });
}
