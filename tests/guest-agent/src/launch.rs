//! The agent's launcher: the agent runs itself as `guest-agent --launch <json>` to start a
//! container process, so the steps between fork and exec (namespaces, mounts, root, user) run in
//! a fresh single-threaded process. The launcher enters the PID, IPC and UTS namespaces the
//! process gets (new ones for a container's init, or the pod's; an exec's are its container's),
//! then forks: its child is the container's process (PID 1 of a new PID namespace, so when it
//! ends every process of the container ends with it), and it stays as that process's parent
//! and mirrors its end (the exit code, or the signal that killed it) to the agent. A container's
//! init gets a mount namespace of its own: its rootfs bound, the spec's mounts made in it, the
//! basic device nodes bound from the guest, masked and read-only paths, then moved onto `/` and
//! made the root (the guest's root is an initramfs, where `pivot_root` does not work; kata's agent
//! does the same there). An exec joins the init's mount namespace and root. Then the process's
//! cgroup, sysctls, rlimits, user, capabilities, `no_new_privileges` and seccomp filter, and exec.
//! The network namespace is the guest's: the pod's.

use std::ffi::CString;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use nix::mount::{mount, MsFlags};
use serde::{Deserialize, Serialize};

/// A mount of the container's spec (destination in the container).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Mnt {
    pub destination: String,
    pub source: String,
    pub typ: String,
    pub options: Vec<String>,
}

/// Which PID namespace a container's init gets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum PidNs {
    /// A new one, the init as its PID 1.
    #[default]
    New,
    /// That of this process (the pod's: `sandbox_pidns`).
    Join(u32),
}

/// Capability sets by name (`CAP_*`), as the spec gives them.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Caps {
    pub bounding: Vec<String>,
    pub effective: Vec<String>,
    pub inheritable: Vec<String>,
    pub permitted: Vec<String>,
    pub ambient: Vec<String>,
}

/// What the launcher does.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Launch {
    /// Init: the rootfs to set up a mount namespace on, and its mounts.
    pub rootfs: Option<String>,
    pub mounts: Vec<Mnt>,
    pub readonly: bool,
    /// Exec: the init whose namespaces and root to join.
    pub join: Option<u32>,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub gids: Vec<u32>,
    pub terminal: bool,
    /// Init: its PID namespace; its IPC and UTS namespaces, new or (`Some(pid)`) that process's.
    #[serde(default)]
    pub pid_ns: PidNs,
    #[serde(default)]
    pub ipc_of: Option<u32>,
    #[serde(default)]
    pub uts_of: Option<u32>,
    #[serde(default)]
    pub new_ipc: bool,
    #[serde(default)]
    pub new_uts: bool,
    #[serde(default)]
    pub hostname: String,
    /// The cgroup directory the process joins.
    #[serde(default)]
    pub cgroup: Option<String>,
    #[serde(default)]
    pub sysctl: Vec<(String, String)>,
    #[serde(default)]
    pub masked: Vec<String>,
    #[serde(default)]
    pub readonly_paths: Vec<String>,
    #[serde(default)]
    pub caps: Option<Caps>,
    #[serde(default)]
    pub no_new_privileges: bool,
    /// (RLIMIT_* name, soft, hard).
    #[serde(default)]
    pub rlimits: Vec<(String, u64, u64)>,
    #[serde(default)]
    pub oom_score_adj: Option<i64>,
    /// Classic BPF seccomp programs (struct sock_filter, 8 bytes each), installed in order.
    #[serde(default)]
    pub seccomp: Vec<Vec<u8>>,
}

/// Device nodes every container gets, bound from the guest's /dev (as runc's defaults).
const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

fn flags_and_data(options: &[String]) -> (MsFlags, String) {
    let mut f = MsFlags::empty();
    let mut data = Vec::new();
    for o in options {
        match o.as_str() {
            "ro" => f |= MsFlags::MS_RDONLY,
            "rw" | "private" | "rprivate" | "slave" | "rslave" | "shared" | "rshared" => {}
            "nosuid" => f |= MsFlags::MS_NOSUID,
            "nodev" => f |= MsFlags::MS_NODEV,
            "noexec" => f |= MsFlags::MS_NOEXEC,
            "relatime" => f |= MsFlags::MS_RELATIME,
            "strictatime" => f |= MsFlags::MS_STRICTATIME,
            "bind" => f |= MsFlags::MS_BIND,
            "rbind" => f |= MsFlags::MS_BIND | MsFlags::MS_REC,
            other => data.push(other),
        }
    }
    (f, data.join(","))
}

fn in_root(root: &Path, dest: &str) -> PathBuf {
    root.join(dest.trim_start_matches('/'))
}

fn mount_point(target: &Path, file: bool) -> anyhow::Result<()> {
    if target.exists() {
        return Ok(());
    }
    match file {
        true => {
            std::fs::create_dir_all(target.parent().unwrap_or(target))?;
            std::fs::File::create(target)?;
        }
        false => std::fs::create_dir_all(target)?,
    }
    Ok(())
}

fn setup_mounts(rootfs: &str, mounts: &[Mnt]) -> anyhow::Result<()> {
    let root = Path::new(rootfs);
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).context("unshare the mount namespace")?;
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)?;
    mount(Some(root), root, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
        .with_context(|| format!("bind the rootfs {rootfs}"))?;
    for m in mounts {
        let target = in_root(root, &m.destination);
        let (flags, data) = flags_and_data(&m.options);
        if flags.contains(MsFlags::MS_BIND) {
            let file = std::fs::metadata(&m.source).map(|s| !s.is_dir()).unwrap_or(false);
            mount_point(&target, file)?;
            mount(
                Some(m.source.as_str()),
                &target,
                None::<&str>,
                flags & (MsFlags::MS_BIND | MsFlags::MS_REC),
                None::<&str>,
            )
            .with_context(|| format!("bind {} on {}", m.source, m.destination))?;
            if flags.contains(MsFlags::MS_RDONLY) {
                mount(None::<&str>, &target, None::<&str>, flags | MsFlags::MS_REMOUNT, None::<&str>)?;
            }
            continue;
        }
        mount_point(&target, false)?;
        let data = (!data.is_empty()).then_some(data.as_str());
        let made = mount(Some(m.source.as_str()), &target, Some(m.typ.as_str()), flags, data);
        match (made, m.typ.as_str()) {
            (Ok(()), _) => {}
            // What the guest kernel may lack is left out (as a VM without cgroups or mqueue).
            (Err(_), "cgroup" | "cgroup2" | "mqueue") => {}
            (Err(e), _) => return Err(e).with_context(|| format!("mount {} on {}", m.typ, m.destination)),
        }
        if m.destination == "/dev" {
            for d in DEVICES {
                let t = target.join(d);
                mount_point(&t, true)?;
                let _ = mount(Some(&Path::new("/dev").join(d)), &t, None::<&str>, MsFlags::MS_BIND, None::<&str>);
            }
        }
    }
    let ptmx = root.join("dev/ptmx");
    if root.join("dev/pts/ptmx").exists() && !ptmx.exists() {
        let _ = std::os::unix::fs::symlink("pts/ptmx", &ptmx);
    }
    Ok(())
}

/// Hide the spec's masked paths (a directory under an empty read-only tmpfs, a file under
/// `/dev/null`) and make its read-only paths so, inside the rootfs at `root`; a path that is not
/// there is skipped (as runc does).
fn mask_and_protect(root: &Path, masked: &[String], readonly: &[String]) -> anyhow::Result<()> {
    let none = None::<&str>;
    for p in masked {
        let t = in_root(root, p);
        match std::fs::metadata(&t) {
            Ok(m) if m.is_dir() => mount(Some("tmpfs"), &t, Some("tmpfs"), MsFlags::MS_RDONLY, Some("size=0"))
                .with_context(|| format!("mask {p}"))?,
            Ok(_) => mount(Some("/dev/null"), &t, none, MsFlags::MS_BIND, none).with_context(|| format!("mask {p}"))?,
            Err(_) => {}
        }
    }
    for p in readonly {
        let t = in_root(root, p);
        if t.exists() {
            mount(Some(&t), &t, none, MsFlags::MS_BIND | MsFlags::MS_REC, none).with_context(|| format!("bind {p}"))?;
            let ro = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
            mount(none, &t, none, ro, none).with_context(|| format!("make {p} read-only"))?;
        }
    }
    Ok(())
}

/// Make the rootfs read-only when asked, and make it the root.
fn enter_root(root: &Path, readonly: bool) -> anyhow::Result<()> {
    if readonly {
        mount(
            None::<&str>,
            root,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )?;
    }
    std::env::set_current_dir(root)?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>).context("move the rootfs onto /")?;
    nix::unistd::chroot(".")?;
    Ok(())
}

fn join(pid: u32) -> anyhow::Result<()> {
    let root = std::fs::File::open(format!("/proc/{pid}/root")).context("the container's root")?;
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/mnt")).context("the container's mount namespace")?;
    nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNS).context("join the container's mount namespace")?;
    nix::unistd::fchdir(&root)?;
    nix::unistd::chroot(".")?;
    Ok(())
}

/// Enter the namespace `kind` (`pid`, `ipc`, `uts`) of process `pid`.
fn join_ns(pid: u32, kind: &str, flag: nix::sched::CloneFlags) -> anyhow::Result<()> {
    let f = std::fs::File::open(format!("/proc/{pid}/ns/{kind}"))
        .with_context(|| format!("the {kind} namespace of {pid}"))?;
    nix::sched::setns(&f, flag).with_context(|| format!("join the {kind} namespace of {pid}"))
}

/// The launcher's end of the agent's ready pipe: the launcher writes its child's pid there (4
/// bytes) and closes its copy; the child's copy closes at its exec (or when it fails), which tells
/// the agent the process's root is made.
pub const READY_FD: i32 = 3;

fn rlimit_of(name: &str) -> Option<nix::sys::resource::Resource> {
    use nix::sys::resource::Resource as R;
    Some(match name {
        "RLIMIT_AS" => R::RLIMIT_AS,
        "RLIMIT_CORE" => R::RLIMIT_CORE,
        "RLIMIT_CPU" => R::RLIMIT_CPU,
        "RLIMIT_DATA" => R::RLIMIT_DATA,
        "RLIMIT_FSIZE" => R::RLIMIT_FSIZE,
        "RLIMIT_LOCKS" => R::RLIMIT_LOCKS,
        "RLIMIT_MEMLOCK" => R::RLIMIT_MEMLOCK,
        "RLIMIT_MSGQUEUE" => R::RLIMIT_MSGQUEUE,
        "RLIMIT_NICE" => R::RLIMIT_NICE,
        "RLIMIT_NOFILE" => R::RLIMIT_NOFILE,
        "RLIMIT_NPROC" => R::RLIMIT_NPROC,
        "RLIMIT_RSS" => R::RLIMIT_RSS,
        "RLIMIT_RTPRIO" => R::RLIMIT_RTPRIO,
        "RLIMIT_RTTIME" => R::RLIMIT_RTTIME,
        "RLIMIT_SIGPENDING" => R::RLIMIT_SIGPENDING,
        "RLIMIT_STACK" => R::RLIMIT_STACK,
        _ => return None,
    })
}

fn cap_set(names: &[String]) -> caps::CapsHashSet {
    names.iter().filter_map(|n| n.parse::<caps::Capability>().ok()).collect()
}

/// Run the launch; returns only on failure (the parent side exits with its child's end).
pub fn run(json: &str) -> anyhow::Result<()> {
    use nix::sched::CloneFlags as F;
    // SAFETY: fcntl on a plain fd number; a missing fd only makes it fail.
    unsafe { libc::fcntl(READY_FD, libc::F_SETFD, libc::FD_CLOEXEC) };
    let l: Launch = serde_json::from_str(json).context("the launch")?;
    if l.args.is_empty() {
        bail!("no program to run");
    }
    match (&l.rootfs, l.join) {
        (Some(_), None) => {
            match l.pid_ns {
                PidNs::New => nix::sched::unshare(F::CLONE_NEWPID).context("a new PID namespace")?,
                PidNs::Join(pid) => join_ns(pid, "pid", F::CLONE_NEWPID)?,
            }
            match l.ipc_of {
                Some(pid) => join_ns(pid, "ipc", F::CLONE_NEWIPC)?,
                None if l.new_ipc => nix::sched::unshare(F::CLONE_NEWIPC).context("a new IPC namespace")?,
                None => {}
            }
            match l.uts_of {
                Some(pid) => join_ns(pid, "uts", F::CLONE_NEWUTS)?,
                None if l.new_uts => nix::sched::unshare(F::CLONE_NEWUTS).context("a new UTS namespace")?,
                None => {}
            }
        }
        (None, Some(pid)) => {
            join_ns(pid, "pid", F::CLONE_NEWPID)?;
            join_ns(pid, "ipc", F::CLONE_NEWIPC)?;
            join_ns(pid, "uts", F::CLONE_NEWUTS)?;
        }
        _ => bail!("a launch is either a container's init (rootfs) or an exec (join)"),
    }
    // SAFETY: the launcher is single-threaded: the child may do anything the parent could.
    match unsafe { nix::unistd::fork() }.context("fork the container's process")? {
        nix::unistd::ForkResult::Child => {
            let e = process(&l).unwrap_err();
            eprintln!("guest-agent: {e:#}");
            std::process::exit(127);
        }
        nix::unistd::ForkResult::Parent { child } => {
            let pid = child.as_raw() as u32;
            // SAFETY: write and close on the ready fd, which this process owns.
            unsafe {
                libc::write(READY_FD, pid.to_le_bytes().as_ptr().cast(), 4);
                libc::close(READY_FD);
            }
            // The process's IO is its own: this side holds none of it (an output stream ends
            // when the container's processes closed it).
            if let Ok(null) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null") {
                for fd in 0..3 {
                    // SAFETY: dup2 onto the standard fds of this single-threaded process.
                    unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), fd) };
                }
            }
            mirror(child)
        }
    }
}

/// Wait for the container's process and end as it ended: its exit code, or its signal.
fn mirror(child: nix::unistd::Pid) -> ! {
    use nix::sys::wait::{waitpid, WaitStatus};
    loop {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, code)) => std::process::exit(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => {
                // SAFETY: resetting a signal's disposition and raising it on this process.
                unsafe {
                    libc::signal(sig as i32, libc::SIG_DFL);
                    let mut set: libc::sigset_t = std::mem::zeroed();
                    libc::sigemptyset(&mut set);
                    libc::sigaddset(&mut set, sig as i32);
                    libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
                    libc::raise(sig as i32);
                }
                std::process::exit(128 + sig as i32);
            }
            Err(nix::errno::Errno::EINTR) | Ok(_) => continue,
            Err(_) => std::process::exit(255),
        }
    }
}

/// The container's process: everything between the fork and its exec, in the order the kernel
/// allows (what needs root first, then the user, capabilities and the environment).
fn process(l: &Launch) -> anyhow::Result<()> {
    if let Some(cg) = &l.cgroup {
        std::fs::write(Path::new(cg).join("cgroup.procs"), "0").with_context(|| format!("join the cgroup {cg}"))?;
    }
    if l.terminal {
        nix::unistd::setsid()?;
        // SAFETY: TIOCSCTTY on stdin, the terminal's slave side the agent gave as fd 0.
        if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } < 0 {
            bail!("make the terminal the controlling one: {}", std::io::Error::last_os_error());
        }
    }
    kernel_settings(l)?;
    match (&l.rootfs, l.join) {
        (Some(r), None) => {
            setup_mounts(r, &l.mounts)?;
            mask_and_protect(Path::new(r), &l.masked, &l.readonly_paths)?;
            enter_root(Path::new(r), l.readonly)?;
        }
        (None, Some(pid)) => join(pid)?,
        _ => bail!("a launch is either a container's init (rootfs) or an exec (join)"),
    }
    std::env::set_current_dir(if l.cwd.is_empty() { "/" } else { &l.cwd }).with_context(|| format!("cwd {}", l.cwd))?;
    for (name, soft, hard) in &l.rlimits {
        let r = rlimit_of(name).ok_or_else(|| anyhow::anyhow!("rlimit {name}: unknown"))?;
        nix::sys::resource::setrlimit(r, *soft, *hard).with_context(|| format!("rlimit {name}"))?;
    }
    become_user(l)?;
    set_env(&l.env);
    let args: Vec<CString> = l.args.iter().map(|a| CString::new(a.as_str())).collect::<Result<_, _>>()?;
    if l.no_new_privileges && !l.seccomp.is_empty() {
        crate::seccomp::install(&l.seccomp).context("the seccomp filter")?;
    }
    let e = nix::unistd::execvp(&args[0], &args).unwrap_err();
    bail!("exec {}: {e}", l.args[0])
}

/// The hostname (in a UTS namespace of its own), sysctls and the OOM score.
fn kernel_settings(l: &Launch) -> anyhow::Result<()> {
    if l.new_uts && !l.hostname.is_empty() {
        nix::unistd::sethostname(&l.hostname).context("set the hostname")?;
    }
    for (k, v) in &l.sysctl {
        let path = Path::new("/proc/sys").join(k.replace('.', "/"));
        std::fs::write(&path, v).with_context(|| format!("sysctl {k} = {v}"))?;
    }
    if let Some(adj) = l.oom_score_adj {
        std::fs::write("/proc/self/oom_score_adj", adj.to_string()).context("oom_score_adj")?;
    }
    Ok(())
}

/// The bounding set dropped and a seccomp filter that needs root installed while root, then
/// the groups and user, the capabilities narrowed, and no_new_privileges.
fn become_user(l: &Launch) -> anyhow::Result<()> {
    if let Some(c) = &l.caps {
        // The bounding set is dropped while root still may.
        let keep = cap_set(&c.bounding);
        for cap in caps::all() {
            if !keep.contains(&cap) {
                let _ = caps::drop(None, caps::CapSet::Bounding, cap);
            }
        }
        // SAFETY: prctl with plain integer arguments.
        unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) };
    }
    // Without no_new_privileges a filter needs CAP_SYS_ADMIN: installed while root, as runc does
    // (the profile then must allow what follows, as the default ones do).
    if !l.no_new_privileges && !l.seccomp.is_empty() {
        crate::seccomp::install(&l.seccomp).context("the seccomp filter")?;
    }
    let gids: Vec<nix::unistd::Gid> = l.gids.iter().map(|g| nix::unistd::Gid::from_raw(*g)).collect();
    nix::unistd::setgroups(&gids)?;
    nix::unistd::setgid(nix::unistd::Gid::from_raw(l.gid))?;
    nix::unistd::setuid(nix::unistd::Uid::from_raw(l.uid))?;
    if let Some(c) = &l.caps {
        use caps::CapSet;
        // Narrowed in the order the kernel allows: inheritable and effective while the permitted
        // set is still whole, then the permitted set, then the ambient one (within both).
        caps::set(None, CapSet::Inheritable, &cap_set(&c.inheritable)).context("the inheritable capabilities")?;
        caps::set(None, CapSet::Effective, &cap_set(&c.effective)).context("the effective capabilities")?;
        caps::set(None, CapSet::Permitted, &cap_set(&c.permitted)).context("the permitted capabilities")?;
        caps::set(None, CapSet::Ambient, &cap_set(&c.ambient)).context("the ambient capabilities")?;
    }
    if l.no_new_privileges {
        // SAFETY: prctl with plain integer arguments.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            bail!("no_new_privileges: {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The process's environment, and only it.
fn set_env(env: &[String]) {
    for (k, _) in std::env::vars_os() {
        // SAFETY: the launcher is single-threaded.
        unsafe { std::env::remove_var(k) };
    }
    for kv in env {
        if let Some((k, v)) = kv.split_once('=') {
            if !k.is_empty() {
                // SAFETY: the launcher is single-threaded.
                unsafe { std::env::set_var(k, v) };
            }
        }
    }
}

/// `guest-agent --pause`: hold a PID namespace for the pod (`sandbox_pidns` without a sandbox
/// container to share): a new one, its PID 1 asleep and reaping, its pid on the ready pipe.
pub fn pause() -> anyhow::Result<()> {
    // SAFETY: fcntl on a plain fd number.
    unsafe { libc::fcntl(READY_FD, libc::F_SETFD, libc::FD_CLOEXEC) };
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWPID).context("a new PID namespace")?;
    // SAFETY: the launcher is single-threaded.
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Child => loop {
            // SAFETY: close on the ready fd this process owns; pause waits for a signal.
            unsafe {
                libc::close(READY_FD);
                libc::pause();
            }
            while let Ok(nix::sys::wait::WaitStatus::Exited(..) | nix::sys::wait::WaitStatus::Signaled(..)) =
                nix::sys::wait::waitpid(None, Some(nix::sys::wait::WaitPidFlag::WNOHANG))
            {}
        },
        nix::unistd::ForkResult::Parent { child } => {
            let pid = child.as_raw() as u32;
            // SAFETY: write and close on the ready fd, which this process owns.
            unsafe {
                libc::write(READY_FD, pid.to_le_bytes().as_ptr().cast(), 4);
                libc::close(READY_FD);
            }
            mirror(child)
        }
    }
}
