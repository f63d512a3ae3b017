//! CreateSandbox's storages, as kata's agent mounts them; only the one the shim sends: the
//! sandbox's shared directory over virtio-fs (`driver = "virtio-fs"`, the tag as `source`).

use agent_client::protocols::agent::Storage;
use ttrpc::Code;

type R<T> = Result<T, (Code, String)>;

fn invalid(field: &str, why: impl std::fmt::Display) -> (Code, String) {
    (Code::INVALID_ARGUMENT, format!("{field}: {why}"))
}

/// Check every storage, then mount each (the mount point made first).
pub fn mount_all(storages: &[Storage]) -> R<()> {
    for (n, s) in storages.iter().enumerate() {
        let f = |name: &str| format!("storages[{n}].{name}");
        if s.driver != "virtio-fs" {
            return Err(invalid(&f("driver"), format!("{:?} is not supported (only virtio-fs)", s.driver)));
        }
        if s.fstype != "virtiofs" {
            return Err(invalid(&f("fstype"), format!("{:?}: virtio-fs is mounted as virtiofs", s.fstype)));
        }
        if s.source.is_empty() || s.source.contains(['/', '\0']) {
            return Err(invalid(&f("source"), "a virtio-fs tag, without '/'"));
        }
        if !s.mount_point.starts_with("/run/") || s.mount_point.contains("..") {
            return Err(invalid(&f("mount_point"), "must be under /run, without '..'"));
        }
    }
    for s in storages {
        std::fs::create_dir_all(&s.mount_point)
            .map_err(|e| (Code::INTERNAL, format!("mkdir {}: {e}", s.mount_point)))?;
        nix::mount::mount(
            Some(s.source.as_str()),
            s.mount_point.as_str(),
            Some("virtiofs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|e| (Code::INTERNAL, format!("mount {} on {}: {e}", s.source, s.mount_point)))?;
        eprintln!("guest-agent: storage {} mounted on {}", s.source, s.mount_point);
    }
    Ok(())
}
