//! One sandbox: the StartVM flow of `sandbox-network-flow.md` and its teardown.
//!
//! State is written to `<bundle>/kata-net-state.json` before each step that makes something, so
//! the `delete` subcommand (run by containerd in the bundle after a shim crash) finds and removes
//! what was made: QEMU, every runtime-made device, the namespace if the shim created it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use agent_client::protocols::agent::CreateSandboxRequest;
use agent_client::protocols::types as pb;
use agent_client::{AgentAddr, AgentClient};
use hypervisor::{AgentChannel, Vm, VmSpec};
use network::endpoint::{Endpoint, EndpointConfig, EndpointState};
use network::{NetCtx, NetNs};
use serde::{Deserialize, Serialize};

use crate::config::Config;

pub const STATE_FILE: &str = "kata-net-state.json";
const AGENT_TIMEOUT: Duration = Duration::from_secs(90);
pub(crate) const NIC_WAIT: Duration = Duration::from_secs(30);

/// What the shim made for a sandbox, as persisted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxState {
    pub id: String,
    pub netns: Option<PathBuf>,
    /// The shim created the namespace and removes it.
    pub netns_created: bool,
    pub endpoints: Vec<EndpointState>,
    pub qemu_pid: Option<u32>,
    pub run_dir: Option<PathBuf>,
}

impl SandboxState {
    pub fn save(&self, bundle: &Path) -> anyhow::Result<()> {
        let tmp = bundle.join(format!("{STATE_FILE}.tmp"));
        std::fs::write(&tmp, serde_json::to_vec(self)?)?;
        std::fs::rename(tmp, bundle.join(STATE_FILE))?;
        Ok(())
    }

    pub fn load(bundle: &Path) -> anyhow::Result<Option<Self>> {
        match std::fs::read(bundle.join(STATE_FILE)) {
            Ok(b) => Ok(Some(serde_json::from_slice(&b)?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Remove everything recorded: QEMU, runtime-made devices, the shim's namespace, the run
    /// directory. Every step is tried; the first error is returned.
    pub async fn teardown(&self, log: &slog::Logger) -> anyhow::Result<()> {
        let mut first: anyhow::Result<()> = Ok(());
        if let Some(pid) = self.qemu_pid {
            kill_qemu(pid, self.run_dir.as_deref()).await;
        }
        if let Some(ns) = &self.netns {
            if ns.exists() {
                match NetCtx::open(NetNs::new(ns), log.clone()) {
                    Ok(ctx) => {
                        if let Err(e) = network::detach_all(&ctx, &self.endpoints).await {
                            first = Err(e.into());
                        }
                    }
                    Err(e) => first = Err(e.into()),
                }
            }
            if self.netns_created {
                if let Err(e) = NetNs::new(ns).remove() {
                    if first.is_ok() {
                        first = Err(e.into());
                    }
                }
            }
        }
        if let Some(d) = &self.run_dir {
            let _ = std::fs::remove_dir_all(d);
        }
        slog::info!(log, "sandbox torn down"; "sandbox_id" => &self.id, "endpoints" => self.endpoints.len());
        first
    }
}

/// Kill a QEMU recorded by pid, but only if that pid still is our QEMU (its command line names
/// the sandbox's run directory), so a recycled pid is never hit.
async fn kill_qemu(pid: u32, run_dir: Option<&Path>) {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let ours = run_dir.is_some_and(|d| {
        let needle = d.to_string_lossy();
        String::from_utf8_lossy(&cmdline).contains(needle.as_ref())
    });
    if !ours {
        return;
    }
    let p = nix::unistd::Pid::from_raw(pid as i32);
    let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGKILL);
    for _ in 0..200 {
        if !Path::new(&format!("/proc/{pid}")).exists() {
            return;
        }
        // Reap it if it is our child; otherwise wait for its parent to.
        let _ = nix::sys::wait::waitpid(p, Some(nix::sys::wait::WaitPidFlag::WNOHANG));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// What the OCI spec says about the sandbox's network.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpecNetwork {
    pub netns: Option<PathBuf>,
    pub hostname: String,
    pub dns: Vec<String>,
}

pub const DNS_ANNOTATION: &str = "io.katacontainers.sandbox_dns";

impl SpecNetwork {
    pub fn from_spec(spec: &oci_spec::runtime::Spec) -> Self {
        use oci_spec::runtime::LinuxNamespaceType;
        let netns = spec
            .linux()
            .as_ref()
            .and_then(|l| l.namespaces().as_ref())
            .and_then(|ns| ns.iter().find(|n| n.typ() == LinuxNamespaceType::Network))
            .and_then(|n| n.path().clone());
        let mut dns: Vec<String> = Vec::new();
        if let Some(v) = spec.annotations().as_ref().and_then(|a| a.get(DNS_ANNOTATION)) {
            dns = v.split(['\n', ',']).map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect();
        } else if let Some(m) =
            spec.mounts().as_ref().and_then(|ms| ms.iter().find(|m| m.destination() == Path::new("/etc/resolv.conf")))
        {
            if let Some(src) = m.source() {
                dns = std::fs::read_to_string(src)
                    .unwrap_or_default()
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(String::from)
                    .collect();
            }
        }
        Self { netns, hostname: spec.hostname().clone().unwrap_or_default().chars().take(64).collect(), dns }
    }
}

/// A running sandbox, shared by the Task service and the management service.
#[derive(Debug)]
pub struct Sandbox {
    pub id: String,
    pub bundle: PathBuf,
    pub vm: Vm,
    pub agent: AgentClient,
    pub ctx: NetCtx,
    /// Queue pairs of a NIC when the operator asks for the runtime's default.
    pub queues: usize,
    pub vhost_net: bool,
    /// Management operations on the sandbox run one at a time, holding this.
    pub ops: tokio::sync::Mutex<Ops>,
    pub log: slog::Logger,
}

/// What changes after start, under [`Sandbox::ops`].
#[derive(Debug)]
pub struct Ops {
    pub state: SandboxState,
    /// NICs plugged in with add-iface, in order.
    pub added: Vec<crate::mgmt::Added>,
    pub ipvs: crate::ipvs::IpvsTable,
}

impl Sandbox {
    /// The persisted state as it is now.
    pub async fn state(&self) -> SandboxState {
        self.ops.lock().await.state.clone()
    }
}

/// The StartVM flow. On any failure everything done so far is undone and the state file says
/// nothing is left.
pub async fn start(
    id: &str,
    bundle: &Path,
    net: &SpecNetwork,
    cfg: &Config,
    log: &slog::Logger,
) -> anyhow::Result<Sandbox> {
    let mut state = SandboxState { id: id.to_owned(), ..Default::default() };
    match start_steps(id, bundle, net, cfg, log, &mut state).await {
        Ok(sb) => Ok(sb),
        Err(e) => {
            let _ = state.teardown(log).await;
            let _ = std::fs::remove_file(bundle.join(STATE_FILE));
            Err(e)
        }
    }
}

async fn start_steps(
    id: &str,
    bundle: &Path,
    net: &SpecNetwork,
    cfg: &Config,
    log: &slog::Logger,
    state: &mut SandboxState,
) -> anyhow::Result<Sandbox> {
    // The namespace: the spec's, or one of our own.
    let ns = match &net.netns {
        Some(p) => NetNs::from_user_path(p)?,
        None if cfg.runtime.disable_new_netns => {
            anyhow::bail!("the spec names no network namespace and disable_new_netns is set")
        }
        None => {
            let name = format!("kata-net-{}", &id[..id.len().min(32)]);
            state.netns = Some(Path::new(network::netns::NETNS_RUN_DIR).join(&name));
            state.netns_created = true;
            state.save(bundle)?;
            NetNs::create(&name)?
        }
    };
    state.netns = Some(ns.path().to_owned());
    let ctx = NetCtx::open(ns, log.clone())?;
    let t = std::time::Instant::now();
    let info = ctx.scan().await?;
    let ep_cfg = EndpointConfig {
        model: cfg.runtime.internetworking_model,
        queues: cfg.queues(),
        vhost_net: !cfg.hypervisor.qemu.disable_vhost_net,
        ..EndpointConfig::default()
    };
    let eps = Endpoint::from_scan(&info, &ep_cfg)?;
    let scan_ms = t.elapsed().as_secs_f64() * 1e3;
    let attached = network::attach_all(&ctx, &eps, &ep_cfg).await?;
    state.endpoints = attached.iter().map(|a| a.state.clone()).collect();
    let run_dir = cfg.runtime.run_dir.join(id);
    std::fs::create_dir_all(&run_dir)?;
    std::fs::set_permissions(&run_dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    state.run_dir = Some(run_dir.clone());
    state.save(bundle)?;
    let attach_ms = t.elapsed().as_secs_f64() * 1e3 - scan_ms;

    let agent_sock = run_dir.join("agent.sock");
    let spec = VmSpec {
        config: cfg.hypervisor.qemu.clone(),
        run_dir: run_dir.clone(),
        agent: AgentChannel::Serial { socket: agent_sock.clone() },
        log: log.clone(),
    };
    let links: Vec<network::Link> = eps.iter().filter_map(|e| info.link(e.link_name().as_str()).cloned()).collect();
    let ids: Vec<String> = attached.iter().map(|a| a.nic.id.clone()).collect();
    let nics = attached.into_iter().map(|a| a.nic).collect();
    let t = std::time::Instant::now();
    let (vm, paths) = Vm::start(spec, nics).await?;
    state.qemu_pid = Some(vm.pid());
    state.save(bundle)?;

    let addr: AgentAddr = format!("unix://{}", agent_sock.display()).parse()?;
    let agent = AgentClient::connect(&addr, AGENT_TIMEOUT).await?;
    anyhow::ensure!(agent.check().await?, "the agent is not serving");
    let boot_ms = t.elapsed().as_secs_f64() * 1e3;

    // Interfaces, then routes, then neighbours, then CreateSandbox with hostname and DNS.
    let t = std::time::Instant::now();
    let mut ifaces = agent_client::interfaces(&links);
    for (iface, id) in ifaces.iter_mut().zip(&ids) {
        if let Some((_, path)) = paths.iter().find(|(i, _)| i == id) {
            iface.device_path = path.to_string();
        }
        iface.queues = ep_cfg.queues as u32;
        agent.update_interface(&pb::Interface::from(&*iface), NIC_WAIT).await?;
    }
    let routes: Vec<network::Route> =
        info.routes.iter().filter(|r| links.iter().any(|l| l.name == r.device)).cloned().collect();
    if !routes.is_empty() {
        agent.update_routes(agent_client::routes(&routes).iter().map(pb::Route::from).collect(), false).await?;
    }
    let neigh: Vec<network::Neighbor> =
        info.neighbors.iter().filter(|n| links.iter().any(|l| l.name == n.device)).cloned().collect();
    if !neigh.is_empty() {
        agent.add_arp_neighbors(agent_client::neighbors(&neigh).iter().map(pb::ARPNeighbor::from).collect()).await?;
    }
    let req = CreateSandboxRequest {
        hostname: net.hostname.clone(),
        dns: net.dns.clone(),
        sandbox_id: id.to_owned(),
        ..Default::default()
    };
    agent.create_sandbox(&req).await?;
    let sync_ms = t.elapsed().as_secs_f64() * 1e3;
    slog::info!(log, "sandbox started"; "sandbox_id" => id, "endpoints" => ids.len(),
        "scan_ms" => format!("{scan_ms:.2}"), "attach_ms" => format!("{attach_ms:.2}"),
        "vm_boot_ms" => format!("{boot_ms:.0}"), "agent_sync_ms" => format!("{sync_ms:.1}"));
    Ok(Sandbox {
        id: id.to_owned(),
        bundle: bundle.to_owned(),
        vm,
        agent,
        ctx,
        queues: ep_cfg.queues,
        vhost_net: ep_cfg.vhost_net,
        ops: tokio::sync::Mutex::new(Ops { state: state.clone(), added: Vec::new(), ipvs: Default::default() }),
        log: log.clone(),
    })
}
