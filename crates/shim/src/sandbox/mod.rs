//! One sandbox: its persisted state (`state`), what its spec says (`spec`), the StartVM flow
//! (`start`), and the operations on it while it runs (`iface`, `routes`, `ipvs`), each beside the
//! type it changes.

#[cfg(test)]
mod agent_double;
mod bandwidth;
mod channel;
mod follow;
mod helpers;
mod iface;
mod ipvs;
mod nic_counters;
mod portfwd;
mod routes;
pub mod sharedfs;
pub mod shares;
mod spec;
mod start;
mod state;
mod sync;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use agent_client::AgentClient;
use hypervisor::Vm;
use netmgmt::ipvs::IpvsTable;
use network::{NetCtx, RunDir, SandboxId};

pub use follow::follow;
pub use follow::{PodLinks, PodNic};
pub use iface::Added;
pub(crate) use nic_counters::NicCounters;
pub use routes::RouteTable;
pub(crate) use spec::{sandbox_of, Sizing, SpecNetwork};
pub use start::start;
pub(crate) use state::{claim_run_dir, own_netns_path, run_dir_held};
pub use state::{netns_identity, SandboxState};

/// How long the guest may take to show a NIC at its PCI path.
pub(crate) const NIC_WAIT: Duration = Duration::from_secs(30);

/// A running sandbox, shared by the Task service and the management service.
#[derive(Debug)]
pub struct Sandbox {
    pub id: SandboxId,
    pub bundle: PathBuf,
    /// `<run_root>/<id>`: the sandbox's sockets and shared directory.
    pub run_dir: RunDir,
    pub vm: Arc<Vm>,
    pub agent: AgentClient,
    /// The agent serves openEuler's extensions of kata's protocol (`UpdateIPVSRule`, routes'
    /// `increment`); kata's own agent does not. Probed once at start.
    pub extended_agent: bool,
    pub ctx: NetCtx,
    /// How the sandbox's endpoints are built (for links that appear after start; its queues
    /// are a NIC's when the operator asks for the runtime's default).
    pub ep_cfg: network::EndpointConfig,
    /// The hybrid vsock backend, when the agent channel has one (killed when the sandbox goes).
    pub vsock_backend: tokio::sync::Mutex<Option<channel::VsockBackend>>,
    /// The shared directory's virtiofsd, when `shared_fs = "virtio-fs"` (killed when the sandbox goes).
    pub virtiofsd: Option<sharedfs::VirtioFsd>,
    /// The `kubectl port-forward` forwarder, when served (stopped when the sandbox goes).
    pub portfwd: std::sync::Mutex<Option<portfwd::PortForward>>,
    /// Operations on the sandbox run one at a time, holding this.
    pub ops: tokio::sync::Mutex<Ops>,
    pub log: slog::Logger,
    /// The run directory's claim, held while the sandbox lives (`state::claim_run_dir`).
    pub claim: std::fs::File,
    /// Containers' seccomp profiles go to the guest (`[runtime] disable_guest_seccomp` unset).
    pub guest_seccomp: bool,
    /// The containers that had a process killed by the guest's OOM killer.
    pub oom_killed: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// What changes after start, under [`Sandbox::ops`]: each part is kept by the file that
/// changes it.
#[derive(Debug)]
pub struct Ops {
    pub state: SandboxState,
    /// The operator's NICs (add-iface), in order.
    pub operator: iface::OperatorNics,
    pub ipvs: IpvsTable,
    pub routes: routes::RouteTable,
    /// The pod's links with a NIC in the VM, as last synced.
    pub pod: follow::PodLinks,
    /// The sandbox is being torn down: following the namespace stops here, so no late event
    /// records state again after the teardown forgot it.
    pub closed: bool,
}

impl Sandbox {
    /// The sandbox's operation lock, for an operation that must be done by `deadline`: one
    /// whose deadline passed while it waited does not start (it would be cut off halfway).
    pub async fn ops_by(
        &self,
        deadline: Option<std::time::Instant>,
    ) -> crate::Result<tokio::sync::MutexGuard<'_, Ops>> {
        let ops = self.ops.lock().await;
        match deadline {
            Some(d) if std::time::Instant::now() >= d => Err(crate::Error::Deadline),
            _ => Ok(ops),
        }
    }

    /// The persisted state as it is now.
    pub async fn state(&self) -> SandboxState {
        self.ops.lock().await.state.clone()
    }

    /// The state to tear down from, with the sandbox marked closed (see [`Ops::closed`]).
    pub async fn closing_state(&self) -> SandboxState {
        let mut ops = self.ops.lock().await;
        ops.closed = true;
        ops.state.clone()
    }

    /// The sandbox's end: the VM stopped (given `grace` to stop on its own), then everything
    /// the state records torn down and the state file forgotten. Each step is tried whatever
    /// the one before gave; a failed teardown keeps the state file for containerd's `delete`.
    pub async fn shutdown(&self, grace: Duration, run_root: Option<&std::path::Path>) -> crate::Result<()> {
        drop(self.portfwd.lock().unwrap_or_else(|e| e.into_inner()).take());
        let _ = self.vm.stop(grace).await;
        removal_step(&self.log, &self.id, "remove:vm-stopped");
        self.closing_state().await.teardown(&self.log, run_root).await?;
        removal_step(&self.log, &self.id, "remove:torn-down");
        SandboxState::forget(&self.bundle);
        Ok(())
    }
}

/// A step of a removal: an injected failure (failpoint `name`) is logged and the removal goes on.
pub(crate) fn removal_step(log: &slog::Logger, id: &str, name: &str) {
    if let Err(e) = crate::failpoint::hit(name) {
        slog::warn!(log, "a removal step failed; the removal goes on"; "container_id" => id, "error" => e.to_string());
    }
}
