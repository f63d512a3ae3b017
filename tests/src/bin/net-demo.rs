//! `make demo`: the network path of one sandbox, shown step by step on a namespace prepared the
//! way CNI's bridge plugin leaves it. It scans the namespace, attaches its endpoint with the
//! default `tcfilter` model, plays the VM on the TAP queues while the peer pings the pod address,
//! then detaches and checks that the namespace is exactly as CNI left it. Everything it makes is
//! removed when it ends.

use std::fs::File;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use network::endpoint::{Endpoint, EndpointConfig};
use network::{NetCtx, NicBackend};
use tests::{frames, require_root_and_tools, CniPod, POD_IP, POD_MAC};

fn main() -> anyhow::Result<()> {
    require_root_and_tools(&["ip", "tc", "ping"]);
    let decorator = slog_term::TermDecorator::new().stderr().build();
    let drain = std::sync::Mutex::new(slog_term::FullFormat::new(decorator).build());
    let log = slog::Logger::root(slog::Fuse(drain), slog::o!("sandbox_id" => "demo"));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;

    let cni = CniPod::new();
    println!("== pod namespace {} (as CNI left it)", cni.pod.path());
    print!("{}", cni.pod.ip(&["-br", "addr"]));
    let before = cni.pod.snapshot();

    let scan = std::process::Command::new(std::env::current_exe()?.with_file_name("kata-runtime"))
        .args(["kata-network", "scan-netns", &cni.pod.path()])
        .output()?;
    println!("== kata-runtime kata-network scan-netns {}", cni.pod.path());
    print!("{}", String::from_utf8_lossy(&scan.stdout));

    let cfg = EndpointConfig { vhost_net: true, queues: 2, ..EndpointConfig::default() };
    let ctx = rt.block_on(async { NetCtx::open(cni.pod.netns(), log.clone()) })?;
    let eps = Endpoint::from_scan(&rt.block_on(ctx.scan())?, &cfg)?;
    let attached = rt.block_on(network::attach_all(&ctx, &eps, &cfg))?;
    println!("== attached with the tcfilter model: {:?}", attached[0].state);
    print!("{}", cni.pod.ip(&["-br", "link"]));
    print!("{}", cni.pod.tc(&["filter", "show", "dev", "eth0", "ingress"]));

    let mut attached = attached;
    let a = attached.remove(0);
    let queues: Vec<File> = match a.nic.backend {
        NicBackend::Tap { queues, .. } => queues.into_iter().map(File::from).collect(),
        NicBackend::VhostUser { .. } => anyhow::bail!("unexpected vhost-user backend"),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let mac = POD_MAC.parse::<network::MacAddr>()?.0;
    let ip: Ipv4Addr = POD_IP.parse()?;
    let vm = std::thread::spawn(move || {
        let mut q = queues;
        frames::serve(&mut q, mac, ip, Duration::from_secs(20), || stop2.load(Ordering::SeqCst))
    });
    println!("== the peer pings {POD_IP}; the demo answers on the TAP queues as the VM would");
    let ping = std::process::Command::new("ip")
        .args(["netns", "exec", &cni.peer.name, "ping", "-c", "3", "-i", "0.2", "-W", "3", POD_IP])
        .output()?;
    stop.store(true, Ordering::SeqCst);
    let seen = vm.join().map_err(|_| anyhow::anyhow!("VM thread panicked"))?;
    print!("{}", String::from_utf8_lossy(&ping.stdout));
    println!(
        "VM side saw {} frames: {} ARP requests, {} echo requests",
        seen.frames, seen.arp_requests, seen.echo_requests
    );

    rt.block_on(a.state.detach(&ctx))?;
    let restored = cni.pod.snapshot() == before;
    println!("== detached; namespace exactly as CNI left it: {restored}");
    anyhow::ensure!(ping.status.success(), "ping through the TAP failed");
    anyhow::ensure!(restored, "teardown left the namespace changed");
    println!("demo OK");
    Ok(())
}
