//! containerd's Task service (task API v2) as glue: each call's request taken apart, checked,
//! handed to the container table (`containers`), and its answer put in the response. The shim
//! process's own entry points (`start`, `delete`) are in `shim_process.rs`.

use std::path::PathBuf;
use std::sync::Arc;

use containerd_shim::asynchronous::ExitSignal;
use containerd_shim_protos::api::{
    CloseIORequest, ConnectRequest, ConnectResponse, CreateTaskRequest, CreateTaskResponse, DeleteRequest,
    DeleteResponse, Empty, ExecProcessRequest, KillRequest, PidsRequest, PidsResponse, ProcessInfo, ResizePtyRequest,
    ShutdownRequest, StartRequest, StartResponse, StateRequest, StateResponse, StatsRequest, StatsResponse,
    WaitRequest, WaitResponse,
};
use containerd_shim_protos::protobuf::{EnumOrUnknown, Message, MessageField};
use containerd_shim_protos::shim_async::Task;
use network::SandboxId;
use ttrpc::asynchronous::TtrpcContext;

use crate::config::Config;
use crate::containers::process::Events;
use crate::containers::{Containers, NewContainer};
use crate::error::Error;
use crate::workload::io::Stdio;

/// The Task service of one shim (one sandbox and its containers).
pub struct KataTask {
    containers: Arc<Containers>,
    exit: Arc<ExitSignal>,
}

impl std::fmt::Debug for KataTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KataTask").field("containers", &self.containers).finish_non_exhaustive()
    }
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
        let events = Events { publisher: Arc::new(publisher), namespace: namespace.to_owned() };
        let containers = Arc::new(Containers::new(config, events, log.clone()));
        crate::lifecycle::watch(containers.clone(), exit.clone(), log);
        KataTask { containers, exit }
    }
}

fn id(s: &str) -> Result<SandboxId, Error> {
    Ok(SandboxId::parse(s)?)
}

#[async_trait::async_trait]
impl Task for KataTask {
    async fn create(&self, _: &TtrpcContext, req: CreateTaskRequest) -> ttrpc::Result<CreateTaskResponse> {
        let c = NewContainer {
            id: id(&req.id)?,
            bundle: PathBuf::from(&req.bundle),
            // Checked before anything is made.
            stdio: Stdio::of_fifos(&req.stdin, &req.stdout, &req.stderr, req.terminal)?,
            rootfs: req.rootfs,
        };
        let pid = self.containers.create(c).await?;
        Ok(CreateTaskResponse { pid, ..Default::default() })
    }

    async fn start(&self, _: &TtrpcContext, req: StartRequest) -> ttrpc::Result<StartResponse> {
        let pid = self.containers.start(&req.id, &req.exec_id).await?;
        Ok(StartResponse { pid, ..Default::default() })
    }

    async fn state(&self, _: &TtrpcContext, req: StateRequest) -> ttrpc::Result<StateResponse> {
        let s = self.containers.state(&req.id, &req.exec_id).await?;
        Ok(StateResponse {
            bundle: s.bundle.display().to_string(),
            pid: s.pid,
            status: EnumOrUnknown::new(s.status),
            stdin: s.stdio.stdin,
            stdout: s.stdio.stdout,
            stderr: s.stdio.stderr,
            terminal: s.stdio.terminal,
            exit_status: s.exit.as_ref().map(|(c, _)| *c).unwrap_or(0),
            exited_at: s.exit.map(|(_, t)| t).into(),
            id: req.id,
            exec_id: req.exec_id,
            ..Default::default()
        })
    }

    async fn wait(&self, _: &TtrpcContext, req: WaitRequest) -> ttrpc::Result<WaitResponse> {
        let (code, at) = self.containers.wait(&req.id, &req.exec_id).await?;
        Ok(WaitResponse { exit_status: code, exited_at: MessageField::some(at), ..Default::default() })
    }

    async fn kill(&self, _: &TtrpcContext, req: KillRequest) -> ttrpc::Result<Empty> {
        self.containers.kill(&req.id, &req.exec_id, req.signal, req.all).await?;
        Ok(Empty::new())
    }

    async fn exec(&self, _: &TtrpcContext, req: ExecProcessRequest) -> ttrpc::Result<Empty> {
        let exec_id = id(&req.exec_id)?;
        let stdio = Stdio::of_fifos(&req.stdin, &req.stdout, &req.stderr, req.terminal)?;
        self.containers.exec(&req.id, exec_id, &req.spec.value, stdio).await?;
        Ok(Empty::new())
    }

    async fn resize_pty(&self, _: &TtrpcContext, req: ResizePtyRequest) -> ttrpc::Result<Empty> {
        self.containers.resize_pty(&req.id, &req.exec_id, req.height, req.width).await?;
        Ok(Empty::new())
    }

    async fn close_io(&self, _: &TtrpcContext, req: CloseIORequest) -> ttrpc::Result<Empty> {
        self.containers.close_io(&req.id, &req.exec_id).await?;
        Ok(Empty::new())
    }

    async fn delete(&self, _: &TtrpcContext, req: DeleteRequest) -> ttrpc::Result<DeleteResponse> {
        let r = self.containers.delete(&req.id, &req.exec_id).await?;
        Ok(DeleteResponse {
            pid: r.pid,
            exit_status: r.exit_status,
            exited_at: MessageField::some(r.exited_at),
            ..Default::default()
        })
    }

    async fn pids(&self, _: &TtrpcContext, req: PidsRequest) -> ttrpc::Result<PidsResponse> {
        let pid = self.containers.pid_of(&req.id).await?;
        Ok(PidsResponse { processes: vec![ProcessInfo { pid, ..Default::default() }], ..Default::default() })
    }

    async fn stats(&self, _: &TtrpcContext, req: StatsRequest) -> ttrpc::Result<StatsResponse> {
        let metrics = self.containers.stats(&req.id).await?;
        let value = metrics.write_to_bytes().map_err(|e| Error::Internal(format!("encoding metrics: {e}")))?;
        let any = containerd_shim_protos::protobuf::well_known_types::any::Any {
            type_url: "io.containerd.cgroups.v1.Metrics".into(),
            value,
            ..Default::default()
        };
        Ok(StatsResponse { stats: MessageField::some(any), ..Default::default() })
    }

    async fn connect(&self, _: &TtrpcContext, req: ConnectRequest) -> ttrpc::Result<ConnectResponse> {
        let pid = self.containers.pid_of(&req.id).await.unwrap_or(0);
        Ok(ConnectResponse { shim_pid: std::process::id(), task_pid: pid, ..Default::default() })
    }

    async fn shutdown(&self, _: &TtrpcContext, _: ShutdownRequest) -> ttrpc::Result<Empty> {
        if self.containers.is_empty().await {
            self.exit.signal();
        }
        Ok(Empty::new())
    }
}
