//! The `kata-runtime` operator command.
//!
//! Output rules (`network-cli.md`): on success the documented JSON on standard output, one line,
//! exit code 0; on failure the literal `null` on standard output, a one-line error on standard
//! error and a non-zero exit code. del-iface is the exception: `null` on success, the interface
//! it could not remove on failure. `kata-ipvs` prints the guest command's own output.
//!
//! The command never changes anything itself: it checks the input, finds the sandbox's shim by
//! its management socket under the runtime's `run_dir`, and asks it.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::{Args, Parser, Subcommand};
use netmgmt::doc::{DelIfaceDoc, IfaceDoc, RouteDoc};
use netmgmt::mg;
use netmgmt::output::{doc_to_pb, list_json, IfaceOut, ListedIface, NicStatsOut, RouteOut};
use netmgmt::protocols::netmgmt_ttrpc::NetworkManagementClient;
use serde::Serialize;

/// The largest input document or rule file read (a full 20,000-rule file is about 1 MiB).
const MAX_INPUT: u64 = 16 << 20;
/// How long one management call may take (a 20,000-rule restore under TCG takes seconds).
const CALL_TIMEOUT: Duration = Duration::from_secs(300);
const TIMEOUT_ENV: &str = "KATA_RUNTIME_TIMEOUT";

#[derive(Debug, Parser)]
#[command(name = "kata-runtime", about = "Operator commands for kata sandboxes", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Manage the network of a sandbox.
    #[command(name = "kata-network", subcommand)]
    KataNetwork(NetworkCommand),
    /// Manage IPVS rules inside a sandbox's VM.
    #[command(name = "kata-ipvs", subcommand)]
    KataIpvs(IpvsSubcommand),
}

/// `<sandbox> <file|->`
#[derive(Debug, Args)]
pub struct DocArgs {
    /// Sandbox id, or a unique prefix of one.
    pub sandbox: String,
    /// JSON document: a file path, or `-` for standard input.
    pub file: String,
}

#[derive(Debug, Subcommand)]
pub enum NetworkCommand {
    /// Plug a host TAP into the sandbox's VM as a new NIC.
    #[command(name = "add-iface")]
    AddIface(DocArgs),
    /// Unplug a NIC added with add-iface (only `name` of the document is used).
    #[command(name = "del-iface")]
    DelIface(DocArgs),
    /// The NICs added with add-iface.
    #[command(name = "list-ifaces")]
    ListIfaces { sandbox: String },
    /// Add a route in the VM.
    #[command(name = "add-route")]
    AddRoute(DocArgs),
    /// Delete every route in the VM that matches the given fields.
    #[command(name = "del-route")]
    DelRoute(DocArgs),
    /// The VM's routes.
    #[command(name = "list-routes")]
    ListRoutes { sandbox: String },
    /// Per NIC, the counters of the host device its frames pass through (read on the host).
    #[command(name = "stats")]
    Stats { sandbox: String },
    /// Print what the runtime sees in a network namespace, in the agent protocol's shapes
    /// (read-only).
    #[command(name = "scan-netns")]
    ScanNetns {
        /// Path of the namespace: /run/netns/<name> or /proc/<pid>/ns/net.
        netns: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum IpvsSubcommand {
    /// Run one ipvsadm command in the VM, or restore a rule file.
    Ipvsadm {
        /// ipvsadm arguments, as one string.
        #[arg(long, allow_hyphen_values = true, conflicts_with = "restore", required_unless_present = "restore")]
        parameters: Option<String>,
        /// A rule file in `ipvsadm --save` syntax: a path, or `-` for standard input.
        #[arg(long)]
        restore: Option<String>,
        sandbox: String,
    },
    /// Delete connection-tracking entries in the VM.
    Cleanup {
        /// `--orig-dst <ip> --protonum tcp|udp`
        #[arg(long, allow_hyphen_values = true)]
        parameters: String,
        sandbox: String,
    },
}

/// `kata-network scan-netns` output.
#[derive(Debug, Serialize)]
pub struct ScanOutput {
    pub interfaces: Vec<agent_client::types::Interface>,
    pub routes: Vec<agent_client::types::Route>,
    pub neighbors: Vec<agent_client::types::ArpNeighbor>,
}

/// Scan the namespace at `path` (checked first) without changing anything.
pub async fn scan_netns(path: &Path) -> anyhow::Result<ScanOutput> {
    let ns = network::NetNs::from_user_path(path)?;
    let ctx = network::NetCtx::open(ns, slog::Logger::root(slog::Discard, slog::o!()))?;
    let info = ctx.scan().await?;
    Ok(ScanOutput {
        interfaces: agent_client::interfaces(&info.links),
        routes: agent_client::routes(&info.routes),
        neighbors: agent_client::neighbors(&info.neighbors),
    })
}

/// What the command prints: standard output, and the error for standard error on failure.
#[derive(Debug, PartialEq, Eq)]
pub struct Outcome {
    pub stdout: String,
    pub error: Option<String>,
}

impl Outcome {
    /// As it may reach a terminal: what the guest said (IPVS output, its refusals) carries no
    /// control character; the error stays one line.
    pub fn printable(self) -> Self {
        Self {
            stdout: netmgmt::output::printable(&self.stdout, true),
            error: self.error.map(|e| netmgmt::output::printable(&e, false)),
        }
    }

    fn ok(stdout: String) -> Self {
        Self { stdout, error: None }
    }

    fn failed(e: &anyhow::Error) -> Self {
        Self { stdout: "null".into(), error: Some(one_line(e)) }
    }
}

/// Read a document: `-` is standard input; a path must be a regular file of bounded size.
pub fn read_input(arg: &str) -> anyhow::Result<String> {
    let mut text = String::new();
    if arg == "-" {
        std::io::stdin().take(MAX_INPUT + 1).read_to_string(&mut text).context("reading standard input")?;
    } else {
        let meta = std::fs::metadata(arg).with_context(|| format!("input file {arg}"))?;
        if !meta.is_file() {
            bail!("input file {arg}: not a regular file");
        }
        std::fs::File::open(arg)
            .and_then(|f| f.take(MAX_INPUT + 1).read_to_string(&mut text))
            .with_context(|| format!("input file {arg}"))?;
    }
    if text.len() as u64 > MAX_INPUT {
        bail!("input {arg}: larger than {} MiB", MAX_INPUT >> 20);
    }
    Ok(text)
}

async fn connect(sandbox: &str) -> anyhow::Result<NetworkManagementClient> {
    if !nix::unistd::geteuid().is_root() {
        bail!("permission denied: the sandboxes' management sockets are root's only");
    }
    let run_dir = netmgmt::paths::run_dir()?;
    let id = netmgmt::paths::find_sandbox(&run_dir, sandbox)?;
    let path = network::RunDir::new(&run_dir, &id).mgmt_socket();
    let client = ttrpc::asynchronous::Client::connect(&format!("unix://{}", path.display()))
        .await
        .map_err(|e| anyhow!("sandbox {id}: cannot reach its shim at {}: {e}", path.display()))?;
    Ok(NetworkManagementClient::new(client))
}

/// How long the command waits for the shim: `KATA_RUNTIME_TIMEOUT` seconds (1 to 3600), else 300.
/// An operation the shim has started runs to its end either way; one still waiting for the
/// sandbox when this passes does not start.
fn call_timeout() -> Duration {
    std::env::var(TIMEOUT_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|s| (1..=3600).contains(s))
        .map_or(CALL_TIMEOUT, Duration::from_secs)
}

fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(call_timeout().as_nanos() as i64)
}

/// A management call's error: the shim's message alone when it sent one.
fn rpc_err(e: ttrpc::Error) -> anyhow::Error {
    match e {
        ttrpc::Error::RpcStatus(s) => anyhow!("{}", s.message()),
        other => anyhow!("the sandbox's shim did not answer: {other}"),
    }
}

fn routes_out(rs: &[mg::Route]) -> Vec<RouteOut> {
    rs.iter().map(RouteOut::from).collect()
}

/// Run a parsed command.
pub async fn run(cli: Cli) -> Outcome {
    match cli.command {
        Command::KataNetwork(NetworkCommand::DelIface(a)) => del_iface(&a).await,
        other => match run_json(other).await {
            Ok(s) => Outcome::ok(s),
            Err(e) => Outcome::failed(&e),
        },
    }
}

async fn run_json(cmd: Command) -> anyhow::Result<String> {
    match cmd {
        Command::KataNetwork(n) => match n {
            NetworkCommand::ScanNetns { netns } => Ok(serde_json::to_string(&scan_netns(&netns).await?)?),
            NetworkCommand::AddIface(a) => {
                let doc = IfaceDoc::parse(&read_input(&a.file)?)?;
                doc.validate()?;
                let c = connect(&a.sandbox).await?;
                let out = c.add_interface(ctx(), &doc_to_pb(&doc)).await.map_err(rpc_err)?;
                Ok(serde_json::to_string(&IfaceOut::from(&out))?)
            }
            NetworkCommand::DelIface(_) => unreachable!("handled by del_iface"),
            NetworkCommand::ListIfaces { sandbox } => {
                let c = connect(&sandbox).await?;
                let list = c.list_interfaces(ctx(), &mg::Nothing::new()).await.map_err(rpc_err)?.interfaces;
                let out: Vec<ListedIface> = list.iter().map(ListedIface::from).collect();
                Ok(list_json(&out)?)
            }
            NetworkCommand::AddRoute(a) => route_cmd(&a, true).await,
            NetworkCommand::DelRoute(a) => route_cmd(&a, false).await,
            NetworkCommand::ListRoutes { sandbox } => {
                let c = connect(&sandbox).await?;
                let routes = c.list_routes(ctx(), &mg::Nothing::new()).await.map_err(rpc_err)?.routes;
                Ok(list_json(&routes_out(&routes))?)
            }
            NetworkCommand::Stats { sandbox } => {
                let c = connect(&sandbox).await?;
                let nics = c.stats(ctx(), &mg::Nothing::new()).await.map_err(rpc_err)?.nics;
                let out: Vec<NicStatsOut> = nics.iter().map(NicStatsOut::from).collect();
                Ok(list_json(&out)?)
            }
        },
        Command::KataIpvs(IpvsSubcommand::Ipvsadm { parameters, restore, sandbox }) => {
            let reply = match (parameters, restore) {
                (Some(p), None) => {
                    netmgmt::ipvs::IpvsCommand::parse(&p)?;
                    let c = connect(&sandbox).await?;
                    let req = mg::IpvsRequest { parameters: p, ..Default::default() };
                    c.ipvsadm(ctx(), &req).await.map_err(rpc_err)?
                }
                (None, Some(file)) => {
                    let rules = read_input(&file)?;
                    netmgmt::ipvs::Restore::parse(&rules)?;
                    let c = connect(&sandbox).await?;
                    let req = mg::IpvsRestoreRequest { rules, ..Default::default() };
                    c.ipvs_restore(ctx(), &req).await.map_err(rpc_err)?
                }
                _ => bail!("give --parameters or --restore"),
            };
            Ok(reply.output.trim_end().to_owned())
        }
        Command::KataIpvs(IpvsSubcommand::Cleanup { parameters, sandbox }) => {
            netmgmt::ipvs::cleanup_request(&parameters)?;
            let c = connect(&sandbox).await?;
            let req = mg::IpvsRequest { parameters, ..Default::default() };
            Ok(c.conntrack_cleanup(ctx(), &req).await.map_err(rpc_err)?.output.trim_end().to_owned())
        }
    }
}

async fn route_cmd(a: &DocArgs, add: bool) -> anyhow::Result<String> {
    let doc = RouteDoc::parse(&read_input(&a.file)?)?;
    doc.validate(add)?;
    let c = connect(&a.sandbox).await?;
    let req = mg::Route { dest: doc.dest, gateway: doc.gateway, device: doc.device, ..Default::default() };
    let routes = if add { c.add_route(ctx(), &req).await } else { c.delete_route(ctx(), &req).await };
    Ok(serde_json::to_string(&routes_out(&routes.map_err(rpc_err)?.routes))?)
}

/// del-iface: `null` on success; on failure the interface that could not be removed (as the
/// shim knows it, else as the document gave it) and the error.
async fn del_iface(a: &DocArgs) -> Outcome {
    let doc = match read_input(&a.file).and_then(|t| Ok(DelIfaceDoc::parse(&t)?)) {
        Ok(d) => d,
        Err(e) => return Outcome::failed(&e),
    };
    let given = || {
        let full = IfaceDoc {
            device: doc.device.clone(),
            name: doc.name.clone(),
            ip_addresses: doc.ip_addresses.clone(),
            hw_addr: doc.hw_addr.clone(),
            mtu: doc.mtu,
            vhost_user_socket: None,
            queues: 0,
        };
        serde_json::to_string(&IfaceOut::from(&doc_to_pb(&full))).unwrap_or_else(|_| "null".into())
    };
    let name = match doc.name() {
        Ok(n) => n.to_owned(),
        Err(e) => return Outcome { stdout: given(), error: Some(e.to_string()) },
    };
    let c = match connect(&a.sandbox).await {
        Ok(c) => c,
        Err(e) => return Outcome { stdout: given(), error: Some(one_line(&e)) },
    };
    let req = mg::Interface { name: name.clone(), ..Default::default() };
    match c.delete_interface(ctx(), &req).await {
        Ok(_) => Outcome::ok("null".into()),
        Err(e) => {
            let known = c
                .list_interfaces(ctx(), &mg::Nothing::new())
                .await
                .ok()
                .and_then(|l| l.interfaces.into_iter().find(|i| i.name == name))
                .and_then(|i| serde_json::to_string(&IfaceOut::from(&i)).ok());
            Outcome { stdout: known.unwrap_or_else(given), error: Some(one_line(&rpc_err(e))) }
        }
    }
}

/// One line for standard error: the error and each cause that it does not already say.
pub fn one_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for text in e.chain().map(|c| c.to_string()).filter(|t| !t.is_empty()) {
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_reaches_the_terminal_has_no_control_characters() {
        let out = Outcome {
            stdout: "IP Virtual Server\n\x1b]2;pwned\x07TCP 10.0.0.1:80".into(),
            error: Some("the VM refused: bad\nthing\x1b[31m".into()),
        }
        .printable();
        assert_eq!(out.stdout, "IP Virtual Server\n?]2;pwned?TCP 10.0.0.1:80");
        assert_eq!(out.error.as_deref(), Some("the VM refused: bad thing?[31m"));
    }

    #[test]
    fn a_cause_is_said_once() {
        let line = netmgmt::ipvs::IpvsError::Line {
            line: 3,
            source: Box::new(netmgmt::ipvs::IpvsError::Syntax("-A: needs -t or -u".into())),
        };
        assert_eq!(one_line(&anyhow::Error::new(line)), "rule file line 3: -A: needs -t or -u");
        let same = anyhow::anyhow!("the VM refused: no such service").context("the VM refused: no such service");
        assert_eq!(one_line(&same), "the VM refused: no such service");
        let two = anyhow::anyhow!("connection refused").context("sandbox a: cannot reach its shim");
        assert_eq!(one_line(&two), "sandbox a: cannot reach its shim: connection refused");
    }
}
