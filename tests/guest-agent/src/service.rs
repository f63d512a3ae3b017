//! `grpc.AgentService` and `grpc.Health`: check the request, then apply it. Calls are
//! serialised, so two callers never interleave changes.

use std::path::PathBuf;

use agent_client::protocols::agent::{
    AddARPNeighborsRequest, CreateSandboxRequest, GetMetricsRequest, IPVSResponse, Interfaces, ListInterfacesRequest,
    ListRoutesRequest, Metrics, Routes, UpdateIPVSRequest, UpdateInterfaceRequest, UpdateRoutesRequest,
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

pub struct Agent {
    handle: rtnetlink::Handle,
    resolv_conf: PathBuf,
    lock: tokio::sync::Mutex<()>,
}

impl Agent {
    pub fn new(handle: rtnetlink::Handle, resolv_conf: PathBuf) -> Self {
        Self { handle, resolv_conf, lock: tokio::sync::Mutex::new(()) }
    }
}

fn status(s: Status) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(s.0, s.1))
}

#[async_trait::async_trait]
impl agent_ttrpc::AgentService for Agent {
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
        eprintln!("guest-agent: sandbox {} hostname {:?} dns {:?}", req.sandbox_id, req.hostname, req.dns);
        Ok(Empty::new())
    }

    /// The network devices' counters, in the form kata's agent gives them (no lock: reads only).
    async fn get_metrics(&self, _: &TtrpcContext, _: GetMetricsRequest) -> ttrpc::Result<Metrics> {
        let dev = std::fs::read_to_string("/proc/net/dev")
            .map_err(|e| status((Code::INTERNAL, format!("read /proc/net/dev: {e}"))))?;
        Ok(Metrics { metrics: agent_client::metrics::netdev_text(&dev), ..Default::default() })
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
