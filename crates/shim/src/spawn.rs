//! The `start` action: the serving shim spawned (or the sandbox's found, for an app container),
//! the bundle's `address` file written, and the address answered in the form containerd asked
//! for (`bootstrap.rs`). A start that fails leaves no process behind.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::bootstrap::{self, StartError, StartParams};

/// Where `start` records, in the bundle, the configuration the runtime options chose, so that
/// containerd's `delete` in the same bundle reads it too.
pub const CONFIG_RECORD: &str = "kata-net-config-path";
/// The configuration a runtime option's `ConfigBody` gave, written in the bundle.
const CONFIG_BODY_FILE: &str = "kata-net-configuration.toml";

/// Run `start` with `args` (the command line after the program): read stdin, spawn, answer on
/// stdout. Errors are for stderr (containerd shows them) and a non-zero exit.
pub fn start(args: &[std::ffi::OsString]) -> Result<(), StartError> {
    let flags = containerd_shim::parse(args).map_err(|e| StartError::Io(format!("the command line: {e}")))?;
    let input = bootstrap::read_stdin()?;
    let params = bootstrap::parse_start(&input, &flags, std::env::var("TTRPC_ADDRESS").ok())?;
    let bundle = std::env::current_dir().map_err(|e| StartError::Io(format!("the bundle (working directory): {e}")))?;
    let config = record_config(&bundle, &params.options)?;
    let address = spawn_server(&bundle, &params, config.as_deref())?;
    let mut out = std::io::stdout();
    out.write_all(&bootstrap::start_result(&address, params.protocol))
        .and_then(|()| out.flush())
        .map_err(|e| StartError::Io(format!("writing the answer: {e}")))
}

/// The configuration file the runtime options choose (a `ConfigBody` written into the bundle),
/// recorded in the bundle for `delete`. `None`: the usual search (`KATA_CONF_FILE`, the paths).
fn record_config(bundle: &Path, o: &bootstrap::RuntimeOptions) -> Result<Option<PathBuf>, StartError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |what: &str, e: std::io::Error| StartError::Io(format!("{what} in the bundle: {e}"));
    let path = match (&o.config_path, &o.config_body) {
        (Some(p), _) => p.clone(),
        (None, Some(body)) => {
            let p = bundle.join(CONFIG_BODY_FILE);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&p)
                .map_err(|e| io("writing ConfigBody", e))?;
            f.write_all(body.as_bytes()).map_err(|e| io("writing ConfigBody", e))?;
            p
        }
        (None, None) => return Ok(None),
    };
    std::fs::write(bundle.join(CONFIG_RECORD), path.as_os_str().as_encoded_bytes())
        .map_err(|e| io("recording the configuration", e))?;
    Ok(Some(path))
}

/// The configuration `start` recorded in `bundle`, if it did.
pub fn recorded_config(bundle: &Path) -> Option<PathBuf> {
    let text = std::fs::read_to_string(bundle.join(CONFIG_RECORD)).ok()?;
    Some(PathBuf::from(text)).filter(|p| p.is_absolute())
}

/// The socket of `grouping`'s shim: containerd's name for it, in `socket_dir` when 2.3 gives one.
fn socket_address(p: &StartParams, grouping: &str) -> String {
    let default = containerd_shim::socket_address(&p.address, &p.namespace, grouping);
    match (&p.socket_dir, default.rsplit_once('/')) {
        (Some(dir), Some((_, hash))) => format!("unix://{}/{hash}", dir.trim_end_matches('/')),
        _ => default,
    }
}

/// Spawn the serving shim for this bundle's group (an app container's is its sandbox's: the
/// child finds that shim's socket served and leaves at once) and wait until it serves. Returns
/// the socket's address, written to the bundle's `address` file. On failure the child is killed.
fn spawn_server(bundle: &Path, p: &StartParams, config: Option<&Path>) -> Result<String, StartError> {
    let spec = oci_spec::runtime::Spec::load(bundle.join("config.json")).ok();
    let grouping = spec.and_then(|s| crate::sandbox::sandbox_of(s.annotations().as_ref())).unwrap_or(p.id.clone());
    let address = socket_address(p, &grouping);
    let exe = std::env::current_exe().map_err(|e| StartError::Io(format!("the shim's own binary: {e}")))?;
    let mut cmd = Command::new(exe);
    cmd.current_dir(bundle)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .env("TTRPC_ADDRESS", &p.ttrpc_address)
        .args(["-namespace", &p.namespace, "-id", &p.id, "-address", &p.address, "-socket", &address]);
    if !p.publish_binary.is_empty() {
        cmd.args(["-publish-binary", &p.publish_binary]);
    }
    if p.debug {
        cmd.arg("-debug");
    }
    if let Some(c) = config {
        cmd.env(netmgmt::paths::CONF_ENV, c);
    }
    let mut child = cmd.spawn().map_err(|e| StartError::Io(format!("spawning the serving shim: {e}")))?;
    let pid = child.id();
    let served = (|| {
        if let Some(cg) = &p.options.shim_cgroup {
            containerd_shim::cgroup::add_task_to_cgroup(cg, pid)
                .map_err(|e| StartError::Io(format!("moving the shim into shim_cgroup {cg}: {e}")))?;
        }
        containerd_shim::cgroup::adjust_oom_score(pid)
            .map_err(|e| StartError::Io(format!("the serving shim's OOM score: {e}")))?;
        // The child closes its stdout once it serves (or leaves: an app container's); what it
        // wrote before goes to containerd through this stderr.
        let mut out = Vec::new();
        let _ = child.stdout.take().map(|mut s| s.read_to_end(&mut out));
        let _ = std::io::stderr().write_all(&out);
        // Closed either way, so whether it serves is asked of the socket itself.
        if !serves(&address) {
            let status = child.try_wait().ok().flatten().map_or("still running".into(), |s| s.to_string());
            return Err(StartError::Io(format!(
                "the serving shim exited at its start ({status}): nothing serves {address}"
            )));
        }
        write_address(bundle, &address).map_err(|e| StartError::Io(format!("writing the bundle's address file: {e}")))
    })();
    if served.is_err() {
        let _ = child.kill();
        let _ = child.wait();
    }
    served.map(|()| address)
}

/// Whether something accepts connections on the unix socket of `address` (tried for a moment:
/// the listener is bound before the serving shim closes its stdout).
fn serves(address: &str) -> bool {
    let Some(path) = address.strip_prefix("unix://") else { return false };
    (0..20).any(|i| {
        if i > 0 {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        std::os::unix::net::UnixStream::connect(path).is_ok()
    })
}

/// The bundle's `address` file is how a restarted containerd finds the shim again (runtime/v2's
/// loadShim reads it; without it the task is taken for dead, its bundle removed, and the sandbox
/// left running unmanaged). Written whole or not at all.
fn write_address(bundle: &Path, address: &str) -> std::io::Result<()> {
    let tmp = bundle.join("address.tmp");
    std::fs::write(&tmp, address)?;
    std::fs::rename(&tmp, bundle.join("address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_dir_from_containerd_2_3_holds_the_same_name() {
        let mut p = StartParams {
            protocol: bootstrap::Protocol::Bootstrap,
            id: "sb1".into(),
            namespace: "k8s.io".into(),
            address: "/run/containerd/containerd.sock".into(),
            ttrpc_address: "t".into(),
            publish_binary: String::new(),
            debug: false,
            socket_dir: None,
            options: Default::default(),
        };
        let default = socket_address(&p, "sb1");
        assert!(default.starts_with("unix:///run/containerd/s/"), "{default}");
        p.socket_dir = Some("/run/k3s/s/".into());
        let moved = socket_address(&p, "sb1");
        assert_eq!(moved.rsplit_once('/').map(|x| x.1), default.rsplit_once('/').map(|x| x.1));
        assert!(moved.starts_with("unix:///run/k3s/s/"), "{moved}");
    }

    #[test]
    fn the_recorded_configuration_is_read_back_only_as_an_absolute_path() {
        let dir = std::env::temp_dir().join(format!("knt-spawn-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(recorded_config(&dir), None);
        let o = bootstrap::RuntimeOptions { config_body: Some("[runtime]\n".into()), ..Default::default() };
        let p = record_config(&dir, &o).unwrap().unwrap();
        assert_eq!(p, dir.join(CONFIG_BODY_FILE));
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "[runtime]\n");
        assert_eq!(recorded_config(&dir), Some(p));
        std::fs::write(dir.join(CONFIG_RECORD), "relative.toml").unwrap();
        assert_eq!(recorded_config(&dir), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
