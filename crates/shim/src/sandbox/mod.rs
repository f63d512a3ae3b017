//! One sandbox: its persisted state (`state`), what its spec says (`spec`), the StartVM flow
//! (`start`), and the operations on it while it runs (`iface`, `routes`, `ipvs`), each beside the
//! type it changes.

mod channel;
mod follow;
mod helpers;
mod iface;
mod ipvs;
mod routes;
pub mod sharedfs;
mod spec;
mod start;
mod state;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use agent_client::AgentClient;
use hypervisor::Vm;
use netmgmt::ipvs::IpvsTable;
use network::NetCtx;

pub use channel::{VSOCK_BACKEND, VSOCK_BACKEND_SOCKET};
pub use follow::follow;
pub use iface::Added;
pub use spec::{SpecNetwork, DNS_ANNOTATION};
pub use start::start;
pub use state::{claim_run_dir, netns_identity, own_netns_path, run_dir_held, SandboxState, STATE_FILE};

/// How long the guest may take to show a NIC at its PCI path.
pub(crate) const NIC_WAIT: Duration = Duration::from_secs(30);

/// A running sandbox, shared by the Task service and the management service.
#[derive(Debug)]
pub struct Sandbox {
    pub id: String,
    pub bundle: PathBuf,
    /// `<run_dir>/<id>`: the sandbox's sockets and shared directory.
    pub run_dir: Option<PathBuf>,
    pub vm: Arc<Vm>,
    pub agent: AgentClient,
    /// The agent serves openEuler's extensions of kata's protocol (`UpdateIPVSRule`, routes'
    /// `increment`); kata's own agent does not. Probed once at start.
    pub extended_agent: bool,
    pub ctx: NetCtx,
    /// Queue pairs of a NIC when the operator asks for the runtime's default.
    pub queues: usize,
    pub vhost_net: bool,
    /// How the sandbox's endpoints are built (for links that appear after start).
    pub ep_cfg: network::EndpointConfig,
    /// The hybrid vsock backend, when the agent channel has one (killed when the sandbox goes).
    pub vsock_backend: tokio::sync::Mutex<Option<channel::VsockBackend>>,
    /// The shared directory's virtiofsd, when `shared_fs = "virtio-fs"` (killed when the sandbox goes).
    pub virtiofsd: Option<sharedfs::VirtioFsd>,
    /// Operations on the sandbox run one at a time, holding this.
    pub ops: tokio::sync::Mutex<Ops>,
    pub log: slog::Logger,
    /// The run directory's claim, held while the sandbox lives (`state::claim_run_dir`).
    pub claim: std::fs::File,
    /// The containers that had a process killed by the guest's OOM killer.
    pub oom_killed: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// What changes after start, under [`Sandbox::ops`].
#[derive(Debug)]
pub struct Ops {
    pub state: SandboxState,
    /// NICs plugged in with add-iface, in order.
    pub added: Vec<Added>,
    pub ipvs: IpvsTable,
    /// The VM's route table as the shim set it (not the kernel's own routes): see `routes.rs`.
    pub routes: Vec<agent_client::protocols::types::Route>,
    /// The pod's links with a NIC in the VM, and the part of `routes` that is the pod's (as the
    /// namespace had them when last synced): see `follow.rs`.
    pub pod: Vec<PodNic>,
    pub pod_routes: Vec<agent_client::protocols::types::Route>,
    /// The pod's permanent neighbours given to the guest.
    pub pod_neighbors: Vec<network::Neighbor>,
    /// New pod links whose plugging failed (and was undone), by name and interface index: not
    /// tried again until the link is made again, so a refusal does not turn into a loop (the
    /// undo's own netlink events would start the next attempt).
    pub refused: Vec<(network::IfName, u32)>,
    /// The sandbox is being torn down: following the namespace stops here, so no late event
    /// records state again after the teardown forgot it.
    pub closed: bool,
}

/// A pod link with a NIC in the VM.
#[derive(Debug, Clone)]
pub struct PodNic {
    /// The link as last synced to the guest.
    pub link: network::Link,
    pub nic_id: String,
    /// Hotplugged (factory mode, or after start): it can leave the VM again.
    pub hotplugged: bool,
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
}
