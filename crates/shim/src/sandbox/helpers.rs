//! The sandbox's helper processes (virtiofsd, the hybrid vsock backend) watched while its VM
//! runs: one that dies leaves the VM without its filesystem or its agent for good, so, as kata's
//! runtime does when virtiofsd quits, the death is logged naming the helper and the VM is
//! stopped; its exit reaches containerd as the sandbox's TaskExit. In a teardown the VM stops
//! first and the watch ends with it, so a helper killed then is not reported.

use std::sync::Arc;
use std::time::Duration;

use hypervisor::Vm;

/// How often the helpers are looked at.
const CHECK_EVERY: Duration = Duration::from_millis(500);

/// One helper: its name, pid and start time (so a reused pid is not taken for it), and the
/// thread it cannot serve without, if any.
#[derive(Debug, Clone)]
pub struct Helper {
    pub name: &'static str,
    pub pid: u32,
    start: Option<u64>,
    thread: Option<&'static str>,
}

/// Field 22 of `/proc/<pid>/stat` (the start time) and the state, field 3; `None`: no such
/// process. The command name (field 2) may hold spaces and parentheses: fields are counted from
/// its closing parenthesis.
fn stat(pid: u32) -> Option<(char, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 2..];
    let mut fields = rest.split(' ');
    let state = fields.next()?.chars().next()?;
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

impl Helper {
    pub fn new(name: &'static str, pid: u32) -> Self {
        Self { name, pid, start: stat(pid).map(|(_, s)| s), thread: None }
    }

    /// A helper that serves only while its thread `comm` runs: vhost-device-vsock 0.3.0 ends its
    /// worker thread on an error and lives on, answering nothing.
    pub fn with_thread(mut self, comm: &'static str) -> Self {
        self.thread = Some(comm);
        self
    }

    /// Whether it still runs: there, the same process, not a zombie, its thread (if any) there.
    pub fn alive(&self) -> bool {
        let running = match stat(self.pid) {
            Some((state, start)) => !matches!(state, 'Z' | 'X') && Some(start) == self.start,
            None => false,
        };
        running && self.thread.is_none_or(|t| super::channel::has_thread(self.pid, t))
    }
}

/// Watch `helpers` while `vm` runs; the first that dies stops the VM.
pub fn watch(helpers: Vec<Helper>, vm: Arc<Vm>, log: slog::Logger) {
    if helpers.is_empty() {
        return;
    }
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = vm.wait() => return,
                _ = tokio::time::sleep(CHECK_EVERY) => {}
            }
            if vm.exit_status().is_some() {
                return;
            }
            if let Some(dead) = helpers.iter().find(|h| !h.alive()) {
                slog::error!(log, "a helper of the sandbox exited (or lost the thread it serves by): the VM cannot go on without it and is stopped";
                    "helper" => dead.name, "pid" => dead.pid, "thread" => dead.thread.unwrap_or("-"));
                let _ = vm.stop(Duration::from_millis(0)).await;
                return;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn a_helper_is_alive_while_it_runs_and_not_once_it_exited() {
        let mut child = tokio::process::Command::new("sleep").arg("30").kill_on_drop(true).spawn().unwrap();
        let h = super::Helper::new("sleep", child.id().unwrap());
        assert!(h.alive());
        child.start_kill().unwrap();
        // A zombie until reaped, then gone: not alive either way.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert!(!h.alive());
        let _ = child.wait().await;
        assert!(!h.alive());
        assert!(!super::Helper::new("none", u32::MAX).alive());
    }

    #[tokio::test]
    async fn a_helper_without_its_thread_is_not_alive() {
        let child = tokio::process::Command::new("sleep").arg("30").kill_on_drop(true).spawn().unwrap();
        let pid = child.id().unwrap();
        // A process's main thread has its command's name.
        assert!(super::Helper::new("sleep", pid).with_thread("sleep").alive());
        assert!(!super::Helper::new("sleep", pid).with_thread("vring_worker").alive(), "its worker is gone");
    }
}
