//! The shim process: containerd's `start` (spawn the serving shim, or find the sandbox's for an
//! app container, and write the bundle's address file) and `delete` (remove what a dead shim's
//! sandbox left, found by its state file or its tags), the serving process's life and exit.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use containerd_shim::asynchronous::{ExitSignal, Shim};
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{Config as ShimConfig, Flags, StartOpts};
use containerd_shim_protos::protobuf::MessageField;

use crate::config::Config;
use crate::containers::process::now;
use crate::sandbox::{self, sandbox_of, SandboxState, SpecNetwork};
use crate::task::KataTask;

pub const RUNTIME_ID: &str = "io.containerd.kata.v2";

/// What `-v` / `-version` print, in the form containerd's own shims print it.
pub fn version_text() -> String {
    format!(
        "containerd-shim-kata-v2:\n  Version:  {}\n  Runtime:  {RUNTIME_ID}\n  Agent API: kata agent protocol (grpc.AgentService)\n",
        env!("CARGO_PKG_VERSION")
    )
}

/// What `-info` prints (containerd 2.x asks for it): the runtime's `RuntimeInfo`, its name and
/// version, and the OCI features it honours (runtime-spec's features document as JSON).
pub fn runtime_info() -> Vec<u8> {
    use containerd_shim_protos::protobuf::Message;
    use containerd_shim_protos::types::introspection::{RuntimeInfo, RuntimeVersion};
    let features = serde_json::json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": "1.2.0",
        "mountOptions": ["bind", "rbind", "ro", "rw", "nosuid", "nodev", "noexec"],
        "linux": {
            "namespaces": ["pid", "ipc", "uts", "mount"],
            "cgroup": {"v2": true},
            "seccomp": {"enabled": true},
        },
    });
    let info = RuntimeInfo {
        name: RUNTIME_ID.into(),
        version: MessageField::some(RuntimeVersion { version: env!("CARGO_PKG_VERSION").into(), ..Default::default() }),
        features: MessageField::some(containerd_shim_protos::protobuf::well_known_types::any::Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/features/Features".into(),
            value: features.to_string().into_bytes(),
            ..Default::default()
        }),
        ..Default::default()
    };
    info.write_to_bytes().unwrap_or_default()
}

/// What a sandbox may have made, found by its tags rather than a state file: the run directory
/// `<run_root>/<id>` (and any QEMU whose command line names it), the runtime's link group in the
/// spec's namespace, the shim's own namespace `kata-net-<id>`. `None` for an id that is no
/// valid sandbox id.
fn tagged_state(id: &str, bundle: &Path, run_root: Option<&Path>) -> Option<SandboxState> {
    network::SandboxId::parse(id).ok()?;
    let spec_netns = oci_spec::runtime::Spec::load(bundle.join("config.json"))
        .ok()
        .and_then(|spec| SpecNetwork::from_spec(&spec).ok())
        .and_then(|net| net.netns);
    let own = sandbox::own_netns_path(id);
    let (netns, intent) = match spec_netns {
        Some(p) => (Some(p), false),
        None => (own.exists().then_some(own), true),
    };
    Some(SandboxState {
        id: id.to_owned(),
        netns,
        netns_intent: intent,
        run_dir: run_root.map(|r| r.join(id)),
        by_tags: true,
        ..Default::default()
    })
}

/// The shim process.
pub struct KataShim {
    exit: Arc<ExitSignal>,
    namespace: String,
    id: String,
    /// The socket this shim serves on (`-socket`, the serving process only).
    socket: String,
    /// containerd's address (`-address`): where the socket of this id's shim is derived from.
    address: String,
}

/// The file of a `unix://` socket address.
fn socket_file(address: &str) -> Option<&Path> {
    address.strip_prefix("unix://").map(Path::new).filter(|p| p.is_absolute())
}

/// Remove the socket at `address` when nobody listens there any more (its shim died): a live
/// shim's is left alone.
fn remove_dead_socket(address: &str) {
    use std::os::unix::fs::FileTypeExt;
    let Some(path) = socket_file(address) else { return };
    let is_socket = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket());
    let refused = || {
        std::os::unix::net::UnixStream::connect(path).is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused)
    };
    if is_socket && refused() {
        let _ = std::fs::remove_file(path);
    }
}

/// The pid of the process listening on the unix socket at `address` (its peer credentials).
fn serving_pid(address: &str) -> Option<i32> {
    let stream = std::os::unix::net::UnixStream::connect(socket_file(address)?).ok()?;
    let cred = nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials).ok()?;
    Some(cred.pid()).filter(|p| *p > 0 && *p as u32 != std::process::id())
}

/// How long a live shim asked to end may take to shut its sandbox down.
const END_SHIM_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// SIGTERM shim `pid` and wait until it is gone and the run directory `run_dir` is free (the
/// shim's sandbox shut down). Whether it ended in time.
async fn end_shim(pid: i32, run_dir: Option<&Path>) -> bool {
    use nix::sys::signal::{kill, Signal};
    let _ = kill(nix::unistd::Pid::from_raw(pid), Signal::SIGTERM);
    let start = std::time::Instant::now();
    while start.elapsed() < END_SHIM_WAIT {
        let alive = Path::new(&format!("/proc/{pid}")).exists();
        if !alive && !run_dir.is_some_and(sandbox::run_dir_held) {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    false
}

impl KataShim {
    /// The pid of the live shim serving this namespace's sandbox `id` from `bundle`: the one
    /// listening on the address `start` wrote there (or containerd's name for it).
    fn live_shim(&self, bundle: &Path) -> Option<i32> {
        let written = std::fs::read_to_string(bundle.join("address")).ok().map(|a| a.trim().to_owned());
        let derived = containerd_shim::socket_address(&self.address, &self.namespace, &self.id);
        written.into_iter().chain([derived]).find_map(|a| serving_pid(&a))
    }
}

/// The shim's tokio workers, whatever the host's CPU count.
pub const WORKER_THREADS: usize = 2;
/// The most blocking threads it runs at once.
pub const MAX_BLOCKING_THREADS: usize = 64;

impl std::fmt::Debug for KataShim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KataShim").field("namespace", &self.namespace).field("id", &self.id).finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl Shim for KataShim {
    type T = KataTask;

    async fn new(_runtime_id: &str, args: &Flags, config: &mut ShimConfig) -> Self {
        // tokio reaps QEMU itself; the crate's reaper would steal its exit status.
        config.no_reaper = true;
        KataShim {
            exit: Arc::new(ExitSignal::default()),
            namespace: args.namespace.clone(),
            id: args.id.clone(),
            socket: args.socket.clone(),
            address: args.address.clone(),
        }
    }

    /// Never reached: the binary serves `start` itself, before the library's bootstrap, for
    /// every containerd it supports (`crate::spawn`).
    async fn start_shim(&mut self, _opts: StartOpts) -> containerd_shim::Result<String> {
        Err(containerd_shim::Error::Other("start is served by the binary's own bootstrap".into()))
    }

    async fn delete_shim(&mut self) -> containerd_shim::Result<containerd_shim::api::DeleteResponse> {
        // Run by containerd in the bundle after the shim is gone (e.g. killed): remove what the
        // persisted state records, and what is tagged as the sandbox's when there is no state
        // (a crash before the first record) or it cannot be read.
        let log = crate::logging::stderr_logger();
        let bundle = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
        let stopped = containerd_shim::api::DeleteResponse {
            exit_status: 137,
            exited_at: MessageField::some(now()),
            ..Default::default()
        };
        // containerd runs `delete` whenever a container's connection to its shim closes (after a
        // normal Delete too: runtime/v2's cleanupAfterDeadShim), and for CRI's app containers
        // that is a bundle of a live pod's. An app container owns nothing of the sandbox's: the
        // sandbox's shim removes its mounts at Delete, and if that shim died, the sandbox's own
        // `delete` removes everything of the VM. So nothing of the pod is touched here.
        let spec = oci_spec::runtime::Spec::load(bundle.join("config.json")).ok();
        if let Some(sandbox) = spec.and_then(|s| sandbox_of(s.annotations().as_ref())).filter(|s| s != &self.id) {
            slog::info!(log, "delete of an app container: nothing of its sandbox is touched";
                "container_id" => &self.id, "sandbox_id" => sandbox);
            return Ok(stopped);
        }
        // The configuration `start` was given in the runtime options, else the usual one.
        let file = crate::spawn::recorded_config(&bundle).or_else(netmgmt::paths::config_file);
        let config = Config::load_file(file).ok().map(|(c, _)| c);
        let run_root = config.as_ref().map(|c| c.runtime.run_dir.clone());
        let state = match SandboxState::load(&bundle) {
            Ok(Some(state)) => Some(state),
            Ok(None) => tagged_state(&self.id, &bundle, run_root.as_deref()),
            Err(e) => {
                slog::error!(log, "the sandbox state cannot be read: removing what is tagged as the sandbox's";
                    "sandbox_id" => &self.id, "error" => crate::error::message(&e));
                tagged_state(&self.id, &bundle, run_root.as_deref())
            }
        };
        // containerd cleans up a sandbox it holds for dead (after its own restart during the
        // start, say) while that sandbox's shim may live on: the shim serving this bundle's
        // socket is asked to end (SIGTERM: it shuts its sandbox down) and awaited, so that what it
        // leaves is removed here and no shim outlives its sandbox.
        let run_dir = state.as_ref().and_then(|s| s.run_dir.clone());
        let mut state = state;
        if let Some(pid) = self.live_shim(&bundle) {
            slog::warn!(log, "containerd cleans up a sandbox whose shim lives: it is ended first";
                "sandbox_id" => &self.id, "shim_pid" => pid);
            if !end_shim(pid, run_dir.as_deref()).await {
                slog::error!(log, "the live shim did not end in time: its sandbox is left to it";
                    "sandbox_id" => &self.id, "shim_pid" => pid);
            }
            // What the ended shim left (no state: it removed everything).
            state = SandboxState::load(&bundle)
                .ok()
                .flatten()
                .or_else(|| tagged_state(&self.id, &bundle, run_root.as_deref()));
        }
        // A run directory held by a live shim is another sandbox's with the same id (another
        // containerd namespace): nothing of it is ours to remove.
        let held = run_dir.as_deref().is_some_and(sandbox::run_dir_held);
        if held {
            slog::warn!(log, "the run directory is held by a live shim: the same sandbox id runs elsewhere; nothing touched";
                "sandbox_id" => &self.id);
            SandboxState::forget(&bundle);
            return Ok(stopped);
        }
        match state {
            Some(state) => {
                if let Err(e) = state.remove(&log, run_root.as_deref(), &bundle).await {
                    slog::error!(log, "cleanup after the shim incomplete"; "error" => crate::error::message(&e));
                }
            }
            None => SandboxState::forget(&bundle),
        }
        // A killed shim leaves its socket behind: removed once nothing listens there.
        remove_dead_socket(&containerd_shim::socket_address(&self.address, &self.namespace, &self.id));
        Ok(stopped)
    }

    async fn wait(&mut self) {
        self.exit.wait().await;
        // The library removes the socket only through the bundle's `address` file, which
        // containerd may have deleted with the bundle by now: every shim left its socket in
        // /run/containerd/s/. Removed here; the listening socket serves on until the exit.
        if let Some(path) = socket_file(&self.socket) {
            let _ = std::fs::remove_file(path);
        }
    }

    async fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        let log = crate::logging::shim_logger().new(slog::o!("namespace" => self.namespace.clone()));
        let config = Config::load()
            .map(|(c, path)| {
                slog::info!(log, "configuration loaded"; "path" => %path.display());
                if !c.ignored.is_empty() {
                    slog::warn!(log, "the configuration's kata keys this runtime does not implement are ignored";
                        "path" => %path.display(), "keys" => c.ignored.join(", "));
                }
                c
            })
            .map_err(|e| crate::error::message(&e));
        if let Err(e) = &config {
            slog::error!(log, "bad configuration"; "error" => e);
        }
        KataTask::new(config, publisher, &self.namespace, self.exit.clone(), log)
    }
}
