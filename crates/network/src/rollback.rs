//! Undo steps, and a guard that runs them in reverse when a multi-step change fails.
//!
//! Steps name devices rather than holding indexes, so the same steps, persisted in endpoint
//! state, tear down what an earlier process created.

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::nic::{NicConfig, NicHotplug};
use crate::nic_fds::TapFlags;
use crate::nl;
use crate::scan::{Neighbor, Route};
use crate::types::{IfName, MacAddr, PciPath};
use crate::NetCtx;

/// One step that reverses one change in the namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "undo")]
pub enum Undo {
    DeleteLink {
        name: IfName,
    },
    DeleteIngress {
        name: IfName,
    },
    /// Delete the link's ingress qdisc when it holds one of the runtime's filters.
    DeleteOwnIngress {
        name: IfName,
    },
    /// Delete the link's root qdisc when it is the runtime's HTB (a rate limit).
    DeleteOwnRoot {
        name: IfName,
    },
    SetMac {
        name: IfName,
        mac: MacAddr,
    },
    AddAddresses {
        name: IfName,
        addresses: Vec<IpNet>,
    },
    AddRoutes {
        name: IfName,
        routes: Vec<Route>,
    },
    AddNeighbors {
        name: IfName,
        neighbors: Vec<Neighbor>,
    },
    /// Give an operator's TAP back the features it had (attaching with other flags changes them).
    RestoreTapFlags {
        name: IfName,
        flags: TapFlags,
    },
}

impl Undo {
    /// Carry the step out. Undoing something already undone succeeds.
    pub async fn run(&self, ctx: &NetCtx) -> Result<()> {
        let handle = &ctx.handle;
        match self {
            Undo::DeleteLink { name } => nl::delete_link(handle, name.as_str()).await,
            Undo::DeleteIngress { name } => nl::del_ingress(handle, name.as_str()).await,
            Undo::DeleteOwnIngress { name } => nl::del_own_ingress(handle, name.as_str()).await,
            Undo::DeleteOwnRoot { name } => nl::delete_own_root(handle, name.as_str()).await,
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
            Undo::RestoreTapFlags { name, flags } => crate::nic_fds::restore_tap_flags_in(&ctx.worker, name, *flags),
        }
    }
}

/// Run steps in the given order; every step is tried, and the first error is returned.
pub(crate) async fn run_all(ctx: &NetCtx, steps: &[Undo]) -> Result<()> {
    let mut first = Ok(());
    for step in steps {
        if let Err(e) = step.run(ctx).await {
            if first.is_ok() {
                first = Err(e);
            }
        }
    }
    first
}

/// One step of a [`Rollback`]: a change in the namespace, or a NIC plugged into the VM.
#[derive(Debug)]
enum Step {
    Net(Undo),
    Nic(String),
}

/// The hotplug of a rollback that plugs no NIC (the default): it cannot be made.
#[derive(Debug)]
pub enum NoNics {}

impl NicHotplug for NoNics {
    type Error = std::convert::Infallible;

    async fn add_nic(&self, _: NicConfig) -> Result<PciPath, Self::Error> {
        match *self {}
    }

    async fn remove_nic(&self, _: &str) -> Result<(), Self::Error> {
        match *self {}
    }
}

/// Collects undo steps while a change is made. [`Rollback::commit`] keeps the change;
/// [`Rollback::undo`] (or dropping the guard, e.g. when the future is cancelled) reverses it,
/// newest first. A rollback made [`with_nics`](Rollback::with_nics) also plugs NICs into a VM
/// ([`Rollback::hotplug`]) and unplugs them on undo, so host devices and the VM's NICs are
/// undone by one guard, in order.
#[derive(Debug)]
pub struct Rollback<H: NicHotplug + 'static = NoNics> {
    ctx: NetCtx,
    nics: Option<Arc<H>>,
    steps: Vec<Step>,
}

impl Rollback {
    pub fn new(ctx: &NetCtx) -> Self {
        Self { ctx: ctx.clone(), nics: None, steps: Vec::new() }
    }
}

impl<H: NicHotplug + 'static> Rollback<H> {
    /// A rollback that may also plug NICs into `vm`.
    pub fn with_nics(ctx: &NetCtx, vm: Arc<H>) -> Self {
        Self { ctx: ctx.clone(), nics: Some(vm), steps: Vec::new() }
    }

    pub fn push(&mut self, step: Undo) {
        self.steps.push(Step::Net(step));
    }

    /// Plug `nic` into the VM; its unplug is registered before this returns.
    pub async fn hotplug(&mut self, nic: NicConfig) -> std::result::Result<PciPath, H::Error> {
        let vm = self.nics.clone().expect("Rollback::hotplug on a rollback made without NICs");
        let id = nic.id.clone();
        let path = vm.add_nic(nic).await?;
        self.steps.push(Step::Nic(id));
        Ok(path)
    }

    /// The change is complete: keep it.
    pub fn commit(mut self) {
        self.steps.clear();
    }

    /// Reverse everything so far, newest first. Every namespace step is tried and the first
    /// failure returned; a NIC the VM would not give back ([`Error::Unplug`]) stops the undo, so
    /// the devices it still uses are left as they are (the caller keeps them recorded).
    pub async fn undo(mut self) -> Result<()> {
        let steps: Vec<Step> = self.steps.drain(..).rev().collect();
        run_steps(&self.ctx, self.nics.as_deref(), steps).await
    }
}

/// Every namespace step is tried (the first error is returned); a NIC the VM does not give back
/// stops the undo there: the host devices it uses (older steps) must stay as the VM has them.
async fn run_steps<H: NicHotplug>(ctx: &NetCtx, nics: Option<&H>, steps: Vec<Step>) -> Result<()> {
    let mut first = Ok(());
    for step in steps {
        let res = match (&step, nics) {
            (Step::Net(u), _) => u.run(ctx).await,
            (Step::Nic(id), Some(vm)) => match vm.remove_nic(id).await {
                Ok(()) => Ok(()),
                Err(e) => return Err(Error::Unplug { id: id.clone(), source: Box::new(e) }),
            },
            (Step::Nic(_), None) => Ok(()),
        };
        if let Err(e) = res {
            if first.is_ok() {
                first = Err(e);
            }
        }
    }
    first
}

impl<H: NicHotplug + 'static> Drop for Rollback<H> {
    fn drop(&mut self) {
        if self.steps.is_empty() {
            return;
        }
        let steps: Vec<Step> = self.steps.drain(..).rev().collect();
        let ctx = self.ctx.clone();
        let nics = self.nics.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = run_steps(&ctx, nics.as_deref(), steps).await;
            });
        }
    }
}
