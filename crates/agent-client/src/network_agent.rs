//! The agent's network calls as one trait: what the sandbox's sync at start and the operator's
//! route steps need. [`AgentClient`] serves it over ttrpc; a test drives the same steps with a
//! double of its own, beside the real-VM tests of those paths.

use std::time::Duration;

use crate::client::{AgentClient, Error};
use crate::protocols::agent::CreateSandboxRequest;
use crate::protocols::types::{ARPNeighbor, Interface, Route};

#[async_trait::async_trait]
pub trait NetworkAgent: Send + Sync {
    /// Configure a NIC (waiting up to `wait` for it to appear in the guest).
    async fn update_interface(&self, iface: &Interface, wait: Duration) -> Result<Interface, Error>;
    /// Replace the routes (or, with `increment`, add them); the guest's routes after.
    async fn update_routes(&self, routes: Vec<Route>, increment: bool) -> Result<Vec<Route>, Error>;
    async fn list_routes(&self) -> Result<Vec<Route>, Error>;
    async fn add_arp_neighbors(&self, neighbors: Vec<ARPNeighbor>) -> Result<(), Error>;
    async fn create_sandbox(&self, req: &CreateSandboxRequest) -> Result<(), Error>;
}

#[async_trait::async_trait]
impl NetworkAgent for AgentClient {
    async fn update_interface(&self, iface: &Interface, wait: Duration) -> Result<Interface, Error> {
        AgentClient::update_interface(self, iface, wait).await
    }

    async fn update_routes(&self, routes: Vec<Route>, increment: bool) -> Result<Vec<Route>, Error> {
        AgentClient::update_routes(self, routes, increment).await
    }

    async fn list_routes(&self) -> Result<Vec<Route>, Error> {
        AgentClient::list_routes(self).await
    }

    async fn add_arp_neighbors(&self, neighbors: Vec<ARPNeighbor>) -> Result<(), Error> {
        AgentClient::add_arp_neighbors(self, neighbors).await
    }

    async fn create_sandbox(&self, req: &CreateSandboxRequest) -> Result<(), Error> {
        AgentClient::create_sandbox(self, req).await
    }
}
