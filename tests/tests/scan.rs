//! Scanning real namespaces into the typed model.

use std::net::IpAddr;

use network::endpoint::{Endpoint, EndpointConfig};
use network::{Error, IfName, Link, LinkKind, NetCtx, NetworkModel, Route};
use tests::{quiet_logger, require_root_and_tools, CniPod, TestNs, POD_MAC};

fn name(s: &str) -> IfName {
    s.parse().unwrap()
}

fn net(s: &str) -> ipnet::IpNet {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

const IFF_UP: u32 = 0x1;
const IFF_BROADCAST: u32 = 0x2;
const IFF_RUNNING: u32 = 0x40;
const IFF_MULTICAST: u32 = 0x1000;
const IFF_LOWER_UP: u32 = 0x10000;
const RTPROT_BOOT: u8 = 3;
const RT_SCOPE_LINK: u8 = 253;
const NUD_PERMANENT: u16 = 0x80;

fn route(dest: Option<&str>, gw: Option<&str>, scope: u8, ipv6: bool, metric: u32) -> Route {
    Route {
        dest: dest.map(net),
        gateway: gw.map(ip),
        device: name("eth0"),
        source: None,
        scope,
        ipv6,
        flags: 0,
        mtu: 0,
        protocol: RTPROT_BOOT,
        metric,
    }
}

#[tokio::test]
async fn cni_like_namespace_scans_to_the_expected_model() {
    require_root_and_tools(&["ip"]);
    let cni = CniPod::new();
    // A device the runtime made must not show up.
    cni.pod.ip(&["tuntap", "add", "tap0_kata", "mode", "tap"]);
    let ctx = NetCtx::open(cni.pod.netns(), quiet_logger()).unwrap();
    let info = ctx.scan().await.unwrap();

    let want_link = Link {
        index: cni.pod.ifindex("eth0"),
        name: name("eth0"),
        kind: LinkKind::Veth,
        mac: Some(POD_MAC.parse().unwrap()),
        mtu: 1450,
        flags: IFF_UP | IFF_BROADCAST | IFF_RUNNING | IFF_MULTICAST | IFF_LOWER_UP,
        addresses: vec![net("10.88.0.5/24"), net("fd00:88::5/64")],
    };
    assert_eq!(info.links, vec![want_link]);
    // Gateway-less first; no proto-kernel or link-local routes.
    let want_routes = vec![
        route(Some("10.77.0.0/16"), None, RT_SCOPE_LINK, false, 0),
        route(None, Some("10.88.0.1"), 0, false, 0),
        route(Some("10.99.0.0/16"), Some("10.88.0.254"), 0, false, 0),
        route(None, Some("fd00:88::1"), 0, true, 1024),
    ];
    assert_eq!(info.routes, want_routes);
    assert_eq!(
        info.neighbors,
        vec![network::Neighbor {
            ip: ip("10.88.0.9"),
            device: name("eth0"),
            lladdr: Some("02:00:0a:58:00:09".parse().unwrap()),
            state: NUD_PERMANENT,
            flags: 0,
        }]
    );
}

#[tokio::test]
async fn tap_macvlan_macvtap_and_tun_scan_to_their_kinds() {
    require_root_and_tools(&["ip"]);
    let ns = TestNs::new("kinds");
    ns.ip(&["link", "add", "p0", "type", "veth", "peer", "name", "p1"]);
    ns.ip(&["tuntap", "add", "tap-a", "mode", "tap", "multi_queue"]);
    ns.ip(&["tuntap", "add", "tap-b", "mode", "tap"]);
    ns.ip(&["tuntap", "add", "tun-a", "mode", "tun"]);
    ns.ip(&["link", "add", "mvl0", "link", "p0", "type", "macvlan", "mode", "bridge"]);
    ns.ip(&["link", "add", "mvt0", "link", "p0", "type", "macvtap", "mode", "bridge"]);
    ns.ip(&["link", "add", "br0", "type", "bridge"]);
    ns.ip(&["addr", "add", "192.168.7.2/24", "dev", "mvl0"]);
    let ctx = NetCtx::open(ns.netns(), quiet_logger()).unwrap();
    let info = ctx.scan().await.unwrap();

    let mut kinds: Vec<(String, LinkKind)> = info.links.iter().map(|l| (l.name.to_string(), l.kind.clone())).collect();
    kinds.sort_by(|a, b| a.0.cmp(&b.0));
    let want = vec![
        ("br0".to_owned(), LinkKind::Other { name: "bridge".into() }),
        ("mvl0".to_owned(), LinkKind::Macvlan),
        ("mvt0".to_owned(), LinkKind::Macvtap),
        ("p0".to_owned(), LinkKind::Veth),
        ("p1".to_owned(), LinkKind::Veth),
        ("tap-a".to_owned(), LinkKind::Tuntap { tap: true, multi_queue: true, pi: false, vnet_hdr: false }),
        ("tap-b".to_owned(), LinkKind::Tuntap { tap: true, multi_queue: false, pi: false, vnet_hdr: false }),
        ("tun-a".to_owned(), LinkKind::Tuntap { tap: false, multi_queue: false, pi: false, vnet_hdr: false }),
    ];
    assert_eq!(kinds, want);
    for l in &info.links {
        if l.name.as_str() == "tun-a" {
            assert_eq!(l.mac, None, "a tun device has no MAC");
        } else {
            assert_eq!(l.mac.map(|m| m.to_string()), Some(ns.mac(l.name.as_str())), "{}", l.name);
        }
        assert_eq!(l.index, ns.ifindex(l.name.as_str()));
    }
    assert_eq!(info.link("mvl0").unwrap().addresses, vec![net("192.168.7.2/24")]);

    // A tun-mode device is a clear error naming it.
    let cfg = EndpointConfig::default();
    match Endpoint::from_scan(&info, &cfg) {
        Err(Error::Unsupported { name, .. }) => assert_eq!(name, "tun-a"),
        other => panic!("expected tun-a to be refused, got {other:?}"),
    }
    ns.ip(&["link", "del", "tun-a"]);
    // An unknown kind with an address is an error naming link and kind; without one it is skipped.
    ns.ip(&["addr", "add", "192.168.8.2/24", "dev", "br0"]);
    let info = ctx.scan().await.unwrap();
    match Endpoint::from_scan(&info, &cfg) {
        Err(e @ Error::UnsupportedKind { .. }) => {
            assert_eq!(e.to_string(), "link br0 has kind \"bridge\", which the runtime cannot attach")
        }
        other => panic!("expected br0 to be refused, got {other:?}"),
    }
    ns.ip(&["addr", "flush", "dev", "br0"]);
    let info = ctx.scan().await.unwrap();
    let eps = Endpoint::from_scan(&info, &cfg).unwrap();
    let mut got: Vec<(String, &str)> = eps
        .iter()
        .map(|e| {
            let k = match e {
                Endpoint::Veth(_) => "veth",
                Endpoint::BridgedTap(_) => "tuntap",
                Endpoint::DirectTap(_) => "tap",
                Endpoint::Macvlan(_) => "macvlan",
                Endpoint::Macvtap(_) => "macvtap",
                Endpoint::Ipvlan(_) => "ipvlan",
                Endpoint::VhostUser(_) => "vhost-user",
                Endpoint::Physical(_) => "physical",
            };
            (e.link_name().to_string(), k)
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            ("mvl0".into(), "macvlan"),
            ("mvt0".into(), "macvtap"),
            ("p0".into(), "veth"),
            ("p1".into(), "veth"),
            ("tap-a".into(), "tuntap"),
            ("tap-b".into(), "tuntap"),
        ]
    );
    // Under the `none` model a TAP link is given to the VM as it is.
    let none = EndpointConfig { model: NetworkModel::None, ..EndpointConfig::default() };
    let eps = Endpoint::from_scan(&info, &none).unwrap();
    assert!(eps.iter().any(|e| matches!(e, Endpoint::DirectTap(t) if t.name.as_str() == "tap-a" && t.multi_queue)));
}

/// ipvlan is missing from this machine's kernel. The test is ignored by default and run by
/// `make test` only where `ip link add type ipvlan` works; run by hand here, it fails.
#[tokio::test]
#[ignore = "needs ipvlan in the kernel; `make test` runs it where the kernel has it"]
async fn ipvlan_scans_and_builds_an_endpoint() {
    require_root_and_tools(&["ip"]);
    let ns = TestNs::new("ipvl");
    ns.ip(&["link", "add", "p0", "type", "veth", "peer", "name", "p1"]);
    assert!(
        tests::try_run(&["ip", "-n", &ns.name, "link", "add", "ipv0", "link", "p0", "type", "ipvlan", "mode", "l2"]),
        "this kernel has no ipvlan: the ipvlan test cannot run here"
    );
    ns.ip(&["addr", "add", "192.168.9.2/24", "dev", "ipv0"]);
    let ctx = NetCtx::open(ns.netns(), quiet_logger()).unwrap();
    let info = ctx.scan().await.unwrap();
    assert_eq!(info.link("ipv0").unwrap().kind, LinkKind::Ipvlan);
    let eps = Endpoint::from_scan(&info, &EndpointConfig::default()).unwrap();
    assert!(eps.iter().any(|e| matches!(e, Endpoint::Ipvlan(_))));
    let macvtap = EndpointConfig { model: NetworkModel::Macvtap, ..EndpointConfig::default() };
    assert!(matches!(Endpoint::from_scan(&info, &macvtap), Err(Error::Unsupported { .. })));
}

#[tokio::test]
async fn a_routes_mtu_is_written_and_read_back() {
    require_root_and_tools(&["ip"]);
    let cni = CniPod::new();
    let ctx = NetCtx::open(cni.pod.netns(), quiet_logger()).unwrap();
    let index = cni.pod.ifindex("eth0");
    let r = Route { mtu: 1400, ..route(Some("10.66.0.0/16"), Some("10.88.0.254"), 0, false, 0) };
    network::nl::replace_routes(&ctx.handle, index, std::slice::from_ref(&r)).await.unwrap();
    let shown = cni.pod.ip(&["route", "show", "10.66.0.0/16"]);
    assert!(shown.contains("via 10.88.0.254 dev eth0") && shown.contains("mtu 1400"), "{shown}");
    let info = ctx.scan().await.unwrap();
    let back = info.routes.iter().find(|x| x.dest == r.dest).expect("the route is scanned");
    assert_eq!(back.mtu, 1400);
}

/// A storm of changes (thousands of addresses added and removed while nobody reads) neither ends
/// the watch nor leaves it behind, nor queues: the watch's reader drained the kernel's messages
/// as they came (or saw the socket overrun) while nothing waited, so after the storm there is one
/// change to take and the next wait settles at once; a change made later is still seen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_survives_a_storm_of_changes_and_sees_the_next_one() {
    tests::require_root_and_tools(&["ip"]);
    let ns = tests::TestNs::new("storm");
    ns.ip(&["link", "add", "d0", "type", "veth", "peer", "name", "d1"]);
    ns.ip(&["link", "set", "d0", "up"]);
    let ctx = network::NetCtx::open(ns.netns(), tests::quiet_logger()).unwrap();
    let mut changes = ctx.watch().unwrap();
    let batch = std::env::temp_dir().join(format!("knt-storm-{}", std::process::id()));
    let mut cmds = String::new();
    for i in 0..4000u32 {
        cmds.push_str(&format!("addr add 10.{}.{}.1/32 dev d0\n", i / 250, i % 250));
    }
    for i in 0..4000u32 {
        cmds.push_str(&format!("addr del 10.{}.{}.1/32 dev d0\n", i / 250, i % 250));
    }
    std::fs::write(&batch, cmds).unwrap();
    ns.ip(&["-batch", batch.to_str().unwrap()]);
    let _ = std::fs::remove_file(&batch);
    // Drained while nobody waited: thousands of messages read (or overruns seen), none kept.
    tests::containerd::wait_until(std::time::Duration::from_secs(10), "the reader drained the storm", || {
        let (messages, overruns) = changes.counts();
        messages >= 8000 || overruns > 0
    });
    let (messages, overruns) = changes.counts();
    println!("storm: {messages} messages read, {overruns} overruns");
    assert!(changes.next().await, "the watch ended in the storm");
    let quiet = std::time::Duration::from_millis(300);
    let t = std::time::Instant::now();
    let settled = tokio::time::timeout(std::time::Duration::from_secs(30), changes.settle(quiet)).await;
    assert_eq!(settled.ok(), Some(true), "the watch ended while settling");
    assert!(t.elapsed() < quiet * 3, "nothing was queued: the first quiet moment ends the wait ({:?})", t.elapsed());
    ns.ip(&["link", "set", "d0", "mtu", "1400"]);
    let next = tokio::time::timeout(std::time::Duration::from_secs(5), changes.next()).await;
    assert_eq!(next.ok(), Some(true), "a change after the storm is seen");
}
