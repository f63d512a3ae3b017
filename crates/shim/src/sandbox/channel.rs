//! The channel to the sandbox's agent, as configured (`agent_channel`): a virtio-serial port, a
//! hybrid vsock through a `vhost-device-vsock` backend the shim starts for the sandbox, or kernel
//! vsock. The backend runs as long as its `VsockBackend` lives (dropped: killed); a crashed
//! shim's `delete` finds it by its socket in the run directory.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agent_client::AgentAddr;
use hypervisor::{AgentChannel, AgentChannelChoice};
use network::RunDir;

use crate::error::{Error, Result};

/// The agent's vsock port (kata's).
const AGENT_PORT: u32 = 1024;
/// The hybrid vsock backend's program, looked up in `PATH`.
pub const VSOCK_BACKEND: &str = "vhost-device-vsock";
/// The backend's log in the run directory.
pub const VSOCK_BACKEND_LOG: &str = "vsock-backend.log";
/// The backend's thread that serves the VM's queues and the host's connections (vhost-user-backend
/// names it so).
pub(crate) const VSOCK_WORKER_THREAD: &str = "vring_worker";
/// How often the worker thread is looked for while the shim waits for the agent.
const WORKER_CHECK_EVERY: Duration = Duration::from_millis(200);

/// How QEMU is told about the channel, where the shim connects, and the backend (if any).
#[derive(Debug)]
pub struct AgentLink {
    pub channel: AgentChannel,
    pub addr: AgentAddr,
    pub backend: Option<VsockBackend>,
}

/// A `vhost-device-vsock` process serving one sandbox; killed when dropped.
#[derive(Debug)]
pub struct VsockBackend {
    child: tokio::process::Child,
}

impl VsockBackend {
    /// Start the backend for the VM of `run_dir` and wait (bounded) for its socket.
    async fn start(run_dir: &RunDir) -> Result<Self> {
        let (socket, uds) = (run_dir.vsock_backend_socket(), run_dir.hybrid_vsock());
        let io = |source| Error::Io {
            what: "starting the hybrid vsock backend for",
            path: run_dir.path().to_owned(),
            source,
        };
        let mut cmd = tokio::process::Command::new(VSOCK_BACKEND);
        cmd.arg("--vm").arg(format!("guest-cid=3,socket={},uds-path={}", socket.display(), uds.display()));
        // Its log beside the console's: RUST_LOG from the shim's environment sets the level,
        // warnings by default.
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "warn");
        }
        // Its log, capped whatever the backend writes (hypervisor::caplog).
        let log = run_dir.path().join(VSOCK_BACKEND_LOG);
        let child = spawn_until_socket(cmd, &socket, Some(log)).await.map_err(io)?;
        Ok(Self { child })
    }

    /// Its pid (0 once reaped).
    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// Stop the backend now.
    pub async fn stop(&mut self) {
        let _ = self.child.kill().await;
    }

    /// Does the backend's worker thread still run? vhost-device-vsock 0.3.0 ends it (the process
    /// lives on) when its event handler returns an error, and one such error is a host
    /// connection that arrives while QEMU is still setting up the guest's queues: from then on no
    /// connection of the VM is ever answered. Read from `/proc/<pid>/task/*/comm`.
    pub fn worker_alive(&self) -> bool {
        self.child.id().is_some_and(|pid| has_thread(pid, VSOCK_WORKER_THREAD))
    }

    /// Resolves once the worker thread is gone (or the test's failpoint `start:vsock:worker` says
    /// so); never while it runs.
    pub async fn worker_lost(&self) {
        loop {
            if !self.worker_alive() || crate::failpoint::hit_async("start:vsock:worker").await.is_err() {
                return;
            }
            tokio::time::sleep(WORKER_CHECK_EVERY).await;
        }
    }
}

/// Whether process `pid` has a thread named `comm` (`/proc/<pid>/task/*/comm`).
pub(crate) fn has_thread(pid: u32, comm: &str) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return false };
    tasks.flatten().any(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim_end() == comm))
}

/// The last lines of the hybrid vsock backend's log in `run_dir` (at most 2 KiB), for an error.
pub fn backend_log_tail(run_dir: &RunDir) -> String {
    log_tail(&run_dir.path().join(VSOCK_BACKEND_LOG))
}

/// The last lines (at most 5, from the last 2 KiB) of the log at `path`, joined by ` | `.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let tail = &text[text.len().saturating_sub(2048)..];
    let text = String::from_utf8_lossy(tail);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join(" | ")
}

/// Start a helper process of the sandbox (stdin and stdout null, stderr into the capped `log`
/// or nowhere; killed when its `Child` is dropped) and wait, at most 10 s, for the socket it
/// serves on; an error if it exits first, with the last lines it logged.
pub(crate) async fn spawn_until_socket(
    mut cmd: tokio::process::Command,
    socket: &Path,
    log: Option<PathBuf>,
) -> std::io::Result<tokio::process::Child> {
    use std::process::Stdio;
    let stderr = if log.is_some() { Stdio::piped() } else { Stdio::null() };
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(stderr).kill_on_drop(true).spawn()?;
    // Its stderr into a capped log from the first byte (a start that fails says why there).
    let copy = match (child.stderr.take(), &log) {
        (Some(err), Some(log)) => {
            Some(tokio::spawn(hypervisor::caplog::copy_capped(err, log.clone(), hypervisor::caplog::CAP)))
        }
        _ => None,
    };
    let t = Instant::now();
    while !socket.exists() {
        if let Some(st) = child.try_wait()? {
            // What it wrote before it exited is in the log once the copy has read to the end.
            if let Some(copy) = copy {
                let _ = tokio::time::timeout(Duration::from_secs(2), copy).await;
            }
            let said = log.as_deref().map(log_tail).filter(|t| !t.is_empty());
            return Err(std::io::Error::other(format!(
                "{} exited: {st}{}",
                cmd.as_std().get_program().to_string_lossy(),
                said.map(|t| format!(" (its log: {t})")).unwrap_or_default()
            )));
        }
        if t.elapsed() > Duration::from_secs(10) {
            return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "no socket after 10 s"));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(child)
}

/// A first guest CID to try for sandbox `id` (kernel vsock): 3 and up, from the id.
fn cid_of(id: &str) -> u32 {
    let h = id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    3 + (h % (u64::from(u32::MAX) - 3)) as u32
}

nix::ioctl_write_ptr!(vhost_vsock_set_guest_cid, 0xAF, 0x60, u64);

/// The vhost-vsock device, and how many CIDs to try on it before giving up.
const VHOST_VSOCK: &str = "/dev/vhost-vsock";
const CID_TRIES: u32 = 64;

/// Reserve a guest CID as kata does: open `/dev/vhost-vsock` and set the CID on it
/// (VHOST_VSOCK_SET_GUEST_CID), the next one while the kernel says it is in use. The fd keeps the
/// CID; QEMU gets it (`vhostfd`).
fn reserve_cid(id: &str) -> Result<(u32, std::os::fd::OwnedFd)> {
    let io = |source| Error::Io { what: "reserving a vsock CID on", path: VHOST_VSOCK.into(), source };
    let dev = std::fs::OpenOptions::new().read(true).write(true).open(VHOST_VSOCK).map_err(io)?;
    let first = cid_of(id);
    for i in 0..CID_TRIES {
        let cid = 3 + (first - 3).wrapping_add(i) % (u32::MAX - 3);
        let want = u64::from(cid);
        // SAFETY: the ioctl reads one u64 from a valid pointer; `dev` is an open vhost-vsock fd.
        match unsafe { vhost_vsock_set_guest_cid(std::os::fd::AsRawFd::as_raw_fd(&dev), &want) } {
            Ok(_) => return Ok((cid, dev.into())),
            Err(nix::errno::Errno::EADDRINUSE) => continue,
            Err(e) => return Err(io(e.into())),
        }
    }
    Err(io(std::io::Error::other(format!("{CID_TRIES} CIDs from {first} are all in use"))))
}

/// What `auto` means: hybrid vsock, always. Unlike kata, which takes kernel vsock wherever
/// `/dev/vhost-vsock` exists: any local user can connect to a guest CID (it is on QEMU's command
/// line, and CIDs are few), and the agent asks for no credentials. Hybrid vsock's socket lies in
/// the root-only run directory. Kernel vsock is there for who asks for it by name.
pub fn resolve(choice: AgentChannelChoice) -> AgentChannelChoice {
    match choice {
        AgentChannelChoice::Auto => AgentChannelChoice::HybridVsock,
        other => other,
    }
}

/// The channel for sandbox `id` with run directory `run_dir`.
pub async fn agent_link(choice: AgentChannelChoice, run_dir: &RunDir, id: &str) -> Result<AgentLink> {
    let choice = resolve(choice);
    let addr = |s: String| s.parse::<AgentAddr>().map_err(Error::from);
    Ok(match choice {
        AgentChannelChoice::Serial => {
            let socket: PathBuf = run_dir.agent_socket();
            AgentLink {
                addr: addr(format!("unix://{}", socket.display()))?,
                channel: AgentChannel::Serial { socket },
                backend: None,
            }
        }
        AgentChannelChoice::HybridVsock => AgentLink {
            backend: Some(VsockBackend::start(run_dir).await?),
            channel: AgentChannel::VhostUserVsock { backend: run_dir.vsock_backend_socket() },
            addr: addr(format!("hvsock://{}:{AGENT_PORT}", run_dir.hybrid_vsock().display()))?,
        },
        AgentChannelChoice::Vsock | AgentChannelChoice::Auto => {
            let (cid, fd) = reserve_cid(id)?;
            AgentLink {
                channel: AgentChannel::Vsock { cid, vhostfd: Some(std::sync::Arc::new(fd)) },
                addr: addr(format!("vsock://{cid}:{AGENT_PORT}"))?,
                backend: None,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use hypervisor::config::AgentChannelChoice as C;

    #[test]
    fn auto_is_a_channel_only_root_reaches_and_kernel_vsock_is_taken_only_by_name() {
        assert_eq!(super::resolve(C::Auto), C::HybridVsock);
        for named in [C::Vsock, C::HybridVsock, C::Serial] {
            assert_eq!(super::resolve(named), named);
        }
    }

    /// The worker thread is found in a real vhost-device-vsock (the test fails when the program
    /// is missing: `.ci/run` installs it), and not in a process without it.
    #[tokio::test]
    async fn the_backends_worker_thread_is_seen_and_its_absence_too() {
        // Removed on drop, even when an assertion fails; the backends are killed on drop.
        let dir = tests::vm::Scratch::new("vsock-worker");
        let backend =
            super::VsockBackend::start(&network::RunDir::at(dir.0.clone())).await.expect("vhost-device-vsock in PATH");
        assert!(backend.worker_alive(), "vhost-device-vsock runs a {} thread", super::VSOCK_WORKER_THREAD);
        drop(backend);
        let child = tokio::process::Command::new("sleep").arg("30").kill_on_drop(true).spawn().unwrap();
        let other = super::VsockBackend { child };
        assert!(!other.worker_alive());
        // A lost worker is reported at once.
        tokio::time::timeout(std::time::Duration::from_secs(2), other.worker_lost()).await.unwrap();
    }

    /// A helper that exits before it serves: the error carries what it wrote, copied whole.
    #[tokio::test]
    async fn a_helper_exiting_at_start_is_reported_with_what_it_logged() {
        let dir = tests::vm::Scratch::new("helper-exit");
        let mut cmd = tokio::process::Command::new("sh");
        cmd.args(["-c", "echo first line >&2; echo 'no such socket: refused' >&2; exit 3"]);
        let log = dir.0.join("helper.log");
        let err = super::spawn_until_socket(cmd, &dir.0.join("never.sock"), Some(log.clone())).await.unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("exit status: 3") && msg.contains("first line | no such socket: refused"), "{msg}");
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "first line\nno such socket: refused\n");
    }

    #[test]
    fn the_backends_log_tail_is_its_last_five_lines() {
        let dir = tests::vm::Scratch::new("vsock-log");
        assert_eq!(super::backend_log_tail(&network::RunDir::at(dir.0.clone())), "", "no log: nothing to quote");
        let log: String = (1..=8).map(|n| format!("line {n}\n")).collect();
        std::fs::write(dir.0.join(super::VSOCK_BACKEND_LOG), log).unwrap();
        assert_eq!(
            super::backend_log_tail(&network::RunDir::at(dir.0.clone())),
            "line 4 | line 5 | line 6 | line 7 | line 8"
        );
    }

    #[test]
    fn cids_are_3_and_up_and_differ_by_id() {
        let (a, b) = (super::cid_of("sandbox-a"), super::cid_of("sandbox-b"));
        assert!(a >= 3 && b >= 3 && a != b);
        assert_eq!(super::cid_of("sandbox-a"), a);
    }

    #[test]
    fn without_vhost_vsock_the_reservation_names_the_device() {
        if std::path::Path::new(super::VHOST_VSOCK).exists() {
            let (cid, _fd) = super::reserve_cid("sandbox-a").unwrap();
            assert!(cid >= 3);
        } else {
            let e = crate::error::message(&super::reserve_cid("sandbox-a").unwrap_err());
            assert!(e.contains("reserving a vsock CID on /dev/vhost-vsock"), "{e}");
        }
    }
}
