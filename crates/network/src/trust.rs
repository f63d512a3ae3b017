//! Whether a path may be trusted: a file that decides what QEMU (root, with the guest's memory
//! shared) connects to must be root's, in directories only root can change. Any other user could
//! otherwise put a socket there and take over a pod's NIC.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

fn untrusted(path: &Path, why: impl Into<String>) -> Error {
    Error::Untrusted { path: path.to_owned(), why: why.into() }
}

/// Owned by root and not writable by group or others.
fn check_owner_mode(path: &Path, meta: &std::fs::Metadata) -> Result<()> {
    if meta.uid() != 0 {
        return Err(untrusted(path, format!("owned by uid {}, not root", meta.uid())));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(untrusted(path, format!("writable by group or others (mode {:o})", meta.mode() & 0o7777)));
    }
    Ok(())
}

/// A unix socket that is root's, not a symlink, and whose every parent directory (after
/// resolving symlinks, up to `/`) is root's and not writable by group or others. The error says
/// which check failed, and for which path.
pub fn check_root_socket(path: &Path) -> Result<()> {
    if !path.is_absolute() {
        return Err(untrusted(path, "not an absolute path"));
    }
    let meta = std::fs::symlink_metadata(path).map_err(|e| untrusted(path, format!("cannot be read ({e})")))?;
    if meta.file_type().is_symlink() {
        return Err(untrusted(path, "is a symbolic link"));
    }
    if !meta.file_type().is_socket() {
        return Err(untrusted(path, "is not a socket"));
    }
    check_owner_mode(path, &meta)?;
    let parent = path.parent().unwrap_or(Path::new("/"));
    let real = std::fs::canonicalize(parent).map_err(|e| untrusted(parent, format!("cannot be resolved ({e})")))?;
    let mut dir: Option<PathBuf> = Some(real);
    while let Some(d) = dir {
        let meta = std::fs::metadata(&d).map_err(|e| untrusted(&d, format!("cannot be read ({e})")))?;
        check_owner_mode(&d, &meta)?;
        dir = d.parent().map(Path::to_owned);
    }
    Ok(())
}
