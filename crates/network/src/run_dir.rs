//! A sandbox's id, parsed once, and its run directory `<run_root>/<id>`: the one place that
//! names the files in it, for the shim, the hypervisor and the operator's command alike.

use std::fmt;
use std::path::{Path, PathBuf};

/// A sandbox (or container, or exec) id: the characters of container ids only, so it never
/// walks a path.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SandboxId(String);

/// An id that breaks [`SandboxId`]'s rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?}: an id holds only letters, digits, '_', '-' and '.' (not first), at most 128")]
pub struct BadId(pub String);

impl SandboxId {
    pub fn parse(s: &str) -> Result<Self, BadId> {
        let ok = !s.is_empty()
            && s.len() <= 128
            && !s.starts_with('.')
            && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        match ok {
            true => Ok(SandboxId(s.to_owned())),
            false => Err(BadId(s.to_owned())),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for SandboxId {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<Path> for SandboxId {
    fn as_ref(&self) -> &Path {
        Path::new(&self.0)
    }
}

impl fmt::Display for SandboxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The files of a sandbox's run directory, by what they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunDir(PathBuf);

impl RunDir {
    /// The management socket (the operator's command connects to it).
    pub const MGMT_SOCKET: &'static str = "mgmt.sock";
    pub(crate) const QMP_SOCKET: &'static str = "qmp.sock";
    /// The hybrid vsock backend's socket: the longest name of the directory's sockets.
    pub const VSOCK_BACKEND_SOCKET: &'static str = "vhost-vsock.sock";

    /// `<run_root>/<id>`.
    pub fn new(run_root: &Path, id: &SandboxId) -> Self {
        RunDir(run_root.join(id))
    }

    /// A directory taken as a sandbox's run directory as it is (a state file's record).
    pub fn at(path: PathBuf) -> Self {
        RunDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn mgmt_socket(&self) -> PathBuf {
        self.0.join(Self::MGMT_SOCKET)
    }

    pub fn qmp_socket(&self) -> PathBuf {
        self.0.join(Self::QMP_SOCKET)
    }

    /// The guest's serial console.
    pub fn console_log(&self) -> PathBuf {
        self.0.join("console.log")
    }

    /// QEMU's standard output and error.
    pub fn qemu_log(&self) -> PathBuf {
        self.0.join("qemu.log")
    }

    /// The agent's hybrid vsock socket (the VM side: QEMU's vhost-user-vsock device).
    pub fn vsock_backend_socket(&self) -> PathBuf {
        self.0.join(Self::VSOCK_BACKEND_SOCKET)
    }

    /// Where the hybrid vsock backend forwards the guest's connections (`CONNECT <port>`).
    pub fn hybrid_vsock(&self) -> PathBuf {
        self.0.join("vsock.sock")
    }

    /// The agent's socket of the `unix` (virtio-serial) channel.
    pub fn agent_socket(&self) -> PathBuf {
        self.0.join("agent.sock")
    }

    pub fn virtiofsd_socket(&self) -> PathBuf {
        self.0.join("virtiofsd.sock")
    }

    /// The sandbox's shared directory (its own tmpfs).
    pub fn shared_fs(&self) -> PathBuf {
        self.0.join("fs")
    }
}

impl AsRef<Path> for RunDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_hold_only_the_characters_of_container_ids() {
        for good in ["a", "0123abc", "pod_1-x.y", &"a".repeat(128)] {
            assert_eq!(SandboxId::parse(good).unwrap().as_str(), good);
        }
        for bad in ["", ".", ".hidden", "a/b", "..", "a b", "é", &"a".repeat(129)] {
            let e = SandboxId::parse(bad).unwrap_err();
            assert_eq!(e, BadId(bad.to_owned()));
            assert!(e.to_string().contains("only letters, digits"), "{e}");
        }
    }

    #[test]
    fn a_run_directory_names_its_files_under_root_and_id() {
        let d = RunDir::new(Path::new("/run/r"), &SandboxId::parse("s1").unwrap());
        assert_eq!(d.path(), Path::new("/run/r/s1"));
        assert_eq!(d.qmp_socket(), Path::new("/run/r/s1/qmp.sock"));
        assert_eq!(d.mgmt_socket(), Path::new("/run/r/s1/mgmt.sock"));
        assert_eq!(d.vsock_backend_socket(), Path::new("/run/r/s1/vhost-vsock.sock"));
        assert_eq!(d.shared_fs(), Path::new("/run/r/s1/fs"));
    }
}
