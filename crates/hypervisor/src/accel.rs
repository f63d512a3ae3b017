//! KVM when it really works, TCG otherwise. `/dev/kvm` existing is not enough: on some hosts
//! QEMU aborts while setting up the vCPU under KVM (seen here: "failed to set MSR 0x10a"), and on
//! others QEMU starts but the guest never runs a single instruction of its kernel (seen here with
//! nested virtualisation: nothing on the serial console, a "KVM internal error" register dump).
//! So `auto` boots the configured kernel under KVM once and waits for its first line.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use crate::config::{AccelChoice, MachineType};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn as_str(&self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }

    /// Resolve the configured choice; `auto` probes once per QEMU, machine and kernel in this
    /// process (under a second where KVM works, [`PROBE_LIMIT`] at most where it does not).
    pub fn resolve(choice: AccelChoice, qemu: &Path, machine: MachineType, kernel: &Path) -> Accel {
        match choice {
            AccelChoice::Kvm => Accel::Kvm,
            AccelChoice::Tcg => Accel::Tcg,
            AccelChoice::Auto => {
                static PROBED: OnceLock<Mutex<Vec<(String, Accel)>>> = OnceLock::new();
                let key = format!("{}|{machine:?}|{}", qemu.display(), kernel.display());
                let cache = PROBED.get_or_init(|| Mutex::new(Vec::new()));
                let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
                if let Some((_, a)) = cache.iter().find(|(k, _)| *k == key) {
                    return *a;
                }
                let a = if kvm_boots(qemu, machine, kernel) { Accel::Kvm } else { Accel::Tcg };
                cache.push((key, a));
                a
            }
        }
    }
}

/// How long the probe waits for the kernel's first line under KVM.
pub const PROBE_LIMIT: Duration = Duration::from_secs(3);

/// Boot `kernel` under KVM (no initrd, no disk: it panics and QEMU exits after its first lines);
/// KVM works if the kernel's banner reaches the serial port.
pub fn kvm_boots(qemu: &Path, machine: MachineType, kernel: &Path) -> bool {
    if std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_err() {
        return false;
    }
    let m = match machine {
        MachineType::Q35 => "q35,accel=kvm",
        MachineType::Pc => "pc,accel=kvm",
    };
    let child = Command::new(qemu)
        .args(["-machine", m, "-cpu", "host", "-m", "128", "-nodefaults", "-no-user-config", "-display", "none"])
        .args(["-monitor", "none", "-serial", "stdio", "-no-reboot", "-kernel"])
        .arg(kernel)
        .args(["-append", "console=ttyS0 panic=-1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn();
    let Ok(mut child) = child else { return false };
    let Some(mut out) = child.stdout.take() else { return false };
    let (tx, rx) = std::sync::mpsc::channel();
    // The reader ends when QEMU exits or is killed below.
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
            if seen.windows(13).any(|w| w == b"Linux version") {
                let _ = tx.send(());
                return;
            }
        }
    });
    let booted = rx.recv_timeout(PROBE_LIMIT).is_ok();
    let _ = child.kill();
    let _ = child.wait();
    booted
}
