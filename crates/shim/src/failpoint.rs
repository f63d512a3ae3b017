//! Failure injection for tests: named steps of the shim where a test build can make the step
//! fail, stall, or kill the shim with SIGKILL. Debug builds only (the ones `cargo test` makes); in
//! a release build [`hit`] is always `Ok` and reads nothing.
//!
//! `KATA_NET_FAILPOINTS` names a file (containerd passes its environment to the shims) whose
//! lines are `<step> fail`, `<step> fail-once` (the first time in this shim's life only),
//! `<step> stall <ms>` or `<step> kill`. The file must be root's and not
//! writable by group or others, or it is ignored. It is read at every step, so a test changes it
//! between sandboxes without restarting containerd.
//!
//! Steps: `start:netns`, `start:endpoint:<i>`, `start:qemu:spawned`,
//! `start:agent:interface:<name>`, `start:agent:routes`, `start:agent:neighbors`,
//! `start:agent:sandbox`; a container in the VM: `container:shared` (rootfs and binds mounted),
//! `container:created` (the agent made it); every NIC hotplug (factory mode at start, add-iface later):
//! `hotplug:getfd`, `hotplug:netdev_add`, `hotplug:device_add`; the operator's operations:
//! `add-iface:host`, `add-iface:hotplugged`, `add-iface:configured`, `del-iface:found`,
//! `ipvs:applied`, `ipvs:restored`; following the namespace (a new pod link):
//! `follow:attached`, `follow:hotplugged`; while waiting for the agent over hybrid vsock,
//! `start:vsock:worker` (a failure reads as the backend's worker thread gone); a container's or
//! the sandbox's removal (Delete): `remove:container` (the container removed from the VM),
//! `remove:vm-stopped`, `remove:torn-down` (before the state file is forgotten); a failure there
//! is logged and the removal goes on.

/// The environment variable naming the failpoint file.
pub const FAILPOINTS_ENV: &str = "KATA_NET_FAILPOINTS";

/// Why a step failed on purpose.
#[derive(Debug, thiserror::Error)]
#[error("failure injected at step {0}")]
pub struct Injected(pub String);

/// What the failpoint file says for a step (never anything in a release build).
#[cfg_attr(not(debug_assertions), allow(dead_code))]
enum Action {
    Fail,
    Stall(std::time::Duration),
    Kill,
}

/// The action for `step`, if the file names one.
#[cfg(debug_assertions)]
fn action(step: &str) -> Option<Action> {
    use std::os::unix::fs::MetadataExt;
    let path = std::env::var_os(FAILPOINTS_ENV)?;
    let meta = std::fs::metadata(&path).ok()?;
    if meta.uid() != 0 || meta.mode() & 0o022 != 0 {
        return None;
    }
    let text = std::fs::read_to_string(&path).ok()?;
    text.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        if words.next() != Some(step) {
            return None;
        }
        match (words.next(), words.next().and_then(|n| n.parse::<u64>().ok())) {
            (Some("fail"), _) => Some(Action::Fail),
            (Some("fail-once"), _) => {
                static FIRED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
                let mut fired = FIRED.lock().unwrap_or_else(|e| e.into_inner());
                if fired.iter().any(|s| s == step) {
                    None
                } else {
                    fired.push(step.to_owned());
                    Some(Action::Fail)
                }
            }
            (Some("stall"), Some(ms)) => Some(Action::Stall(std::time::Duration::from_millis(ms))),
            (Some("kill"), _) => Some(Action::Kill),
            _ => None,
        }
    })
}

#[cfg(not(debug_assertions))]
fn action(_step: &str) -> Option<Action> {
    None
}

fn kill_self() {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGKILL);
}

/// Pass the step `step`: fail, stall (blocking this thread) or die here if the failpoint file
/// says so. For steps outside the async runtime's tasks; in them, [`hit_async`].
pub fn hit(step: &str) -> Result<(), Injected> {
    act(action(step), step)
}

/// What `action` does at `step` (a stall blocks this thread).
fn act(action: Option<Action>, step: &str) -> Result<(), Injected> {
    match action {
        Some(Action::Fail) => Err(Injected(step.to_owned())),
        Some(Action::Stall(d)) => {
            std::thread::sleep(d);
            Ok(())
        }
        Some(Action::Kill) => {
            kill_self();
            Ok(())
        }
        None => Ok(()),
    }
}

/// [`hit`], stalling without blocking the runtime's thread.
pub async fn hit_async(step: &str) -> Result<(), Injected> {
    match action(step) {
        Some(Action::Stall(d)) => {
            tokio::time::sleep(d).await;
            Ok(())
        }
        other => act(other, step),
    }
}
