//! The agent's launcher: the agent runs itself as `guest-agent --launch <json>` to start a
//! container process, so the steps between fork and exec (namespace, mounts, root, user) run in
//! a fresh single-threaded process. A container's init gets a mount namespace of its own: its
//! rootfs bound, the spec's mounts made in it, the basic device nodes bound from the guest, then
//! moved onto `/` and made the root (the guest's root is an initramfs, where `pivot_root` does
//! not work; kata's agent does the same there). An exec joins the init's mount namespace and
//! root. The network, UTS (hostname) and PID namespaces are the guest's: the pod's.

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

/// What the launcher does.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Launch {
    /// Init: the rootfs to set up a mount namespace on, and its mounts.
    pub rootfs: Option<String>,
    pub mounts: Vec<Mnt>,
    pub readonly: bool,
    /// Exec: the init whose mount namespace and root to join.
    pub join: Option<u32>,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub gids: Vec<u32>,
    pub terminal: bool,
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

fn setup_root(rootfs: &str, mounts: &[Mnt], readonly: bool) -> anyhow::Result<()> {
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

/// The launcher's end of the agent's ready pipe: closed at the exec of the process (or when the
/// launcher fails), which tells the agent the process's root is made.
pub const READY_FD: i32 = 3;

/// Run the launch and exec the process; returns only on failure.
pub fn run(json: &str) -> anyhow::Result<()> {
    // SAFETY: fcntl on a plain fd number; a missing fd only makes it fail.
    unsafe { libc::fcntl(READY_FD, libc::F_SETFD, libc::FD_CLOEXEC) };
    let l: Launch = serde_json::from_str(json).context("the launch")?;
    if l.args.is_empty() {
        bail!("no program to run");
    }
    if l.terminal {
        nix::unistd::setsid()?;
        // SAFETY: TIOCSCTTY on stdin, the terminal's slave side the agent gave as fd 0.
        if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } < 0 {
            bail!("make the terminal the controlling one: {}", std::io::Error::last_os_error());
        }
    }
    match (&l.rootfs, l.join) {
        (Some(r), None) => setup_root(r, &l.mounts, l.readonly)?,
        (None, Some(pid)) => join(pid)?,
        _ => bail!("a launch is either a container's init (rootfs) or an exec (join)"),
    }
    std::env::set_current_dir(if l.cwd.is_empty() { "/" } else { &l.cwd }).with_context(|| format!("cwd {}", l.cwd))?;
    let gids: Vec<nix::unistd::Gid> = l.gids.iter().map(|g| nix::unistd::Gid::from_raw(*g)).collect();
    nix::unistd::setgroups(&gids)?;
    nix::unistd::setgid(nix::unistd::Gid::from_raw(l.gid))?;
    nix::unistd::setuid(nix::unistd::Uid::from_raw(l.uid))?;
    for (k, _) in std::env::vars_os() {
        // SAFETY: the launcher is single-threaded.
        unsafe { std::env::remove_var(k) };
    }
    for kv in &l.env {
        if let Some((k, v)) = kv.split_once('=') {
            if !k.is_empty() {
                // SAFETY: the launcher is single-threaded.
                unsafe { std::env::set_var(k, v) };
            }
        }
    }
    let args: Vec<CString> = l.args.iter().map(|a| CString::new(a.as_str())).collect::<Result<_, _>>()?;
    let e = nix::unistd::execvp(&args[0], &args).unwrap_err();
    bail!("exec {}: {e}", l.args[0])
}
