//! Containers and their processes, as kata's agent serves them: CreateContainer makes the init
//! process's IO (pipes, or a terminal) and StartContainer starts it; ExecProcess starts an exec
//! at once; a process's output is read with ReadStdout/ReadStderr until the end (an error, as
//! kata's agent says it), its exit with WaitProcess. Processes are started by the launcher
//! (`launch.rs`). A process is named by container and exec id; the init's exec id is the one
//! CreateContainer gave (kata's runtime gives the container's id).

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use agent_client::protocols::agent::CreateContainerRequest;
use agent_client::protocols::oci;
use tokio::io::unix::AsyncFd;
use tokio::sync::{watch, Mutex};
use ttrpc::Code;

use crate::launch::{Caps, Launch, Mnt, PidNs};

type R<T> = Result<T, (Code, String)>;

fn invalid(field: &str, why: impl std::fmt::Display) -> (Code, String) {
    (Code::INVALID_ARGUMENT, format!("{field}: {why}"))
}

fn internal(what: &str, e: impl std::fmt::Display) -> (Code, String) {
    (Code::INTERNAL, format!("{what}: {e}"))
}

/// Where kata's runtime shares the containers' root filesystems.
const SHARED: &str = "/run/kata-containers/shared/containers/";

/// The fds a process gets as 0, 1, 2.
struct ChildIo {
    stdin: OwnedFd,
    stdout: OwnedFd,
    stderr: OwnedFd,
}

pub struct Proc {
    launch: std::sync::Mutex<Option<(Launch, ChildIo)>>,
    stdin: Mutex<Option<AsyncFd<OwnedFd>>>,
    stdout: Mutex<Option<AsyncFd<OwnedFd>>>,
    stderr: Mutex<Option<AsyncFd<OwnedFd>>>,
    /// The terminal's master side, when the process has one.
    master: Option<OwnedFd>,
    pid: std::sync::Mutex<Option<u32>>,
    exit: watch::Sender<Option<i32>>,
    /// The init of a container without a PID namespace of its own: its end ends the container's
    /// other processes (as runc's shim kills them all then), through its cgroup.
    kill_all_on_exit: Option<PathBuf>,
    /// Checked for OOM kills before the exit is told (so the OOM event comes first).
    oom: Option<Arc<OomWatch>>,
}

/// A container's OOM kills as `memory.events` counts them, and where to report new ones.
struct OomWatch {
    cid: String,
    cgroup: PathBuf,
    seen: AtomicU64,
    tx: tokio::sync::mpsc::UnboundedSender<String>,
}

impl OomWatch {
    /// Report the kills not reported yet (one event per check that finds some).
    fn check(&self) {
        let now = crate::cgroups::oom_kills(&self.cgroup);
        if now > self.seen.swap(now, Ordering::SeqCst) {
            eprintln!("guest-agent: container {} had a process killed by the OOM killer", self.cid);
            let _ = self.tx.send(self.cid.clone());
        }
    }
}

struct Ctr {
    init_exec: String,
    procs: HashMap<String, Arc<Proc>>,
    cgroup: Option<PathBuf>,
    /// What its execs get too: the container's seccomp programs.
    seccomp: Vec<Vec<u8>>,
    oom: Option<Arc<OomWatch>>,
}

/// The sandbox as CreateSandbox described it.
#[derive(Default)]
struct SandboxInfo {
    id: String,
    /// The pid of the PID namespace holder the agent made (`--pause`), when one was needed.
    pause: Option<u32>,
}

pub struct Containers {
    ctrs: std::sync::Mutex<HashMap<String, Ctr>>,
    sandbox: std::sync::Mutex<SandboxInfo>,
    cgroups: bool,
    oom_tx: tokio::sync::mpsc::UnboundedSender<String>,
    oom_rx: Mutex<tokio::sync::mpsc::UnboundedReceiver<String>>,
}

impl Default for Containers {
    fn default() -> Self {
        let (oom_tx, oom_rx) = tokio::sync::mpsc::unbounded_channel();
        Self {
            ctrs: Default::default(),
            sandbox: Default::default(),
            cgroups: crate::cgroups::init(),
            oom_tx,
            oom_rx: Mutex::new(oom_rx),
        }
    }
}

fn nonblocking(fd: OwnedFd) -> R<AsyncFd<OwnedFd>> {
    let flags = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_GETFL).map_err(|e| internal("fcntl", e))?;
    let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFL(flags)).map_err(|e| internal("fcntl", e))?;
    // SAFETY: the AsyncFd owns the descriptor, which nothing else closes while it is registered.
    unsafe { AsyncFd::register(fd) }.map_err(|e| internal("AsyncFd", e.to_string()))
}

fn pipe() -> R<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| internal("pipe", e))
}

/// A process's IO: pipes, or a terminal (its slave side as 0, 1 and 2).
fn make_proc(launch: Launch, size: Option<(u16, u16)>) -> R<Proc> {
    let dup = |fd: &OwnedFd| fd.try_clone().map_err(|e| internal("dup", e));
    let (io, stdin, stdout, stderr, master) = if launch.terminal {
        let ws = size.map(|(rows, cols)| nix::pty::Winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 });
        let pty = nix::pty::openpty(ws.as_ref(), None).map_err(|e| internal("openpty", e))?;
        let io = ChildIo { stdin: dup(&pty.slave)?, stdout: dup(&pty.slave)?, stderr: pty.slave };
        let (r, w) = (dup(&pty.master)?, dup(&pty.master)?);
        (io, Some(nonblocking(w)?), Some(nonblocking(r)?), None, Some(pty.master))
    } else {
        let (in_r, in_w) = pipe()?;
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        let io = ChildIo { stdin: in_r, stdout: out_w, stderr: err_w };
        (io, Some(nonblocking(in_w)?), Some(nonblocking(out_r)?), Some(nonblocking(err_r)?), None)
    };
    Ok(Proc {
        launch: std::sync::Mutex::new(Some((launch, io))),
        stdin: Mutex::new(stdin),
        stdout: Mutex::new(stdout),
        stderr: Mutex::new(stderr),
        master,
        pid: std::sync::Mutex::new(None),
        exit: watch::channel(None).0,
        kill_all_on_exit: None,
        oom: None,
    })
}

/// Wait (10 s at most) until the launcher and its child closed the ready pipe; the child's pid
/// (the 4 bytes the launcher wrote), if it came.
fn wait_ready(r: std::os::fd::OwnedFd) -> Option<u32> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut fds = [PollFd::new(std::os::fd::AsFd::as_fd(&r), PollFlags::POLLIN)];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut got = Vec::new();
    let mut buf = [0u8; 16];
    while std::time::Instant::now() < deadline {
        match poll(&mut fds, PollTimeout::from(100u16)) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => match nix::unistd::read(&r, &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            },
            Err(_) => break,
        }
    }
    got.get(..4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Start the process (once): the launcher with its IO; its exit is recorded when it comes.
fn spawn(p: &Arc<Proc>) -> R<u32> {
    let (launch, io) = p
        .launch
        .lock()
        .unwrap()
        .take()
        .ok_or_else(|| (Code::FAILED_PRECONDITION, "the process was started".to_owned()))?;
    let json = serde_json::to_string(&launch).map_err(|e| internal("launch", e))?;
    // The launcher holds the write end of this pipe as fd 3 until it execs the process (the fd is
    // close-on-exec there) or fails: its end (EOF) says the process's root and mounts are made,
    // so an exec that joins them right after Start finds them whole.
    let (ready_r, ready_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| internal("a pipe", e))?;
    let w = std::os::fd::AsRawFd::as_raw_fd(&ready_w);
    let mut cmd = tokio::process::Command::new("/proc/self/exe");
    cmd.arg("--launch")
        .arg(json)
        .stdin(std::process::Stdio::from(io.stdin))
        .stdout(std::process::Stdio::from(io.stdout))
        .stderr(std::process::Stdio::from(io.stderr));
    // SAFETY: dup2 is async-signal-safe; the closure allocates nothing.
    unsafe {
        cmd.pre_exec(move || match libc::dup2(w, crate::launch::READY_FD) {
            -1 => Err(std::io::Error::last_os_error()),
            _ => Ok(()),
        });
    }
    let mut child = cmd.spawn().map_err(|e| internal("start the process", e))?;
    drop(ready_w);
    // The container's process is the launcher's child; the launcher ends as it ends.
    let pid = wait_ready(ready_r).unwrap_or_else(|| child.id().unwrap_or(0));
    *p.pid.lock().unwrap() = Some(pid);
    let p = p.clone();
    tokio::spawn(async move {
        use std::os::unix::process::ExitStatusExt;
        let code = match child.wait().await {
            // A killed process's status is the signal's number, as kata's agent gives it.
            Ok(s) => s.code().or_else(|| s.signal()).unwrap_or(255),
            Err(_) => 255,
        };
        if let Some(cg) = &p.kill_all_on_exit {
            crate::cgroups::signal_all(cg, nix::sys::signal::Signal::SIGKILL);
        }
        if let Some(o) = &p.oom {
            o.check();
        }
        p.exit.send_replace(Some(code));
    });
    Ok(pid)
}

/// A process's attributes from its OCI process spec.
fn process_attrs(l: &mut Launch, p: &oci::Process) {
    l.caps = p.Capabilities.as_ref().map(|c| Caps {
        bounding: c.Bounding.clone(),
        effective: c.Effective.clone(),
        inheritable: c.Inheritable.clone(),
        permitted: c.Permitted.clone(),
        ambient: c.Ambient.clone(),
    });
    l.no_new_privileges = p.NoNewPrivileges;
    l.rlimits = p.Rlimits.iter().map(|r| (r.Type.clone(), r.Soft, r.Hard)).collect();
    l.oom_score_adj = (p.OOMScoreAdj != 0).then_some(p.OOMScoreAdj);
}

/// Start the PID namespace holder (`guest-agent --pause`); its pid.
fn start_pause() -> R<u32> {
    let (ready_r, ready_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| internal("a pipe", e))?;
    let w = std::os::fd::AsRawFd::as_raw_fd(&ready_w);
    let mut cmd = tokio::process::Command::new("/proc/self/exe");
    cmd.arg("--pause").stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null());
    // SAFETY: dup2 is async-signal-safe; the closure allocates nothing.
    unsafe {
        cmd.pre_exec(move || match libc::dup2(w, crate::launch::READY_FD) {
            -1 => Err(std::io::Error::last_os_error()),
            _ => Ok(()),
        });
    }
    let mut child = cmd.spawn().map_err(|e| internal("start the pod's PID namespace holder", e))?;
    drop(ready_w);
    let pid = wait_ready(ready_r).ok_or_else(|| internal("the pod's PID namespace holder", "gave no pid"))?;
    tokio::spawn(async move {
        let _ = child.wait().await;
    });
    Ok(pid)
}

fn launch_of(
    p: &oci::Process,
    rootfs: Option<String>,
    mounts: Vec<Mnt>,
    readonly: bool,
    join: Option<u32>,
) -> R<Launch> {
    if p.Args.is_empty() {
        return Err(invalid("process.Args", "must name the program to run"));
    }
    let user = p.User.as_ref().cloned().unwrap_or_default();
    Ok(Launch {
        rootfs,
        mounts,
        readonly,
        join,
        args: p.Args.clone(),
        env: p.Env.clone(),
        cwd: p.Cwd.clone(),
        uid: user.UID,
        gid: user.GID,
        gids: user.AdditionalGids.clone(),
        terminal: p.Terminal,
        ..Default::default()
    })
}

fn size_of(p: &oci::Process) -> Option<(u16, u16)> {
    p.ConsoleSize.as_ref().map(|b| (b.Height as u16, b.Width as u16)).filter(|(h, w)| *h > 0 && *w > 0)
}

/// The spec's `linux` section on the launch: seccomp (compiled; returned too), sysctls, masked
/// and read-only paths, and the hostname.
fn linux_attrs(launch: &mut Launch, linux: &oci::Linux, hostname: &str) -> R<Vec<Vec<u8>>> {
    let seccomp = match linux.Seccomp.as_ref() {
        Some(p) => crate::seccomp::compile(p).map_err(|e| invalid("OCI.Linux.Seccomp", e))?,
        None => Vec::new(),
    };
    launch.seccomp = seccomp.clone();
    let mut sysctl: Vec<(String, String)> = linux.Sysctl.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    sysctl.sort();
    launch.sysctl = sysctl;
    launch.masked = linux.MaskedPaths.clone();
    launch.readonly_paths = linux.ReadonlyPaths.clone();
    launch.hostname = hostname.to_owned();
    Ok(seccomp)
}

impl Containers {
    fn proc(&self, cid: &str, eid: &str) -> R<Arc<Proc>> {
        let ctrs = self.ctrs.lock().unwrap();
        let c = ctrs.get(cid).ok_or_else(|| (Code::NOT_FOUND, format!("container {cid} not found")))?;
        let eid = if eid.is_empty() { c.init_exec.as_str() } else { eid };
        c.procs.get(eid).cloned().ok_or_else(|| (Code::NOT_FOUND, format!("process {eid} of {cid} not found")))
    }

    pub fn create(&self, req: &CreateContainerRequest) -> R<()> {
        let cid = &req.container_id;
        if cid.is_empty() || cid.contains(['/', '\0']) || cid.starts_with('.') {
            return Err(invalid("container_id", "a name without '/'"));
        }
        let spec = req.OCI.as_ref().ok_or_else(|| invalid("OCI", "missing"))?;
        let root = spec.Root.as_ref().ok_or_else(|| invalid("OCI.Root", "missing"))?;
        if !root.Path.starts_with(SHARED) || root.Path.contains("..") {
            return Err(invalid("OCI.Root.Path", format!("must be under {SHARED}, without '..'")));
        }
        if !std::path::Path::new(&root.Path).is_dir() {
            return Err((Code::NOT_FOUND, format!("OCI.Root.Path: {} is not there", root.Path)));
        }
        let process = spec.Process.as_ref().ok_or_else(|| invalid("OCI.Process", "missing"))?;
        let mounts = spec
            .Mounts
            .iter()
            .map(|m| Mnt {
                destination: m.destination.clone(),
                source: m.source.clone(),
                typ: m.type_.clone(),
                options: m.options.clone(),
            })
            .collect();
        let mut launch = launch_of(process, Some(root.Path.clone()), mounts, root.Readonly, None)?;
        process_attrs(&mut launch, process);
        let linux = spec.Linux.as_ref().cloned().unwrap_or_default();
        let seccomp = linux_attrs(&mut launch, &linux, &spec.Hostname)?;
        self.namespaces(&mut launch, cid, &linux, req.sandbox_pidns)?;
        let cgroup = match self.cgroups {
            true => Some(
                crate::cgroups::create(cid, linux.Resources.as_ref()).map_err(|e| invalid("OCI.Linux.Resources", e))?,
            ),
            false => None,
        };
        launch.cgroup = cgroup.as_ref().map(|c| c.display().to_string());
        let oom = cgroup.as_ref().map(|cg| self.watch_oom(cid, cg));
        let eid = if req.exec_id.is_empty() { cid.clone() } else { req.exec_id.clone() };
        let mut ctrs = self.ctrs.lock().unwrap();
        if ctrs.contains_key(cid) {
            return Err((Code::ALREADY_EXISTS, format!("container {cid} exists")));
        }
        let mut p = make_proc(launch, size_of(process))?;
        p.kill_all_on_exit = cgroup.clone().filter(|_| req.sandbox_pidns);
        p.oom = oom.clone();
        let p = Arc::new(p);
        ctrs.insert(
            cid.clone(),
            Ctr { init_exec: eid.clone(), procs: HashMap::from([(eid, p)]), cgroup, seccomp, oom },
        );
        eprintln!("guest-agent: container {cid} created on {}", root.Path);
        Ok(())
    }

    /// The container's IPC, UTS and PID namespaces. The sandbox's container makes the pod's IPC
    /// and UTS namespaces; the others join them (kata's agent shares them among the pod's
    /// containers the same way). The pod's PID namespace when asked (`shared_pidns`: the sandbox
    /// container's, its pause as PID 1; or a holder the agent makes), else a new one: kata's
    /// runtime sends no PID namespace.
    fn namespaces(&self, launch: &mut Launch, cid: &str, linux: &oci::Linux, shared_pidns: bool) -> R<()> {
        let listed = |t: &str| linux.Namespaces.iter().any(|n| n.Type == t);
        let sandbox_init = {
            let sb = self.sandbox.lock().unwrap();
            let ctrs = self.ctrs.lock().unwrap();
            (cid != sb.id)
                .then(|| {
                    ctrs.get(&sb.id)
                        .and_then(|c| c.procs.get(&c.init_exec))
                        .and_then(|p| p.exit.borrow().is_none().then(|| *p.pid.lock().unwrap()).flatten())
                })
                .flatten()
        };
        match sandbox_init {
            Some(pid) => (launch.ipc_of, launch.uts_of) = (Some(pid), Some(pid)),
            None => (launch.new_ipc, launch.new_uts) = (listed("ipc"), listed("uts")),
        }
        launch.pid_ns = match (shared_pidns, sandbox_init) {
            (false, _) => PidNs::New,
            (true, Some(pid)) => PidNs::Join(pid),
            (true, None) => {
                let mut sb = self.sandbox.lock().unwrap();
                let alive = sb.pause.filter(|p| std::path::Path::new(&format!("/proc/{p}")).exists());
                let pid = match alive {
                    Some(p) => p,
                    None => start_pause()?,
                };
                sb.pause = Some(pid);
                PidNs::Join(pid)
            }
        };
        Ok(())
    }

    /// The OOM kills in container `cid`'s cgroup, watched while the container lives (kills of
    /// its other processes are reported then too).
    fn watch_oom(&self, cid: &str, cgroup: &std::path::Path) -> Arc<OomWatch> {
        let watch = Arc::new(OomWatch {
            cid: cid.to_owned(),
            cgroup: cgroup.to_owned(),
            seen: AtomicU64::new(0),
            tx: self.oom_tx.clone(),
        });
        let o = Arc::downgrade(&watch);
        tokio::spawn(async move {
            while let Some(o) = o.upgrade() {
                o.check();
                drop(o);
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
        });
        watch
    }

    pub fn start(&self, cid: &str) -> R<()> {
        let p = self.proc(cid, "")?;
        let pid = spawn(&p)?;
        eprintln!("guest-agent: container {cid} started, pid {pid}");
        Ok(())
    }

    pub fn exec(&self, cid: &str, eid: &str, process: &oci::Process) -> R<()> {
        if eid.is_empty() {
            return Err(invalid("exec_id", "must not be empty"));
        }
        let init = self.proc(cid, "")?;
        let pid = (*init.pid.lock().unwrap()).filter(|_| init.exit.borrow().is_none());
        let pid = pid.ok_or_else(|| (Code::FAILED_PRECONDITION, format!("container {cid} is not running")))?;
        let mut launch = launch_of(process, None, Vec::new(), false, Some(pid))?;
        process_attrs(&mut launch, process);
        let p = {
            let mut ctrs = self.ctrs.lock().unwrap();
            let c = ctrs.get_mut(cid).ok_or_else(|| (Code::NOT_FOUND, format!("container {cid} not found")))?;
            launch.cgroup = c.cgroup.as_ref().map(|d| d.display().to_string());
            launch.seccomp = c.seccomp.clone();
            let mut p = make_proc(launch, size_of(process))?;
            p.oom = c.oom.clone();
            let p = Arc::new(p);
            if c.procs.get(eid).is_some_and(|p| p.exit.borrow().is_none()) {
                return Err((Code::ALREADY_EXISTS, format!("process {eid} exists")));
            }
            c.procs.insert(eid.to_owned(), p.clone());
            p
        };
        spawn(&p)?;
        Ok(())
    }

    /// Signal a process, or every process of the container (`eid` empty). A process not
    /// started yet ends with the signal without running.
    pub fn signal(&self, cid: &str, eid: &str, sig: u32) -> R<()> {
        let procs: Vec<Arc<Proc>> = match eid {
            "" => self.ctrs.lock().unwrap().get(cid).map(|c| c.procs.values().cloned().collect()).unwrap_or_default(),
            e => vec![self.proc(cid, e)?],
        };
        let signal = nix::sys::signal::Signal::try_from(sig as i32).map_err(|_| invalid("signal", sig))?;
        // Every process of the container: its cgroup knows them, children of children included.
        if eid.is_empty() {
            if let Some(cg) = self.ctrs.lock().unwrap().get(cid).and_then(|c| c.cgroup.clone()) {
                crate::cgroups::signal_all(&cg, signal);
            }
        }
        for p in procs {
            if p.exit.borrow().is_some() {
                continue;
            }
            match *p.pid.lock().unwrap() {
                Some(pid) => {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal);
                }
                None => {
                    p.launch.lock().unwrap().take();
                    p.exit.send_replace(Some(sig as i32));
                }
            }
        }
        Ok(())
    }

    pub async fn wait(&self, cid: &str, eid: &str) -> R<i32> {
        let mut rx = self.proc(cid, eid)?.exit.subscribe();
        let code = rx.wait_for(|e| e.is_some()).await.map_err(|e| internal("wait", e))?;
        Ok(code.unwrap_or(255))
    }

    pub async fn read(&self, cid: &str, eid: &str, stderr: bool, len: usize) -> R<Vec<u8>> {
        let p = self.proc(cid, eid)?;
        let stream = if stderr && p.master.is_none() { &p.stderr } else { &p.stdout };
        let guard = stream.lock().await;
        let fd = guard.as_ref().ok_or_else(|| invalid("stream", "the process has no such stream"))?;
        let mut buf = vec![0u8; len.clamp(1, 1 << 20)];
        loop {
            let mut ready = fd.readable().await.map_err(|e| internal("read", e))?;
            match ready.try_io(|f| nix::unistd::read(f.get_ref(), &mut buf).map_err(std::io::Error::from)) {
                Ok(Ok(0)) => return Err((Code::INTERNAL, "eof".into())),
                Ok(Ok(n)) => {
                    buf.truncate(n);
                    return Ok(buf);
                }
                // A terminal whose every slave side closed reads EIO: its end.
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Err((Code::INTERNAL, "eof".into())),
                Ok(Err(e)) => return Err(internal("read", e)),
                Err(_would_block) => continue,
            }
        }
    }

    pub async fn write(&self, cid: &str, eid: &str, data: &[u8]) -> R<u32> {
        let p = self.proc(cid, eid)?;
        let guard = p.stdin.lock().await;
        let fd = guard.as_ref().ok_or_else(|| (Code::FAILED_PRECONDITION, "stdin is closed".to_owned()))?;
        let mut at = 0;
        while at < data.len() {
            let mut ready = fd.writable().await.map_err(|e| internal("write", e))?;
            match ready.try_io(|f| nix::unistd::write(f.get_ref(), &data[at..]).map_err(std::io::Error::from)) {
                Ok(Ok(n)) => at += n,
                Ok(Err(e)) => return Err(internal("write", e)),
                Err(_would_block) => continue,
            }
        }
        Ok(data.len() as u32)
    }

    pub async fn close_stdin(&self, cid: &str, eid: &str) -> R<()> {
        let p = self.proc(cid, eid)?;
        if p.master.is_none() {
            p.stdin.lock().await.take();
        }
        Ok(())
    }

    pub fn resize(&self, cid: &str, eid: &str, rows: u32, cols: u32) -> R<()> {
        let p = self.proc(cid, eid)?;
        let m =
            p.master.as_ref().ok_or_else(|| (Code::FAILED_PRECONDITION, "the process has no terminal".to_owned()))?;
        let ws = libc::winsize { ws_row: rows as u16, ws_col: cols as u16, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: TIOCSWINSZ reads a winsize from the pointer given, which lives across the call.
        if unsafe { libc::ioctl(m.as_raw_fd(), libc::TIOCSWINSZ, &ws) } < 0 {
            return Err(internal("resize", std::io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Kill every process of the container, wait for them (at most `timeout` seconds, 0: no
    /// limit), and forget it.
    pub async fn remove(&self, cid: &str, timeout: u32) -> R<()> {
        let procs: Vec<Arc<Proc>> = {
            let ctrs = self.ctrs.lock().unwrap();
            let c = ctrs.get(cid).ok_or_else(|| (Code::NOT_FOUND, format!("container {cid} not found")))?;
            c.procs.values().cloned().collect()
        };
        self.signal(cid, "", 9)?;
        let all = async {
            for p in &procs {
                let _ = p.exit.subscribe().wait_for(|e| e.is_some()).await;
            }
        };
        let limit = if timeout == 0 { u64::MAX / 4 } else { timeout.into() };
        tokio::time::timeout(std::time::Duration::from_secs(limit), all)
            .await
            .map_err(|_| (Code::DEADLINE_EXCEEDED, format!("the processes of {cid} did not end within {timeout} s")))?;
        if let Some(c) = self.ctrs.lock().unwrap().remove(cid) {
            if let Some(cg) = &c.cgroup {
                crate::cgroups::remove(cg);
            }
        }
        eprintln!("guest-agent: container {cid} removed");
        Ok(())
    }

    /// CreateSandbox: the sandbox's id (its container makes the pod's namespaces).
    pub fn sandbox(&self, id: &str) {
        self.sandbox.lock().unwrap().id = id.to_owned();
    }

    /// StatsContainer's counters.
    pub fn stats(&self, cid: &str) -> R<agent_client::protocols::agent::CgroupStats> {
        let ctrs = self.ctrs.lock().unwrap();
        let c = ctrs.get(cid).ok_or_else(|| (Code::NOT_FOUND, format!("container {cid} not found")))?;
        let cg = c.cgroup.as_ref().ok_or_else(|| (Code::UNAVAILABLE, "the guest has no cgroup v2".to_owned()))?;
        Ok(crate::cgroups::stats(cg))
    }

    /// GetOOMEvent: the next container with an OOM kill (waits for one).
    pub async fn next_oom(&self) -> R<String> {
        self.oom_rx.lock().await.recv().await.ok_or_else(|| internal("OOM events", "closed"))
    }
}
