//! The containerd Task service (task API v2) for the sandbox container, and the shim's `start`
//! and `delete` entry points.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use containerd_shim::asynchronous::{spawn, ExitSignal, Shim};
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{Config as ShimConfig, Flags, StartOpts};
use containerd_shim_protos::api::{
    ConnectRequest, ConnectResponse, CreateTaskRequest, CreateTaskResponse, DeleteRequest, DeleteResponse, Empty,
    KillRequest, PidsRequest, PidsResponse, ProcessInfo, ShutdownRequest, StartRequest, StartResponse, StateRequest,
    StateResponse, StatsRequest, StatsResponse, Status, WaitRequest, WaitResponse,
};
use containerd_shim_protos::events::task::{TaskCreate, TaskDelete, TaskExit, TaskStart};
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::{EnumOrUnknown, MessageDyn, MessageField};
use containerd_shim_protos::shim_async::Task;
use containerd_shim_protos::topics;
use tokio::sync::Mutex;
use ttrpc::asynchronous::TtrpcContext;

use crate::config::Config;
use crate::error::Error;
use crate::mgmt_server::MgmtServer;
use crate::sandbox::{self, SandboxState, SpecNetwork};

pub const RUNTIME_ID: &str = "io.containerd.kata.v2";

fn now() -> Timestamp {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    Timestamp { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32, ..Default::default() }
}

fn no_task(id: &str) -> ttrpc::Error {
    Error::NotFound(format!("no task {id}")).into()
}

#[derive(Debug)]
struct Entry {
    bundle: PathBuf,
    sandbox: Option<Arc<sandbox::Sandbox>>,
    mgmt: Option<MgmtServer>,
    started: bool,
    exit: Option<(u32, Timestamp)>,
}

/// Publishes the Task service's events to containerd.
#[derive(Clone)]
struct Events {
    publisher: Arc<RemotePublisher>,
    namespace: String,
}

impl Events {
    async fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        let _ = self.publisher.publish(ttrpc::context::Context::default(), topic, &self.namespace, event).await;
    }
}

/// The exit code containerd gets for QEMU's exit status (`signal: 9 ...` → 137).
/// The exit code of a status that says nothing (as runc's shim reports it).
const UNKNOWN_EXIT: u32 = 255;

fn exit_code(status: &str) -> u32 {
    let number = |prefix: &str| {
        status.strip_prefix(prefix).and_then(|r| r.split_whitespace().next()).and_then(|n| n.parse::<u32>().ok())
    };
    match (number("signal: "), number("exit status: ")) {
        (Some(sig), _) => 128 + sig,
        (None, Some(code)) => code,
        (None, None) => UNKNOWN_EXIT,
    }
}

/// When QEMU exits on its own (crashed, killed from outside), the task has exited: record it
/// (Wait and State see it) and tell containerd with TaskExit, once. A Kill records its exit
/// first, so this then stays quiet.
///
/// The shim library reaps every child on SIGCHLD (`waitpid(-1)`) and reports it to its monitor;
/// when it reaps QEMU first, QEMU's own waiter gets no status (ECHILD), so the monitor's report
/// for QEMU's pid is what counts then.
fn watch_exit(entries: Arc<Mutex<HashMap<String, Entry>>>, events: Events, id: String, sb: Arc<sandbox::Sandbox>) {
    tokio::spawn(async move {
        use containerd_shim::monitor::{Subject, Topic};
        let pid = sb.vm.pid();
        let mut reaped = containerd_shim::asynchronous::monitor::monitor_subscribe(Topic::Pid).await.ok();
        let status = sb.vm.wait().await;
        let mut code = exit_code(&status);
        if let (UNKNOWN_EXIT, Some(sub)) = (code, reaped.as_mut()) {
            let by_monitor = async {
                while let Some(ev) = sub.rx.recv().await {
                    if matches!(ev.subject, Subject::Pid(p) if p as u32 == pid) {
                        return Some(ev.exit_code as u32);
                    }
                }
                None
            };
            if let Ok(Some(c)) = tokio::time::timeout(Duration::from_secs(2), by_monitor).await {
                code = c;
            }
        }
        if let Some(sub) = reaped {
            let _ = containerd_shim::asynchronous::monitor::monitor_unsubscribe(sub.id).await;
        }
        let code = {
            let mut e = entries.lock().await;
            let Some(entry) = e.get_mut(&id) else { return };
            if entry.exit.is_some() {
                return;
            }
            entry.exit = Some((code, now()));
            code
        };
        slog::warn!(sb.log, "QEMU exited on its own"; "sandbox_id" => &id, "status" => &status);
        let exit = TaskExit {
            container_id: id.clone(),
            id,
            pid,
            exit_status: code,
            exited_at: MessageField::some(now()),
            ..Default::default()
        };
        events.publish(topics::TASK_EXIT_EVENT_TOPIC, Box::new(exit)).await;
    });
}

/// What a sandbox may have made, found by its tags rather than a state file: the run directory
/// `<run_root>/<id>` (and any QEMU whose command line names it), the runtime's link group in the
/// spec's namespace, the shim's own namespace `kata-net-<id>`. `None` for an id that is no
/// valid sandbox id.
fn tagged_state(id: &str, bundle: &Path, run_root: Option<&Path>) -> Option<SandboxState> {
    netmgmt::paths::check_sandbox_id(id).ok()?;
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

/// The Task service of one shim (one sandbox).
pub struct KataTask {
    entries: Arc<Mutex<HashMap<String, Entry>>>,
    /// The configuration, or why it was refused (Create reports it).
    config: Result<Config, String>,
    events: Events,
    exit: Arc<ExitSignal>,
    log: slog::Logger,
}

impl KataTask {
    async fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        self.events.publish(topic, event).await;
    }

    async fn pid_of(&self, id: &str) -> ttrpc::Result<u32> {
        let e = self.entries.lock().await;
        let entry = e.get(id).ok_or_else(|| no_task(id))?;
        Ok(entry.sandbox.as_ref().map(|s| s.vm.pid()).unwrap_or(0))
    }
}

impl std::fmt::Debug for KataTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KataTask").field("namespace", &self.events.namespace).finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl Task for KataTask {
    async fn create(&self, _: &TtrpcContext, req: CreateTaskRequest) -> ttrpc::Result<CreateTaskResponse> {
        let config = self.config.as_ref().map_err(|e| Error::BadConfig(e.clone()))?;
        netmgmt::paths::check_sandbox_id(&req.id).map_err(|_| Error::InvalidId(req.id.clone()))?;
        let bundle = PathBuf::from(&req.bundle);
        let spec = oci_spec::runtime::Spec::load(bundle.join("config.json"))
            .map_err(|source| Error::Bundle { path: bundle.clone(), source })?;
        let kind = spec.annotations().as_ref().and_then(|a| a.get("io.kubernetes.cri.container-type")).cloned();
        if kind.as_deref().is_some_and(|k| k != "sandbox") {
            return Err(Error::NotSandbox.into());
        }
        let net = tokio::task::spawn_blocking(move || SpecNetwork::from_spec(&spec))
            .await
            .map_err(|e| Error::Dns(format!("reading the spec's DNS: {e}")))??;
        let log = self.log.new(slog::o!("sandbox_id" => req.id.clone()));
        slog::info!(log, "creating sandbox"; "netns" => ?net.netns, "bundle" => %bundle.display());
        let sb = Arc::new(sandbox::start(&req.id, &bundle, &net, config, &log).await?);
        let mgmt = match MgmtServer::start(sb.clone(), &config.runtime.run_dir).await {
            Ok(m) => m,
            Err(e) => {
                let _ = sb.vm.stop(Duration::from_secs(1)).await;
                let _ = sb.state().await.teardown(&log, Some(&config.runtime.run_dir)).await;
                SandboxState::forget(&bundle);
                return Err(e.into());
            }
        };
        let pid = sb.vm.pid();
        self.entries.lock().await.insert(
            req.id.clone(),
            Entry { bundle: bundle.clone(), sandbox: Some(sb.clone()), mgmt: Some(mgmt), started: false, exit: None },
        );
        if config.runtime.follow_netns {
            if let Err(e) = sandbox::follow(&sb) {
                slog::error!(log, "not following the namespace"; "error" => crate::error::message(&e));
            }
        }
        watch_exit(self.entries.clone(), self.events.clone(), req.id.clone(), sb);
        self.publish(
            topics::TASK_CREATE_EVENT_TOPIC,
            Box::new(TaskCreate {
                container_id: req.id.clone(),
                bundle: req.bundle.clone(),
                pid,
                ..Default::default()
            }),
        )
        .await;
        Ok(CreateTaskResponse { pid, ..Default::default() })
    }

    async fn start(&self, _: &TtrpcContext, req: StartRequest) -> ttrpc::Result<StartResponse> {
        let pid = {
            let mut e = self.entries.lock().await;
            let entry = e.get_mut(&req.id).ok_or_else(|| no_task(&req.id))?;
            entry.started = true;
            entry.sandbox.as_ref().map(|s| s.vm.pid()).unwrap_or(0)
        };
        self.publish(
            topics::TASK_START_EVENT_TOPIC,
            Box::new(TaskStart { container_id: req.id, pid, ..Default::default() }),
        )
        .await;
        Ok(StartResponse { pid, ..Default::default() })
    }

    async fn state(&self, _: &TtrpcContext, req: StateRequest) -> ttrpc::Result<StateResponse> {
        let e = self.entries.lock().await;
        let entry = e.get(&req.id).ok_or_else(|| no_task(&req.id))?;
        let running = entry.sandbox.as_ref().is_some_and(|s| s.vm.exit_status().is_none());
        let st = match (&entry.exit, entry.started, running) {
            (Some(_), _, _) | (None, true, false) => Status::STOPPED,
            (None, true, true) => Status::RUNNING,
            (None, false, _) => Status::CREATED,
        };
        Ok(StateResponse {
            id: req.id.clone(),
            bundle: entry.bundle.display().to_string(),
            pid: entry.sandbox.as_ref().map(|s| s.vm.pid()).unwrap_or(0),
            status: EnumOrUnknown::new(st),
            exit_status: entry.exit.as_ref().map(|(c, _)| *c).unwrap_or(0),
            exited_at: entry.exit.as_ref().map(|(_, t)| t.clone()).into(),
            ..Default::default()
        })
    }

    async fn wait(&self, _: &TtrpcContext, req: WaitRequest) -> ttrpc::Result<WaitResponse> {
        loop {
            {
                let mut e = self.entries.lock().await;
                let entry = e.get_mut(&req.id).ok_or_else(|| no_task(&req.id))?;
                if entry.exit.is_none() {
                    if let Some(st) = entry.sandbox.as_ref().and_then(|s| s.vm.exit_status()) {
                        entry.exit = Some((exit_code(&st), now()));
                    }
                }
                if let Some((code, at)) = &entry.exit {
                    return Ok(WaitResponse {
                        exit_status: *code,
                        exited_at: MessageField::some(at.clone()),
                        ..Default::default()
                    });
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn kill(&self, _: &TtrpcContext, req: KillRequest) -> ttrpc::Result<Empty> {
        let (pid, code) = {
            let mut e = self.entries.lock().await;
            let entry = e.get_mut(&req.id).ok_or_else(|| no_task(&req.id))?;
            let Some(sb) = entry.sandbox.as_ref() else { return Ok(Empty::new()) };
            let grace = if req.signal == 9 { Duration::from_millis(0) } else { Duration::from_secs(5) };
            let _ = sb.vm.stop(grace).await;
            let code = 128 + req.signal;
            if entry.exit.is_none() {
                entry.exit = Some((code, now()));
            }
            (sb.vm.pid(), entry.exit.as_ref().map(|(c, _)| *c).unwrap_or(code))
        };
        self.publish(
            topics::TASK_EXIT_EVENT_TOPIC,
            Box::new(TaskExit {
                container_id: req.id.clone(),
                id: req.id,
                pid,
                exit_status: code,
                exited_at: MessageField::some(now()),
                ..Default::default()
            }),
        )
        .await;
        Ok(Empty::new())
    }

    async fn delete(&self, _: &TtrpcContext, req: DeleteRequest) -> ttrpc::Result<DeleteResponse> {
        let entry = self.entries.lock().await.remove(&req.id);
        let entry = entry.ok_or_else(|| no_task(&req.id))?;
        let pid = entry.sandbox.as_ref().map(|s| s.vm.pid()).unwrap_or(0);
        if let Some(m) = entry.mgmt {
            m.stop().await;
        }
        if let Some(sb) = entry.sandbox {
            let _ = sb.vm.stop(Duration::from_secs(5)).await;
            let run_root = self.config.as_ref().ok().map(|c| c.runtime.run_dir.as_path());
            sb.state().await.teardown(&self.log, run_root).await?;
            SandboxState::forget(&entry.bundle);
        }
        let (code, at) = entry.exit.unwrap_or((0, now()));
        self.publish(
            topics::TASK_DELETE_EVENT_TOPIC,
            Box::new(TaskDelete {
                container_id: req.id.clone(),
                id: req.id,
                pid,
                exit_status: code,
                exited_at: MessageField::some(at.clone()),
                ..Default::default()
            }),
        )
        .await;
        Ok(DeleteResponse { pid, exit_status: code, exited_at: MessageField::some(at), ..Default::default() })
    }

    async fn pids(&self, _: &TtrpcContext, req: PidsRequest) -> ttrpc::Result<PidsResponse> {
        let pid = self.pid_of(&req.id).await?;
        Ok(PidsResponse { processes: vec![ProcessInfo { pid, ..Default::default() }], ..Default::default() })
    }

    /// The sandbox's NICs as cgroups v1 metrics' `network` (what `ctr task metrics` shows), from
    /// the pod's point of view, counted on the host devices (numbers the guest cannot forge).
    async fn stats(&self, _: &TtrpcContext, req: StatsRequest) -> ttrpc::Result<StatsResponse> {
        use containerd_shim_protos::cgroups::metrics::{Metrics, NetworkStat};
        use containerd_shim_protos::protobuf::Message;
        let sb = {
            let e = self.entries.lock().await;
            e.get(&req.id).ok_or_else(|| no_task(&req.id))?.sandbox.clone()
        };
        let sb = sb.ok_or_else(|| no_task(&req.id))?;
        let nics = sb.nic_stats().await?;
        let network = nics
            .iter()
            .map(|n| {
                let h = n.host.clone().unwrap_or_default();
                // A TAP's receive side is what the VM sent; a macvtap's is what it delivers to the VM.
                let (to_vm, from_vm) = match n.kind.as_str() {
                    "macvtap" => (
                        (h.rx_bytes, h.rx_packets, h.rx_errors, h.rx_dropped),
                        (h.tx_bytes, h.tx_packets, h.tx_errors, h.tx_dropped),
                    ),
                    _ => (
                        (h.tx_bytes, h.tx_packets, h.tx_errors, h.tx_dropped),
                        (h.rx_bytes, h.rx_packets, h.rx_errors, h.rx_dropped),
                    ),
                };
                NetworkStat {
                    name: n.name.clone(),
                    rx_bytes: to_vm.0,
                    rx_packets: to_vm.1,
                    rx_errors: to_vm.2,
                    rx_dropped: to_vm.3,
                    tx_bytes: from_vm.0,
                    tx_packets: from_vm.1,
                    tx_errors: from_vm.2,
                    tx_dropped: from_vm.3,
                    ..Default::default()
                }
            })
            .collect();
        let metrics = Metrics { network, ..Default::default() };
        let value = metrics.write_to_bytes().map_err(|e| Error::Internal(format!("encoding metrics: {e}")))?;
        let any = containerd_shim_protos::protobuf::well_known_types::any::Any {
            type_url: "io.containerd.cgroups.v1.Metrics".into(),
            value,
            ..Default::default()
        };
        Ok(StatsResponse { stats: MessageField::some(any), ..Default::default() })
    }

    async fn connect(&self, _: &TtrpcContext, req: ConnectRequest) -> ttrpc::Result<ConnectResponse> {
        let pid = self.pid_of(&req.id).await.unwrap_or(0);
        Ok(ConnectResponse { shim_pid: std::process::id(), task_pid: pid, ..Default::default() })
    }

    async fn shutdown(&self, _: &TtrpcContext, _: ShutdownRequest) -> ttrpc::Result<Empty> {
        if self.entries.lock().await.is_empty() {
            self.exit.signal();
        }
        Ok(Empty::new())
    }
}

/// The shim process.
pub struct KataShim {
    exit: Arc<ExitSignal>,
    namespace: String,
    id: String,
}

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
        KataShim { exit: Arc::new(ExitSignal::default()), namespace: args.namespace.clone(), id: args.id.clone() }
    }

    async fn start_shim(&mut self, opts: StartOpts) -> containerd_shim::Result<String> {
        // A bad configuration is reported by Create, as INVALID_ARGUMENT naming the key.
        let grouping = opts.id.clone();
        let address = spawn(opts, &grouping, Vec::new()).await?;
        Ok(address)
    }

    async fn delete_shim(&mut self) -> containerd_shim::Result<containerd_shim::api::DeleteResponse> {
        // Run by containerd in the bundle after the shim is gone (e.g. killed): remove what the
        // persisted state records, and what is tagged as the sandbox's when there is no state
        // (a crash before the first record) or it cannot be read.
        let log = crate::logging::stderr_logger();
        let bundle = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
        let config = Config::load().ok().map(|(c, _)| c);
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
        if let Some(state) = state {
            if let Err(e) = state.teardown(&log, run_root.as_deref()).await {
                slog::error!(log, "cleanup after the shim incomplete"; "error" => crate::error::message(&e));
            }
        }
        SandboxState::forget(&bundle);
        Ok(containerd_shim::api::DeleteResponse {
            exit_status: 137,
            exited_at: MessageField::some(now()),
            ..Default::default()
        })
    }

    async fn wait(&mut self) {
        self.exit.wait().await;
    }

    async fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        let log = crate::logging::shim_logger().new(slog::o!("namespace" => self.namespace.clone()));
        let config = Config::load()
            .map(|(c, path)| {
                slog::info!(log, "configuration loaded"; "path" => %path.display());
                c
            })
            .map_err(|e| crate::error::message(&e));
        if let Err(e) = &config {
            slog::error!(log, "bad configuration"; "error" => e);
        }
        KataTask {
            entries: Arc::new(Mutex::new(HashMap::new())),
            config,
            events: Events { publisher: Arc::new(publisher), namespace: self.namespace.clone() },
            exit: self.exit.clone(),
            log,
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn exit_codes_as_containerd_expects_them() {
        assert_eq!(super::exit_code("signal: 9 (SIGKILL)"), 137);
        assert_eq!(super::exit_code("exit status: 1"), 1);
        assert_eq!(super::exit_code("exit status: 0"), 0);
        assert_eq!(super::exit_code("unknown"), 255);
    }
}
