//! The `kata-runtime` operator command.
//!
//! Output rules (`network-cli.md`): on success the documented JSON on standard output, one line,
//! exit code 0; on failure the literal `null` on standard output, a one-line error on standard
//! error and a non-zero exit code.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use serde::Serialize;

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
}

#[derive(Debug, Subcommand)]
pub enum NetworkCommand {
    /// Print what the runtime sees in a network namespace, in the agent protocol's shapes
    /// (read-only).
    #[command(name = "scan-netns")]
    ScanNetns {
        /// Path of the namespace: /run/netns/<name> or /proc/<pid>/ns/net.
        netns: PathBuf,
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
pub async fn scan_netns(path: &std::path::Path) -> anyhow::Result<ScanOutput> {
    let ns = network::NetNs::from_user_path(path)?;
    let ctx = network::NetCtx::open(ns, slog::Logger::root(slog::Discard, slog::o!()))?;
    let info = ctx.scan().await?;
    Ok(ScanOutput {
        interfaces: agent_client::interfaces(&info.links),
        routes: agent_client::routes(&info.routes),
        neighbors: agent_client::neighbors(&info.neighbors),
    })
}

/// Run a parsed command; returns the JSON line to print.
pub async fn run(cli: Cli) -> anyhow::Result<String> {
    match cli.command {
        Command::KataNetwork(NetworkCommand::ScanNetns { netns }) => {
            Ok(serde_json::to_string(&scan_netns(&netns).await?)?)
        }
    }
}

/// One line for standard error: the error and its causes.
pub fn one_line(e: &anyhow::Error) -> String {
    e.chain().map(|c| c.to_string()).collect::<Vec<_>>().join(": ").replace('\n', " ")
}
