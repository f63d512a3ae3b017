//! The StartVM flow of `sandbox-network-flow.md`, one function per phase: namespace, scan,
//! attach, VM, agent sync. Each phase records what it makes before the next one runs; on any
//! failure everything done so far is undone and the state file says nothing is left.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_client::{AgentAddr, AgentClient};
use hypervisor::{AgentChannel, SharedFs, Vm, VmSpec};
use network::endpoint::{Attached, Endpoint, EndpointConfig};
use network::{NetCtx, NetNs, NetworkInfo, PciPath, RunDir, SandboxId};

use super::portfwd::PortForward;
use super::sharedfs::VirtioFsd;
use super::sync::{connect_agent, serves_extensions, sync_agent, GuestNics};
use super::{Ops, PodNic, Sandbox, SandboxState, SpecNetwork};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::failpoint;

/// Start the sandbox `id` of `bundle`. On failure nothing is left.
///
/// A start whose hybrid vsock backend stopped serving the VM (a fault of vhost-device-vsock
/// 0.3.0, see `VsockBackend::worker_alive`) is undone and made once more, from the beginning.
/// The longest unix socket path a sandbox's run directory holds (the hybrid vsock backend's).
const LONGEST_SOCKET: &str = RunDir::VSOCK_BACKEND_SOCKET;

/// A unix socket's path must fit `sun_path` (108 bytes with its NUL): checked before anything
/// is made, naming the key that sets it (a CRI sandbox id alone is 64 characters).
fn check_socket_paths(run_root: &Path, id: &str) -> Result<()> {
    let longest = run_root.join(id).join(LONGEST_SOCKET);
    let len = longest.as_os_str().len();
    match len < 108 {
        true => Ok(()),
        false => Err(Error::BadConfig(format!(
            "[runtime] run_dir: {} is too long for this sandbox's sockets: {} is {len} bytes, a unix socket path \
             must be at most 107 (a CRI sandbox id is 64 characters: keep run_dir within {} bytes)",
            run_root.display(),
            longest.display(),
            107 - (len - run_root.as_os_str().len())
        ))),
    }
}

pub async fn start(
    id: &SandboxId,
    bundle: &Path,
    net: &SpecNetwork,
    cfg: &Config,
    log: &slog::Logger,
) -> Result<Sandbox> {
    check_socket_paths(&cfg.runtime.run_dir, id)?;
    let mut again = true;
    loop {
        let state = SandboxState { id: id.to_string(), ..Default::default() };
        let mut s = Start { id, run_dir: RunDir::new(&cfg.runtime.run_dir, id), bundle, cfg, log, state };
        match s.run(net).await {
            Ok(sb) => return Ok(sb),
            Err(e) => {
                let _ = s.state.remove(log, Some(&cfg.runtime.run_dir), bundle).await;
                if matches!(e, Error::VsockBackendLost { .. }) && std::mem::take(&mut again) {
                    slog::warn!(log, "the sandbox's start is undone and made again"; "sandbox_id" => %id,
                        "cause" => crate::error::message(&e));
                    continue;
                }
                return Err(e);
            }
        }
    }
}

/// A sandbox being started, and what it has made so far.
struct Start<'a> {
    id: &'a SandboxId,
    run_dir: RunDir,
    bundle: &'a Path,
    cfg: &'a Config,
    log: &'a slog::Logger,
    state: SandboxState,
}

/// The pod's network attached: the scan, its endpoints connected to NICs.
struct Network {
    ctx: NetCtx,
    info: NetworkInfo,
    eps: Vec<Endpoint>,
    ep_cfg: EndpointConfig,
    attached: Vec<Attached>,
    scan_ms: String,
    attach_ms: String,
}

/// The VM booted, its helpers running and its agent connected.
struct Booted {
    vm: Vm,
    /// Each cold- or hotplugged NIC's PCI path, by id.
    plugged: Vec<(String, PciPath)>,
    agent: AgentClient,
    link: super::channel::AgentLink,
    virtiofsd: Option<VirtioFsd>,
    /// Where the boot's time went: the helpers (agent channel backend, virtiofsd) started, QEMU
    /// started and its NICs plugged, the guest booted to its agent's answer (ms).
    phases: [String; 3],
}

fn ms(t: Instant) -> String {
    format!("{:.2}", t.elapsed().as_secs_f64() * 1e3)
}

impl Start<'_> {
    /// The phases in order (each timed in the log): the run directory claimed, the network
    /// attached, the VM booted, the agent synced.
    async fn run(&mut self, net: &SpecNetwork) -> Result<Sandbox> {
        let claim = self.claim()?;
        let network = self.network(net).await?;
        let (scan_ms, attach_ms) = (network.scan_ms.clone(), network.attach_ms.clone());
        let t = Instant::now();
        let ids: Vec<String> = network.attached.iter().map(|a| a.nic.id.clone()).collect();
        let links = network.eps.iter().filter_map(|e| network.info.link(e.link_name().as_str()).cloned()).collect();
        let Network { ctx, info, ep_cfg, attached, .. } = network;
        let booted = self.boot(attached).await?;
        let boot_ms = ms(t);
        let portfwd = self.port_forward(&ctx, &booted.link).await?;
        let t = Instant::now();
        let paths = ids.iter().map(|id| booted.plugged.iter().find(|(i, _)| i == id).map(|(_, p)| p.clone())).collect();
        let guest = GuestNics { info, links, paths, queues: ep_cfg.queues };
        let storages: Vec<_> = booted.virtiofsd.iter().map(|_| super::sharedfs::storage()).collect();
        let routes = sync_agent(&booted.agent, &guest, self.id, net, storages).await?;
        let ours = |dev: &network::IfName| guest.links.iter().any(|l| &l.name == dev);
        let neighbors = guest.info.neighbors.iter().filter(|n| ours(&n.device)).cloned().collect();
        let hotplugged = self.cfg.hypervisor.qemu.enable_template;
        let nics = (guest.links.iter().zip(&ids))
            .map(|(l, id)| PodNic { link: l.clone(), nic_id: id.clone(), hotplugged })
            .collect();
        let pod = super::PodLinks { nics, routes: routes.clone(), neighbors, refused: Vec::new() };
        slog::info!(self.log, "sandbox started"; "sandbox_id" => %self.id, "endpoints" => ids.len(),
            "scan_ms" => scan_ms, "attach_ms" => attach_ms, "vm_boot_ms" => boot_ms, "helpers_ms" => &booted.phases[0],
            "qemu_ms" => &booted.phases[1], "guest_boot_ms" => &booted.phases[2], "agent_sync_ms" => ms(t));
        let ops = Ops {
            state: self.state.clone(),
            operator: Default::default(),
            ipvs: Default::default(),
            routes: super::RouteTable { list: routes },
            pod,
            closed: false,
        };
        Ok(self.sandbox(booted, ctx, ep_cfg, ops, claim, portfwd).await)
    }

    /// `kubectl port-forward`: the forwarder's listeners in the pod's namespace, then the
    /// namespace's redirect to them (recorded first). Served over the hybrid vsock only; a node
    /// without `nft` runs the pod without it (warned).
    async fn port_forward(&mut self, ctx: &NetCtx, link: &super::channel::AgentLink) -> Result<Option<PortForward>> {
        let AgentAddr::HybridVsock { path, .. } = &link.addr else {
            slog::info!(self.log, "kubectl port-forward is served over agent_channel = \"hybrid-vsock\" only";
                "sandbox_id" => %self.id);
            return Ok(None);
        };
        if !Path::new(network::portfwd::NFT).exists() {
            slog::warn!(self.log, "kubectl port-forward is not served: nft is missing (Debian package nftables)";
                "sandbox_id" => %self.id, "path" => network::portfwd::NFT);
            return Ok(None);
        }
        let (v4, v6) = super::portfwd::listen(ctx)?;
        let fwd = PortForward::serve(v4, v6, path.clone(), self.log.clone())?;
        self.state.portfwd = true;
        self.state.save(self.bundle)?;
        network::portfwd::install(&ctx.netns, fwd.listeners).await?;
        failpoint::hit("start:portfwd")?;
        Ok(Some(fwd))
    }

    /// First of all: the id's run directory must be free. Held, it is another live sandbox's
    /// (the same id in another containerd namespace): refused, and nothing of it is touched
    /// (the run directory is recorded only once it is ours).
    fn claim(&mut self) -> Result<std::fs::File> {
        let claim = super::claim_run_dir(self.run_dir.path())?.ok_or_else(|| {
            Error::AlreadyExists(format!(
                "sandbox id {:?} is in use by a running sandbox (its run directory {} is held by a live shim: \
                 the same id in another containerd namespace?)",
                self.id.as_str(),
                self.run_dir.path().display()
            ))
        })?;
        self.state.run_dir = Some(self.run_dir.path().to_owned());
        Ok(claim)
    }

    /// The pod's namespace (the spec's, or one of the shim's own), scanned, and every link's
    /// endpoint attached to a NIC.
    async fn network(&mut self, net: &SpecNetwork) -> Result<Network> {
        let t = Instant::now();
        let ctx = self.namespace(net)?;
        let (info, eps, ep_cfg) = self.scan(&ctx, net.rate).await?;
        let scan_ms = ms(t);
        let t = Instant::now();
        let attached = self.attach(&ctx, &eps, &ep_cfg).await?;
        Ok(Network { ctx, info, eps, ep_cfg, attached, scan_ms, attach_ms: ms(t) })
    }

    /// The agent's channel and the shared directory's virtiofsd, QEMU with the NICs, then the
    /// agent connected within `dial_timeout`.
    async fn boot(&mut self, attached: Vec<Attached>) -> Result<Booted> {
        let qemu = &self.cfg.hypervisor.qemu;
        let t = Instant::now();
        let link = super::channel::agent_link(qemu.agent_channel, &self.run_dir, self.id).await?;
        if matches!(link.channel, AgentChannel::Vsock { .. }) {
            slog::warn!(self.log, "agent_channel = \"vsock\": any local user can reach this guest's agent (kernel vsock has no owner)";
                "sandbox_id" => %self.id);
        }
        let virtiofsd = match qemu.shared_fs {
            SharedFs::VirtioFs => Some(VirtioFsd::start(qemu, &self.run_dir).await?),
            SharedFs::None => None,
        };
        let fs_socket = virtiofsd.as_ref().map(|f| f.socket.clone());
        let helpers_ms = ms(t);
        let t = Instant::now();
        let (vm, plugged) = self.boot_vm(attached, link.channel.clone(), fs_socket).await?;
        let qemu_ms = ms(t);
        let t = Instant::now();
        // One dial_timeout for both: the guest's vsock driver (not before it is up: see
        // `Vm::wait_virtio_ready`), then the agent.
        let dial_by = Instant::now() + Duration::from_secs(self.cfg.agent.kata.dial_timeout.into());
        if !matches!(link.addr, AgentAddr::Unix { .. }) {
            vm.wait_virtio_ready(hypervisor::cmdline::VSOCK_DEVICE_ID, dial_by - Instant::now()).await?;
        }
        let left = dial_by.saturating_duration_since(Instant::now());
        let connect = connect_agent(&link.addr, left, self.cfg.agent.kata.dial_timeout);
        let agent = match &link.backend {
            // A backend whose worker ended never answers: no use waiting out dial_timeout.
            Some(backend) => tokio::select! {
                agent = connect => agent?,
                () = backend.worker_lost() => {
                    return Err(Error::VsockBackendLost { log: super::channel::backend_log_tail(&self.run_dir) })
                }
            },
            None => connect.await?,
        };
        Ok(Booted { vm, plugged, agent, link, virtiofsd, phases: [helpers_ms, qemu_ms, ms(t)] })
    }

    /// The running sandbox, its helpers watched.
    async fn sandbox(
        &self,
        b: Booted,
        ctx: NetCtx,
        ep_cfg: EndpointConfig,
        ops: Ops,
        claim: std::fs::File,
        portfwd: Option<PortForward>,
    ) -> Sandbox {
        let extended_agent = serves_extensions(&b.agent).await;
        let vm = Arc::new(b.vm);
        let helpers = [
            ("virtiofsd", b.virtiofsd.as_ref().map(|v| v.pid())),
            ("vhost-device-vsock", b.link.backend.as_ref().map(|b| b.pid())),
        ]
        .into_iter()
        .filter_map(|(name, pid)| Some(super::helpers::Helper::new(name, pid.filter(|p| *p != 0)?)))
        .map(|h| match h.name {
            "vhost-device-vsock" => h.with_thread(super::channel::VSOCK_WORKER_THREAD),
            _ => h,
        })
        .collect();
        super::helpers::watch(helpers, vm.clone(), self.log.clone());
        Sandbox {
            id: self.id.clone(),
            bundle: self.bundle.to_owned(),
            run_dir: self.run_dir.clone(),
            vm,
            agent: b.agent,
            extended_agent,
            ctx,
            ep_cfg,
            vsock_backend: tokio::sync::Mutex::new(b.link.backend),
            virtiofsd: b.virtiofsd,
            portfwd: std::sync::Mutex::new(portfwd),
            claim,
            guest_seccomp: !self.cfg.runtime.disable_guest_seccomp,
            oom_killed: Default::default(),
            ops: tokio::sync::Mutex::new(ops),
            log: self.log.clone(),
        }
    }

    /// The spec's namespace, or one of the shim's own (recorded before it is made).
    fn namespace(&mut self, net: &SpecNetwork) -> Result<NetCtx> {
        let ns = match &net.netns {
            Some(p) => NetNs::from_user_path(p)?,
            None if self.cfg.runtime.disable_new_netns => return Err(Error::NoNetns),
            None => {
                // Intent, then result: a namespace that was there already is never recorded.
                let path = super::state::own_netns_path(self.id);
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
                self.state.netns = Some(path);
                self.state.netns_intent = true;
                self.state.save(self.bundle)?;
                match NetNs::create(&name) {
                    Ok(ns) => {
                        self.state.netns_created = true;
                        self.state.save(self.bundle)?;
                        failpoint::hit("start:netns")?;
                        ns
                    }
                    Err(e) => {
                        self.state.netns = None;
                        self.state.netns_intent = false;
                        return Err(e.into());
                    }
                }
            }
        };
        self.state.netns = Some(ns.path().to_owned());
        self.state.netns_id = super::state::netns_identity(ns.path());
        let mut ctx = NetCtx::open(ns, self.log.clone())?;
        // The network's own steps (a NIC's shaping) are failure-injection points too.
        ctx.step = network::StepHook::new(|step| failpoint::hit(step).map_err(|e| e.to_string()));
        Ok(ctx)
    }

    /// The namespace's links, addresses, routes and neighbours, and an endpoint per link. Its
    /// NICs are limited to the lower of the node's and the pod's rates (`pod`).
    async fn scan(
        &self,
        ctx: &NetCtx,
        pod: network::RateLimit,
    ) -> Result<(NetworkInfo, Vec<Endpoint>, EndpointConfig)> {
        let info = ctx.scan().await?;
        let qemu = &self.cfg.hypervisor.qemu;
        let ep_cfg = EndpointConfig {
            model: self.cfg.runtime.internetworking_model,
            queues: self.cfg.queues(),
            vhost_net: !self.cfg.hypervisor.qemu.disable_vhost_net,
            vhost_user_dir: qemu.enable_vhost_user_store.then(|| qemu.vhost_user_store_path.clone()),
            rate: qemu.rate_limit().min(pod),
        };
        let eps = Endpoint::from_scan(&info, &ep_cfg)?;
        Ok((info, eps, ep_cfg))
    }

    /// Connect every endpoint to a NIC (all or none), and make the run directory. What each
    /// endpoint will make is recorded before it is made (its teardown undoes a half-made one),
    /// then what it made.
    async fn attach(&mut self, ctx: &NetCtx, eps: &[Endpoint], ep_cfg: &EndpointConfig) -> Result<Vec<Attached>> {
        let run_dir = self.run_dir.path().to_owned();
        self.state.run_dir = Some(run_dir.clone());
        self.state.endpoints = eps.iter().filter_map(Endpoint::planned_state).collect();
        self.state.save(self.bundle)?;
        let step = |i: usize, _: &Attached| {
            failpoint::hit(&format!("start:endpoint:{i}")).map_err(|e| network::Error::Step(e.to_string()))
        };
        let attached = network::attach_all_with(ctx, eps, ep_cfg, step).await?;
        self.state.endpoints = attached.iter().map(|a| a.state.clone()).collect();
        self.state.save(self.bundle)?;
        let io = |source| Error::Io { what: "making the run directory", path: run_dir.clone(), source };
        std::fs::create_dir_all(&run_dir).map_err(io)?;
        std::fs::set_permissions(&run_dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).map_err(io)?;
        Ok(attached)
    }

    /// QEMU with the NICs (cold-plugged, or hotplugged in factory mode); its pid is recorded
    /// right after the spawn, before anything waits on QEMU.
    async fn boot_vm(
        &mut self,
        attached: Vec<Attached>,
        agent: AgentChannel,
        shared_fs: Option<PathBuf>,
    ) -> Result<(Vm, Vec<(String, PciPath)>)> {
        // The agent's parameters first, so that the configuration's own kernel_params can override.
        let mut config = self.cfg.hypervisor.qemu.clone();
        let params = self.cfg.agent.kata.kernel_params().join(" ");
        config.kernel_params = [params.as_str(), config.kernel_params.as_str()]
            .into_iter()
            .filter(|p| !p.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        let spec = VmSpec {
            config,
            run_dir: self.run_dir.clone(),
            agent,
            shared_fs,
            netns: self.state.netns.clone(),
            log: self.log.clone(),
            hook: Some(vm_hook(self.state.clone(), self.bundle.to_owned())),
        };
        let (vm, paths) = Vm::start(spec, attached.into_iter().map(|a| a.nic).collect()).await?;
        self.state.qemu_pid = Some(vm.pid());
        self.state.save(self.bundle)?;
        Ok((vm, paths))
    }
}

/// The VM's step hook: QEMU's pid goes into the state file as soon as QEMU exists; hotplug steps
/// are failure-injection points.
fn vm_hook(state: SandboxState, bundle: PathBuf) -> hypervisor::vm::StepHook {
    let state = std::sync::Mutex::new(state);
    Arc::new(move |step: &str, pid: u32| {
        if step == "spawned" {
            let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
            st.qemu_pid = Some(pid);
            st.save(&bundle).map_err(|e| std::io::Error::other(crate::error::message(&e)))?;
            return failpoint::hit("start:qemu:spawned").map_err(std::io::Error::other);
        }
        failpoint::hit(step).map_err(std::io::Error::other)
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_run_dir_too_long_for_the_sockets_is_refused_naming_the_key() {
        let cri_id = "a".repeat(64);
        assert!(super::check_socket_paths(std::path::Path::new("/run/kata-net"), &cri_id).is_ok());
        let long = std::path::Path::new("/tmp/a-rather-long-directory-name/run");
        let e = super::check_socket_paths(long, &cri_id).unwrap_err().to_string();
        assert!(e.contains("[runtime] run_dir") && e.contains("at most 107"), "{e}");
    }
}
