//! The management service's ttrpc glue: each call's request is checked with `netmgmt`'s rules
//! and handed to the sandbox's operation (`sandbox::{iface, routes, ipvs}`); errors become
//! statuses in `error.rs`.
//!
//! An operation runs in a task of its own, to its end: the ttrpc server drops a handler whose
//! client went away or whose deadline passed, and that must never cut an operation in the middle
//! (a NIC plugged but not listed, QEMU holding fds for nothing). The deadline only decides
//! whether an operation starts: one still waiting for the sandbox's lock when it passes does not. Served on `<run_dir>/<id>/mgmt.sock`, root's only, by a second ttrpc
//! server of the shim (the containerd-shim crate's own server cannot take another service).

use std::sync::Arc;
use std::time::{Duration, Instant};

use netmgmt::doc::{DelIfaceDoc, RouteDoc};
use netmgmt::ipvs::{cleanup_request, IpvsCommand, Restore};
use netmgmt::mg;
use netmgmt::output::{counters_pb, doc_from_pb};
use netmgmt::protocols::netmgmt_ttrpc::{create_network_management, NetworkManagement};
use ttrpc::asynchronous::TtrpcContext;

use crate::error::{Error, Result};
use crate::sandbox::Sandbox;

/// The ttrpc face of one sandbox's management operations.
struct MgmtService {
    sb: Arc<Sandbox>,
}

/// When the caller stops waiting, if it said.
fn deadline(ctx: &TtrpcContext) -> Option<Instant> {
    (ctx.timeout_nano > 0).then(|| Instant::now() + Duration::from_nanos(ctx.timeout_nano as u64))
}

/// Run `op` on the sandbox in a task of its own; the answer if the caller still waits.
async fn to_the_end<T, F>(sb: &Arc<Sandbox>, op: impl FnOnce(Arc<Sandbox>) -> F) -> ttrpc::Result<T>
where
    T: Send + 'static,
    F: std::future::Future<Output = Result<T>> + Send + 'static,
{
    let task = tokio::spawn(op(sb.clone()));
    match task.await {
        Ok(res) => Ok(res?),
        Err(e) => Err(Error::Internal(format!("the operation's task ended without an answer: {e}")).into()),
    }
}

fn ipvs_reply((output, rules): (String, usize)) -> mg::IpvsReply {
    mg::IpvsReply { output, rules: rules as u32, ..Default::default() }
}

fn route_doc(r: mg::Route) -> RouteDoc {
    RouteDoc { dest: r.dest, gateway: r.gateway, device: r.device }
}

#[async_trait::async_trait]
impl NetworkManagement for MgmtService {
    async fn add_interface(&self, ctx: &TtrpcContext, req: mg::Interface) -> ttrpc::Result<mg::Interface> {
        let checked = doc_from_pb(&req).validate().map_err(Error::from)?;
        let by = deadline(ctx);
        Ok(to_the_end(&self.sb, move |sb| async move { sb.add_iface(checked, by).await }).await?.to_pb())
    }

    async fn delete_interface(&self, ctx: &TtrpcContext, req: mg::Interface) -> ttrpc::Result<mg::Interface> {
        let doc = DelIfaceDoc { name: req.name, ..Default::default() };
        let name = doc.name().map_err(Error::from)?.to_owned();
        let by = deadline(ctx);
        to_the_end(&self.sb, move |sb| async move { sb.del_iface(&name, by).await }).await?;
        Ok(mg::Interface::default())
    }

    async fn list_interfaces(&self, _: &TtrpcContext, _: mg::Nothing) -> ttrpc::Result<mg::Interfaces> {
        Ok(mg::Interfaces { interfaces: self.sb.list_ifaces().await?, ..Default::default() })
    }

    async fn add_route(&self, ctx: &TtrpcContext, req: mg::Route) -> ttrpc::Result<mg::Routes> {
        let r = route_doc(req).validate(true).map_err(Error::from)?;
        let by = deadline(ctx);
        let routes = to_the_end(&self.sb, move |sb| async move { sb.add_route(r, by).await }).await?;
        Ok(mg::Routes { routes, ..Default::default() })
    }

    async fn delete_route(&self, ctx: &TtrpcContext, req: mg::Route) -> ttrpc::Result<mg::Routes> {
        let r = route_doc(req).validate(false).map_err(Error::from)?;
        let by = deadline(ctx);
        let routes = to_the_end(&self.sb, move |sb| async move { sb.del_route(r, by).await }).await?;
        Ok(mg::Routes { routes, ..Default::default() })
    }

    async fn list_routes(&self, _: &TtrpcContext, _: mg::Nothing) -> ttrpc::Result<mg::Routes> {
        Ok(mg::Routes { routes: self.sb.list_routes().await?, ..Default::default() })
    }

    async fn stats(&self, _: &TtrpcContext, _: mg::Nothing) -> ttrpc::Result<mg::Stats> {
        let nics = self.sb.nic_counters().await?.iter().map(nic_stats).collect();
        Ok(mg::Stats { nics, ..Default::default() })
    }

    async fn ipvsadm(&self, ctx: &TtrpcContext, req: mg::IpvsRequest) -> ttrpc::Result<mg::IpvsReply> {
        let cmd = IpvsCommand::parse(&req.parameters).map_err(Error::from)?;
        let by = deadline(ctx);
        Ok(ipvs_reply(to_the_end(&self.sb, move |sb| async move { sb.ipvsadm(cmd, by).await }).await?))
    }

    async fn ipvs_restore(&self, ctx: &TtrpcContext, req: mg::IpvsRestoreRequest) -> ttrpc::Result<mg::IpvsReply> {
        let restore = Restore::parse(&req.rules).map_err(Error::from)?;
        let by = deadline(ctx);
        Ok(ipvs_reply(to_the_end(&self.sb, move |sb| async move { sb.ipvs_restore(restore, by).await }).await?))
    }

    async fn conntrack_cleanup(&self, ctx: &TtrpcContext, req: mg::IpvsRequest) -> ttrpc::Result<mg::IpvsReply> {
        let request = cleanup_request(&req.parameters).map_err(Error::from)?;
        let by = deadline(ctx);
        Ok(ipvs_reply(to_the_end(&self.sb, move |sb| async move { sb.conntrack_cleanup(request, by).await }).await?))
    }
}

/// The running management server of one sandbox.
pub struct MgmtServer {
    server: ttrpc::asynchronous::Server,
}

/// A NIC's counters as the management protocol gives them: the host device's as the kernel
/// counts them, with the device's kind.
fn nic_stats(n: &crate::sandbox::NicCounters) -> mg::NicStats {
    mg::NicStats {
        name: n.name.clone(),
        device: n.device.to_string(),
        host: Some(counters_pb(&n.host)).into(),
        guest: n.guest.as_ref().map(counters_pb).into(),
        kind: if n.macvtap { "macvtap" } else { "tap" }.into(),
        ..Default::default()
    }
}

impl std::fmt::Debug for MgmtServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MgmtServer").finish_non_exhaustive()
    }
}

impl MgmtServer {
    /// Serve `sb` on its socket in its run directory, readable and writable by root only (the
    /// sandbox's directory is root's with mode 0700 as well).
    pub async fn start(sb: Arc<Sandbox>) -> Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        let path = sb.run_dir.mgmt_socket();
        let fail = |why: String| Error::MgmtServer { path: path.clone(), why };
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(fail(e.to_string())),
        }
        let service = create_network_management(Arc::new(MgmtService { sb }));
        let mut server = ttrpc::asynchronous::Server::new()
            .bind(&format!("unix://{}", path.display()))
            .map_err(|e| fail(e.to_string()))?
            .register_service(service);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(|e| fail(e.to_string()))?;
        server.start().await.map_err(|e| fail(e.to_string()))?;
        Ok(Self { server })
    }

    pub async fn stop(mut self) {
        let _ = self.server.shutdown().await;
    }
}
