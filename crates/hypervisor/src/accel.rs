//! KVM when it really works, TCG otherwise. `/dev/kvm` existing is not enough: on some hosts
//! QEMU aborts while setting up the vCPU under KVM (seen here: "failed to set MSR 0x10a"), so
//! `auto` starts QEMU paused under KVM once and checks that it comes up.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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

    /// Resolve the configured choice; `auto` probes (about a second at most, once per call).
    pub fn resolve(choice: AccelChoice, qemu: &Path, machine: MachineType) -> Accel {
        match choice {
            AccelChoice::Kvm => Accel::Kvm,
            AccelChoice::Tcg => Accel::Tcg,
            AccelChoice::Auto if kvm_works(qemu, machine) => Accel::Kvm,
            AccelChoice::Auto => Accel::Tcg,
        }
    }
}

/// Start QEMU paused under KVM; if it is still alive after a second, KVM works.
pub fn kvm_works(qemu: &Path, machine: MachineType) -> bool {
    if std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_err() {
        return false;
    }
    let m = match machine {
        MachineType::Q35 => "q35,accel=kvm",
        MachineType::Pc => "pc,accel=kvm",
    };
    let child = Command::new(qemu)
        .args(["-machine", m, "-cpu", "host", "-m", "64", "-nodefaults", "-display", "none", "-S"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let Ok(mut child) = child else { return false };
    let start = Instant::now();
    let alive = loop {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => break false,
            Ok(None) if start.elapsed() > Duration::from_secs(1) => break true,
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    alive
}
