//! The sandbox's shared directory (`shared_fs = "virtio-fs"`): `<run_dir>/<id>/shared` on the
//! host, served by a virtiofsd of the sandbox's own, seen by QEMU as `vhost-user-fs-pci` with
//! kata's tag `kataShared`, and mounted by the agent (kata's or ours) where kata's runtime asks
//! it to: CreateSandbox's storage `virtio-fs` on `/run/kata-containers/shared/containers/`.
//! virtiofsd runs as long as its `VirtioFsd` lives (dropped: killed); a crashed shim's `delete`
//! finds it by its socket in the run directory.
//!
//! The guest must not be able to steer the host: it can write into what virtiofsd serves, and a
//! symlink it left where the host later makes a file or directory would send the host elsewhere.
//! So, as kata's runtime does it, the host works in `mounts` and virtiofsd serves `shared`, a
//! read-only bind of it (a peer: what is mounted under `mounts` later, a container's rootfs at
//! `<cid>/rootfs`, the files and directories its spec binds at `<cid>/mounts/<name>`, appears
//! under `shared` too, and virtiofsd's namespace, a slave of the host's, sees it). The guest
//! writes only inside a container's rootfs (its own mount), where the host never looks up a
//! path. Everything mounted under the run directory is unmounted before it is removed (see
//! `unmount_under`), in a teardown and in a crashed shim's `delete` alike.
//!
//! Both live in `<run_dir>/<id>/fs`, a tmpfs of the sandbox's own made unbindable (so private):
//! on a systemd host `/run` is shared, and a mount made under it would be propagated to every
//! peer and slave of `/run` and grow each time another sandbox binds `/run` (or `/`, or
//! `/var/run`) recursively. Under an unbindable mount nothing propagates out, and a recursive
//! copy of a tree above it (another sandbox's rbind) leaves the whole subtree out. Only the `fs`
//! tmpfs itself is propagated, once, when it is mounted (its parent is shared), and its unmount
//! takes those copies along. `mounts` is a tmpfs of its own (a bind's source may not lie under
//! an unbindable mount), shared, so that `shared` is its peer.

use std::path::{Path, PathBuf};

use agent_client::protocols::agent::Storage;
use hypervisor::QemuConfig;
use network::RunDir;

use crate::error::{Error, Result};

/// What virtiofsd serves, in the sandbox's unbindable tmpfs (`RunDir::shared_fs`): a read-only
/// view of [`HOST_DIR`].
const SHARED_DIR: &str = "shared";
/// Where the host makes what it shares, in the sandbox's unbindable tmpfs.
const HOST_DIR: &str = "mounts";
/// Where kata's agent mounts the share in the guest.
pub const GUEST_MOUNT_POINT: &str = "/run/kata-containers/shared/containers/";

/// A host path a bind mount of the spec names, shared into the guest at `guest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    /// The mount's index in the spec's `mounts` (for errors naming the field).
    pub index: usize,
    pub host: PathBuf,
    /// The share's name in the container's directory of the shared directory.
    pub name: String,
    pub guest: String,
    pub read_only: bool,
    /// `rbind`: the source's submounts come along (plain `bind`: the source's mount alone).
    pub recursive: bool,
}

/// A virtiofsd serving one sandbox; killed when dropped.
#[derive(Debug)]
pub struct VirtioFsd {
    child: tokio::process::Child,
    pub socket: PathBuf,
}

impl VirtioFsd {
    /// Its pid (0 once reaped).
    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// Make the sandbox's unbindable tmpfs, the host's directory in it and the guest's read-only
    /// view of that (root's, 0700), and start virtiofsd on the view; wait (bounded) for its socket.
    pub async fn start(cfg: &QemuConfig, run_dir: &RunDir) -> Result<Self> {
        let fs = run_dir.shared_fs();
        let (host, shared) = (fs.join(HOST_DIR), fs.join(SHARED_DIR));
        let socket = run_dir.virtiofsd_socket();
        let io = |source| Error::Io { what: "starting virtiofsd for", path: shared.clone(), source };
        use nix::mount::{mount, MsFlags};
        let errno = |e: nix::errno::Errno| io(std::io::Error::from(e));
        let none = None::<&str>;
        let tmpfs = |at: &Path| {
            let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
            std::fs::create_dir(at).map_err(io)?;
            mount(Some("kata-net-fs"), at, Some("tmpfs"), flags, Some("mode=0700,size=1m")).map_err(errno)
        };
        tmpfs(&fs)?;
        mount(none, &fs, none, MsFlags::MS_UNBINDABLE, none).map_err(errno)?;
        tmpfs(&host)?;
        mount(none, &host, none, MsFlags::MS_SHARED, none).map_err(errno)?;
        std::fs::create_dir(&shared).map_err(io)?;
        std::fs::set_permissions(&shared, std::os::unix::fs::PermissionsExt::from_mode(0o700)).map_err(io)?;
        mount(Some(&host), &shared, none, MsFlags::MS_BIND, none).map_err(errno)?;
        let ro = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        mount(none, &shared, none, ro, none).map_err(errno)?;
        let mut cmd = tokio::process::Command::new(&cfg.virtio_fs_daemon);
        cmd.args(daemon_args(Flavour::of(&cfg.virtio_fs_daemon).await?, cfg, &socket, &shared)?);
        let child = super::channel::spawn_until_socket(cmd, &socket, std::process::Stdio::null()).await.map_err(io)?;
        Ok(Self { child, socket })
    }
}

/// Which virtiofsd: the two take different command lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    /// The Rust virtiofsd (what kata ships; on crates.io): `virtiofsd 1.x`.
    Rust,
    /// QEMU's C virtiofsd (7.2 and before): `virtiofsd version 7.2.x`.
    C,
}

impl Flavour {
    /// As the daemon's `--version` says. Its output is read to its end and its exit status is
    /// not asked for: the shim reaps every child it has (containerd-shim's reaper), so a wait
    /// here could find the child already gone (ECHILD).
    pub async fn of(daemon: &Path) -> Result<Self> {
        use tokio::io::AsyncReadExt;
        let io = |source| Error::Io { what: "asking the version of", path: daemon.to_owned(), source };
        let mut child = tokio::process::Command::new(daemon)
            .arg("--version")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(io)?;
        let mut out = Vec::new();
        let mut stdout = child.stdout.take().expect("piped");
        tokio::time::timeout(std::time::Duration::from_secs(10), (&mut stdout).take(4096).read_to_end(&mut out))
            .await
            .map_err(|_| io(std::io::Error::other("no answer within 10 s")))?
            .map_err(io)?;
        let _ = child.try_wait();
        let text = String::from_utf8_lossy(&out);
        Self::from_version(text.lines().next().unwrap_or_default())
            .ok_or_else(|| io(std::io::Error::other(format!("not a virtiofsd this runtime knows: {:?}", text.trim()))))
    }

    fn from_version(line: &str) -> Option<Self> {
        let rest = line.strip_prefix("virtiofsd ")?;
        match rest.strip_prefix("version ") {
            Some(_) => Some(Flavour::C),
            None => rest.starts_with(|c: char| c.is_ascii_digit()).then_some(Flavour::Rust),
        }
    }
}

/// virtiofsd's command line, in its own syntax: serve `shared` on `socket` with the configured
/// cache mode, then the configuration's extra arguments.
pub fn daemon_args(flavour: Flavour, cfg: &QemuConfig, socket: &Path, shared: &Path) -> Result<Vec<String>> {
    use hypervisor::config::VirtioFsCache as Cache;
    let mut args = vec![format!("--socket-path={}", socket.display())];
    match flavour {
        Flavour::Rust => {
            let cache = match cfg.virtio_fs_cache {
                Cache::Auto => "auto",
                Cache::Always => "always",
                Cache::Never => "never",
                Cache::Metadata => "metadata",
            };
            args.extend([format!("--shared-dir={}", shared.display()), format!("--cache={cache}")]);
        }
        Flavour::C => {
            let cache =
                match cfg.virtio_fs_cache {
                    Cache::Auto => "auto",
                    Cache::Always => "always",
                    Cache::Never => "none",
                    Cache::Metadata => return Err(Error::BadConfig(
                        "[hypervisor.qemu] virtio_fs_cache: \"metadata\" needs the Rust virtiofsd (virtio_fs_daemon)"
                            .into(),
                    )),
                };
            args.extend(["-o".into(), format!("source={}", shared.display()), "-o".into(), format!("cache={cache}")]);
        }
    }
    args.extend(cfg.virtio_fs_extra_args.iter().cloned());
    Ok(args)
}

/// The storage CreateSandbox carries for the share, as kata's runtime sends it.
pub fn storage() -> Storage {
    Storage {
        driver: "virtio-fs".into(),
        source: hypervisor::SHARED_FS_TAG.into(),
        fstype: "virtiofs".into(),
        mount_point: GUEST_MOUNT_POINT.into(),
        ..Default::default()
    }
}

/// A container's directory in the host's side of the shared directory.
pub fn container_dir(run_dir: &RunDir, cid: &str) -> PathBuf {
    run_dir.shared_fs().join(HOST_DIR).join(cid)
}

/// Where the guest sees container `cid`'s rootfs.
pub fn guest_rootfs(cid: &str) -> String {
    format!("{GUEST_MOUNT_POINT}{cid}/rootfs")
}

/// Mount container `cid`'s rootfs (containerd's mounts, in order; none: a bind of `host_root`,
/// the spec's `root.path`) at `<cid>/rootfs` in the shared directory. On failure what was
/// mounted is unmounted.
pub fn share_rootfs(
    run_dir: &RunDir,
    cid: &str,
    mounts: &[containerd_shim_protos::types::mount::Mount],
    host_root: &Path,
) -> Result<()> {
    let target = container_dir(run_dir, cid).join("rootfs");
    let io = |source| Error::Io { what: "making the container's rootfs", path: target.clone(), source };
    std::fs::create_dir_all(&target).map_err(io)?;
    let done = if mounts.is_empty() {
        containerd_shim::mount::mount_rootfs(None, host_root.to_str(), &["rbind".to_owned()], &target)
    } else {
        mounts.iter().try_for_each(|m| {
            containerd_shim::mount::mount_rootfs(Some(m.type_.as_str()), Some(m.source.as_str()), &m.options, &target)
        })
    };
    if let Err(e) = done {
        let _ = unshare_container(run_dir, cid);
        return Err(Error::Io {
            what: "mounting the container's rootfs on",
            path: target,
            source: std::io::Error::other(e.to_string()),
        });
    }
    Ok(())
}

/// Bind `share.host` at `<cid>/mounts/<name>` in the shared directory: a detached copy of the
/// source (with its submounts for `rbind`), made private (so it joins no peer group of the
/// host's: nothing done to it propagates back, and an unmount of it never reaches the host's own
/// mounts) and read-only in every mount of it when asked, before it becomes visible anywhere.
/// Attached under the shared directory, it is propagated to what virtiofsd serves as it is.
///
/// The source is opened once (symlinks followed, as runc follows them) and everything after
/// works on that open file: what it really is is checked (never at or under the runtime's run
/// root, `run_dir`'s parent: the runtime's own sockets and other sandboxes' directories) and
/// copied, so a symlink swapped in between cannot send the copy elsewhere.
pub(crate) fn share_path(run_dir: &RunDir, cid: &str, share: &Share) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let target = container_dir(run_dir, cid).join("mounts").join(&share.name);
    let io = |source| Error::Io { what: "sharing a bind mount of the spec at", path: target.clone(), source };
    let field = format!("mounts[{}].source", share.index);
    let src = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_CLOEXEC)
        .open(&share.host)
        .map_err(|source| Error::Io { what: "the spec binds", path: share.host.clone(), source })?;
    let real = std::fs::read_link(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&src)))
        .map_err(|source| Error::Io { what: "resolving the spec's bind source", path: share.host.clone(), source })?;
    if let Some(root) = run_dir.path().parent().filter(|root| real.starts_with(root)) {
        return Err(Error::Spec(format!(
            "{field}: {} is {}, in the runtime's own run directory {}: a bind of it is refused",
            share.host.display(),
            real.display(),
            root.display()
        )));
    }
    let meta =
        src.metadata().map_err(|source| Error::Io { what: "the spec binds", path: share.host.clone(), source })?;
    std::fs::create_dir_all(target.parent().unwrap_or(&target)).map_err(io)?;
    match meta.is_dir() {
        true => std::fs::create_dir_all(&target).map_err(io)?,
        false => drop(std::fs::File::create(&target).map_err(io)?),
    }
    let copy = detached::private_copy(&src, share.recursive, share.read_only).map_err(|source| Error::Io {
        what: "making a private copy of the spec's bind",
        path: share.host.clone(),
        source,
    })?;
    detached::attach(&copy, &target).map_err(io)
}

/// Mounts made with the new mount API (Linux 5.12+): a copy of a tree that is never attached
/// until it is as it must be.
mod detached {
    use std::ffi::CString;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    use std::path::Path;

    const OPEN_TREE_CLONE: libc::c_uint = 1;
    const AT_RECURSIVE: libc::c_uint = 0x8000;
    const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
    const MOUNT_ATTR_RDONLY: u64 = 0x1;

    /// The kernel's `struct mount_attr`.
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }

    fn cpath(p: &Path) -> std::io::Result<CString> {
        CString::new(p.as_os_str().as_bytes()).map_err(|_| std::io::Error::other("a path with a NUL byte"))
    }

    fn check(r: libc::c_long) -> std::io::Result<libc::c_long> {
        match r < 0 {
            true => Err(std::io::Error::last_os_error()),
            false => Ok(r),
        }
    }

    /// A detached copy of the file or directory open as `src` (and the mounts under it when
    /// `recursive`), each mount private and, when `read_only`, read-only.
    pub fn private_copy(src: &impl AsRawFd, recursive: bool, read_only: bool) -> std::io::Result<OwnedFd> {
        let flags = OPEN_TREE_CLONE
            | libc::O_CLOEXEC as libc::c_uint
            | libc::AT_EMPTY_PATH as libc::c_uint
            | if recursive { AT_RECURSIVE } else { 0 };
        let empty = c"";
        // SAFETY: open_tree reads a NUL-terminated (empty) path relative to an fd the caller
        // owns, and returns a new fd, owned from here.
        let fd = unsafe {
            OwnedFd::from_raw_fd(
                check(libc::syscall(libc::SYS_open_tree, src.as_raw_fd(), empty.as_ptr(), flags))? as i32
            )
        };
        let attr = MountAttr {
            attr_set: if read_only { MOUNT_ATTR_RDONLY } else { 0 },
            attr_clr: 0,
            propagation: libc::MS_PRIVATE,
            userns_fd: 0,
        };
        let at = libc::AT_EMPTY_PATH as libc::c_uint | AT_RECURSIVE;
        // SAFETY: the attribute struct outlives the call and its size is passed with it.
        check(unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                fd.as_raw_fd(),
                empty.as_ptr(),
                at,
                &attr as *const MountAttr,
                std::mem::size_of::<MountAttr>(),
            )
        })?;
        Ok(fd)
    }

    /// Attach a detached tree at `target`.
    pub fn attach(tree: &OwnedFd, target: &Path) -> std::io::Result<()> {
        let c = cpath(target)?;
        let empty = c"";
        // SAFETY: both paths are NUL-terminated and live through the call.
        check(unsafe {
            libc::syscall(
                libc::SYS_move_mount,
                tree.as_raw_fd(),
                empty.as_ptr(),
                libc::AT_FDCWD,
                c.as_ptr(),
                MOVE_MOUNT_F_EMPTY_PATH,
            )
        })
        .map(drop)
    }
}

/// Unmount and remove container `cid`'s directory in the shared directory.
pub fn unshare_container(run_dir: &RunDir, cid: &str) -> Result<()> {
    let dir = container_dir(run_dir, cid);
    unmount_under(&dir)?;
    match std::fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(Error::Io { what: "removing the container's shared directory", path: dir, source: e })
        }
        _ => Ok(()),
    }
}

/// The mount points at or under `dir` in the shim's mount namespace, deepest first.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mountinfo)
        .map(PathBuf::from)
        .filter(|m| m.starts_with(dir))
        .collect();
    found.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    found.dedup();
    found
}

/// `/proc/self/mountinfo` writes space, tab, newline and backslash as octal escapes.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Unmount everything mounted at or under `dir` (deepest first, detached), and check that
/// nothing is left: a directory is removed only when no mount is under it, so a removal never
/// reaches into a container's rootfs.
pub fn unmount_under(dir: &Path) -> Result<()> {
    for _ in 0..3 {
        let left = mounts_under(dir);
        if left.is_empty() {
            return Ok(());
        }
        for m in left {
            let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
        }
    }
    match mounts_under(dir).first() {
        None => Ok(()),
        Some(m) => {
            Err(Error::Io { what: "unmounting", path: m.clone(), source: std::io::Error::other("still mounted") })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hypervisor::config::VirtioFsCache;

    #[test]
    fn each_virtiofsd_gets_its_own_command_line() {
        assert_eq!(Flavour::from_version("virtiofsd 1.14.0"), Some(Flavour::Rust));
        assert_eq!(Flavour::from_version("virtiofsd version 7.2.22 (Debian 1:7.2+dfsg-7)"), Some(Flavour::C));
        assert_eq!(Flavour::from_version("qemu-system-x86_64 7.2"), None);
        let cfg = QemuConfig {
            virtio_fs_cache: VirtioFsCache::Never,
            virtio_fs_extra_args: vec!["--thread-pool-size=1".into()],
            ..Default::default()
        };
        let (sock, dir) = (Path::new("/run/k/sb/virtiofsd.sock"), Path::new("/run/k/sb/shared"));
        assert_eq!(
            daemon_args(Flavour::Rust, &cfg, sock, dir).unwrap(),
            [
                "--socket-path=/run/k/sb/virtiofsd.sock",
                "--shared-dir=/run/k/sb/shared",
                "--cache=never",
                "--thread-pool-size=1"
            ]
        );
        assert_eq!(
            daemon_args(Flavour::C, &cfg, sock, dir).unwrap(),
            [
                "--socket-path=/run/k/sb/virtiofsd.sock",
                "-o",
                "source=/run/k/sb/shared",
                "-o",
                "cache=none",
                "--thread-pool-size=1"
            ]
        );
        let meta = QemuConfig { virtio_fs_cache: VirtioFsCache::Metadata, ..cfg };
        assert!(daemon_args(Flavour::C, &meta, sock, dir).unwrap_err().to_string().contains("virtio_fs_cache"));
    }

    #[tokio::test]
    async fn the_installed_virtiofsds_say_which_they_are() {
        // Both are installed by scripts/install-deps.sh; a missing one fails here, loudly.
        assert_eq!(Flavour::of(Path::new("/usr/local/bin/virtiofsd")).await.unwrap(), Flavour::Rust);
        assert_eq!(Flavour::of(Path::new("/usr/lib/qemu/virtiofsd")).await.unwrap(), Flavour::C);
        assert!(Flavour::of(Path::new("/bin/true")).await.is_err());
    }
}
