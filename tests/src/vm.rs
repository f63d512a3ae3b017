//! Helpers for tests that boot the guest image: where it is, a scratch directory, a QEMU config,
//! and waiting for the agent.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The guest image built by `make guest-image`; fails loudly when it is missing.
pub fn guest_image() -> PathBuf {
    let dir = std::env::var_os("GUEST_IMAGE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/guest-image"));
    for f in ["vmlinuz", "initrd.img"] {
        assert!(dir.join(f).is_file(), "{} missing: run `make guest-image` (make test does)", dir.join(f).display());
    }
    dir.canonicalize().unwrap()
}

/// A directory removed on drop.
#[derive(Debug)]
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Self {
        let d = std::env::temp_dir().join(format!("knt-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Self(d)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `[hypervisor.qemu]` for the guest image, with the accelerator probed (`auto`).
pub fn qemu_config(hotplug_slots: u32) -> hypervisor::QemuConfig {
    let img = guest_image();
    let mut c = hypervisor::QemuConfig {
        path: "/usr/bin/qemu-system-x86_64".into(),
        kernel: img.join("vmlinuz"),
        initrd: img.join("initrd.img"),
        hotplug_slots,
        ..Default::default()
    };
    c.resolve_defaults();
    c
}

/// Wait for the guest agent's ready line on the console.
pub fn wait_agent_ready(run_dir: &Path, limit: Duration) {
    let start = Instant::now();
    loop {
        let log = std::fs::read_to_string(run_dir.join("console.log")).unwrap_or_default();
        if log.contains("guest-agent: ready") {
            return;
        }
        assert!(start.elapsed() < limit, "agent not ready after {limit:?}; console:\n{log}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The fds of a process that point at `target` (e.g. "/dev/net/tun").
pub fn fds_pointing_at(pid: u32, target: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter(|e| std::fs::read_link(e.path()).map(|l| l.to_string_lossy() == target).unwrap_or(false))
                .count()
        })
        .unwrap_or(0)
}

/// Lower the soft `RLIMIT_NOFILE` of the calling process to 1024 (the hard limit stays): what a
/// shim started from a login shell or by containerd 2.x gets. QEMU must start under it.
pub fn limit_fds_to_1024() -> nix::Result<()> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    setrlimit(Resource::RLIMIT_NOFILE, 1024.min(hard), hard)
}

/// A VM of `config` in `dir`, its agent on virtio-serial, no step hook.
pub fn vm_spec(dir: &Scratch, config: hypervisor::QemuConfig) -> hypervisor::VmSpec {
    hypervisor::VmSpec {
        config,
        run_dir: network::RunDir::at(dir.0.clone()),
        agent: hypervisor::AgentChannel::Serial { socket: dir.0.join("agent.sock") },
        log: crate::quiet_logger(),
        shared_fs: None,
        netns: None,
        hook: None,
    }
}
