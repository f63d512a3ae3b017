//! The workload in the VM: containers of the sandbox and their processes, run by the guest's
//! agent (kata's protocol), their root filesystems shared over virtio-fs, their IO carried
//! between containerd's FIFOs and the agent.

pub mod io;
pub mod spec;
pub(crate) mod stats;

use std::path::Path;

use agent_client::protocols::agent::CreateContainerRequest;
use network::SandboxId;
use protobuf::MessageField;

use crate::error::{Error, Result};
use crate::sandbox::sharedfs::GUEST_MOUNT_POINT;
use crate::sandbox::shares;
use crate::sandbox::Sandbox;

/// Make container `cid` in the VM: its rootfs and the spec's bind mounts shared, the container
/// created by the agent (its init process made, not started). On failure nothing is left.
/// `Ok(true)`: it shares the pod's PID namespace.
pub async fn create_container(
    sb: &Sandbox,
    cid: &SandboxId,
    bundle: &Path,
    rootfs: &[containerd_shim_protos::types::mount::Mount],
) -> Result<bool> {
    let run_dir = sb.run_dir.clone();
    let path = bundle.join("config.json");
    let text =
        std::fs::read(&path).map_err(|source| Error::Io { what: "reading the spec", path: path.clone(), source })?;
    let parsed = spec::parse_spec(&text)?;
    let host_root = spec::host_root(&parsed, bundle);
    let (mut spec, shares, hints) = spec::to_agent(&parsed, cid, &shares::guest_rootfs(cid), GUEST_MOUNT_POINT)?;
    if !sb.guest_seccomp {
        // `[runtime] disable_guest_seccomp`, as kata's runtime does it.
        if let Some(linux) = spec.Linux.as_mut() {
            linux.Seccomp.clear();
        }
    }
    let made = {
        let (run_dir, cid, rootfs) = (run_dir.clone(), cid.to_owned(), rootfs.to_vec());
        tokio::task::spawn_blocking(move || {
            shares::share_rootfs(&run_dir, &cid, &rootfs, &host_root)?;
            shares.iter().try_for_each(|s| shares::share_path(&run_dir, &cid, s))
        })
        .await
        .map_err(|e| Error::Internal(format!("sharing the rootfs: {e}")))
        .and_then(|r| r)
    };
    let req = CreateContainerRequest {
        container_id: cid.to_string(),
        exec_id: cid.to_string(),
        OCI: MessageField::some(spec),
        sandbox_pidns: hints.sandbox_pidns,
        ..Default::default()
    };
    let created = match made.and_then(|()| Ok(crate::failpoint::hit("container:shared")?)) {
        Ok(()) => sb.agent.create_container(&req).await.map_err(Error::from),
        Err(e) => Err(e),
    };
    let created = created.and_then(|()| Ok(crate::failpoint::hit("container:created")?));
    if let Err(e) = created {
        let _ = sb.agent.remove_container(cid, 10).await;
        let _ = shares::unshare_container(&run_dir, cid);
        return Err(e);
    }
    Ok(hints.sandbox_pidns)
}

/// Remove container `cid` from the VM (its processes killed) and unshare its rootfs and mounts.
/// Both are tried; the first error is returned.
pub async fn remove_container(sb: &Sandbox, cid: &str) -> Result<()> {
    let removed = sb.agent.remove_container(cid, 10).await.map_err(Error::from);
    let (d, cid) = (sb.run_dir.clone(), cid.to_owned());
    let unshared = tokio::task::spawn_blocking(move || shares::unshare_container(&d, &cid))
        .await
        .map_err(|e| Error::Internal(format!("unsharing: {e}")))
        .and_then(|r| r);
    removed.and(unshared)
}
