//! What the shim made for a sandbox, persisted in `<bundle>/kata-net-state.json` before each step
//! that makes something, so the `delete` subcommand (run by containerd in the bundle after a shim
//! crash) finds and removes it: QEMU, every runtime-made device, the namespace if the shim made it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use network::endpoint::EndpointState;
use network::{NetCtx, NetNs};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

pub const STATE_FILE: &str = "kata-net-state.json";

/// What the shim made for a sandbox, as persisted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxState {
    pub id: String,
    pub netns: Option<PathBuf>,
    /// The shim created the namespace and removes it.
    pub netns_created: bool,
    pub endpoints: Vec<EndpointState>,
    pub qemu_pid: Option<u32>,
    pub run_dir: Option<PathBuf>,
}

impl SandboxState {
    pub fn save(&self, bundle: &Path) -> Result<()> {
        let path = bundle.join(STATE_FILE);
        let tmp = bundle.join(format!("{STATE_FILE}.tmp"));
        let bytes = serde_json::to_vec(self).map_err(|e| Error::SaveState { path: path.clone(), source: e.into() })?;
        std::fs::write(&tmp, bytes)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|source| Error::SaveState { path, source })
    }

    pub fn load(bundle: &Path) -> Result<Option<Self>> {
        let path = bundle.join(STATE_FILE);
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| Error::Io {
                what: "reading the sandbox state",
                path,
                source: e.into(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(Error::Io { what: "reading the sandbox state", path, source }),
        }
    }

    /// Remove the state file of `bundle` (nothing is left to find).
    pub fn forget(bundle: &Path) {
        let _ = std::fs::remove_file(bundle.join(STATE_FILE));
    }

    /// Remove everything recorded: QEMU, runtime-made devices, the shim's namespace, the run
    /// directory. Every step is tried; the first error is returned.
    pub async fn teardown(&self, log: &slog::Logger) -> Result<()> {
        let mut first: Result<()> = Ok(());
        if let Some(pid) = self.qemu_pid {
            kill_qemu(pid, self.run_dir.as_deref()).await;
        }
        if let Some(ns) = &self.netns {
            if ns.exists() {
                let detached = match NetCtx::open(NetNs::new(ns), log.clone()) {
                    Ok(ctx) => network::detach_all(&ctx, &self.endpoints).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = detached {
                    first = Err(e.into());
                }
            }
            if self.netns_created {
                if let Err(e) = NetNs::new(ns).remove() {
                    if first.is_ok() {
                        first = Err(e.into());
                    }
                }
            }
        }
        if let Some(d) = &self.run_dir {
            let _ = std::fs::remove_dir_all(d);
        }
        slog::info!(log, "sandbox torn down"; "sandbox_id" => &self.id, "endpoints" => self.endpoints.len());
        first
    }
}

/// Kill a QEMU recorded by pid, but only if that pid still is our QEMU (its command line names
/// the sandbox's run directory), so a recycled pid is never hit.
async fn kill_qemu(pid: u32, run_dir: Option<&Path>) {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let ours = run_dir.is_some_and(|d| {
        let needle = d.to_string_lossy();
        String::from_utf8_lossy(&cmdline).contains(needle.as_ref())
    });
    if !ours {
        return;
    }
    let p = nix::unistd::Pid::from_raw(pid as i32);
    let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGKILL);
    for _ in 0..200 {
        if !Path::new(&format!("/proc/{pid}")).exists() {
            return;
        }
        // Reap it if it is our child; otherwise wait for its parent to.
        let _ = nix::sys::wait::waitpid(p, Some(nix::sys::wait::WaitPidFlag::WNOHANG));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
