//! The containers of one shim, whatever protocol asks for them: the sandbox container (it owns
//! the sandbox, its VM and its management server) and CRI's app containers in the same VM, with
//! their processes, exits and events. Each operation is a plain method returning the shim's
//! `Result`; `task.rs` is the glue of containerd's Task API to them.

mod create;
mod end;
mod kill;
pub(crate) mod process;
mod remove;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use containerd_shim_protos::api::Status;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use tokio::sync::Mutex;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::mgmt_server::MgmtServer;
use crate::sandbox::Sandbox;
use crate::workload;
use process::{agent_exec_id, Events, Proc};

pub(crate) use create::NewContainer;

/// A container of the sandbox.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) bundle: PathBuf,
    pub(crate) sandbox: Arc<Sandbox>,
    /// It is the sandbox container: it owns the sandbox, its VM and its management server.
    pub(crate) owns_sandbox: bool,
    pub(crate) mgmt: Option<MgmtServer>,
    /// Its processes run in the VM; `false` (no shared filesystem): the sandbox's task is the VM.
    pub(crate) workload: bool,
    /// It shares the pod's PID namespace (its init is no PID 1 whose end ends the others).
    pub(crate) shared_pidns: bool,
    pub(crate) init: Proc,
    pub(crate) execs: HashMap<String, Proc>,
}

impl Entry {
    pub(crate) fn proc(&self, exec_id: &str) -> Result<&Proc> {
        match exec_id {
            "" => Ok(&self.init),
            e => self.execs.get(e).ok_or_else(|| Error::NotFound(format!("no exec {e}"))),
        }
    }

    /// Its init and every exec.
    pub(crate) fn procs(&self) -> impl Iterator<Item = (&str, &Proc)> {
        std::iter::once(("", &self.init)).chain(self.execs.iter().map(|(x, p)| (x.as_str(), p)))
    }

    /// A process's pid is QEMU's, as kata's runtime reports it: the process runs in the VM.
    pub(crate) fn pid(&self) -> u32 {
        self.sandbox.vm.pid()
    }
}

pub(crate) type Entries = Arc<Mutex<HashMap<String, Entry>>>;

/// A process as the Task API's State reports it.
#[derive(Debug)]
pub(crate) struct ProcState {
    pub(crate) bundle: PathBuf,
    pub(crate) pid: u32,
    pub(crate) status: Status,
    pub(crate) stdio: workload::io::Stdio,
    /// Exit status and time, once it exited.
    pub(crate) exit: Option<(u32, Timestamp)>,
}

pub(crate) fn no_task(id: &str) -> Error {
    Error::NotFound(format!("no task {id}"))
}

/// The containers of one shim (one sandbox and its containers).
pub(crate) struct Containers {
    entries: Entries,
    /// The configuration, or why it was refused (Create reports it).
    config: std::result::Result<Config, String>,
    events: Events,
    log: slog::Logger,
    /// Creates and container removals under way, and whether the shim is ending (`end.rs`).
    ops: end::Ops,
}

impl std::fmt::Debug for Containers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Containers").field("namespace", &self.events.namespace).finish_non_exhaustive()
    }
}

impl Containers {
    pub(crate) fn new(config: std::result::Result<Config, String>, events: Events, log: slog::Logger) -> Self {
        Containers { entries: Arc::new(Mutex::new(HashMap::new())), config, events, log, ops: end::Ops::default() }
    }

    pub(crate) async fn is_empty(&self) -> bool {
        self.entries.lock().await.is_empty()
    }

    /// `f` of container `id`'s entry, under the table's lock.
    async fn with<T>(&self, id: &str, f: impl FnOnce(&Entry) -> Result<T>) -> Result<T> {
        let e = self.entries.lock().await;
        f(e.get(id).ok_or_else(|| no_task(id))?)
    }

    pub(crate) async fn pid_of(&self, id: &str) -> Result<u32> {
        self.with(id, |e| Ok(e.pid())).await
    }

    pub(crate) async fn state(&self, id: &str, exec_id: &str) -> Result<ProcState> {
        self.with(id, |entry| {
            let p = entry.proc(exec_id)?;
            Ok(ProcState {
                bundle: entry.bundle.clone(),
                pid: entry.pid(),
                status: p.status(),
                stdio: p.stdio.clone(),
                exit: p.exited(),
            })
        })
        .await
    }

    /// The process's exit status and time, once it exited.
    pub(crate) async fn wait(&self, id: &str, exec_id: &str) -> Result<(u32, Timestamp)> {
        let mut rx = self.with(id, |entry| Ok(entry.proc(exec_id)?.exit.subscribe())).await?;
        let got = rx.wait_for(|e| e.is_some()).await.map(|e| e.clone());
        got.ok().flatten().ok_or_else(|| no_task(id))
    }

    pub(crate) async fn resize_pty(&self, id: &str, exec_id: &str, height: u32, width: u32) -> Result<()> {
        let sb = self.with(id, |entry| entry.proc(exec_id).map(|_| entry.sandbox.clone())).await?;
        sb.agent.tty_win_resize(id, agent_exec_id(id, exec_id), height, width).await?;
        Ok(())
    }

    /// The stdin copy closes the process's stdin when containerd's FIFO ends, which comes with
    /// CloseIO: only the process is checked here.
    pub(crate) async fn close_io(&self, id: &str, exec_id: &str) -> Result<()> {
        self.with(id, |entry| entry.proc(exec_id).map(|_| ())).await
    }

    /// Container `id`'s metrics (cgroups v1's type, as `ctr task metrics` and CRI read them):
    /// its CPU, memory and pids from its cgroup in the guest (a guest that cannot say leaves
    /// them out), and the sandbox's NICs, counted on the host devices (numbers the guest cannot
    /// forge), from the pod's point of view.
    pub(crate) async fn stats(&self, id: &str) -> Result<containerd_shim_protos::cgroups::metrics::Metrics> {
        let (sb, workload) = self.with(id, |entry| Ok((entry.sandbox.clone(), entry.workload))).await?;
        let cgroup = match workload {
            true => match sb.agent.stats_container(id).await {
                Ok(r) => r.cgroup_stats.into_option(),
                Err(e) => {
                    slog::warn!(self.log, "the guest gave no container stats"; "container_id" => id,
                        "error" => crate::error::message(&Error::from(e)));
                    None
                }
            },
            false => None,
        };
        let nics = sb.nic_counters().await?;
        Ok(workload::stats::metrics(&nics, cgroup.as_ref()))
    }
}
