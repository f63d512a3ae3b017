//! The sandbox's shared directory (`shared_fs = "virtio-fs"`): `<run_dir>/<id>/shared` on the
//! host, served by a virtiofsd of the sandbox's own, seen by QEMU as `vhost-user-fs-pci` with
//! kata's tag `kataShared`, and mounted by the agent (kata's or ours) where kata's runtime asks
//! it to: CreateSandbox's storage `virtio-fs` on `/run/kata-containers/shared/containers/`.
//! virtiofsd runs as long as its `VirtioFsd` lives (dropped: killed); a crashed shim's `delete`
//! finds it by its socket in the run directory.

use std::path::{Path, PathBuf};

use agent_client::protocols::agent::Storage;
use hypervisor::QemuConfig;

use crate::error::{Error, Result};

/// virtiofsd's vhost-user socket (QEMU's side) in the run directory.
pub const VIRTIOFSD_SOCKET: &str = "virtiofsd.sock";
/// The shared directory on the host, in the run directory.
pub const SHARED_DIR: &str = "shared";
/// Where kata's agent mounts the share in the guest.
pub const GUEST_MOUNT_POINT: &str = "/run/kata-containers/shared/containers/";

/// A virtiofsd serving one sandbox; killed when dropped.
#[derive(Debug)]
pub struct VirtioFsd {
    _child: tokio::process::Child,
    pub socket: PathBuf,
}

impl VirtioFsd {
    /// Make the shared directory (root's, 0700) and start virtiofsd on it; wait (bounded) for its
    /// socket.
    pub async fn start(cfg: &QemuConfig, run_dir: &Path) -> Result<Self> {
        let shared = run_dir.join(SHARED_DIR);
        let socket = run_dir.join(VIRTIOFSD_SOCKET);
        let io = |source| Error::Io { what: "starting virtiofsd for", path: shared.clone(), source };
        std::fs::create_dir(&shared).map_err(io)?;
        std::fs::set_permissions(&shared, std::os::unix::fs::PermissionsExt::from_mode(0o700)).map_err(io)?;
        let mut cmd = tokio::process::Command::new(&cfg.virtio_fs_daemon);
        cmd.arg(format!("--socket-path={}", socket.display()))
            .arg("-o")
            .arg(format!("source={}", shared.display()))
            .arg("-o")
            .arg(format!("cache={}", cfg.virtio_fs_cache));
        let child = super::channel::spawn_until_socket(cmd, &socket).await.map_err(io)?;
        Ok(Self { _child: child, socket })
    }
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
