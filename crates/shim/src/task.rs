//! The containerd Task service (task API v2) for the containers of one sandbox (the sandbox
//! container, which owns the VM, and CRI's app containers in the same VM) and their execs. The
//! shim process's own entry points (`start`, `delete`) are in `shim_process.rs`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use containerd_shim::asynchronous::ExitSignal;
use containerd_shim_protos::api::{
    CloseIORequest, ConnectRequest, ConnectResponse, CreateTaskRequest, CreateTaskResponse, DeleteRequest,
    DeleteResponse, Empty, ExecProcessRequest, KillRequest, PidsRequest, PidsResponse, ProcessInfo, ResizePtyRequest,
    ShutdownRequest, StartRequest, StartResponse, StateRequest, StateResponse, StatsRequest, StatsResponse,
    WaitRequest, WaitResponse,
};
use containerd_shim_protos::events::task::{TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskStart};
use containerd_shim_protos::protobuf::{EnumOrUnknown, MessageDyn, MessageField};
use containerd_shim_protos::shim_async::Task;
use containerd_shim_protos::topics;
use tokio::sync::Mutex;
use ttrpc::asynchronous::TtrpcContext;

use crate::config::Config;
use crate::error::Error;
use crate::mgmt_server::MgmtServer;
use crate::sandbox::{self, SandboxState, SpecNetwork};
use crate::shim_process::sandbox_of;
use crate::workload;
use crate::workload::process::{agent_exec_id, follow_process, now, watch_exit, Entries, Entry, Events, Proc};

/// How long a kill waits for the guest's agent to signal a process.
const KILL_AGENT_WAIT: Duration = Duration::from_secs(10);

pub(crate) fn no_task(id: &str) -> ttrpc::Error {
    Error::NotFound(format!("no task {id}")).into()
}

/// The process's standard IO as containerd names it: FIFO paths. containerd's log URIs
/// (`binary://`, `file://`, as `ctr run --log-uri` gives them) are refused, naming the stream.
fn stdio_of(stdin: &str, stdout: &str, stderr: &str, terminal: bool) -> Result<workload::io::Stdio, Error> {
    for (name, p) in [("stdin", stdin), ("stdout", stdout), ("stderr", stderr)] {
        if let Some((scheme, _)) = p.split_once("://") {
            return Err(Error::Spec(format!(
                "process {name}: {scheme}:// log URIs are not supported by this runtime (its output goes to containerd's FIFOs)"
            )));
        }
    }
    Ok(workload::io::Stdio { stdin: stdin.into(), stdout: stdout.into(), stderr: stderr.into(), terminal })
}

/// The Task service of one shim (one sandbox and its containers).
pub struct KataTask {
    entries: Entries,
    /// The configuration, or why it was refused (Create reports it).
    config: Result<Config, String>,
    events: Events,
    exit: Arc<ExitSignal>,
    log: slog::Logger,
}

impl KataTask {
    /// The Task service of the shim serving `namespace`, its configuration loaded (or why not).
    pub(crate) fn new(
        config: Result<Config, String>,
        publisher: containerd_shim::publisher::RemotePublisher,
        namespace: &str,
        exit: Arc<ExitSignal>,
        log: slog::Logger,
    ) -> Self {
        KataTask {
            entries: Arc::new(Mutex::new(HashMap::new())),
            config,
            events: Events { publisher: Arc::new(publisher), namespace: namespace.to_owned() },
            exit,
            log,
        }
    }

    async fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        self.events.publish(topic, event).await;
    }

    async fn pid_of(&self, id: &str) -> ttrpc::Result<u32> {
        let e = self.entries.lock().await;
        Ok(e.get(id).ok_or_else(|| no_task(id))?.pid())
    }

    /// Create the sandbox container: start the sandbox (its VM and network), then its own
    /// container in the VM when containers run there.
    async fn create_sandbox(&self, req: &CreateTaskRequest, spec: oci_spec::runtime::Spec) -> ttrpc::Result<Entry> {
        let config = self.config.as_ref().map_err(|e| Error::BadConfig(e.clone()))?;
        // Checked before anything is made.
        let stdio = stdio_of(&req.stdin, &req.stdout, &req.stderr, req.terminal)?;
        let bundle = PathBuf::from(&req.bundle);
        let net = tokio::task::spawn_blocking(move || SpecNetwork::from_spec(&spec))
            .await
            .map_err(|e| Error::Dns(format!("reading the spec's DNS: {e}")))??;
        let log = self.log.new(slog::o!("sandbox_id" => req.id.clone()));
        slog::info!(log, "creating sandbox"; "netns" => ?net.netns, "bundle" => %bundle.display());
        let sb = Arc::new(sandbox::start(&req.id, &bundle, &net, config, &log).await?);
        let undo = |e: Error| async {
            let _ = sb.vm.stop(Duration::from_secs(1)).await;
            let _ = sb.closing_state().await.teardown(&log, Some(&config.runtime.run_dir)).await;
            SandboxState::forget(&bundle);
            e
        };
        let workload = sb.virtiofsd.is_some();
        if workload {
            if let Err(e) = workload::create_container(&sb, &req.id, &bundle, &req.rootfs).await {
                return Err(undo(e).await.into());
            }
        }
        let mgmt = match MgmtServer::start(sb.clone(), &config.runtime.run_dir).await {
            Ok(m) => m,
            Err(e) => return Err(undo(e).await.into()),
        };
        if config.runtime.follow_netns {
            if let Err(e) = sandbox::follow(&sb) {
                slog::error!(log, "not following the namespace"; "error" => crate::error::message(&e));
            }
        }
        watch_exit(self.entries.clone(), self.events.clone(), req.id.clone(), sb.clone());
        crate::workload::process::watch_oom(self.events.clone(), sb.clone());
        Ok(Entry {
            bundle,
            sandbox: sb,
            owns_sandbox: true,
            mgmt: Some(mgmt),
            workload,
            shared_pidns: false,
            init: Proc::new(stdio, None),
            execs: HashMap::new(),
        })
    }

    /// Create an app container in sandbox `sid`'s VM.
    async fn create_in(&self, req: &CreateTaskRequest, sid: &str) -> ttrpc::Result<Entry> {
        let sb = {
            let e = self.entries.lock().await;
            let s = e
                .get(sid)
                .filter(|s| s.owns_sandbox)
                .ok_or_else(|| Error::NotFound(format!("no sandbox {sid} in this shim")))?;
            if !s.workload {
                return Err(Error::NotSandbox.into());
            }
            s.sandbox.clone()
        };
        let stdio = stdio_of(&req.stdin, &req.stdout, &req.stderr, req.terminal)?;
        let bundle = PathBuf::from(&req.bundle);
        let shared_pidns = workload::create_container(&sb, &req.id, &bundle, &req.rootfs).await?;
        Ok(Entry {
            bundle,
            sandbox: sb,
            owns_sandbox: false,
            mgmt: None,
            workload: true,
            shared_pidns,
            init: Proc::new(stdio, None),
            execs: HashMap::new(),
        })
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
        netmgmt::paths::check_sandbox_id(&req.id).map_err(|_| Error::InvalidId(req.id.clone()))?;
        if self.entries.lock().await.contains_key(&req.id) {
            return Err(Error::AlreadyExists(format!("task {} exists", req.id)).into());
        }
        let bundle = PathBuf::from(&req.bundle);
        let spec = oci_spec::runtime::Spec::load(bundle.join("config.json"))
            .map_err(|source| Error::Bundle { path: bundle.clone(), source })?;
        let entry = match sandbox_of(spec.annotations().as_ref()) {
            Some(sid) => self.create_in(&req, &sid).await?,
            None => self.create_sandbox(&req, spec).await?,
        };
        let pid = entry.pid();
        let (sb, workload, stdio) = (entry.sandbox.clone(), entry.workload, entry.init.stdio.clone());
        self.entries.lock().await.insert(req.id.clone(), entry);
        if workload {
            // Output is copied from now on; the exit is known once the agent says so.
            follow_process(self.entries.clone(), self.events.clone(), sb, req.id.clone(), String::new(), stdio);
        }
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
        let (sb, workload, spec, stdio) = {
            let e = self.entries.lock().await;
            let entry = e.get(&req.id).ok_or_else(|| no_task(&req.id))?;
            let p = entry.proc(&req.exec_id)?;
            if p.started || p.exited().is_some() {
                return Err(Error::AlreadyExists(format!("process {}/{} was started", req.id, req.exec_id)).into());
            }
            (entry.sandbox.clone(), entry.workload, p.spec.clone(), p.stdio.clone())
        };
        if workload && req.exec_id.is_empty() {
            sb.agent.start_container(&req.id).await.map_err(Error::from)?;
        } else if workload {
            let process = spec.ok_or_else(|| Error::Internal("an exec without its process".into()))?;
            let areq = agent_client::protocols::agent::ExecProcessRequest {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                process: MessageField::some(process),
                ..Default::default()
            };
            sb.agent.exec_process(&areq).await.map_err(Error::from)?;
            follow_process(
                self.entries.clone(),
                self.events.clone(),
                sb.clone(),
                req.id.clone(),
                req.exec_id.clone(),
                stdio,
            );
        }
        {
            let mut e = self.entries.lock().await;
            if let Some(entry) = e.get_mut(&req.id) {
                match req.exec_id.as_str() {
                    "" => entry.init.started = true,
                    x => {
                        if let Some(p) = entry.execs.get_mut(x) {
                            p.started = true;
                        }
                    }
                }
            }
        }
        let pid = sb.vm.pid();
        if req.exec_id.is_empty() {
            self.publish(
                topics::TASK_START_EVENT_TOPIC,
                Box::new(TaskStart { container_id: req.id, pid, ..Default::default() }),
            )
            .await;
        } else {
            self.publish(
                topics::TASK_EXEC_STARTED_EVENT_TOPIC,
                Box::new(TaskExecStarted { container_id: req.id, exec_id: req.exec_id, pid, ..Default::default() }),
            )
            .await;
        }
        Ok(StartResponse { pid, ..Default::default() })
    }

    async fn state(&self, _: &TtrpcContext, req: StateRequest) -> ttrpc::Result<StateResponse> {
        let e = self.entries.lock().await;
        let entry = e.get(&req.id).ok_or_else(|| no_task(&req.id))?;
        let p = entry.proc(&req.exec_id)?;
        let exit = p.exited();
        Ok(StateResponse {
            id: req.id.clone(),
            exec_id: req.exec_id.clone(),
            bundle: entry.bundle.display().to_string(),
            pid: entry.pid(),
            status: EnumOrUnknown::new(p.status()),
            stdin: p.stdio.stdin.clone(),
            stdout: p.stdio.stdout.clone(),
            stderr: p.stdio.stderr.clone(),
            terminal: p.stdio.terminal,
            exit_status: exit.as_ref().map(|(c, _)| *c).unwrap_or(0),
            exited_at: exit.map(|(_, t)| t).into(),
            ..Default::default()
        })
    }

    async fn wait(&self, _: &TtrpcContext, req: WaitRequest) -> ttrpc::Result<WaitResponse> {
        let mut rx = {
            let e = self.entries.lock().await;
            let entry = e.get(&req.id).ok_or_else(|| no_task(&req.id))?;
            entry.proc(&req.exec_id)?.exit.subscribe()
        };
        let got = rx.wait_for(|e| e.is_some()).await.map(|e| e.clone());
        let (code, at) = got.ok().flatten().ok_or_else(|| no_task(&req.id))?;
        Ok(WaitResponse { exit_status: code, exited_at: MessageField::some(at), ..Default::default() })
    }

    async fn kill(&self, _: &TtrpcContext, req: KillRequest) -> ttrpc::Result<Empty> {
        let (sb, workload, pod_init, all) = {
            let e = self.entries.lock().await;
            let entry = e.get(&req.id).ok_or_else(|| no_task(&req.id))?;
            // An exited process has nothing left to signal; with `all`, neither has its
            // container (kata's agent forgets a reaped init and refuses the call).
            let p = entry.proc(&req.exec_id)?;
            if p.exited().is_some() {
                return Ok(Empty::new());
            }
            // A SIGKILL of the init of a container in the pod's PID namespace ends all its
            // processes, as runc's shim kills them all when such an init ends: there the init is
            // no PID 1, and a child left behind (holding the output) would keep the container up.
            let all = req.all || (entry.shared_pidns && req.exec_id.is_empty() && req.signal == 9);
            (entry.sandbox.clone(), entry.workload, entry.owns_sandbox && req.exec_id.is_empty(), all)
        };
        if workload {
            let eid = if all { "" } else { agent_exec_id(&req.id, &req.exec_id) };
            // Remembered before it is sent: the agents give a killed process's status as the
            // signal's number, which becomes runc's 128+N only for a signal the runtime sent.
            {
                let e = self.entries.lock().await;
                if let Some(entry) = e.get(&req.id) {
                    let procs: Vec<&Proc> = match all {
                        true => std::iter::once(&entry.init).chain(entry.execs.values()).collect(),
                        false => entry.proc(&req.exec_id).into_iter().collect(),
                    };
                    for p in procs {
                        p.sent(req.signal);
                    }
                    // kata's agent turns a SIGTERM to an init with no handler for it into a SIGKILL.
                    if req.signal == 15 && req.exec_id.is_empty() {
                        entry.init.sent(9);
                    }
                }
            }
            let signalled = tokio::time::timeout(KILL_AGENT_WAIT, sb.agent.signal_process(&req.id, eid, req.signal));
            match (signalled.await, pod_init) {
                (Ok(r), _) => r.map_err(Error::from)?,
                (Err(_), false) => {
                    let what = format!("the guest's agent to signal {} ({} s)", req.id, KILL_AGENT_WAIT.as_secs());
                    return Err(Error::from(hypervisor::Error::Timeout(what)).into());
                }
                // The pod must always be stoppable: a wedged agent cannot hold its init, so the
                // VM ends, and with it every process of the pod (TaskExit 137, by QEMU's watcher).
                (Err(_), true) => {
                    slog::warn!(self.log, "the agent did not answer a kill of the sandbox's init: stopping the VM";
                        "sandbox_id" => &req.id, "waited_s" => KILL_AGENT_WAIT.as_secs());
                    let _ = sb.vm.stop(Duration::from_millis(0)).await;
                }
            }
            return Ok(Empty::new());
        }
        // No workload: the sandbox's task is the VM.
        let grace = if req.signal == 9 { Duration::from_millis(0) } else { Duration::from_secs(5) };
        let _ = sb.vm.stop(grace).await;
        let recorded = {
            let e = self.entries.lock().await;
            e.get(&req.id).is_some_and(|entry| entry.init.record_exit(128 + req.signal))
        };
        if recorded {
            self.events.exit(&req.id, "", sb.vm.pid(), 128 + req.signal).await;
        }
        Ok(Empty::new())
    }

    async fn exec(&self, _: &TtrpcContext, req: ExecProcessRequest) -> ttrpc::Result<Empty> {
        netmgmt::paths::check_sandbox_id(&req.exec_id).map_err(|_| Error::InvalidId(req.exec_id.clone()))?;
        if req.exec_id == req.id {
            return Err(Error::Spec(format!(
                "exec id {:?}: is the container's own id (it would alias its init)",
                req.exec_id
            ))
            .into());
        }
        let process = workload::spec::process(&workload::spec::parse_process(&req.spec.value)?)?;
        {
            let mut e = self.entries.lock().await;
            let entry = e.get_mut(&req.id).ok_or_else(|| no_task(&req.id))?;
            if !entry.workload {
                return Err(Error::NotSandbox.into());
            }
            if entry.execs.contains_key(&req.exec_id) {
                return Err(Error::AlreadyExists(format!("exec {} exists", req.exec_id)).into());
            }
            let stdio = stdio_of(&req.stdin, &req.stdout, &req.stderr, req.terminal)?;
            entry.execs.insert(req.exec_id.clone(), Proc::new(stdio, Some(process)));
        }
        self.publish(
            topics::TASK_EXEC_ADDED_EVENT_TOPIC,
            Box::new(TaskExecAdded { container_id: req.id, exec_id: req.exec_id, ..Default::default() }),
        )
        .await;
        Ok(Empty::new())
    }

    async fn resize_pty(&self, _: &TtrpcContext, req: ResizePtyRequest) -> ttrpc::Result<Empty> {
        let sb = {
            let e = self.entries.lock().await;
            let entry = e.get(&req.id).ok_or_else(|| no_task(&req.id))?;
            entry.proc(&req.exec_id)?;
            entry.sandbox.clone()
        };
        let eid = agent_exec_id(&req.id, &req.exec_id);
        sb.agent.tty_win_resize(&req.id, eid, req.height, req.width).await.map_err(Error::from)?;
        Ok(Empty::new())
    }

    /// The stdin copy closes the process's stdin when containerd's FIFO ends, which comes with
    /// this call.
    async fn close_io(&self, _: &TtrpcContext, req: CloseIORequest) -> ttrpc::Result<Empty> {
        let e = self.entries.lock().await;
        e.get(&req.id).ok_or_else(|| no_task(&req.id))?.proc(&req.exec_id)?;
        Ok(Empty::new())
    }

    async fn delete(&self, _: &TtrpcContext, req: DeleteRequest) -> ttrpc::Result<DeleteResponse> {
        if !req.exec_id.is_empty() {
            // A running exec deleted (containerd's DeleteProcess) is ended first, its exit
            // awaited (bounded): left running it would live on in the VM, unmanaged.
            let running = {
                let e = self.entries.lock().await;
                let entry = e.get(&req.id).ok_or_else(|| no_task(&req.id))?;
                let p = entry.proc(&req.exec_id)?;
                let running = p.started && p.exited().is_none();
                if running {
                    p.sent(9);
                }
                running.then(|| (entry.sandbox.clone(), p.exit.subscribe()))
            };
            if let Some((sb, mut exit)) = running {
                slog::info!(self.log, "a running exec is deleted: it is killed first";
                    "container_id" => &req.id, "exec_id" => &req.exec_id);
                let _ = tokio::time::timeout(KILL_AGENT_WAIT, sb.agent.signal_process(&req.id, &req.exec_id, 9)).await;
                let _ = tokio::time::timeout(KILL_AGENT_WAIT, exit.wait_for(|e| e.is_some())).await;
            }
            let p = {
                let mut e = self.entries.lock().await;
                let entry = e.get_mut(&req.id).ok_or_else(|| no_task(&req.id))?;
                entry.proc(&req.exec_id)?;
                (entry.pid(), entry.execs.remove(&req.exec_id))
            };
            let (code, at) = p.1.and_then(|p| p.exited()).unwrap_or((0, now()));
            return Ok(DeleteResponse {
                pid: p.0,
                exit_status: code,
                exited_at: MessageField::some(at),
                ..Default::default()
            });
        }
        let entry = {
            let mut e = self.entries.lock().await;
            let entry = e.get(&req.id).ok_or_else(|| no_task(&req.id))?;
            if entry.owns_sandbox && e.values().any(|o| !o.owns_sandbox && Arc::ptr_eq(&o.sandbox, &entry.sandbox)) {
                return Err(Error::AlreadyExists(format!("sandbox {} still has containers", req.id)).into());
            }
            e.remove(&req.id).ok_or_else(|| no_task(&req.id))?
        };
        let pid = entry.pid();
        let sb = entry.sandbox.clone();
        // Every step of a removal is tried, whatever the one before it gave; a shim killed
        // between two leaves the rest to containerd's `delete` (failpoints `remove:*`).
        let step = |name: &str| {
            if let Err(e) = crate::failpoint::hit(name) {
                slog::warn!(self.log, "a removal step failed; the removal goes on"; "container_id" => &req.id,
                    "error" => e.to_string());
            }
        };
        if entry.workload && sb.vm.exit_status().is_none() {
            if let Err(e) = workload::remove_container(&sb, &req.id).await {
                slog::warn!(self.log, "removing the container from the VM"; "container_id" => &req.id,
                    "error" => crate::error::message(&e));
            }
        }
        step("remove:container");
        if entry.owns_sandbox {
            if let Some(m) = entry.mgmt {
                m.stop().await;
            }
            let _ = sb.vm.stop(Duration::from_secs(5)).await;
            step("remove:vm-stopped");
            let run_root = self.config.as_ref().ok().map(|c| c.runtime.run_dir.as_path());
            sb.closing_state().await.teardown(&self.log, run_root).await?;
            step("remove:torn-down");
            SandboxState::forget(&entry.bundle);
        } else if let Some(d) = &sb.run_dir {
            // Unshared even when the VM is gone.
            let _ = sandbox::sharedfs::unshare_container(d, &req.id);
        }
        let (code, at) = entry.init.exited().unwrap_or((0, now()));
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
        let (sb, workload) = {
            let e = self.entries.lock().await;
            let entry = e.get(&req.id).ok_or_else(|| no_task(&req.id))?;
            (entry.sandbox.clone(), entry.workload)
        };
        // The container's CPU, memory and pids, from its cgroup in the guest (what kubelet's
        // ContainerStats shows); a guest that cannot say leaves them out.
        let cgroup = match workload {
            true => match sb.agent.stats_container(&req.id).await {
                Ok(r) => r.cgroup_stats.into_option(),
                Err(e) => {
                    slog::warn!(self.log, "the guest gave no container stats"; "container_id" => &req.id,
                        "error" => crate::error::message(&Error::from(e)));
                    None
                }
            },
            false => None,
        };
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
        let mut metrics = Metrics { network, ..Default::default() };
        if let Some(c) = cgroup {
            workload::stats::metrics_from_guest(&mut metrics, &c);
        }
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
