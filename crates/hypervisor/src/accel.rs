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

    /// Resolve the configured choice; `auto` probes once per QEMU, machine, kernel and boot of
    /// the host: the answer is kept in this process and, when `cache_dir` is given (the runtime's
    /// run directory, root's and not writable by others), in a file there for the next shims.
    pub fn resolve(
        choice: AccelChoice,
        qemu: &Path,
        machine: MachineType,
        kernel: &Path,
        cache_dir: Option<&Path>,
    ) -> Accel {
        match choice {
            AccelChoice::Kvm => Accel::Kvm,
            AccelChoice::Tcg => Accel::Tcg,
            AccelChoice::Auto => {
                static PROBED: OnceLock<Mutex<Vec<(String, Accel)>>> = OnceLock::new();
                let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
                let key = format!("{}|{machine:?}|{}|{}", qemu.display(), kernel.display(), boot.trim());
                let cache = PROBED.get_or_init(|| Mutex::new(Vec::new()));
                let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
                if let Some((_, a)) = cache.iter().find(|(k, _)| *k == key) {
                    return *a;
                }
                let file = cache_dir.filter(|d| root_only(d)).map(|d| d.join(CACHE_FILE));
                let a = match file.as_deref().and_then(|f| cached(f, &key)) {
                    Some(a) => a,
                    None => {
                        let a = if kvm_boots(qemu, machine, kernel) { Accel::Kvm } else { Accel::Tcg };
                        if let Some(f) = &file {
                            remember(f, &key, a);
                        }
                        a
                    }
                };
                cache.push((key, a));
                a
            }
        }
    }
}

/// The probe's answers on this host, one `<accel> <key>` line each.
const CACHE_FILE: &str = "accel-probe";

/// Owned by root and not writable by group or others.
fn root_only(p: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(p).is_ok_and(|m| m.uid() == 0 && m.mode() & 0o022 == 0)
}

fn cached(file: &Path, key: &str) -> Option<Accel> {
    if !root_only(file) {
        return None;
    }
    let text = std::fs::read_to_string(file).ok()?;
    text.lines().find_map(|l| match l.split_once(' ') {
        Some(("kvm", k)) if k == key => Some(Accel::Kvm),
        Some(("tcg", k)) if k == key => Some(Accel::Tcg),
        _ => None,
    })
}

/// Add the answer (written to a new file, renamed over the old: readers never see half).
fn remember(file: &Path, key: &str, a: Accel) {
    use std::os::unix::fs::OpenOptionsExt;
    let mut text: String = std::fs::read_to_string(file).unwrap_or_default();
    text.push_str(&format!("{} {key}\n", a.as_str()));
    let tmp = file.with_extension(format!("tmp{}", std::process::id()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&tmp)
        .and_then(|mut f| std::io::Write::write_all(&mut f, text.as_bytes()));
    if written.is_ok() {
        let _ = std::fs::rename(&tmp, file);
    } else {
        let _ = std::fs::remove_file(&tmp);
    }
}

/// How long the probe waits for the kernel's first line under KVM.
pub(crate) const PROBE_LIMIT: Duration = Duration::from_secs(3);

/// Boot `kernel` under KVM (no initrd, no disk: it panics and QEMU exits after its first lines);
/// KVM works if the kernel's banner reaches the serial port.
pub(crate) fn kvm_boots(qemu: &Path, machine: MachineType, kernel: &Path) -> bool {
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
