//! Where the operator's command finds a sandbox: the runtime's configuration file names the
//! `run_dir`; each running sandbox's shim serves `<run_dir>/<sandbox id>/mgmt.sock` (directory
//! 0700 and socket 0600, both root's).

use std::path::{Path, PathBuf};

use network::{RunDir, SandboxId};

/// The management socket's name in a sandbox's run directory.
pub const MGMT_SOCKET: &str = RunDir::MGMT_SOCKET;
/// The environment variable naming the configuration file, as kata reads it.
pub const CONF_ENV: &str = "KATA_CONF_FILE";
/// Where the configuration file is looked for when `KATA_CONF_FILE` is not set, in order: ours
/// (kata's own places), then kata-deploy's (a node that has kata-deploy's assets).
pub const CONF_PATHS: [&str; 4] = [
    "/etc/kata-containers/configuration.toml",
    "/usr/share/defaults/kata-containers/configuration.toml",
    "/opt/kata/share/defaults/kata-containers/configuration.toml",
    "/opt/kata/share/defaults/kata-containers/configuration-qemu.toml",
];
/// `[runtime] run_dir` when the configuration does not set it.
pub const DEFAULT_RUN_DIR: &str = "/run/kata-net-rs";

/// Why the sandbox could not be found.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    #[error("cannot read configuration {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("configuration {path}: {why}")]
    Config { path: PathBuf, why: String },
    #[error("sandbox {0:?}: an id holds only letters, digits, '_', '-' and '.' (at most 128)")]
    BadId(String),
    #[error("sandbox {arg:?}: no such sandbox (none is running under {})", run_dir.display())]
    NoneRunning { arg: String, run_dir: PathBuf },
    #[error("sandbox {arg:?}: no such sandbox (running: {})", running.join(", "))]
    NotFound { arg: String, running: Vec<String> },
    #[error("sandbox {arg:?} is ambiguous: it matches {}", matches.join(", "))]
    Ambiguous { arg: String, matches: Vec<String> },
}

/// The configuration file in effect: `KATA_CONF_FILE`, else the first of [`CONF_PATHS`] that
/// exists; `None` means the built-in default.
pub fn config_file() -> Option<PathBuf> {
    std::env::var_os(CONF_ENV).map(PathBuf::from).or_else(|| CONF_PATHS.iter().map(PathBuf::from).find(|p| p.is_file()))
}

/// `[runtime] run_dir` of the configuration in effect. Only that key is read here: the shim
/// checks the whole file when it starts a sandbox.
pub fn run_dir() -> Result<PathBuf, PathError> {
    let Some(path) = config_file() else { return Ok(PathBuf::from(DEFAULT_RUN_DIR)) };
    let text = std::fs::read_to_string(&path).map_err(|source| PathError::Read { path: path.clone(), source })?;
    let bad = |why: String| PathError::Config { path: path.clone(), why };
    let doc: toml::Table = text.parse().map_err(|e: toml::de::Error| bad(e.message().to_owned()))?;
    match doc.get("runtime").and_then(|r| r.get("run_dir")) {
        None => Ok(PathBuf::from(DEFAULT_RUN_DIR)),
        Some(toml::Value::String(s)) if Path::new(s).is_absolute() => Ok(PathBuf::from(s)),
        Some(_) => Err(bad("[runtime] run_dir: must be an absolute path".into())),
    }
}

/// A sandbox id or prefix: the characters of container ids only, so it never walks a path.
pub fn parse_sandbox_id(s: &str) -> Result<SandboxId, PathError> {
    SandboxId::parse(s).map_err(|e| PathError::BadId(e.0))
}

/// The sandboxes with a management socket under `run_dir`, sorted.
pub fn running_sandboxes(run_dir: &Path) -> Vec<String> {
    let mut ids: Vec<String> = std::fs::read_dir(run_dir)
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().join(MGMT_SOCKET).exists())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

/// The sandbox `arg` names: its full id, or the one id it is a prefix of.
pub fn find_sandbox(run_dir: &Path, arg: &str) -> Result<SandboxId, PathError> {
    parse_sandbox_id(arg)?;
    let ids = running_sandboxes(run_dir);
    if ids.iter().any(|i| i == arg) {
        return parse_sandbox_id(arg);
    }
    let mut matches: Vec<String> = ids.iter().filter(|i| i.starts_with(arg)).cloned().collect();
    match matches.len() {
        1 => parse_sandbox_id(&matches.remove(0)),
        0 if ids.is_empty() => Err(PathError::NoneRunning { arg: arg.to_owned(), run_dir: run_dir.to_owned() }),
        0 => Err(PathError::NotFound { arg: arg.to_owned(), running: ids }),
        _ => Err(PathError::Ambiguous { arg: arg.to_owned(), matches }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandboxes_by_id_or_unique_prefix() {
        let dir = std::env::temp_dir().join(format!("kata-cli-find-{}", std::process::id()));
        for id in ["6ec7a98f00", "6ec7b11100", "77aa00"] {
            std::fs::create_dir_all(dir.join(id)).unwrap();
            std::fs::write(dir.join(id).join(MGMT_SOCKET), "").unwrap();
        }
        std::fs::create_dir_all(dir.join("6ec7a98f-stopped")).unwrap();
        let find = |a: &str| find_sandbox(&dir, a).map_err(|e| e.to_string());
        assert_eq!(find("6ec7a98").unwrap().as_str(), "6ec7a98f00");
        assert_eq!(find("77aa00").unwrap().as_str(), "77aa00");
        let e = find("6ec7").unwrap_err();
        assert!(e.contains("ambiguous") && e.contains("6ec7a98f00") && e.contains("6ec7b11100"), "{e}");
        let e = find("ffff").unwrap_err();
        assert!(e.contains("no such sandbox") && e.contains("77aa00"), "{e}");
        for bad in ["../etc", "a/b", "", ".x", "a;b"] {
            assert!(find(bad).unwrap_err().contains("an id holds only"), "{bad}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
