//! Network namespaces: run work inside one on a dedicated thread, open netlink sockets bound to
//! one, create and remove named ones.
//!
//! `setns` changes only the calling thread, so work that must happen inside a namespace (opening
//! `/dev/net/tun`, mounting its sysfs) runs on a short-lived thread of its own. A netlink socket
//! opened on such a thread stays bound to the namespace, so netlink requests then run on the
//! caller's tokio runtime without ever holding a namespace.

use std::fs::File;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};

use crate::error::{Error, Result};

/// Where named namespaces live, as `ip netns` keeps them.
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// A network namespace known by the path of its bind mount or `/proc/<pid>/ns/net` file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NetNs {
    path: PathBuf,
}

impl NetNs {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// A namespace named by an operator: the path must be absolute and lead to a namespace file
    /// (nsfs); whether it is a *network* namespace shows when it is entered.
    pub fn from_user_path(path: &Path) -> Result<Self> {
        const NSFS_MAGIC: i64 = 0x6e73_6673;
        let bad = |why: &str| Error::NetnsOpen {
            path: path.to_owned(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, why.to_owned()),
        };
        if !path.is_absolute() {
            return Err(bad("the path must be absolute"));
        }
        let fs =
            nix::sys::statfs::statfs(path).map_err(|e| Error::NetnsOpen { path: path.to_owned(), source: e.into() })?;
        if fs.filesystem_type().0 as i64 != NSFS_MAGIC {
            return Err(bad("not a namespace file (expected /run/netns/<name> or /proc/<pid>/ns/net)"));
        }
        Ok(Self::new(path))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Run `f` on a new thread that has entered this namespace; the caller's thread is untouched.
    pub fn run<T: Send, F: FnOnce() -> T + Send>(&self, f: F) -> Result<T> {
        let file = File::open(&self.path).map_err(|source| Error::NetnsOpen { path: self.path.clone(), source })?;
        std::thread::scope(|s| {
            s.spawn(|| {
                setns(&file, CloneFlags::CLONE_NEWNET)
                    .map_err(|source| Error::NetnsEnter { path: self.path.clone(), source })?;
                Ok(f())
            })
            .join()
            .map_err(|_| Error::NetnsThread { path: self.path.clone() })?
        })
    }

    /// Like [`NetNs::run`], with a private mount namespace in which `/sys` shows this network
    /// namespace's devices (sysfs takes the namespace of whoever mounts it). The mount dies with
    /// the thread and is never visible outside it.
    pub(crate) fn run_with_sysfs<T: Send, F: FnOnce() -> T + Send>(&self, f: F) -> Result<T> {
        self.run(|| {
            let enter = |e: nix::Error| Error::NetnsEnter { path: self.path.clone(), source: e };
            unshare(CloneFlags::CLONE_NEWNS).map_err(enter)?;
            mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)
                .map_err(enter)?;
            mount(Some("sysfs"), "/sys", Some("sysfs"), MsFlags::empty(), None::<&str>).map_err(enter)?;
            Ok(f())
        })?
    }

    /// Create a named namespace under [`NETNS_RUN_DIR`], as `ip netns add` does.
    pub fn create(name: &str) -> Result<Self> {
        Self::create_in(Path::new(NETNS_RUN_DIR), name)
    }

    /// Create a namespace bind-mounted at `dir/name`. `name` must be a single path component.
    pub fn create_in(dir: &Path, name: &str) -> Result<Self> {
        let path = dir.join(name);
        let err = |source: std::io::Error| Error::NetnsCreate { path: path.clone(), source };
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "bad namespace name")));
        }
        std::fs::create_dir_all(dir).map_err(err)?;
        make_shared_mount_dir(dir).map_err(err)?;
        std::fs::OpenOptions::new().write(true).create_new(true).open(&path).map_err(err)?;
        let bound = std::thread::scope(|s| {
            s.spawn(|| -> nix::Result<()> {
                unshare(CloneFlags::CLONE_NEWNET)?;
                let me = format!("/proc/self/task/{}/ns/net", nix::unistd::gettid());
                mount(Some(me.as_str()), &path, None::<&str>, MsFlags::MS_BIND, None::<&str>)
            })
            .join()
        });
        match bound {
            Ok(Ok(())) => Ok(Self { path }),
            Ok(Err(e)) => {
                let _ = std::fs::remove_file(&path);
                Err(err(e.into()))
            }
            Err(_) => {
                let _ = std::fs::remove_file(&path);
                Err(Error::NetnsThread { path })
            }
        }
    }

    /// Unmount and remove a namespace made by [`NetNs::create`]. The namespace itself lives on
    /// while a process or open fd still holds it.
    pub fn remove(self) -> Result<()> {
        let err = |source: std::io::Error| Error::NetnsRemove { path: self.path.clone(), source };
        match umount2(&self.path, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
            Err(e) => return Err(err(e.into())),
        }
        match std::fs::remove_file(&self.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(err(e)),
            _ => Ok(()),
        }
    }
}

/// Drive a netlink route socket (bound to whatever namespace it was opened in) on the current
/// tokio runtime.
pub(crate) fn netlink_from_socket(sock: netlink_sys::Socket) -> Result<rtnetlink::Handle> {
    sock.set_non_blocking(true).map_err(Error::NetlinkSocket)?;
    // SAFETY: the fd was just taken out of a live netlink socket that gives up ownership.
    let sock = unsafe { netlink_sys::TokioSocket::from_raw_fd(sock.into_raw_fd()) };
    let (conn, handle, _) = rtnetlink::from_socket(sock);
    tokio::spawn(conn);
    Ok(handle)
}

/// Make `dir` a shared mount point (bind-mounting it on itself first if needed) so namespace
/// mounts below it propagate to other mount namespaces, like iproute2 does for `/run/netns`.
fn make_shared_mount_dir(dir: &Path) -> std::io::Result<()> {
    let shared = MsFlags::MS_SHARED | MsFlags::MS_REC;
    match mount(None::<&str>, dir, None::<&str>, shared, None::<&str>) {
        Ok(()) => Ok(()),
        Err(nix::Error::EINVAL) => {
            mount(Some(dir), dir, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)?;
            mount(None::<&str>, dir, None::<&str>, shared, None::<&str>)?;
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// A thread that stays inside one network namespace and runs jobs sent to it, so that work
/// needing the namespace (opening TAP queues, ioctls by name) pays a channel hop instead of a
/// thread spawn. The thread ends when the last handle is dropped.
#[derive(Debug, Clone)]
pub struct NsWorker {
    tx: std::sync::mpsc::Sender<Job>,
    path: PathBuf,
}

impl NsWorker {
    pub fn start(ns: &NetNs) -> Result<Self> {
        let path = ns.path.clone();
        let file = File::open(&path).map_err(|source| Error::NetnsOpen { path: path.clone(), source })?;
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("netns-worker".into())
            .spawn(move || {
                let entered = setns(&file, CloneFlags::CLONE_NEWNET);
                let ok = entered.is_ok();
                let _ = ready_tx.send(entered);
                if ok {
                    for job in rx {
                        job();
                    }
                }
            })
            .map_err(|source| Error::NetnsCreate { path: path.clone(), source })?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Self { tx, path }),
            Ok(Err(source)) => Err(Error::NetnsEnter { path, source }),
            Err(_) => Err(Error::NetnsThread { path }),
        }
    }

    /// Run `f` on the namespace thread and wait for its result.
    pub fn run<T: Send + 'static, F: FnOnce() -> T + Send + 'static>(&self, f: F) -> Result<T> {
        let (rtx, rrx) = std::sync::mpsc::sync_channel(1);
        let job: Job = Box::new(move || {
            let _ = rtx.send(f());
        });
        self.tx.send(job).map_err(|_| Error::NetnsThread { path: self.path.clone() })?;
        rrx.recv().map_err(|_| Error::NetnsThread { path: self.path.clone() })
    }
}
