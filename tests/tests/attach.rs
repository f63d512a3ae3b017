//! Attach and detach in the kernel: traffic crosses the tcfilter and macvtap connections both
//! ways with a test playing the VM on the queue fds, teardown restores the namespace exactly,
//! a failed attach leaves nothing behind, and a later process can undo an earlier one's attach.

use std::fs::File;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use network::endpoint::{Endpoint, EndpointConfig, EndpointState};
use network::{Error, NetCtx, NetworkModel, NicBackend};
use tests::frames::{self, Seen};
use tests::{quiet_logger, require_root_and_tools, CniPod, POD_IP, POD_MAC};

fn cfg(model: NetworkModel, queues: usize) -> EndpointConfig {
    EndpointConfig { model, queues, vhost_net: false, ..EndpointConfig::default() }
}

async fn attach_eth0(cni: &CniPod, cfg: &EndpointConfig) -> (NetCtx, network::Attached) {
    let ctx = NetCtx::open(cni.pod.netns(), quiet_logger()).unwrap();
    let info = ctx.scan().await.unwrap();
    let eps = Endpoint::from_scan(&info, cfg).unwrap();
    assert_eq!(eps.len(), 1, "one endpoint for eth0: {eps:?}");
    let attached = eps[0].attach(&ctx, cfg).await.unwrap();
    (ctx, attached)
}

/// Play the VM on `queues` while the peer namespace pings the pod address.
fn ping_through(cni: &CniPod, queues: Vec<File>) -> Seen {
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let mac = POD_MAC.parse::<network::MacAddr>().unwrap().0;
    let ip: Ipv4Addr = POD_IP.parse().unwrap();
    let vm = std::thread::spawn(move || {
        let mut queues = queues;
        frames::serve(&mut queues, mac, ip, Duration::from_secs(30), || stop2.load(Ordering::SeqCst))
    });
    let ok =
        tests::try_run(&["ip", "netns", "exec", &cni.peer.name, "ping", "-c", "3", "-i", "0.2", "-W", "3", POD_IP]);
    stop.store(true, Ordering::SeqCst);
    let seen = vm.join().unwrap();
    assert!(ok, "ping from the peer through the connection failed; the VM side saw {seen:?}");
    seen
}

fn queue_files(backend: NicBackend) -> Vec<File> {
    match backend {
        NicBackend::Tap { queues, vhost, .. } => {
            assert!(vhost.is_empty(), "vhost was disabled");
            queues.into_iter().map(File::from).collect()
        }
        other => panic!("expected a TAP backend, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcfilter_carries_arp_and_ping_both_ways_and_teardown_restores_the_namespace() {
    require_root_and_tools(&["ip", "tc", "ping"]);
    let cni = CniPod::new();
    let before = cni.pod.snapshot();
    let cfg = cfg(NetworkModel::TcFilter, 2);
    let (ctx, attached) = attach_eth0(&cni, &cfg).await;

    assert_eq!(attached.nic.guest_mac.to_string(), POD_MAC);
    assert_eq!(attached.nic.mtu, 1450);
    assert_eq!(attached.nic.queue_count(), 2);
    let tap = cni.pod.ip(&["-d", "link", "show", "tap0_kata"]);
    assert!(tap.contains("mtu 1450") && tap.contains("multi_queue") && tap.contains("vnet_hdr on"), "{tap}");
    let f = cni.pod.tc(&["filter", "show", "dev", "eth0", "ingress"]);
    assert!(f.contains("Egress Redirect to device tap0_kata"), "{f}");
    let f = cni.pod.tc(&["filter", "show", "dev", "tap0_kata", "ingress"]);
    assert!(f.contains("Egress Redirect to device eth0"), "{f}");

    let seen = ping_through(&cni, queue_files(attached.nic.backend));
    assert!(seen.arp_requests >= 1 && seen.echo_requests >= 3, "{seen:?}");
    let neigh = cni.peer.ip(&["neigh", "show", POD_IP]);
    assert!(neigh.contains(POD_MAC), "the peer learnt the VM's MAC through the TAP: {neigh}");

    attached.state.detach(&ctx).await.unwrap();
    assert_eq!(cni.pod.snapshot(), before);
    // Detach twice is harmless.
    attached.state.detach(&ctx).await.unwrap();
    assert_eq!(cni.pod.snapshot(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn macvtap_model_carries_ping_and_teardown_gives_back_mac_addresses_and_routes() {
    require_root_and_tools(&["ip", "tc", "ping"]);
    let cni = CniPod::new();
    let before = cni.pod.snapshot();
    let cfg = cfg(NetworkModel::Macvtap, 2);
    let (ctx, attached) = attach_eth0(&cni, &cfg).await;

    let mvt = cni.pod.ip(&["-d", "link", "show", "tap0_kata"]);
    assert!(mvt.contains("macvtap mode bridge") && mvt.contains(POD_MAC), "{mvt}");
    assert_ne!(cni.pod.mac("eth0"), POD_MAC, "eth0 gave its MAC to the macvtap");
    let addrs = cni.pod.ip(&["-4", "addr", "show", "dev", "eth0"]);
    assert!(!addrs.contains(POD_IP), "eth0 no longer holds the pod address: {addrs}");

    let seen = ping_through(&cni, queue_files(attached.nic.backend));
    assert!(seen.arp_requests >= 1 && seen.echo_requests >= 3, "{seen:?}");

    attached.state.detach(&ctx).await.unwrap();
    assert_eq!(cni.pod.snapshot(), before);
}

#[tokio::test]
async fn existing_tap0_kata_fails_the_attach_naming_it_and_changes_nothing() {
    require_root_and_tools(&["ip", "tc"]);
    let cni = CniPod::new();
    cni.pod.ip(&["tuntap", "add", "tap0_kata", "mode", "tap"]);
    let before = cni.pod.snapshot();
    for model in [NetworkModel::TcFilter, NetworkModel::Macvtap, NetworkModel::None] {
        let cfg = cfg(model, 1);
        let ctx = NetCtx::open(cni.pod.netns(), quiet_logger()).unwrap();
        let eps = Endpoint::from_scan(&ctx.scan().await.unwrap(), &cfg).unwrap();
        let err = eps[0].attach(&ctx, &cfg).await.unwrap_err();
        assert!(matches!(&err, Error::DeviceExists(d) if d == "tap0_kata"), "{model:?}: {err:?}");
        assert!(err.to_string().contains("tap0_kata"), "{err}");
        assert_eq!(cni.pod.snapshot(), before, "{model:?}");
    }
}

#[tokio::test]
async fn qdisc_that_cannot_be_added_rolls_back_the_tap_and_names_the_device() {
    require_root_and_tools(&["ip", "tc"]);
    let cni = CniPod::new();
    // Someone else's ingress qdisc is already on eth0: ours cannot be added.
    cni.pod.tc(&["qdisc", "add", "dev", "eth0", "ingress"]);
    let before = cni.pod.snapshot();
    let cfg = cfg(NetworkModel::TcFilter, 4);
    let ctx = NetCtx::open(cni.pod.netns(), quiet_logger()).unwrap();
    let eps = Endpoint::from_scan(&ctx.scan().await.unwrap(), &cfg).unwrap();
    let err = eps[0].attach(&ctx, &cfg).await.unwrap_err();
    assert_eq!(err.to_string(), "failed to add ingress qdisc on eth0");
    assert_eq!(err.errno(), Some(libc::EEXIST));
    assert_eq!(cni.pod.snapshot(), before, "no tap0_kata, and the operator's qdisc is still there");
}

#[tokio::test]
async fn a_later_process_detaches_from_persisted_state_while_the_vm_still_holds_the_fds() {
    require_root_and_tools(&["ip", "tc"]);
    let cni = CniPod::new();
    let before = cni.pod.snapshot();
    let cfg = cfg(NetworkModel::TcFilter, 1);
    let (ctx, attached) = attach_eth0(&cni, &cfg).await;
    let saved = serde_json::to_string(&attached.state).unwrap();
    // The "VM" keeps the queue fds open; the first process is gone.
    let held = attached.nic;
    drop(ctx);

    let state: EndpointState = serde_json::from_str(&saved).unwrap();
    assert_eq!(state, attached.state);
    let ctx = NetCtx::open(cni.pod.netns(), quiet_logger()).unwrap();
    state.detach(&ctx).await.unwrap();
    assert_eq!(cni.pod.snapshot(), before, "the TAP is gone although its fds are still open");
    drop(held);
}

#[tokio::test]
async fn attach_all_undoes_earlier_endpoints_when_a_later_one_fails() {
    require_root_and_tools(&["ip", "tc"]);
    let cni = CniPod::new();
    // A second veth whose endpoint (tap1_kata) cannot be made: its name is taken.
    cni.pod.ip(&["link", "add", "eth1", "type", "veth", "peer", "name", "eth1p"]);
    cni.pod.ip(&["link", "set", "eth1p", "netns", &cni.peer.name]);
    cni.pod.ip(&["link", "set", "eth1", "up"]);
    cni.pod.ip(&["tuntap", "add", "tap1_kata", "mode", "tap"]);
    let before = cni.pod.snapshot();
    let cfg = cfg(NetworkModel::TcFilter, 1);
    let ctx = NetCtx::open(cni.pod.netns(), quiet_logger()).unwrap();
    let eps = Endpoint::from_scan(&ctx.scan().await.unwrap(), &cfg).unwrap();
    assert_eq!(eps.len(), 2);
    let err = network::attach_all(&ctx, &eps, &cfg).await.unwrap_err();
    assert!(matches!(&err, Error::DeviceExists(d) if d == "tap1_kata"), "{err:?}");
    assert_eq!(cni.pod.snapshot(), before);
}

#[tokio::test]
async fn detach_all_removes_every_endpoint_of_a_sandbox_in_one_batch() {
    require_root_and_tools(&["ip", "tc"]);
    let cni = CniPod::new();
    for i in 1..4 {
        let (eth, p) = (format!("eth{i}"), format!("eth{i}p"));
        cni.pod.ip(&["link", "add", &eth, "type", "veth", "peer", "name", &p, "netns", &cni.peer.name]);
        cni.pod.ip(&["link", "set", &eth, "up"]);
    }
    // The macvtap model too: its device is in the runtime's group as well.
    for model in [NetworkModel::TcFilter, NetworkModel::Macvtap] {
        let before = cni.pod.snapshot();
        let cfg = cfg(model, 2);
        let ctx = NetCtx::open(cni.pod.netns(), quiet_logger()).unwrap();
        let eps = Endpoint::from_scan(&ctx.scan().await.unwrap(), &cfg).unwrap();
        assert_eq!(eps.len(), 4);
        let attached = network::attach_all(&ctx, &eps, &cfg).await.unwrap();
        let group = cni.pod.ip(&["link", "show", "group", &network::nl::RUNTIME_LINK_GROUP.to_string()]);
        assert_eq!(group.lines().filter(|l| l.contains("_kata")).count(), 4, "{model:?}: {group}");
        let states: Vec<EndpointState> = attached.iter().map(|a| a.state.clone()).collect();
        network::detach_all(&ctx, &states).await.unwrap();
        assert_eq!(cni.pod.snapshot(), before, "{model:?}");
    }
}

/// A VM that plugs NICs but will not give them back.
struct StuckVm;

impl network::NicHotplug for StuckVm {
    type Error = std::io::Error;

    async fn add_nic(&self, _: network::NicConfig) -> Result<network::PciPath, Self::Error> {
        Ok("02".parse().unwrap())
    }

    async fn remove_nic(&self, id: &str) -> Result<(), Self::Error> {
        Err(std::io::Error::other(format!("{id} is still in use")))
    }
}

#[tokio::test]
async fn a_nic_the_vm_keeps_stops_the_undo_before_the_devices_it_uses() {
    require_root_and_tools(&["ip"]);
    let ns = tests::TestNs::new("stuck");
    ns.ip(&["tuntap", "add", "dev", "keep0", "mode", "tap"]);
    let ctx = NetCtx::open(ns.netns(), quiet_logger()).unwrap();
    let mut rb = network::Rollback::with_nics(&ctx, std::sync::Arc::new(StuckVm));
    // The TAP the NIC uses was "made" first, the NIC plugged on it second.
    rb.push(network::Undo::DeleteLink { name: "keep0".parse().unwrap() });
    let nic = network::NicConfig {
        id: "hp-x".into(),
        guest_mac: "02:00:00:00:00:01".parse().unwrap(),
        mtu: 1500,
        backend: network::NicBackend::VhostUser { socket: "/nonexistent".into() },
    };
    rb.hotplug(nic).await.unwrap();
    let e = rb.undo().await.unwrap_err();
    assert!(matches!(e, network::Error::Unplug { ref id, .. } if id == "hp-x"), "{e:?}");
    assert!(tests::try_run(&["ip", "-n", &ns.name, "link", "show", "keep0"]), "the TAP the VM still uses is left");
}
