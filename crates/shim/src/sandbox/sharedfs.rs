//! The sandbox's shared directory (`shared_fs = "virtio-fs"`): `<run_dir>/<id>/shared` on the
//! host, served by a virtiofsd of the sandbox's own, seen by QEMU as `vhost-user-fs-pci` with
//! kata's tag `kataShared`, and mounted by the agent (kata's or ours) where kata's runtime asks
//! it to: CreateSandbox's storage `virtio-fs` on `/run/kata-containers/shared/containers/`.
//! virtiofsd runs as long as its `VirtioFsd` lives (dropped: killed); a crashed shim's `delete`
//! finds it by its socket in the run directory.

//! What the host shares in it, containers' root filesystems and bind mounts, is in `shares.rs`.

use std::path::{Path, PathBuf};

use agent_client::protocols::agent::Storage;
use hypervisor::QemuConfig;
use network::RunDir;

use crate::error::{Error, Result};

/// What virtiofsd serves, in the sandbox's unbindable tmpfs (`RunDir::shared_fs`): a read-only
/// view of [`HOST_DIR`].
pub(super) const SHARED_DIR: &str = "shared";
/// Where the host makes what it shares, in the sandbox's unbindable tmpfs.
pub(super) const HOST_DIR: &str = "mounts";
/// Where kata's agent mounts the share in the guest.
pub const GUEST_MOUNT_POINT: &str = "/run/kata-containers/shared/containers/";

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
        let child = super::channel::spawn_until_socket(cmd, &socket, None).await.map_err(io)?;
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
