//! Making containers and processes: Create (the sandbox container, which starts the sandbox, or
//! an app container in its VM), Exec (a process added to a container) and Start.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use containerd_shim_protos::events::task::{TaskCreate, TaskExecAdded, TaskExecStarted, TaskStart};
use containerd_shim_protos::protobuf::MessageField;
use containerd_shim_protos::topics;
use containerd_shim_protos::types::mount::Mount;
use network::SandboxId;

use super::process::{follow_process, watch_exit, watch_oom, Proc};
use super::{no_task, Containers, Entry};
use crate::error::{Error, Result};
use crate::mgmt_server::MgmtServer;
use crate::sandbox::{self, sandbox_of, SpecNetwork};
use crate::workload::{self, io::Stdio};

/// What containerd gives to make a container.
#[derive(Debug)]
pub(crate) struct NewContainer {
    pub(crate) id: SandboxId,
    pub(crate) bundle: PathBuf,
    pub(crate) rootfs: Vec<Mount>,
    pub(crate) stdio: Stdio,
}

impl Containers {
    /// Make container `c`: the sandbox container (the sandbox with it), or an app container in
    /// its sandbox's VM when the spec's CRI annotations name one. Returns its pid.
    pub(crate) async fn create(&self, c: NewContainer) -> Result<u32> {
        let _op = self.ops.begin()?;
        if self.entries.lock().await.contains_key(c.id.as_str()) {
            return Err(Error::AlreadyExists(format!("task {} exists", c.id)));
        }
        let spec = oci_spec::runtime::Spec::load(c.bundle.join("config.json"))
            .map_err(|source| Error::Bundle { path: c.bundle.clone(), source })?;
        let entry = match sandbox_of(spec.annotations().as_ref()) {
            Some(sid) => self.create_in(&c, &sid).await?,
            None => self.create_sandbox(&c, spec).await?,
        };
        let pid = entry.pid();
        let (sb, workload) = (entry.sandbox.clone(), entry.workload);
        self.entries.lock().await.insert(c.id.to_string(), entry);
        self.held();
        if workload {
            // Output is copied from now on; the exit is known once the agent says so.
            follow_process(self.entries.clone(), self.events.clone(), sb, c.id.to_string(), String::new(), c.stdio);
        }
        let bundle = c.bundle.display().to_string();
        let ev = TaskCreate { container_id: c.id.to_string(), bundle, pid, ..Default::default() };
        self.events.publish(topics::TASK_CREATE_EVENT_TOPIC, Box::new(ev)).await;
        Ok(pid)
    }

    /// The sandbox container: start the sandbox (its VM and network), then its own container in
    /// the VM when containers run there. On failure nothing is left.
    async fn create_sandbox(&self, c: &NewContainer, spec: oci_spec::runtime::Spec) -> Result<Entry> {
        let config = self.config.as_ref().map_err(|e| Error::BadConfig(e.clone()))?;
        let config = &sized(config, &spec)?;
        let net = tokio::task::spawn_blocking(move || SpecNetwork::from_spec(&spec))
            .await
            .map_err(|e| Error::Dns(format!("reading the spec's DNS: {e}")))??;
        let log = self.log.new(slog::o!("sandbox_id" => c.id.to_string()));
        slog::info!(log, "creating sandbox"; "netns" => ?net.netns, "bundle" => %c.bundle.display());
        let sb = Arc::new(sandbox::start(&c.id, &c.bundle, &net, config, &log).await?);
        let workload = sb.virtiofsd.is_some();
        let made = async {
            if workload {
                workload::create_container(&sb, &c.id, &c.bundle, &c.rootfs).await?;
            }
            MgmtServer::start(sb.clone()).await
        };
        let mgmt = match made.await {
            Ok(m) => m,
            Err(e) => {
                let _ = sb.shutdown(Duration::from_secs(1), Some(&config.runtime.run_dir)).await;
                return Err(e);
            }
        };
        if config.runtime.follow_netns {
            if let Err(e) = sandbox::follow(&sb) {
                slog::error!(log, "not following the namespace"; "error" => crate::error::message(&e));
            }
        }
        watch_exit(self.entries.clone(), self.events.clone(), c.id.to_string(), sb.clone());
        watch_oom(self.events.clone(), sb.clone());
        Ok(entry(&c.bundle, sb, Some(mgmt), workload, false, c.stdio.clone()))
    }

    /// An app container in sandbox `sid`'s VM.
    async fn create_in(&self, c: &NewContainer, sid: &str) -> Result<Entry> {
        let sb = {
            let e = self.entries.lock().await;
            let s = e
                .get(sid)
                .filter(|s| s.owns_sandbox)
                .ok_or_else(|| Error::NotFound(format!("no sandbox {sid} in this shim")))?;
            if !s.workload {
                return Err(Error::NotSandbox);
            }
            s.sandbox.clone()
        };
        let shared_pidns = workload::create_container(&sb, &c.id, &c.bundle, &c.rootfs).await?;
        Ok(entry(&c.bundle, sb, None, true, shared_pidns, c.stdio.clone()))
    }

    /// Add process `exec_id` (its OCI process as JSON) to container `id`, not started.
    pub(crate) async fn exec(&self, id: &str, exec_id: SandboxId, process_json: &[u8], stdio: Stdio) -> Result<()> {
        if exec_id.as_str() == id {
            return Err(Error::Spec(format!(
                "exec id {:?}: is the container's own id (it would alias its init)",
                exec_id.as_str()
            )));
        }
        let process = workload::spec::process(&workload::spec::parse_process(process_json)?)?;
        {
            let mut e = self.entries.lock().await;
            let entry = e.get_mut(id).ok_or_else(|| no_task(id))?;
            if !entry.workload {
                return Err(Error::NotSandbox);
            }
            if entry.execs.contains_key(exec_id.as_str()) {
                return Err(Error::AlreadyExists(format!("exec {exec_id} exists")));
            }
            entry.execs.insert(exec_id.to_string(), Proc::new(stdio, Some(process)));
        }
        let ev = TaskExecAdded { container_id: id.to_owned(), exec_id: exec_id.to_string(), ..Default::default() };
        self.events.publish(topics::TASK_EXEC_ADDED_EVENT_TOPIC, Box::new(ev)).await;
        Ok(())
    }

    /// Start container `id`'s init (`exec_id` empty) or one of its execs. Returns its pid.
    pub(crate) async fn start(&self, id: &str, exec_id: &str) -> Result<u32> {
        let (sb, workload, spec, stdio) = self
            .with(id, |entry| {
                let p = entry.proc(exec_id)?;
                if p.started || p.exited().is_some() {
                    return Err(Error::AlreadyExists(format!("process {id}/{exec_id} was started")));
                }
                Ok((entry.sandbox.clone(), entry.workload, p.spec.clone(), p.stdio.clone()))
            })
            .await?;
        if workload && exec_id.is_empty() {
            sb.agent.start_container(id).await?;
        } else if workload {
            let process = spec.ok_or_else(|| Error::Internal("an exec without its process".into()))?;
            let areq = agent_client::protocols::agent::ExecProcessRequest {
                container_id: id.to_owned(),
                exec_id: exec_id.to_owned(),
                process: MessageField::some(process),
                ..Default::default()
            };
            sb.agent.exec_process(&areq).await?;
            let (entries, events) = (self.entries.clone(), self.events.clone());
            follow_process(entries, events, sb.clone(), id.to_owned(), exec_id.to_owned(), stdio);
        }
        if let Some(entry) = self.entries.lock().await.get_mut(id) {
            match exec_id {
                "" => entry.init.started = true,
                x => entry.execs.get_mut(x).into_iter().for_each(|p| p.started = true),
            }
        }
        let pid = sb.vm.pid();
        let (container_id, exec_id) = (id.to_owned(), exec_id.to_owned());
        match exec_id.is_empty() {
            true => {
                let ev = TaskStart { container_id, pid, ..Default::default() };
                self.events.publish(topics::TASK_START_EVENT_TOPIC, Box::new(ev)).await
            }
            false => {
                let ev = TaskExecStarted { container_id, exec_id, pid, ..Default::default() };
                self.events.publish(topics::TASK_EXEC_STARTED_EVENT_TOPIC, Box::new(ev)).await
            }
        }
        Ok(pid)
    }
}

/// The configuration for this sandbox: with `static_sandbox_resource_mgmt`, the pod's sizing
/// added to the default vCPUs and memory (the NICs' queues follow the vCPUs), checked again.
fn sized(config: &crate::config::Config, spec: &oci_spec::runtime::Spec) -> Result<crate::config::Config> {
    let mut c = config.clone();
    if !c.runtime.static_sandbox_resource_mgmt {
        return Ok(c);
    }
    let s = sandbox::Sizing::from_annotations(spec.annotations().as_ref());
    let q = &mut c.hypervisor.qemu;
    q.default_vcpus = q.default_vcpus.saturating_add(s.vcpus);
    q.default_memory = q.default_memory.saturating_add(s.memory_mib);
    q.validate().map_err(|e| {
        Error::Spec(format!("the pod's sizing (static_sandbox_resource_mgmt): {}", crate::error::message(&e)))
    })?;
    Ok(c)
}

fn entry(
    bundle: &Path,
    sandbox: Arc<sandbox::Sandbox>,
    mgmt: Option<MgmtServer>,
    workload: bool,
    shared_pidns: bool,
    stdio: Stdio,
) -> Entry {
    Entry {
        bundle: bundle.to_owned(),
        owns_sandbox: mgmt.is_some(),
        sandbox,
        mgmt,
        workload,
        shared_pidns,
        init: Proc::new(stdio, None),
        execs: HashMap::new(),
    }
}
