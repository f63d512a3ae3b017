//! A running QEMU: launch with cold-plugged NICs, stop, notice death, hot(un)plug NICs.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use network::{NicBackend, NicConfig, NicHotplug, PciPath, RunDir};
use serde_json::{json, Value};
use tokio::sync::{watch, Mutex};

use crate::accel::Accel;
use crate::cmdline;
use crate::config::{AgentChannel, QemuConfig};
use crate::error::{Error, Result};
use crate::nic::{netdev_id, Netdev, NicDevice};
use crate::qmp::Qmp;
use crate::slots::{Slot, Slots};

/// Called at named steps of the VM's life: `spawned` (with QEMU's pid, right after the spawn,
/// before anything waits on QEMU) and after each hotplug step (`hotplug:getfd`,
/// `hotplug:netdev_add`, `hotplug:device_add`, with 0). The owner records what was made there
/// (QEMU's pid) and tests inject failures; an error fails the step and is undone like any other.
pub type StepHook = std::sync::Arc<dyn Fn(&str, u32) -> std::io::Result<()> + Send + Sync>;

/// The hook a running VM keeps (printed only as present or not).
struct Hook(Option<StepHook>);

impl std::fmt::Debug for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", if self.0.is_some() { "Some(hook)" } else { "None" })
    }
}

/// What to start.
#[derive(Clone)]
pub struct VmSpec {
    pub config: QemuConfig,
    /// The sandbox's run directory (QMP's socket, the console's and QEMU's logs); must exist.
    pub run_dir: RunDir,
    pub agent: AgentChannel,
    /// The vhost-user-fs socket of the sandbox's virtiofsd, if it has a shared directory.
    pub shared_fs: Option<PathBuf>,
    /// The network namespace QEMU runs in (the pod's, as kata does): the task's pid is QEMU's,
    /// and what looks at `/proc/<pid>/ns/net` (`ctr run --cni`) must find the pod's namespace,
    /// never the host's. `None`: the caller's.
    pub netns: Option<PathBuf>,
    pub log: slog::Logger,
    pub hook: Option<StepHook>,
}

impl std::fmt::Debug for VmSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmSpec")
            .field("config", &self.config)
            .field("run_dir", &self.run_dir)
            .field("agent", &self.agent)
            .field("hook", &self.hook.is_some())
            .finish_non_exhaustive()
    }
}

/// How long QMP commands, QEMU start-up and a device's removal may take.
const QMP_TIMEOUT: Duration = Duration::from_secs(10);
const START_TIMEOUT: Duration = Duration::from_secs(20);
const UNPLUG_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct Plugged {
    slot: Slot,
    chardev: Option<String>,
    /// `device_del` was sent and the guest has not let go yet (an earlier unplug timed out).
    unplug_pending: bool,
}

/// A running VM.
#[derive(Debug)]
pub struct Vm {
    pid: u32,
    qmp: Qmp,
    slots: Mutex<Slots>,
    plugged: Mutex<HashMap<String, Plugged>>,
    cold: Vec<(String, PciPath)>,
    exited: watch::Receiver<Option<String>>,
    accel: Accel,
    hook: Hook,
    /// How long an unplug waits for the guest to let go of the device.
    unplug_timeout: std::sync::Mutex<Duration>,
    log: slog::Logger,
}

impl Vm {
    /// Start QEMU with `nics` cold-plugged (their fds end up in QEMU only), and connect QMP.
    pub async fn launch(spec: VmSpec, nics: Vec<NicConfig>) -> Result<Self> {
        spec.config.validate()?;
        let cfg = &spec.config;
        let accel = {
            let (choice, path, machine, kernel) =
                (cfg.accelerator, cfg.path.clone(), cfg.machine_type, cfg.kernel.clone());
            let cache_dir = spec.run_dir.path().parent().map(Path::to_owned);
            tokio::task::spawn_blocking(move || Accel::resolve(choice, &path, machine, &kernel, cache_dir.as_deref()))
                .await
                .map_err(|e| Error::Unsupported(format!("accelerator probe failed: {e}")))?
        };
        slog::info!(spec.log, "starting QEMU"; "accelerator" => accel.as_str(), "machine" => ?cfg.machine_type,
            "cold_nics" => nics.len());
        let slots = Slots::new(cfg.machine_type, cfg.hotplug_slots as usize);
        let machine = cmdline::Machine {
            cfg,
            accel,
            run_dir: &spec.run_dir,
            agent: &spec.agent,
            shared_fs: spec.shared_fs.as_deref(),
            slots: &slots,
        };
        let (cl, cold) = cmdline::build(&machine, nics)?;
        let _ = std::fs::remove_file(spec.run_dir.qmp_socket());
        let started = Instant::now();
        let mut child = spawn_qemu(&spec, cl)?;
        let pid = child.id().unwrap_or(0);
        // The guest's console: whatever it writes, console.log stays within its cap.
        if let Some(out) = child.stdout.take() {
            tokio::spawn(crate::caplog::copy_capped(out, spec.run_dir.console_log(), crate::caplog::CAP));
        }
        if let Some(hook) = &spec.hook {
            if let Err(e) = hook("spawned", pid) {
                let _ = child.kill().await;
                return Err(Error::Spawn { path: cfg.path.display().to_string(), source: e });
            }
        }
        let (tx, exited) = watch::channel(None);
        tokio::spawn(async move {
            let status = child.wait().await.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
            let _ = tx.send(Some(status));
        });
        let qmp = connect_qmp(&spec.run_dir, &exited, pid).await?;
        slog::info!(spec.log, "QEMU running"; "pid" => pid, "start_ms" => started.elapsed().as_millis() as u64);
        Ok(Self {
            pid,
            qmp,
            slots: Mutex::new(slots),
            plugged: Mutex::new(HashMap::new()),
            cold,
            exited,
            accel,
            hook: Hook(spec.hook.clone()),
            unplug_timeout: std::sync::Mutex::new(UNPLUG_TIMEOUT),
            log: spec.log.clone(),
        })
    }

    /// Start the VM with its NICs: cold-plugged, or, in factory mode (`enable_template`), started
    /// without NICs and each hotplugged right after. Returns each NIC's PCI path by id. If a
    /// hotplug fails, the NICs plugged before it are unplugged and the VM is stopped.
    pub async fn start(spec: VmSpec, nics: Vec<NicConfig>) -> Result<(Self, Vec<(String, PciPath)>)> {
        if !spec.config.enable_template {
            let vm = Self::launch(spec, nics).await?;
            let paths = vm.cold.clone();
            return Ok((vm, paths));
        }
        let vm = Self::launch(spec, Vec::new()).await?;
        let mut paths = Vec::with_capacity(nics.len());
        for nic in nics {
            let id = nic.id.clone();
            match vm.hotplug_nic(nic).await {
                Ok(p) => paths.push((id, p)),
                Err(e) => {
                    for (id, _) in paths.iter().rev() {
                        let _ = vm.unplug_nic(id).await;
                    }
                    let _ = vm.stop(Duration::from_secs(5)).await;
                    return Err(e);
                }
            }
        }
        Ok((vm, paths))
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn accel(&self) -> Accel {
        self.accel
    }

    pub fn qmp(&self) -> &Qmp {
        &self.qmp
    }

    /// `Some(exit status)` once QEMU has exited.
    pub fn exit_status(&self) -> Option<String> {
        self.exited.borrow().clone()
    }

    /// Wait until QEMU exits; its exit status.
    pub async fn wait(&self) -> String {
        let mut rx = self.exited.clone();
        loop {
            if let Some(s) = rx.borrow().clone() {
                return s;
            }
            if rx.changed().await.is_err() {
                return "unknown".into();
            }
        }
    }

    /// Wait until the guest's driver has set up the virtio device `id` (its status has
    /// DRIVER_OK, per QMP `x-query-virtio-status`), or `timeout` passes. A hybrid vsock request
    /// that reaches the backend before the guest's vsock driver is up can wedge it; the agent's
    /// channel is connected only after this.
    pub async fn wait_virtio_ready(&self, id: &str, timeout: Duration) -> Result<()> {
        let path = format!("/machine/peripheral/{id}/virtio-backend");
        let start = Instant::now();
        loop {
            self.ensure_running()?;
            if let Ok(v) = self.qmp.execute("x-query-virtio-status", json!({ "path": path })).await {
                let ready = v["status"]["statuses"]
                    .as_array()
                    .is_some_and(|s| s.iter().any(|x| x.as_str().is_some_and(|x| x.contains("DRIVER_OK"))));
                if ready {
                    return Ok(());
                }
            }
            if start.elapsed() > timeout {
                return Err(Error::Timeout(format!("the guest's driver for {id} ({:?})", timeout)));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn ensure_running(&self) -> Result<()> {
        match self.exit_status() {
            Some(st) => Err(Error::Dead(format!("QEMU exited ({st})"))),
            None => Ok(()),
        }
    }

    /// Graceful `quit` over QMP, then SIGKILL if QEMU is still there after `grace`.
    pub async fn stop(&self, grace: Duration) -> Result<()> {
        if self.exit_status().is_some() {
            return Ok(());
        }
        let _ = self.qmp.execute("quit", json!({})).await;
        if tokio::time::timeout(grace, self.wait()).await.is_err() {
            slog::warn!(self.log, "QEMU ignored quit; killing it"; "pid" => self.pid);
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid as i32), nix::sys::signal::Signal::SIGKILL);
            self.wait().await;
        }
        Ok(())
    }

    async fn undo(&self, steps: Vec<(&'static str, Value)>) {
        for (cmd, args) in steps.into_iter().rev() {
            if cmd == "device_del" {
                // The device is gone only when the guest let go; its netdev and slot after that.
                let id = args["id"].clone();
                let mut events = self.qmp.subscribe();
                if self.qmp.execute(cmd, args).await.is_ok() {
                    let timeout = *self.unplug_timeout.lock().unwrap_or_else(|e| e.into_inner());
                    let _ = Qmp::wait_event(&mut events, "DEVICE_DELETED", timeout, |d| d["device"] == id).await;
                }
                continue;
            }
            let _ = self.qmp.execute(cmd, args).await;
        }
    }

    /// Plug a NIC into the running VM: pass its fds (`getfd`), `netdev_add`, `device_add` on a
    /// free slot. Any failure undoes the earlier steps, frees the slot and closes the fds.
    pub(crate) async fn hotplug_nic(&self, nic: NicConfig) -> Result<PciPath> {
        self.ensure_running()?;
        let mut plugged = self.plugged.lock().await;
        if plugged.contains_key(&nic.id) || self.cold.iter().any(|(id, _)| *id == nic.id) {
            return Err(Error::Qmp {
                command: "device_add".into(),
                desc: format!("a NIC {} is already plugged", nic.id),
            });
        }
        let slot = self.slots.lock().await.alloc(&nic.id)?;
        let mut undo: Vec<(&'static str, Value)> = Vec::new();
        let res = self.plug_steps(&nic, &slot, &mut undo).await;
        match res {
            Ok(chardev) => {
                slog::info!(self.log, "NIC hotplugged"; "endpoint" => &nic.id, "pci_path" => %slot.path);
                let path = slot.path.clone();
                plugged.insert(nic.id.clone(), Plugged { slot, chardev, unplug_pending: false });
                Ok(path)
            }
            Err(e) => {
                self.undo(undo).await;
                self.slots.lock().await.free(slot.index);
                Err(e)
            }
        }
        // `nic` (and its fds) is dropped here: QEMU holds its own copies, or none after a rollback.
    }

    /// Run the hook of step `name`; its error fails the step.
    fn step(&self, name: &str) -> Result<()> {
        match &self.hook.0 {
            Some(h) => h(name, 0).map_err(|e| Error::Qmp { command: name.to_owned(), desc: e.to_string() }),
            None => Ok(()),
        }
    }

    async fn plug_steps(
        &self,
        nic: &NicConfig,
        slot: &Slot,
        undo: &mut Vec<(&'static str, Value)>,
    ) -> Result<Option<String>> {
        let netdev = match &nic.backend {
            NicBackend::Tap { queues, vhost, .. } => Netdev::Tap {
                fds: self.pass_fds(&format!("fd-{}", nic.id), queues, undo).await?,
                vhostfds: self.pass_fds(&format!("vhostfd-{}", nic.id), vhost, undo).await?,
            },
            NicBackend::VhostUser { socket } => Netdev::VhostUser { socket: socket.clone() },
        };
        let dev = NicDevice {
            id: nic.id.clone(),
            mac: nic.guest_mac,
            mtu: nic.mtu,
            bus: slot.bus.clone(),
            addr: slot.addr.clone(),
            netdev,
        };
        let chardev = match dev.qmp_chardev() {
            Some(args) => {
                self.qmp.execute("chardev-add", args).await?;
                undo.push(("chardev-remove", json!({"id": dev.chardev_id()})));
                Some(dev.chardev_id())
            }
            None => None,
        };
        self.step("hotplug:getfd")?;
        self.qmp.execute("netdev_add", dev.qmp_netdev()).await?;
        // The netdev took the named fds out of the monitor's table.
        undo.retain(|(c, _)| *c != "closefd");
        undo.push(("netdev_del", json!({"id": dev.netdev_id()})));
        self.step("hotplug:netdev_add")?;
        self.qmp.execute("device_add", dev.qmp_device()).await?;
        undo.push(("device_del", json!({"id": nic.id})));
        self.step("hotplug:device_add")?;
        Ok(chardev)
    }

    async fn pass_fds(
        &self,
        prefix: &str,
        fds: &[OwnedFd],
        undo: &mut Vec<(&'static str, Value)>,
    ) -> Result<Vec<String>> {
        let mut names = Vec::with_capacity(fds.len());
        for (i, fd) in fds.iter().enumerate() {
            let name = format!("{prefix}-{i}");
            self.qmp.execute_with_fd("getfd", json!({"fdname": name}), fd.as_fd()).await?;
            undo.push(("closefd", json!({"fdname": name})));
            names.push(name);
        }
        Ok(names)
    }

    /// How long an unplug waits for the guest (PCIe hotplug in a loaded TCG guest can take
    /// longer than the default 10 s).
    pub fn set_unplug_timeout(&self, t: Duration) {
        *self.unplug_timeout.lock().unwrap_or_else(|e| e.into_inner()) = t;
    }

    /// Whether QEMU still has the device `id`.
    async fn device_exists(&self, id: &str) -> Result<bool> {
        let path = format!("/machine/peripheral/{id}");
        match self.qmp.execute("qom-get", json!({"path": path, "property": "type"})).await {
            Ok(_) => Ok(true),
            Err(Error::Qmp { desc, .. }) if desc.contains("not found") => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Unplug a hotplugged NIC: `device_del`, wait (bounded) for the guest to let go
    /// (`DEVICE_DELETED` for that id), `netdev_del`, free the slot. When the wait times out the
    /// NIC stays known as "unplug pending": a later call does not send `device_del` again; it
    /// waits for the device to be gone (or finds it gone already) and finishes the job.
    pub async fn unplug_nic(&self, id: &str) -> Result<()> {
        self.ensure_running()?;
        let mut plugged = self.plugged.lock().await;
        let p = plugged.get_mut(id).ok_or_else(|| Error::UnknownNic(id.to_owned()))?;
        let mut events = self.qmp.subscribe();
        let timeout = *self.unplug_timeout.lock().unwrap_or_else(|e| e.into_inner());
        // A pending unplug whose device is still there asks again: on `pc` (ACPI) that sends the
        // guest the event once more (one that came before its driver was up is lost); on q35,
        // QEMU refuses while the first one runs (a second press of the attention button would
        // cancel it), which is the same as waiting on.
        let gone = if p.unplug_pending && !self.device_exists(id).await? {
            true
        } else {
            match self.qmp.execute("device_del", json!({"id": id})).await {
                Ok(_) => false,
                Err(Error::Qmp { desc, .. }) if desc.contains("not found") => true,
                Err(Error::Qmp { desc, .. }) if desc.contains("in the process of unplug") => false,
                Err(e) => return Err(e),
            }
        };
        p.unplug_pending = !gone;
        if !gone {
            let waited = Qmp::wait_event(&mut events, "DEVICE_DELETED", timeout, |d| d["device"] == id).await;
            if let Err(e) = waited {
                // The event may have come between two calls: ask QEMU.
                if self.device_exists(id).await? {
                    slog::warn!(self.log, "NIC unplug pending"; "endpoint" => id, "waited_ms" => timeout.as_millis() as u64);
                    return Err(e);
                }
            }
        }
        let p = plugged.remove(id).expect("present above");
        // The device is gone: its netdev, chardev and slot go too, whatever else fails.
        let netdev = self.qmp.execute("netdev_del", json!({"id": netdev_id(id)})).await;
        if let Some(c) = &p.chardev {
            let _ = self.qmp.execute("chardev-remove", json!({"id": c})).await;
        }
        self.slots.lock().await.free(p.slot.index);
        slog::info!(self.log, "NIC unplugged"; "endpoint" => id);
        match netdev {
            Err(Error::Qmp { desc, .. }) if desc.contains("not found") => Ok(()),
            other => other.map(drop),
        }
    }

    /// Slots in use by hotplugged NICs.
    pub async fn slots_in_use(&self) -> usize {
        self.slots.lock().await.in_use()
    }
}

impl Drop for Vm {
    /// A `Vm` dropped while QEMU runs (an error path, a panicking caller) takes QEMU with it, so
    /// nothing outlives its owner by accident. A shim that is killed runs no destructors; its
    /// QEMU is then found and stopped by the `delete` subcommand.
    fn drop(&mut self) {
        if self.exit_status().is_none() {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid as i32), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

impl NicHotplug for Vm {
    type Error = Error;

    async fn add_nic(&self, nic: NicConfig) -> Result<PciPath> {
        self.hotplug_nic(nic).await
    }

    async fn remove_nic(&self, id: &str) -> Result<()> {
        self.unplug_nic(id).await
    }
}

/// QEMU spawned with the command line `cl` (its fds passed, then closed here: QEMU has its
/// own copies), in the spec's network namespace, its output to `qemu.log`.
fn spawn_qemu(spec: &VmSpec, cl: cmdline::CommandLine) -> Result<tokio::process::Child> {
    let cfg = &spec.config;
    let spawn_error = |source| Error::Spawn { path: cfg.path.display().to_string(), source };
    let qemu_log = std::fs::File::create(spec.run_dir.qemu_log()).map_err(spawn_error)?;
    let mut cmd = tokio::process::Command::new(&cfg.path);
    cmd.args(&cl.args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::from(qemu_log)).kill_on_drop(false);
    let netns = match &spec.netns {
        Some(p) => Some(
            std::fs::File::open(p)
                .map_err(|source| Error::Spawn { path: format!("network namespace {}", p.display()), source })?,
        ),
        None => None,
    };
    if let Some(ns) = &netns {
        cmdline::enter_netns(&mut cmd, ns.as_raw_fd());
    }
    cmdline::install_fds(&mut cmd, &cl.fds);
    cmd.spawn().map_err(spawn_error)
}

/// QMP of the QEMU just spawned (`pid`), once its socket answers; QEMU's log when it exits
/// first; QEMU killed when it takes longer than [`START_TIMEOUT`].
async fn connect_qmp(run_dir: &RunDir, exited: &watch::Receiver<Option<String>>, pid: u32) -> Result<Qmp> {
    let (qmp_path, start) = (run_dir.qmp_socket(), Instant::now());
    loop {
        if let Some(st) = exited.borrow().clone() {
            let err = std::fs::read_to_string(run_dir.qemu_log()).unwrap_or_default();
            return Err(Error::Dead(format!("QEMU exited at start ({st}): {}", err.trim())));
        }
        if qmp_path.exists() {
            if let Ok(qmp) = Qmp::connect(&qmp_path, QMP_TIMEOUT).await {
                return Ok(qmp);
            }
        }
        if start.elapsed() > START_TIMEOUT {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
            return Err(Error::Timeout("QEMU's QMP socket".into()));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
