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

/// A regular file (a program or a guest image the runtime hands to QEMU) that is root's, not
/// writable by group or others, and whose every parent directory (symlinks resolved) is root's
/// and not writable by group or others, except a sticky one (`/tmp`), where no other user can
/// replace root's entries. A symlink is followed: what it points to is checked.
pub fn check_root_file(path: &Path) -> Result<()> {
    if !path.is_absolute() {
        return Err(untrusted(path, "not an absolute path"));
    }
    let real = std::fs::canonicalize(path).map_err(|e| untrusted(path, format!("cannot be resolved ({e})")))?;
    let meta = std::fs::metadata(&real).map_err(|e| untrusted(&real, format!("cannot be read ({e})")))?;
    if !meta.is_file() {
        return Err(untrusted(&real, "is not a regular file"));
    }
    check_owner_mode(&real, &meta)?;
    let mut dir = real.parent().map(Path::to_owned);
    while let Some(d) = dir {
        let meta = std::fs::metadata(&d).map_err(|e| untrusted(&d, format!("cannot be read ({e})")))?;
        let sticky = meta.mode() & 0o1000 != 0;
        if meta.uid() != 0 {
            return Err(untrusted(&d, format!("owned by uid {}, not root", meta.uid())));
        }
        if meta.mode() & 0o022 != 0 && !sticky {
            return Err(untrusted(&d, format!("writable by group or others (mode {:o})", meta.mode() & 0o7777)));
        }
        dir = d.parent().map(Path::to_owned);
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_file_is_trusted_only_when_root_alone_can_change_it() {
        // Run as root (the tests of this workspace are): the files made here are root's.
        let dir = std::env::temp_dir().join(format!("knt-trust-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let f = dir.join("image");
        std::fs::write(&f, b"x").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let result = (|| {
            check_root_file(&f)?; // in /tmp: sticky, so accepted
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o666)).unwrap();
            let e = check_root_file(&f).unwrap_err().to_string();
            assert!(e.contains("writable by group or others (mode 666)"), "{e}");
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
            let e = check_root_file(&f).unwrap_err().to_string();
            assert!(e.contains(&format!("{}: writable by group or others (mode 777)", dir.display())), "{e}");
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
            let e = check_root_file(&dir).unwrap_err().to_string();
            assert!(e.contains("is not a regular file"), "{e}");
            let e = check_root_file(Path::new("relative/file")).unwrap_err().to_string();
            assert!(e.contains("not an absolute path"), "{e}");
            nix::unistd::chown(&f, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
            let e = check_root_file(&f).unwrap_err().to_string();
            assert!(e.contains("owned by uid 65534, not root"), "{e}");
            Ok::<(), Error>(())
        })();
        std::fs::remove_dir_all(&dir).unwrap();
        result.unwrap();
    }
}
