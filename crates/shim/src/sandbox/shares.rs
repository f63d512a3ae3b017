//! What the host shares into the guest through the sandbox's shared directory: each
//! container's rootfs and the paths its spec binds, and their removal.
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

use network::RunDir;

use super::sharedfs::{GUEST_MOUNT_POINT, HOST_DIR};
use crate::error::{Error, Result};

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

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_mountinfo(r"/run/a\040b"), "/run/a b");
        assert_eq!(unescape_mountinfo(r"/x\011y\134z"), "/x\ty\\z");
        assert_eq!(unescape_mountinfo(r"/plain"), "/plain");
        assert_eq!(unescape_mountinfo(r"/short\04"), r"/short\04", "an escape needs three digits");
    }
}
