//! The test VM's agent: serves `grpc.AgentService` (network calls) and `grpc.Health` over a
//! virtio-serial port, vsock, or a unix socket, and applies everything through netlink.
//!
//! It stands in for kata's agent in this project's tests and demo; it is not shipped.
//! `guest-agent --launch <json>` is the agent starting a container process (see `launch.rs`).

mod cgroups;
mod console;
mod containers;
mod ipvs;
mod launch;
mod netcfg;
mod portfwd;
mod seccomp;
mod serial;
mod service;
mod storage;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};

#[derive(Debug, Default)]
struct Args {
    unix: Option<PathBuf>,
    serial: Option<String>,
    vsock: Option<u32>,
    resolv_conf: Option<PathBuf>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args::default();
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = || it.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--unix" => a.unix = Some(val()?.into()),
            "--serial" => a.serial = Some(val()?),
            "--vsock" => a.vsock = Some(val()?.parse().context("--vsock takes a port number")?),
            "--resolv-conf" => a.resolv_conf = Some(val()?.into()),
            other => bail!(
                "unknown argument {other:?} (use --unix PATH, --serial NAME|PATH, --vsock PORT, --resolv-conf PATH)"
            ),
        }
    }
    if a.unix.is_none() && a.serial.is_none() && a.vsock.is_none() {
        bail!("nothing to serve on: give --unix, --serial or --vsock");
    }
    Ok(a)
}

fn services(agent: &Arc<service::Agent>) -> std::collections::HashMap<String, ttrpc::asynchronous::Service> {
    let mut s = agent_client::protocols::agent_ttrpc::create_agent_service(agent.clone());
    s.extend(agent_client::protocols::health_ttrpc::create_health(agent.clone()));
    s
}

async fn start(
    s: ttrpc::asynchronous::Server,
    agent: &Arc<service::Agent>,
) -> anyhow::Result<ttrpc::asynchronous::Server> {
    let mut s = s.register_service(services(agent));
    s.start().await?;
    Ok(s)
}

fn main() -> anyhow::Result<()> {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("--pause") {
        let e = launch::pause().unwrap_err();
        eprintln!("guest-agent: {e:#}");
        std::process::exit(127);
    }
    if argv.get(1).map(String::as_str) == Some("--launch") {
        let e = launch::run(argv.get(2).map(String::as_str).unwrap_or_default()).unwrap_err();
        eprintln!("guest-agent: {e:#}");
        std::process::exit(127);
    }
    serve()
}

#[tokio::main(flavor = "current_thread")]
async fn serve() -> anyhow::Result<()> {
    let args = parse_args()?;
    let (conn, handle, _) = rtnetlink::new_connection().context("open netlink")?;
    tokio::spawn(conn);
    let agent = Arc::new(service::Agent::new(handle, args.resolv_conf.unwrap_or_else(|| "/etc/resolv.conf".into())));

    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    if let Some(port) = console::port_from_cmdline(&cmdline) {
        match console::serve(port) {
            Ok(()) => eprintln!("guest-agent: debug console on vsock port {port}"),
            Err(e) => eprintln!("guest-agent: no debug console on vsock port {port}: {e}"),
        }
    }
    // kubectl port-forward's guest end, wherever the guest has vsock (a serial-only VM has none).
    if let Err(e) = portfwd::serve(agent_client::PORT_FORWARD_PORT) {
        eprintln!("guest-agent: no port forwarding: {e}");
    }
    // Unix socket and vsock first: a VM whose channel is vsock has no virtio-serial port, and
    // must not wait for one.
    let mut running = Vec::new();
    if let Some(path) = &args.unix {
        let _ = std::fs::remove_file(path);
        let s = ttrpc::asynchronous::Server::new().bind(&format!("unix://{}", path.display()))?;
        running.push(start(s, &agent).await?);
    }
    if let Some(port) = args.vsock {
        let s = ttrpc::asynchronous::Server::new().bind(&format!("vsock://{}:{port}", libc::VMADDR_CID_ANY))?;
        running.push(start(s, &agent).await?);
    }
    if let Some(serial) = &args.serial {
        let path = if serial.starts_with('/') {
            Some(PathBuf::from(serial))
        } else {
            let mut found = None;
            for _ in 0..100 {
                found = serial::find_port(serial);
                if found.is_some() {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            found
        };
        match path {
            Some(path) => {
                let s = ttrpc::asynchronous::Server::new().add_listener(serial::listener(path));
                running.push(start(s, &agent).await?);
            }
            // A VM whose agent channel is vsock has no port: serve vsock alone.
            None if args.vsock.is_some() => eprintln!("guest-agent: no virtio-serial port named {serial}; vsock only"),
            None => bail!("no virtio-serial port named {serial}"),
        }
    }
    eprintln!("guest-agent: ready");
    futures::future::pending::<()>().await;
    drop(running);
    Ok(())
}
