//! `grpc.AgentService` and `grpc.Health`: check the request, then apply it. Calls are
//! serialised, so two callers never interleave changes.

use std::path::PathBuf;

use agent_client::protocols::agent::{
    AddARPNeighborsRequest, CloseStdinRequest, CreateContainerRequest, CreateSandboxRequest, ExecProcessRequest,
    GetMetricsRequest, GetOOMEventRequest, IPVSResponse, Interfaces, ListInterfacesRequest, ListRoutesRequest, Metrics,
    OOMEvent, ReadStreamRequest, ReadStreamResponse, RemoveContainerRequest, Routes, SignalProcessRequest,
    StartContainerRequest, StatsContainerRequest, StatsContainerResponse, TtyWinResizeRequest, UpdateIPVSRequest,
    UpdateInterfaceRequest, UpdateRoutesRequest, WaitProcessRequest, WaitProcessResponse, WriteStreamRequest,
    WriteStreamResponse,
};
use agent_client::protocols::empty::Empty;
use agent_client::protocols::health::{
    health_check_response::ServingStatus, CheckRequest, HealthCheckResponse, VersionCheckResponse,
};
use agent_client::protocols::types::Interface;
use agent_client::protocols::{agent_ttrpc, health_ttrpc};
use protobuf::EnumOrUnknown;
use ttrpc::asynchronous::TtrpcContext;
use ttrpc::Code;

use crate::netcfg::{self, Status};

/// The network calls are serialised under `lock`; the container calls are not (a process's
/// output and exit are waited for without holding anything).
pub struct Agent {
    handle: rtnetlink::Handle,
    resolv_conf: PathBuf,
    lock: tokio::sync::Mutex<()>,
    containers: crate::containers::Containers,
}

impl Agent {
    pub fn new(handle: rtnetlink::Handle, resolv_conf: PathBuf) -> Self {
        Self { handle, resolv_conf, lock: tokio::sync::Mutex::new(()), containers: Default::default() }
    }
}

fn status(s: Status) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(s.0, s.1))
}

#[async_trait::async_trait]
impl agent_ttrpc::AgentService for Agent {
    async fn create_container(&self, _: &TtrpcContext, req: CreateContainerRequest) -> ttrpc::Result<Empty> {
        self.containers.create(&req).map_err(status)?;
        Ok(Empty::new())
    }

    async fn start_container(&self, _: &TtrpcContext, req: StartContainerRequest) -> ttrpc::Result<Empty> {
        self.containers.start(&req.container_id).map_err(status)?;
        Ok(Empty::new())
    }

    async fn remove_container(&self, _: &TtrpcContext, req: RemoveContainerRequest) -> ttrpc::Result<Empty> {
        self.containers.remove(&req.container_id, req.timeout).await.map_err(status)?;
        Ok(Empty::new())
    }

    async fn exec_process(&self, _: &TtrpcContext, req: ExecProcessRequest) -> ttrpc::Result<Empty> {
        let p = req.process.as_ref().ok_or_else(|| status((Code::INVALID_ARGUMENT, "process: missing".into())))?;
        self.containers.exec(&req.container_id, &req.exec_id, p).map_err(status)?;
        Ok(Empty::new())
    }

    async fn signal_process(&self, _: &TtrpcContext, req: SignalProcessRequest) -> ttrpc::Result<Empty> {
        self.containers.signal(&req.container_id, &req.exec_id, req.signal).map_err(status)?;
        Ok(Empty::new())
    }

    async fn wait_process(&self, _: &TtrpcContext, req: WaitProcessRequest) -> ttrpc::Result<WaitProcessResponse> {
        let code = self.containers.wait(&req.container_id, &req.exec_id).await.map_err(status)?;
        Ok(WaitProcessResponse { status: code, ..Default::default() })
    }

    async fn write_stdin(&self, _: &TtrpcContext, req: WriteStreamRequest) -> ttrpc::Result<WriteStreamResponse> {
        let len = self.containers.write(&req.container_id, &req.exec_id, &req.data).await.map_err(status)?;
        Ok(WriteStreamResponse { len, ..Default::default() })
    }

    async fn read_stdout(&self, _: &TtrpcContext, req: ReadStreamRequest) -> ttrpc::Result<ReadStreamResponse> {
        let data =
            self.containers.read(&req.container_id, &req.exec_id, false, req.len as usize).await.map_err(status)?;
        Ok(ReadStreamResponse { data, ..Default::default() })
    }

    async fn read_stderr(&self, _: &TtrpcContext, req: ReadStreamRequest) -> ttrpc::Result<ReadStreamResponse> {
        let data =
            self.containers.read(&req.container_id, &req.exec_id, true, req.len as usize).await.map_err(status)?;
        Ok(ReadStreamResponse { data, ..Default::default() })
    }

    async fn close_stdin(&self, _: &TtrpcContext, req: CloseStdinRequest) -> ttrpc::Result<Empty> {
        self.containers.close_stdin(&req.container_id, &req.exec_id).await.map_err(status)?;
        Ok(Empty::new())
    }

    async fn tty_win_resize(&self, _: &TtrpcContext, req: TtyWinResizeRequest) -> ttrpc::Result<Empty> {
        self.containers.resize(&req.container_id, &req.exec_id, req.row, req.column).map_err(status)?;
        Ok(Empty::new())
    }

    async fn update_interface(&self, _: &TtrpcContext, req: UpdateInterfaceRequest) -> ttrpc::Result<Interface> {
        let _g = self.lock.lock().await;
        let iface =
            req.interface.into_option().ok_or_else(|| status((Code::INVALID_ARGUMENT, "interface: missing".into())))?;
        let out = netcfg::update_interface(&self.handle, &iface).await.map_err(status)?;
        let addrs: Vec<String> = out.IPAddresses.iter().map(|a| format!("{}/{}", a.address, a.mask)).collect();
        eprintln!("guest-agent: interface {} {} mtu {} addresses {}", out.name, out.hwAddr, out.mtu, addrs.join(","));
        Ok(out)
    }

    async fn update_routes(&self, _: &TtrpcContext, req: UpdateRoutesRequest) -> ttrpc::Result<Routes> {
        let _g = self.lock.lock().await;
        let routes = req.routes.into_option().map(|r| r.Routes).unwrap_or_default();
        let out = netcfg::update_routes(&self.handle, &routes, req.increment).await.map_err(status)?;
        for r in &out {
            let dest = if r.dest.is_empty() { "default" } else { r.dest.as_str() };
            let via = if r.gateway.is_empty() { String::new() } else { format!(" via {}", r.gateway) };
            eprintln!("guest-agent: route {dest}{via} dev {}", r.device);
        }
        Ok(Routes { Routes: out, ..Default::default() })
    }

    async fn list_interfaces(&self, _: &TtrpcContext, _: ListInterfacesRequest) -> ttrpc::Result<Interfaces> {
        let _g = self.lock.lock().await;
        let list = netcfg::list_interfaces(&self.handle).await.map_err(status)?;
        Ok(Interfaces { Interfaces: list, ..Default::default() })
    }

    async fn list_routes(&self, _: &TtrpcContext, _: ListRoutesRequest) -> ttrpc::Result<Routes> {
        let _g = self.lock.lock().await;
        let list = netcfg::list_routes(&self.handle).await.map_err(status)?;
        Ok(Routes { Routes: list, ..Default::default() })
    }

    async fn add_arp_neighbors(&self, _: &TtrpcContext, req: AddARPNeighborsRequest) -> ttrpc::Result<Empty> {
        let _g = self.lock.lock().await;
        let ns = req.neighbors.into_option().map(|n| n.ARPNeighbors).unwrap_or_default();
        netcfg::add_neighbors(&self.handle, &ns).await.map_err(status)?;
        for n in &ns {
            let ip = n.toIPAddress.as_ref().map(|a| a.address.as_str()).unwrap_or("");
            eprintln!("guest-agent: neighbour {ip} lladdr {} dev {}", n.lladdr, n.device);
        }
        Ok(Empty::new())
    }

    async fn create_sandbox(&self, _: &TtrpcContext, req: CreateSandboxRequest) -> ttrpc::Result<Empty> {
        let _g = self.lock.lock().await;
        netcfg::apply_hostname_and_dns(&req.hostname, &req.dns, &self.resolv_conf).map_err(status)?;
        crate::storage::mount_all(&req.storages).map_err(status)?;
        self.containers.sandbox(&req.sandbox_id);
        eprintln!("guest-agent: sandbox {} hostname {:?} dns {:?}", req.sandbox_id, req.hostname, req.dns);
        Ok(Empty::new())
    }

    /// The network devices' counters, in the form kata's agent gives them (no lock: reads only).
    async fn get_metrics(&self, _: &TtrpcContext, _: GetMetricsRequest) -> ttrpc::Result<Metrics> {
        let dev = std::fs::read_to_string("/proc/net/dev")
            .map_err(|e| status((Code::INTERNAL, format!("read /proc/net/dev: {e}"))))?;
        Ok(Metrics { metrics: agent_client::metrics::netdev_text(&dev), ..Default::default() })
    }

    async fn stats_container(
        &self,
        _: &TtrpcContext,
        req: StatsContainerRequest,
    ) -> ttrpc::Result<StatsContainerResponse> {
        let stats = self.containers.stats(&req.container_id).map_err(status)?;
        Ok(StatsContainerResponse { cgroup_stats: protobuf::MessageField::some(stats), ..Default::default() })
    }

    async fn get_oom_event(&self, _: &TtrpcContext, _: GetOOMEventRequest) -> ttrpc::Result<OOMEvent> {
        let cid = self.containers.next_oom().await.map_err(status)?;
        Ok(OOMEvent { container_id: cid, ..Default::default() })
    }

    async fn update_ipvs_rule(&self, _: &TtrpcContext, req: UpdateIPVSRequest) -> ttrpc::Result<IPVSResponse> {
        let _g = self.lock.lock().await;
        let out = crate::ipvs::run(&req.IPVS_req).await.map_err(status)?;
        Ok(IPVSResponse { IPVS_res: out, ..Default::default() })
    }
}

#[async_trait::async_trait]
impl health_ttrpc::Health for Agent {
    async fn check(&self, _: &TtrpcContext, _: CheckRequest) -> ttrpc::Result<HealthCheckResponse> {
        Ok(HealthCheckResponse { status: EnumOrUnknown::new(ServingStatus::SERVING), ..Default::default() })
    }

    async fn version(&self, _: &TtrpcContext, _: CheckRequest) -> ttrpc::Result<VersionCheckResponse> {
        Ok(VersionCheckResponse {
            grpc_version: "ttrpc".into(),
            agent_version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        })
    }
}
