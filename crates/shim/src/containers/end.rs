//! The end of every container at once, when the shim itself ends (`crate::lifecycle`): creates and
//! removals under way run to their end first, new creates are refused, then each sandbox is shut
//! down as the sandbox container's Delete would do it.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use super::remove::VM_STOP_GRACE;
use super::Containers;
use crate::error::{Error, Result};

/// How long a shim with no container and no create under way lives on before it ends: containerd
/// sends Create right after `start` and Shutdown right after the last Delete, so a shim idle this
/// long has been forgotten (containerd restarted between the two).
pub(crate) const IDLE_EXIT: Duration = Duration::from_secs(60);

/// [`IDLE_EXIT`] once the shim has held a container: its last one is gone, and the Shutdown that
/// follows at once did not come (containerd restarted in between, or a containerd 1.6 that loaded
/// the shim again after its restart does not send it).
pub(crate) const EMPTIED_EXIT: Duration = Duration::from_secs(10);

/// Creates and removals under way, and whether the shim is ending.
#[derive(Debug, Default)]
pub(super) struct Ops {
    running: AtomicUsize,
    ending: AtomicBool,
    /// A container was made.
    held: AtomicBool,
}

/// One operation under way, counted until dropped.
pub(super) struct Op<'a>(&'a Ops);

impl Drop for Op<'_> {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Ops {
    /// An operation that makes something: refused once the shim is ending.
    pub(super) fn begin(&self) -> Result<Op<'_>> {
        let op = self.begin_any();
        match self.ending.load(Ordering::SeqCst) {
            true => Err(Error::Unavailable("the shim is ending: its sandbox is being shut down".into())),
            false => Ok(op),
        }
    }

    /// An operation that removes something: counted whatever the shim's state.
    pub(super) fn begin_any(&self) -> Op<'_> {
        self.running.fetch_add(1, Ordering::SeqCst);
        Op(self)
    }

    fn idle(&self) -> bool {
        self.running.load(Ordering::SeqCst) == 0
    }
}

impl Containers {
    /// How long this shim may stay idle: none while it holds a container or a create or removal
    /// is under way, else [`EMPTIED_EXIT`] once it held one, [`IDLE_EXIT`] before.
    pub(crate) async fn idle_limit(&self) -> Option<Duration> {
        let entries = self.entries.lock().await;
        match (self.ops.idle() && entries.is_empty(), self.ops.held.load(Ordering::SeqCst)) {
            (false, _) => None,
            (true, true) => Some(EMPTIED_EXIT),
            (true, false) => Some(IDLE_EXIT),
        }
    }

    /// A container was made (the idle limit is [`EMPTIED_EXIT`] from now on).
    pub(super) fn held(&self) {
        self.ops.held.store(true, Ordering::SeqCst);
    }

    /// Shut down every sandbox of this shim, once what is under way has ended; nothing new
    /// starts from now on. Every sandbox's shutdown is tried, whatever the one before gave.
    pub(crate) async fn end_all(&self) {
        self.ops.ending.store(true, Ordering::SeqCst);
        if !self.ops.idle() {
            slog::info!(self.log, "ending: waiting for the creates and removals under way");
        }
        while !self.ops.idle() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let entries: Vec<_> = self.entries.lock().await.drain().map(|(_, e)| e).collect();
        let run_root = self.config.as_ref().ok().map(|c| c.runtime.run_dir.clone());
        for entry in entries.into_iter().filter(|e| e.owns_sandbox) {
            let sb = entry.sandbox.clone();
            if let Some(m) = entry.mgmt {
                m.stop().await;
            }
            if let Err(e) = sb.shutdown(VM_STOP_GRACE, run_root.as_deref()).await {
                slog::error!(self.log, "ending: the sandbox's shutdown is incomplete";
                    "sandbox_id" => sb.id.to_string(), "error" => crate::error::message(&e));
            }
        }
    }
}
