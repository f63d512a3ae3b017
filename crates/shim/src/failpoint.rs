//! Failure injection for tests: named steps of the shim where a test build can make the step
//! fail, stall, or kill the shim with SIGKILL. Debug builds only (the ones `cargo test` makes); in
//! a release build [`hit`] is always `Ok` and reads nothing.
//!
//! `KATA_NET_FAILPOINTS` names a file (containerd passes its environment to the shims) whose
//! lines are `<step> fail`, `<step> stall <ms>` or `<step> kill`. The file must be root's and not
//! writable by group or others, or it is ignored. It is read at every step, so a test changes it
//! between sandboxes without restarting containerd.
//!
//! Steps: `start:netns`, `start:endpoint:<i>`, `start:qemu:spawned`,
//! `start:agent:interface:<name>`, `start:agent:routes`, `start:agent:neighbors`,
//! `start:agent:sandbox`; every NIC hotplug (factory mode at start, add-iface later):
//! `hotplug:getfd`, `hotplug:netdev_add`, `hotplug:device_add`; the operator's operations:
//! `add-iface:host`, `add-iface:hotplugged`, `add-iface:configured`, `del-iface:found`,
//! `ipvs:applied`.

/// The environment variable naming the failpoint file.
pub const FAILPOINTS_ENV: &str = "KATA_NET_FAILPOINTS";

/// Why a step failed on purpose.
#[derive(Debug, thiserror::Error)]
#[error("failure injected at step {0}")]
pub struct Injected(pub String);

/// Pass the step `step`: fail, stall or die here if the failpoint file says so.
#[cfg(debug_assertions)]
pub fn hit(step: &str) -> Result<(), Injected> {
    use std::os::unix::fs::MetadataExt;
    let Some(path) = std::env::var_os(FAILPOINTS_ENV) else { return Ok(()) };
    let Ok(meta) = std::fs::metadata(&path) else { return Ok(()) };
    if meta.uid() != 0 || meta.mode() & 0o022 != 0 {
        return Ok(());
    }
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some(step) {
            continue;
        }
        match (words.next(), words.next().and_then(|n| n.parse::<u64>().ok())) {
            (Some("fail"), _) => return Err(Injected(step.to_owned())),
            (Some("stall"), Some(ms)) => std::thread::sleep(std::time::Duration::from_millis(ms)),
            (Some("kill"), _) => {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGKILL);
            }
            _ => {}
        }
    }
    Ok(())
}

/// Release builds: no failure injection.
#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn hit(_step: &str) -> Result<(), Injected> {
    Ok(())
}
