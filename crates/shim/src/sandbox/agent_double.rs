//! A double of the guest's agent for the network steps (`NetworkAgent`): it records each call
//! and refuses the route updates it is told to. The same steps run against real VMs in
//! `tests/containerd.rs`, `tests/kata_network.rs` and `tests/failpoints.rs`; this drives their
//! logic alone, without QEMU.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use agent_client::protocols::agent::CreateSandboxRequest;
use agent_client::protocols::types::{ARPNeighbor, Interface, Route};
use agent_client::{Error, NetworkAgent};

/// One call the double got.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Call {
    Interface(Interface),
    Routes(Vec<Route>, bool),
    ListRoutes,
    Neighbors(Vec<ARPNeighbor>),
    Sandbox(CreateSandboxRequest),
}

#[derive(Debug, Default)]
pub(crate) struct AgentDouble {
    pub(crate) calls: Mutex<Vec<Call>>,
    /// How many of the next route updates are refused.
    pub(crate) refuse_routes: AtomicUsize,
    /// What ListRoutes answers.
    pub(crate) guest_routes: Mutex<Vec<Route>>,
}

impl AgentDouble {
    pub(crate) fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    fn record(&self, c: Call) {
        self.calls.lock().unwrap().push(c);
    }
}

#[async_trait::async_trait]
impl NetworkAgent for AgentDouble {
    async fn update_interface(&self, iface: &Interface, _wait: Duration) -> Result<Interface, Error> {
        self.record(Call::Interface(iface.clone()));
        Ok(iface.clone())
    }

    async fn update_routes(&self, routes: Vec<Route>, increment: bool) -> Result<Vec<Route>, Error> {
        self.record(Call::Routes(routes.clone(), increment));
        let refuse = self.refuse_routes.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
        match refuse {
            true => Err(Error::Rpc {
                method: "UpdateRoutes",
                source: ttrpc::Error::RpcStatus(ttrpc::get_status(ttrpc::Code::INVALID_ARGUMENT, "refused")),
            }),
            false => Ok(routes),
        }
    }

    async fn list_routes(&self) -> Result<Vec<Route>, Error> {
        self.record(Call::ListRoutes);
        Ok(self.guest_routes.lock().unwrap().clone())
    }

    async fn add_arp_neighbors(&self, neighbors: Vec<ARPNeighbor>) -> Result<(), Error> {
        self.record(Call::Neighbors(neighbors));
        Ok(())
    }

    async fn create_sandbox(&self, req: &CreateSandboxRequest) -> Result<(), Error> {
        self.record(Call::Sandbox(req.clone()));
        Ok(())
    }
}
