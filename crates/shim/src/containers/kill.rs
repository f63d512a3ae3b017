//! Kill: a signal to a process in the VM, through the agent; without a workload, the
//! sandbox's task is the VM, and a kill stops it.

use std::time::Duration;

use super::process::{agent_exec_id, Proc};
use super::Containers;
use crate::error::{Error, Result};

/// How long a kill waits for the guest's agent to signal a process.
pub(crate) const KILL_AGENT_WAIT: Duration = Duration::from_secs(10);

impl Containers {
    /// Send `signal` to process `exec_id` of container `id` (with `all`, to every process of
    /// the container). An exited process has nothing left to signal: that is no error.
    pub(crate) async fn kill(&self, id: &str, exec_id: &str, signal: u32, all: bool) -> Result<()> {
        let target = self
            .with(id, |entry| {
                // With `all` neither has its container (kata's agent forgets a reaped init and
                // refuses the call).
                if entry.proc(exec_id)?.exited().is_some() {
                    return Ok(None);
                }
                // A SIGKILL of the init of a container in the pod's PID namespace ends all its
                // processes, as runc's shim kills them all when such an init ends: there the
                // init is no PID 1, and a child left behind (holding the output) would keep the
                // container up.
                let all = all || (entry.shared_pidns && exec_id.is_empty() && signal == 9);
                let pod_init = entry.owns_sandbox && exec_id.is_empty();
                Ok(Some((entry.sandbox.clone(), entry.workload, pod_init, all)))
            })
            .await?;
        let Some((sb, workload, pod_init, all)) = target else { return Ok(()) };
        if !workload {
            return self.stop_vm_task(id, &sb, signal).await;
        }
        self.remember_sent(id, exec_id, signal, all).await;
        let eid = if all { "" } else { agent_exec_id(id, exec_id) };
        let signalled = tokio::time::timeout(KILL_AGENT_WAIT, sb.agent.signal_process(id, eid, signal));
        match (signalled.await, pod_init) {
            (Ok(r), _) => Ok(r?),
            (Err(_), false) => {
                let what = format!("the guest's agent to signal {id} ({} s)", KILL_AGENT_WAIT.as_secs());
                Err(Error::from(hypervisor::Error::Timeout(what)))
            }
            // The pod must always be stoppable: a wedged agent cannot hold its init, so the VM
            // ends, and with it every process of the pod (TaskExit 137, by QEMU's watcher).
            (Err(_), true) => {
                slog::warn!(self.log, "the agent did not answer a kill of the sandbox's init: stopping the VM";
                    "sandbox_id" => id, "waited_s" => KILL_AGENT_WAIT.as_secs());
                let _ = sb.vm.stop(Duration::from_millis(0)).await;
                Ok(())
            }
        }
    }

    /// Remembered before it is sent: the agents give a killed process's status as the signal's
    /// number, which becomes runc's 128+N only for a signal the runtime sent.
    async fn remember_sent(&self, id: &str, exec_id: &str, signal: u32, all: bool) {
        let e = self.entries.lock().await;
        let Some(entry) = e.get(id) else { return };
        let procs: Vec<&Proc> = match all {
            true => entry.procs().map(|(_, p)| p).collect(),
            false => entry.proc(exec_id).into_iter().collect(),
        };
        for p in procs {
            p.sent(signal);
        }
        // kata's agent turns a SIGTERM to an init with no handler for it into a SIGKILL.
        if signal == 15 && exec_id.is_empty() {
            entry.init.sent(9);
        }
    }

    /// No workload: the sandbox's task is the VM, stopped (at once for a SIGKILL), its exit
    /// 128+N recorded and told.
    async fn stop_vm_task(&self, id: &str, sb: &crate::sandbox::Sandbox, signal: u32) -> Result<()> {
        let grace = if signal == 9 { Duration::from_millis(0) } else { Duration::from_secs(5) };
        let _ = sb.vm.stop(grace).await;
        let recorded = self.with(id, |entry| Ok(entry.init.record_exit(128 + signal))).await.unwrap_or(false);
        if recorded {
            self.events.exit(id, "", sb.vm.pid(), 128 + signal).await;
        }
        Ok(())
    }
}
