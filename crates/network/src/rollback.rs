//! Undo steps, and a guard that runs them in reverse when a multi-step change fails.
//!
//! Steps name devices rather than holding indexes, so the same steps, persisted in endpoint
//! state, tear down what an earlier process created.

use ipnet::IpNet;
use rtnetlink::Handle;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::nl;
use crate::scan::{Neighbor, Route};
use crate::types::{IfName, MacAddr};

/// One step that reverses one change in the namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "undo")]
pub enum Undo {
    DeleteLink { name: IfName },
    DeleteIngress { name: IfName },
    SetMac { name: IfName, mac: MacAddr },
    AddAddresses { name: IfName, addresses: Vec<IpNet> },
    AddRoutes { name: IfName, routes: Vec<Route> },
    AddNeighbors { name: IfName, neighbors: Vec<Neighbor> },
}

impl Undo {
    /// Carry the step out. Undoing something already undone succeeds.
    pub async fn run(&self, handle: &Handle) -> Result<()> {
        match self {
            Undo::DeleteLink { name } => nl::delete_link(handle, name.as_str()).await,
            Undo::DeleteIngress { name } => nl::del_ingress(handle, name.as_str()).await,
            Undo::SetMac { name, mac } => {
                let index = nl::require_link(handle, name.as_str()).await?;
                nl::set_mac(handle, index, name.as_str(), *mac).await
            }
            Undo::AddAddresses { name, addresses } => {
                let index = nl::require_link(handle, name.as_str()).await?;
                nl::add_addresses(handle, index, name.as_str(), addresses).await
            }
            Undo::AddRoutes { name, routes } => {
                let index = nl::require_link(handle, name.as_str()).await?;
                nl::replace_routes(handle, index, routes).await
            }
            Undo::AddNeighbors { name, neighbors } => {
                let index = nl::require_link(handle, name.as_str()).await?;
                nl::replace_neighbors(handle, index, name.as_str(), neighbors).await
            }
        }
    }
}

/// Run steps in the given order; every step is tried, and the first error is returned.
pub async fn run_all(handle: &Handle, steps: &[Undo]) -> Result<()> {
    let mut first = Ok(());
    for step in steps {
        if let Err(e) = step.run(handle).await {
            if first.is_ok() {
                first = Err(e);
            }
        }
    }
    first
}

/// Collects undo steps while a change is made. [`Rollback::commit`] keeps the change;
/// [`Rollback::undo`] (or dropping the guard, e.g. when the future is cancelled) reverses it.
#[derive(Debug)]
pub struct Rollback {
    handle: Handle,
    steps: Vec<Undo>,
}

impl Rollback {
    pub fn new(handle: &Handle) -> Self {
        Self { handle: handle.clone(), steps: Vec::new() }
    }

    pub fn push(&mut self, step: Undo) {
        self.steps.push(step);
    }

    /// The change is complete: keep it.
    pub fn commit(mut self) {
        self.steps.clear();
    }

    /// Reverse everything pushed so far, newest first.
    pub async fn undo(mut self) {
        let steps: Vec<Undo> = self.steps.drain(..).rev().collect();
        // Best effort: a failing undo step must not hide the error that caused the rollback.
        let _ = run_all(&self.handle, &steps).await;
    }
}

impl Drop for Rollback {
    fn drop(&mut self) {
        if self.steps.is_empty() {
            return;
        }
        let steps: Vec<Undo> = self.steps.drain(..).rev().collect();
        let handle = self.handle.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = run_all(&handle, &steps).await;
            });
        }
    }
}
