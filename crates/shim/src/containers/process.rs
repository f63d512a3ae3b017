//! The processes of the sandbox's containers as containerd sees them: each container's init and
//! execs, their exits (from the agent's WaitProcess, or QEMU's death for all of them), and the
//! TaskExit events that tell containerd.

use std::sync::Arc;
use std::time::Duration;

use containerd_shim::publisher::RemotePublisher;
use containerd_shim_protos::api::Status;
use containerd_shim_protos::events::task::{TaskExit, TaskOOM};
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::{MessageDyn, MessageField};
use containerd_shim_protos::topics;

use super::Entries;
use crate::error::Error;
use crate::sandbox;
use crate::workload;

pub(crate) fn now() -> Timestamp {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    Timestamp { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32, ..Default::default() }
}

/// One process of a container, as containerd sees it: the container's init (exec id empty) or
/// an exec. Its pid is QEMU's (as kata's runtime reports it: the process runs in the VM).
#[derive(Debug)]
pub(crate) struct Proc {
    pub(crate) stdio: workload::io::Stdio,
    /// An exec's process, until it is started.
    pub(crate) spec: Option<agent_client::protocols::oci::Process>,
    pub(crate) started: bool,
    /// Set once, when the process exited (exit status, time).
    pub(crate) exit: tokio::sync::watch::Sender<Option<(u32, Timestamp)>>,
    /// The signals the runtime sent it (Kill).
    signals: std::sync::Mutex<std::collections::HashSet<u32>>,
}

impl Proc {
    pub(crate) fn new(stdio: workload::io::Stdio, spec: Option<agent_client::protocols::oci::Process>) -> Self {
        Self { stdio, spec, started: false, exit: tokio::sync::watch::channel(None).0, signals: Default::default() }
    }

    /// The runtime sent it signal `sig`.
    pub(crate) fn sent(&self, sig: u32) {
        self.signals.lock().unwrap_or_else(|e| e.into_inner()).insert(sig);
    }

    /// Whether the runtime sent it signal `sig`.
    pub(crate) fn was_sent(&self, sig: u32) -> bool {
        self.signals.lock().unwrap_or_else(|e| e.into_inner()).contains(&sig)
    }

    /// The exit status as runc gives it: the agents report a process killed by signal N as N,
    /// which is taken for the signal (128+N) when the runtime sent it N. A process that exits
    /// with such a code on its own after that signal reads as killed too: the agents cannot
    /// tell them apart.
    pub(crate) fn runc_status(&self, status: u32) -> u32 {
        match (1..=64).contains(&status) && self.was_sent(status) {
            true => 128 + status,
            false => status,
        }
    }

    pub(crate) fn exited(&self) -> Option<(u32, Timestamp)> {
        self.exit.borrow().clone()
    }

    /// Record the exit unless one is recorded; whether this one was.
    pub(crate) fn record_exit(&self, code: u32) -> bool {
        self.exit.send_if_modified(|e| match e {
            Some(_) => false,
            None => {
                *e = Some((code, now()));
                true
            }
        })
    }

    pub(crate) fn status(&self) -> Status {
        match (self.exited(), self.started) {
            (Some(_), _) => Status::STOPPED,
            (None, true) => Status::RUNNING,
            (None, false) => Status::CREATED,
        }
    }
}

/// The agent's name for a process: the container's id for its init.
pub(crate) fn agent_exec_id<'a>(cid: &'a str, exec_id: &'a str) -> &'a str {
    match exec_id {
        "" => cid,
        e => e,
    }
}

/// Publishes the Task service's events to containerd.
#[derive(Clone)]
pub(crate) struct Events {
    pub(crate) publisher: Arc<RemotePublisher>,
    pub(crate) namespace: String,
}

impl Events {
    pub(crate) async fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        let _ = self.publisher.publish(ttrpc::context::Context::default(), topic, &self.namespace, event).await;
    }

    pub(crate) async fn exit(&self, cid: &str, exec_id: &str, pid: u32, code: u32) {
        let id = agent_exec_id(cid, exec_id).to_owned();
        let exit = TaskExit {
            container_id: cid.to_owned(),
            id,
            pid,
            exit_status: code,
            exited_at: MessageField::some(now()),
            ..Default::default()
        };
        self.publish(topics::TASK_EXIT_EVENT_TOPIC, Box::new(exit)).await;
    }
}

/// The exit code containerd gets for QEMU's exit status (`signal: 9 ...` → 137).
/// The exit code of a status that says nothing (as runc's shim reports it).
pub(crate) const UNKNOWN_EXIT: u32 = 255;

pub(crate) fn exit_code(status: &str) -> u32 {
    let number = |prefix: &str| {
        status.strip_prefix(prefix).and_then(|r| r.split_whitespace().next()).and_then(|n| n.parse::<u32>().ok())
    };
    match (number("signal: "), number("exit status: ")) {
        (Some(sig), _) => 128 + sig,
        (None, Some(code)) => code,
        (None, None) => UNKNOWN_EXIT,
    }
}

/// Follow process `exec_id` of container `cid` in the VM: start its IO copies, let its output
/// finish, wait for its exit (WaitProcess), then record the exit and tell containerd (TaskExit).
pub(crate) fn follow_process(
    entries: Entries,
    events: Events,
    sb: Arc<sandbox::Sandbox>,
    cid: String,
    exec_id: String,
    stdio: workload::io::Stdio,
) {
    let eid = agent_exec_id(&cid, &exec_id).to_owned();
    let mut copies = workload::io::start(&sb.agent, &cid, &eid, &stdio, &sb.log);
    tokio::spawn(async move {
        copies.outputs_done().await;
        let code = match sb.agent.wait_process(&cid, &eid).await {
            Ok(status) => u32::try_from(status).unwrap_or(UNKNOWN_EXIT),
            Err(e) => {
                // The VM going is why, most likely: its exit is the process's (see watch_exit).
                if tokio::time::timeout(Duration::from_secs(3), sb.vm.wait()).await.is_ok() {
                    copies.finish();
                    return;
                }
                slog::warn!(sb.log, "waiting for a process failed"; "container_id" => &cid, "exec_id" => &eid,
                    "error" => crate::error::message(&Error::from(e)));
                UNKNOWN_EXIT
            }
        };
        copies.finish();
        // Killed (SIGKILL: the agents give the signal's number) after an OOM kill in its
        // container: 137, as runc reports an OOM-killed process, with the TaskOOM before it.
        // The agent tells the OOM kill before the exit, but on another call: a SIGKILL the
        // runtime did not send waits a moment for it (one it sent is 137 anyway).
        let sent_kill = {
            let e = entries.lock().await;
            e.get(&cid).and_then(|entry| entry.proc(&exec_id).ok()).is_some_and(|p| p.was_sent(9))
        };
        let mut code = code;
        if code == 9 && !sent_kill {
            for _ in 0..10 {
                if sb.oom_killed.lock().unwrap_or_else(|e| e.into_inner()).contains(&cid) {
                    code = 137;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let recorded = {
            let e = entries.lock().await;
            e.get(&cid).and_then(|entry| entry.proc(&exec_id).ok()).and_then(|p| {
                let status = p.runc_status(code);
                p.record_exit(status).then_some(status)
            })
        };
        let Some(code) = recorded else { return };
        events.exit(&cid, &exec_id, sb.vm.pid(), code).await;
    });
}

/// The guest's OOM kills (GetOOMEvent, which waits for the next one): each becomes a TaskOOM
/// for its container (containerd's CRI then gives the container the reason OOMKilled), and the
/// container is remembered as OOM-killed. Ends with the VM, or when the agent does not serve it.
pub(crate) fn watch_oom(events: Events, sb: Arc<sandbox::Sandbox>) {
    tokio::spawn(async move {
        loop {
            match sb.agent.get_oom_event().await {
                Ok(cid) => {
                    slog::warn!(sb.log, "a process of the container was killed by the OOM killer"; "container_id" => &cid);
                    sb.oom_killed.lock().unwrap_or_else(|e| e.into_inner()).insert(cid.clone());
                    let ev = TaskOOM { container_id: cid, ..Default::default() };
                    events.publish(topics::TASK_OOM_EVENT_TOPIC, Box::new(ev)).await;
                }
                Err(e) => {
                    if sb.vm.exit_status().is_some() || e.code() == Some(ttrpc::Code::UNIMPLEMENTED) {
                        return;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    });
}

/// When QEMU exits on its own (crashed, killed from outside), every process of the sandbox has
/// exited: record it (Wait and State see it) and tell containerd with TaskExit, once each. A
/// Kill that stopped the VM recorded its exit first, so this then stays quiet.
///
/// The shim library reaps every child on SIGCHLD (`waitpid(-1)`) and reports it to its monitor;
/// when it reaps QEMU first, QEMU's own waiter gets no status (ECHILD), so the monitor's report
/// for QEMU's pid is what counts then.
pub(crate) fn watch_exit(entries: Entries, events: Events, id: String, sb: Arc<sandbox::Sandbox>) {
    tokio::spawn(async move {
        use containerd_shim::monitor::{Subject, Topic};
        let pid = sb.vm.pid();
        let mut reaped = containerd_shim::asynchronous::monitor::monitor_subscribe(Topic::Pid).await.ok();
        let status = sb.vm.wait().await;
        let mut code = exit_code(&status);
        if let (UNKNOWN_EXIT, Some(sub)) = (code, reaped.as_mut()) {
            let by_monitor = async {
                while let Some(ev) = sub.rx.recv().await {
                    if matches!(ev.subject, Subject::Pid(p) if p as u32 == pid) {
                        return Some(ev.exit_code as u32);
                    }
                }
                None
            };
            if let Ok(Some(c)) = tokio::time::timeout(Duration::from_secs(2), by_monitor).await {
                code = c;
            }
        }
        if let Some(sub) = reaped {
            let _ = containerd_shim::asynchronous::monitor::monitor_unsubscribe(sub.id).await;
        }
        let exited: Vec<(String, String)> = {
            let e = entries.lock().await;
            e.iter()
                .filter(|(_, entry)| Arc::ptr_eq(&entry.sandbox, &sb))
                .flat_map(|(cid, entry)| entry.procs().map(move |(x, p)| (cid, x, p)))
                .filter(|(_, _, p)| p.record_exit(code))
                .map(|(c, x, _)| (c.clone(), x.to_owned()))
                .collect()
        };
        if !exited.is_empty() {
            slog::warn!(sb.log, "QEMU exited on its own"; "sandbox_id" => &id, "status" => &status);
        }
        for (cid, exec_id) in exited {
            events.exit(&cid, &exec_id, pid, code).await;
        }
    });
}

#[cfg(test)]
mod tests {
    #[test]
    fn exit_codes_as_containerd_expects_them() {
        assert_eq!(super::exit_code("signal: 9 (SIGKILL)"), 137);
        assert_eq!(super::exit_code("exit status: 1"), 1);
        assert_eq!(super::exit_code("exit status: 0"), 0);
        assert_eq!(super::exit_code("unknown"), 255);
    }

    #[test]
    fn a_status_is_runcs_only_for_a_signal_the_runtime_sent() {
        let p = super::Proc::new(Default::default(), None);
        assert_eq!(p.runc_status(9), 9, "a 9 of the process's own is its exit code");
        p.sent(9);
        assert_eq!(p.runc_status(9), 137);
        assert_eq!(p.runc_status(15), 15, "SIGTERM was not sent");
        assert_eq!(p.runc_status(0), 0);
        assert_eq!(p.runc_status(200), 200, "no signal has that number");
    }

    #[test]
    fn an_exit_is_recorded_once_and_makes_the_process_stopped() {
        use containerd_shim_protos::api::Status;
        let mut p = super::Proc::new(Default::default(), None);
        assert_eq!(p.status(), Status::CREATED);
        p.started = true;
        assert_eq!(p.status(), Status::RUNNING);
        assert!(p.record_exit(3));
        assert!(!p.record_exit(4), "the first exit stays");
        assert_eq!(p.exited().map(|(c, _)| c), Some(3));
        assert_eq!(p.status(), Status::STOPPED);
    }

    #[test]
    fn the_agents_name_for_an_init_is_its_containers_id() {
        assert_eq!(super::agent_exec_id("c1", ""), "c1");
        assert_eq!(super::agent_exec_id("c1", "e1"), "e1");
    }
}
