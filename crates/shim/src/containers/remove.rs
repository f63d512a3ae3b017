//! Delete: an exec forgotten (ended first if it runs), or a container removed from the VM; the
//! sandbox container's removal shuts the sandbox down.

use std::sync::Arc;

use containerd_shim_protos::events::task::TaskDelete;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::MessageField;
use containerd_shim_protos::topics;

use super::kill::KILL_AGENT_WAIT;
use super::process::now;
use super::{no_task, Containers};
use crate::error::Result;
use crate::{sandbox, workload};

/// What a removed process was: its pid, and its exit status and time.
#[derive(Debug)]
pub(crate) struct Removed {
    pub(crate) pid: u32,
    pub(crate) exit_status: u32,
    pub(crate) exited_at: Timestamp,
}

/// How long a sandbox's VM may take to stop when its container is deleted.
pub(super) const VM_STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

impl Containers {
    /// Delete exec `exec_id` of container `id`, or (`exec_id` empty) the container itself.
    pub(crate) async fn delete(&self, id: &str, exec_id: &str) -> Result<Removed> {
        match exec_id {
            "" => self.delete_container(id).await,
            x => self.delete_exec(id, x).await,
        }
    }

    /// A running exec deleted (containerd's DeleteProcess) is ended first, its exit awaited
    /// (bounded): left running it would live on in the VM, unmanaged.
    async fn delete_exec(&self, id: &str, exec_id: &str) -> Result<Removed> {
        let running = self
            .with(id, |entry| {
                let p = entry.proc(exec_id)?;
                let running = p.started && p.exited().is_none();
                if running {
                    p.sent(9);
                }
                Ok(running.then(|| (entry.sandbox.clone(), p.exit.subscribe())))
            })
            .await?;
        if let Some((sb, mut exit)) = running {
            slog::info!(self.log, "a running exec is deleted: it is killed first";
                "container_id" => id, "exec_id" => exec_id);
            let _ = tokio::time::timeout(KILL_AGENT_WAIT, sb.agent.signal_process(id, exec_id, 9)).await;
            let _ = tokio::time::timeout(KILL_AGENT_WAIT, exit.wait_for(|e| e.is_some())).await;
        }
        let (pid, p) = {
            let mut e = self.entries.lock().await;
            let entry = e.get_mut(id).ok_or_else(|| no_task(id))?;
            entry.proc(exec_id)?;
            (entry.pid(), entry.execs.remove(exec_id))
        };
        let (exit_status, exited_at) = p.and_then(|p| p.exited()).unwrap_or((0, now()));
        Ok(Removed { pid, exit_status, exited_at })
    }

    /// Remove container `id`: from the VM, and for the sandbox container the sandbox with it
    /// (refused while app containers remain). Every step is tried, whatever the one before it
    /// gave; a shim killed between two leaves the rest to containerd's `delete` (failpoints
    /// `remove:*`).
    async fn delete_container(&self, id: &str) -> Result<Removed> {
        // Counted even while the shim ends: an ending waits for it to finish.
        let _op = self.ops.begin_any();
        let entry = {
            let mut e = self.entries.lock().await;
            let entry = e.get(id).ok_or_else(|| no_task(id))?;
            if entry.owns_sandbox && e.values().any(|o| !o.owns_sandbox && Arc::ptr_eq(&o.sandbox, &entry.sandbox)) {
                return Err(crate::Error::AlreadyExists(format!("sandbox {id} still has containers")));
            }
            e.remove(id).ok_or_else(|| no_task(id))?
        };
        let (pid, sb) = (entry.pid(), entry.sandbox.clone());
        if entry.workload && sb.vm.exit_status().is_none() {
            if let Err(e) = workload::remove_container(&sb, id).await {
                slog::warn!(self.log, "removing the container from the VM"; "container_id" => id,
                    "error" => crate::error::message(&e));
            }
        }
        sandbox::removal_step(&self.log, id, "remove:container");
        if let Some(m) = entry.mgmt {
            m.stop().await;
            let run_root = self.config.as_ref().ok().map(|c| c.runtime.run_dir.as_path());
            sb.shutdown(VM_STOP_GRACE, run_root).await?;
        } else {
            // Unshared even when the VM is gone.
            let _ = sandbox::shares::unshare_container(&sb.run_dir, id);
        }
        let (exit_status, exited_at) = entry.init.exited().unwrap_or((0, now()));
        let ev = TaskDelete {
            container_id: id.to_owned(),
            id: id.to_owned(),
            pid,
            exit_status,
            exited_at: MessageField::some(exited_at.clone()),
            ..Default::default()
        };
        self.events.publish(topics::TASK_DELETE_EVENT_TOPIC, Box::new(ev)).await;
        Ok(Removed { pid, exit_status, exited_at })
    }
}
