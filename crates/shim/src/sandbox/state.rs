//! What the shim made for a sandbox, persisted in `<bundle>/kata-net-state.json` before each step
//! that makes something, so the `delete` subcommand (run by containerd in the bundle after a shim
//! crash) finds and removes it: QEMU, every runtime-made device, the namespace if the shim made it.

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use network::endpoint::EndpointState;
use network::{NetCtx, NetNs, RunDir, SandboxId};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

pub const STATE_FILE: &str = "kata-net-state.json";
/// The name of a namespace the shim makes is this and the sandbox's whole id.
pub const OWN_NETNS_PREFIX: &str = "kata-net-";

/// The namespace the shim makes for sandbox `id` (a name no other sandbox can have).
pub fn own_netns_path(id: &str) -> PathBuf {
    Path::new(network::netns::NETNS_RUN_DIR).join(format!("{OWN_NETNS_PREFIX}{id}"))
}

/// What the shim made for a sandbox, as persisted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxState {
    pub id: String,
    pub netns: Option<PathBuf>,
    /// The shim created the namespace and removes it.
    pub netns_created: bool,
    /// The shim was about to create its namespace (a crash may have come before it recorded
    /// `netns_created`): `delete` removes it if it is there.
    #[serde(default)]
    pub netns_intent: bool,
    /// The namespace's identity (device, inode of its nsfs file) when the sandbox started: a
    /// path like `/proc/<pid>/ns/net` may point at another namespace later (the pid reused).
    #[serde(default)]
    pub netns_id: Option<(u64, u64)>,
    pub endpoints: Vec<EndpointState>,
    pub qemu_pid: Option<u32>,
    /// Not from a state file: found by the runtime's tags (`delete` without a readable state).
    #[serde(skip)]
    pub by_tags: bool,
    pub run_dir: Option<PathBuf>,
    /// The port-forward table was (or was about to be) added to the namespace.
    #[serde(default)]
    pub portfwd: bool,
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
    /// [`teardown`](Self::teardown), then the state file forgotten whatever it gave.
    pub async fn remove(&self, log: &slog::Logger, run_root: Option<&Path>, bundle: &Path) -> Result<()> {
        let torn = self.teardown(log, run_root).await;
        Self::forget(bundle);
        torn
    }

    pub fn forget(bundle: &Path) {
        let _ = std::fs::remove_file(bundle.join(STATE_FILE));
    }

    /// The run directory, if it is one the shim may remove: `<run_root>/<id>` (the configured
    /// `run_dir` when known), absolute, without `.` or `..`, named by a valid id.
    fn confined_run_dir(&self, run_root: Option<&Path>) -> Option<&Path> {
        let d = self.run_dir.as_deref()?;
        let plain = d.is_absolute() && d.components().all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
        let named = SandboxId::parse(&self.id).is_ok() && d.file_name() == Some(self.id.as_ref());
        let under = run_root.is_none_or(|root| d.parent() == Some(root));
        (plain && named && under).then_some(d)
    }

    /// The namespace, if the shim made it (or was making it) and may remove it: exactly
    /// [`own_netns_path`] of this sandbox's id.
    fn own_netns(&self) -> Option<&Path> {
        let ns = self.netns.as_deref().filter(|_| self.netns_created || self.netns_intent)?;
        (SandboxId::parse(&self.id).is_ok() && ns == own_netns_path(&self.id)).then_some(ns)
    }

    /// Remove everything recorded: QEMU, runtime-made devices, the shim's namespace, the run
    /// directory with its shared directory (unmounted first). Paths are confined first: a run directory other than `<run_root>/<id>` and a
    /// namespace other than the shim's own (`kata-net-*`) are left alone and reported. Every
    /// step is tried; the first error is returned.
    pub async fn teardown(&self, log: &slog::Logger, run_root: Option<&Path>) -> Result<()> {
        let mut first: Result<()> = Ok(());
        let run_dir = self.confined_run_dir(run_root);
        if let (Some(d), None) = (&self.run_dir, run_dir) {
            first = Err(Error::Confined { what: "run directory", path: d.clone() });
        }
        // QEMU by its recorded pid, and any QEMU or vsock backend whose command line names the
        // run directory (one spawned just before a crash, not recorded yet).
        if let Some(d) = run_dir {
            let pids: Vec<u32> = self.qemu_pid.into_iter().chain(qemus_in(d)).collect();
            kill_ours(&pids, d).await;
        }
        if let Some(ns) = &self.netns {
            let same = match (self.netns_id, netns_identity(ns)) {
                (Some(recorded), Some(now)) => recorded == now,
                _ => true,
            };
            let res = match same {
                true => self.detach_and_remove_netns(ns, log, run_dir).await,
                false => Err(Error::Confined { what: "network namespace (another one now)", path: ns.clone() }),
            };
            if let (Err(e), true) = (res, first.is_ok()) {
                first = Err(e);
            }
        }
        // The shared directory and what is mounted under it (rootfs, shares) are unmounted
        // first: the directory is removed only when nothing is mounted under it.
        if let Some(d) = run_dir {
            match super::shares::unmount_under(d) {
                Ok(()) => {
                    let _ = std::fs::remove_dir_all(d);
                }
                Err(e) if first.is_ok() => first = Err(e),
                Err(_) => {}
            }
        }
        if let Err(e) = &first {
            slog::error!(log, "teardown incomplete"; "sandbox_id" => &self.id, "error" => crate::error::message(e));
        }
        slog::info!(log, "sandbox torn down"; "sandbox_id" => &self.id, "endpoints" => self.endpoints.len());
        first
    }
}

impl SandboxState {
    /// Undo the recorded endpoints. Without a record to go by (`by_tags`: the state file was
    /// missing or unreadable), what carries the runtime's tags goes instead: every device of its
    /// link group, every ingress qdisc holding its redirect filters (by their priority), every root
    /// HTB of its rate limits (by handle). Every
    /// step is recorded before it is taken otherwise, so a normal teardown needs no sweep.
    async fn detach(&self, ctx: &NetCtx, run_dir: Option<&Path>) -> Result<()> {
        let recorded = network::detach_all(ctx, &self.endpoints).await;
        if !self.by_tags {
            return recorded.map_err(Error::from);
        }
        // The tags are the runtime's, not this sandbox's: another sandbox's VM living in the same
        // namespace would lose its devices. Sweep only a namespace no other VM of ours is in.
        if let Some(pid) = other_vm_in(ctx.netns.path(), run_dir) {
            slog::warn!(ctx.log, "another sandbox's VM is in this namespace: no sweep by tags";
                "netns" => %ctx.netns.path().display(), "qemu_pid" => pid);
            return recorded.map_err(Error::from).and(Err(Error::Confined {
                what: "network namespace (another sandbox's VM is in it: no sweep by tags)",
                path: ctx.netns.path().to_owned(),
            }));
        }
        recorded.and(network::sweep_tags(ctx).await).map_err(Error::from)
    }

    /// The port-forward table, when recorded (or, sweeping by tags, wherever it is): `nft`
    /// missing, none was added.
    async fn remove_portfwd(&self, ctx: &NetCtx) -> Result<()> {
        match (self.portfwd || self.by_tags) && Path::new(network::portfwd::NFT).exists() {
            true => network::portfwd::remove(&ctx.netns).await.map_err(Error::from),
            false => Ok(()),
        }
    }

    /// Detach the endpoints in `ns` and remove it if it is the shim's own. Both are tried.
    async fn detach_and_remove_netns(&self, ns: &Path, log: &slog::Logger, run_dir: Option<&Path>) -> Result<()> {
        let detached = match ns.exists() {
            true => match NetCtx::open(NetNs::new(ns), log.clone()) {
                Ok(ctx) => self.detach(&ctx, run_dir).await.and(self.remove_portfwd(&ctx).await),
                Err(e) => Err(e.into()),
            },
            false => Ok(()),
        };
        let removed = match (self.netns_created || self.netns_intent, self.own_netns()) {
            (false, _) => Ok(()),
            (true, Some(own)) if own.exists() => NetNs::new(own).remove().map_err(Error::from),
            (true, Some(_)) => Ok(()),
            (true, None) => Err(Error::Confined { what: "network namespace", path: ns.to_owned() }),
        };
        detached.and(removed)
    }
}

/// The file in a sandbox's run directory that its shim holds locked (`flock`) while the sandbox
/// lives: the same sandbox id started again (in another containerd namespace) finds it held and
/// is refused, and a `delete` for that id leaves a held run directory alone.
pub const CLAIM_FILE: &str = "claim.lock";

/// Claim `<run_root>/<id>` for this shim: made if missing (root's, 0700), its claim file locked.
/// `Ok(None)`: another live shim holds it (nothing was touched).
pub fn claim_run_dir(run_dir: &Path) -> Result<Option<std::fs::File>> {
    let io = |source| Error::Io { what: "claiming the run directory", path: run_dir.to_owned(), source };
    std::fs::create_dir_all(run_dir).map_err(io)?;
    std::fs::set_permissions(run_dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).map_err(io)?;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(run_dir.join(CLAIM_FILE))
        .map_err(io)?;
    match try_lock(&f).map_err(io)? {
        true => Ok(Some(f)),
        false => Ok(None),
    }
}

/// `flock(LOCK_EX | LOCK_NB)`: `false` when another open file holds the lock.
fn try_lock(f: &std::fs::File) -> std::io::Result<bool> {
    // SAFETY: flock on an fd the caller owns; no memory is shared.
    match unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(f), libc::LOCK_EX | libc::LOCK_NB) } {
        0 => Ok(true),
        _ => match std::io::Error::last_os_error() {
            e if e.raw_os_error() == Some(libc::EWOULDBLOCK) => Ok(false),
            e => Err(e),
        },
    }
}

/// Whether a live shim (another process, or another claim in this one) holds `run_dir`.
pub fn run_dir_held(run_dir: &Path) -> bool {
    // A lock taken here is released when the file closes at the end of the call.
    std::fs::File::open(run_dir.join(CLAIM_FILE)).is_ok_and(|f| matches!(try_lock(&f), Ok(false)))
}

/// The identity of the namespace at `path`: device and inode of the nsfs file it resolves to.
pub fn netns_identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Whether process `pid` is a QEMU of the run directory `run_dir` (its QMP socket is there), or
/// the sandbox's hybrid vsock backend or virtiofsd (their vhost-user sockets are there).
fn is_our_qemu(pid: u32, run_dir: &Path) -> bool {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let d = RunDir::at(run_dir.to_owned());
    let qmp = format!("unix:{},", d.qmp_socket().display());
    let vsock = format!("socket={},", d.vsock_backend_socket().display());
    let fsd = format!("--socket-path={}", d.virtiofsd_socket().display());
    cmdline.split(|b| *b == 0).any(|arg| {
        arg.starts_with(qmp.as_bytes())
            || arg == fsd.as_bytes()
            || arg.windows(vsock.len()).any(|w| w == vsock.as_bytes())
    })
}

/// A QEMU (a process with a QMP socket on its command line) whose network namespace is the one at
/// `ns`, other than the sandbox's own (whose command line names `own_run_dir`).
fn other_vm_in(ns: &Path, own_run_dir: Option<&Path>) -> Option<u32> {
    let ident = netns_identity(ns)?;
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        if netns_identity(&e.path().join("ns/net")) != Some(ident) || own_run_dir.is_some_and(|d| is_our_qemu(pid, d)) {
            return None;
        }
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        cmdline.split(|b| *b == 0).any(|a| a == b"-qmp").then_some(pid)
    })
}

/// The QEMUs of the run directory `run_dir`, found through /proc.
fn qemus_in(run_dir: &Path) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                .filter(|pid| is_our_qemu(*pid, run_dir))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether process `pid` is gone or a zombie (dead, waiting for its parent to reap it: a crashed
/// shim's children are reaped by whoever inherited them, not by `delete`).
fn dead(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // The state follows the command name, which is in parentheses and may hold anything.
        Ok(stat) => stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()) == Some("Z"),
    }
}

/// Kill our processes (QEMU, its helpers) by pid, but only those that still are ours (their
/// command line names the sandbox's run directory), so a recycled pid is never hit; all at once,
/// then wait (at most 2 s) until each is dead.
async fn kill_ours(pids: &[u32], run_dir: &Path) {
    let ours: Vec<u32> = pids.iter().copied().filter(|p| is_our_qemu(*p, run_dir)).collect();
    for pid in &ours {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid as i32), nix::sys::signal::Signal::SIGKILL);
    }
    for _ in 0..200 {
        // Reap those that are our children; others are reaped by their parent.
        for pid in &ours {
            let _ = nix::sys::wait::waitpid(
                nix::unistd::Pid::from_raw(*pid as i32),
                Some(nix::sys::wait::WaitPidFlag::WNOHANG),
            );
        }
        if ours.iter().all(|p| dead(*p)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_ids_own_run_directory_under_the_run_root_may_be_removed() {
        let st = |id: &str, dir: &str| SandboxState { id: id.into(), run_dir: Some(dir.into()), ..Default::default() };
        let root = Path::new("/run/kn");
        assert_eq!(st("sb1", "/run/kn/sb1").confined_run_dir(Some(root)), Some(Path::new("/run/kn/sb1")));
        assert_eq!(st("sb1", "/run/kn/sb1").confined_run_dir(None), Some(Path::new("/run/kn/sb1")));
        for (id, dir) in [
            ("sb1", "/run/kn/sb2"),
            ("sb1", "/etc/sb1"),
            ("sb1", "/run/kn/../kn/sb1"),
            ("sb1", "sb1"),
            ("../x", "/run/kn/../x"),
        ] {
            assert_eq!(st(id, dir).confined_run_dir(Some(root)), None, "{id} {dir}");
        }
    }

    #[test]
    fn only_the_shims_own_namespace_may_be_removed() {
        let own = own_netns_path("sb1");
        let st = |netns: &Path, created: bool| SandboxState {
            id: "sb1".into(),
            netns: Some(netns.to_owned()),
            netns_created: created,
            ..Default::default()
        };
        assert_eq!(st(&own, true).own_netns(), Some(own.as_path()));
        assert_eq!(st(&own, false).own_netns(), None, "not made by the shim");
        assert_eq!(st(Path::new("/var/run/netns/cni-1"), true).own_netns(), None, "CNI's");
    }
}
