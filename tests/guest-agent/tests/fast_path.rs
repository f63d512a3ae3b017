//! The client and the guest agent over a unix socket, the agent inside a namespace that plays the
//! VM: every call's effect is checked in that namespace with iproute2, and bad requests change
//! nothing.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use agent_client::protocols::agent::{CreateSandboxRequest, KernelModule};
use agent_client::protocols::types::{ARPNeighbor, IPAddress, IPFamily, Interface, Route};
use agent_client::{AgentAddr, AgentClient};
use protobuf::{EnumOrUnknown, MessageField};
use tests::{require_root_and_tools, run, TestNs};

const MAC: &str = "02:00:0a:58:00:05";

struct Agent {
    child: Child,
    dir: std::path::PathBuf,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start_agent(vm: &TestNs) -> (Agent, std::path::PathBuf, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("knt-agent-{}-{}", std::process::id(), vm.name));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("agent.sock");
    let resolv = dir.join("resolv.conf");
    let child = Command::new("ip")
        .args(["netns", "exec", &vm.name, "unshare", "--uts", env!("CARGO_BIN_EXE_guest-agent")])
        .arg("--unix")
        .arg(&sock)
        .arg("--resolv-conf")
        .arg(&resolv)
        .spawn()
        .unwrap();
    let agent = Agent { child, dir };
    let start = Instant::now();
    while !sock.exists() {
        assert!(start.elapsed() < Duration::from_secs(10), "the agent did not create its socket");
        std::thread::sleep(Duration::from_millis(20));
    }
    (agent, sock, resolv)
}

fn ip4(addr: &str, mask: &str) -> IPAddress {
    IPAddress {
        family: EnumOrUnknown::new(IPFamily::v4),
        address: addr.into(),
        mask: mask.into(),
        ..Default::default()
    }
}

fn route(dest: &str, gw: &str, dev: &str) -> Route {
    Route { dest: dest.into(), gateway: gw.into(), device: dev.into(), ..Default::default() }
}

fn code(e: &agent_client::Error) -> Option<ttrpc::Code> {
    e.code()
}

#[tokio::test]
async fn agent_applies_interface_routes_neighbours_and_dns_and_refuses_bad_requests() {
    require_root_and_tools(&["ip", "unshare", "nsenter", "ping"]);
    let vm = TestNs::new("vm");
    let peer = TestNs::new("vmpeer");
    vm.ip(&["link", "add", "ens4", "type", "veth", "peer", "name", "veth0", "netns", &peer.name]);
    vm.ip(&["link", "set", "ens4", "address", MAC]);
    peer.ip(&["addr", "add", "10.88.0.1/24", "dev", "veth0"]);
    peer.ip(&["link", "set", "veth0", "up"]);
    let (agent, sock, resolv) = start_agent(&vm);
    let addr: AgentAddr = format!("unix://{}", sock.display()).parse().unwrap();
    let c = AgentClient::connect(&addr, Duration::from_secs(5)).await.unwrap();
    assert!(c.check().await.unwrap());
    assert_eq!(c.version().await.unwrap().1, env!("CARGO_PKG_VERSION"));

    let iface = Interface {
        name: "eth0".into(),
        hwAddr: MAC.into(),
        mtu: 1400,
        IPAddresses: vec![ip4("10.88.0.5", "24")],
        ..Default::default()
    };

    // Bad requests: each a clear error, nothing changed.
    let before = vm.snapshot();
    let unknown = Interface { hwAddr: "02:00:00:00:00:99".into(), ..iface.clone() };
    let e = c.update_interface(&unknown, Duration::ZERO).await.unwrap_err();
    assert_eq!(code(&e), Some(ttrpc::Code::NOT_FOUND), "{e:?}");
    let bad_cidr = Interface { IPAddresses: vec![ip4("10.88.0.5", "33")], ..iface.clone() };
    let e = c.update_interface(&bad_cidr, Duration::ZERO).await.unwrap_err();
    assert_eq!(code(&e), Some(ttrpc::Code::INVALID_ARGUMENT), "{e:?}");
    assert!(format!("{:?}", e).contains("IPAddresses[0]"), "{e:?}");
    let bad_mac = Interface { hwAddr: "02:00:0a:58:00".into(), ..iface.clone() };
    assert_eq!(
        code(&c.update_interface(&bad_mac, Duration::ZERO).await.unwrap_err()),
        Some(ttrpc::Code::INVALID_ARGUMENT)
    );
    let e = c.update_routes(vec![route("10.99.0.0/16", "10.88.0.x", "ens4")], false).await.unwrap_err();
    assert_eq!(code(&e), Some(ttrpc::Code::INVALID_ARGUMENT), "{e:?}");
    let e = c.update_routes(vec![route("default", "", "ens4")], true).await.unwrap_err();
    assert_eq!(code(&e), Some(ttrpc::Code::INVALID_ARGUMENT), "a default route needs a gateway: {e:?}");
    assert_eq!(vm.snapshot(), before);

    // The interface: renamed, MTU, address, up.
    let got = c.update_interface(&iface, Duration::from_secs(2)).await.unwrap();
    assert_eq!((got.name.as_str(), got.mtu, got.hwAddr.as_str()), ("eth0", 1400, MAC));
    let link = vm.ip(&["addr", "show", "dev", "eth0"]);
    assert!(link.contains("mtu 1400") && link.contains("inet 10.88.0.5/24") && link.contains(",UP"), "{link}");
    assert!(vm.ip(&["link", "show"]).lines().all(|l| !l.contains("ens4")));

    // Routes, replacing those of eth0; a route whose gateway is unreachable fails and is undone.
    let routes = vec![route("default", "10.88.0.1", "eth0"), route("10.99.0.0/16", "10.88.0.254", "eth0")];
    let after = c.update_routes(routes, false).await.unwrap();
    let r = vm.ip(&["route", "show"]);
    assert!(r.contains("default via 10.88.0.1 dev eth0") && r.contains("10.99.0.0/16 via 10.88.0.254 dev eth0"), "{r}");
    assert!(after.iter().any(|x| x.dest.is_empty() && x.gateway == "10.88.0.1"), "{after:?}");
    let before = vm.snapshot();
    let e = c
        .update_routes(vec![route("10.66.0.0/16", "", "eth0"), route("10.67.0.0/16", "192.0.2.1", "eth0")], true)
        .await;
    assert!(e.is_err(), "unreachable gateway must fail");
    assert_eq!(vm.snapshot(), before, "the first route of the failed request was undone");

    // Increment mode: add, then delete with "-dest".
    c.update_routes(vec![route("10.55.0.0/16", "10.88.0.254", "eth0")], true).await.unwrap();
    assert!(vm.ip(&["route", "show"]).contains("10.55.0.0/16 via 10.88.0.254"));
    c.update_routes(vec![Route { dest: "-10.55.0.0/16".into(), ..Default::default() }], true).await.unwrap();
    assert!(!vm.ip(&["route", "show"]).contains("10.55.0.0/16"));
    let e =
        c.update_routes(vec![Route { dest: "-10.55.0.0/16".into(), ..Default::default() }], true).await.unwrap_err();
    assert_eq!(code(&e), Some(ttrpc::Code::NOT_FOUND));

    // Neighbours.
    let n = ARPNeighbor {
        toIPAddress: MessageField::some(ip4("10.88.0.9", "")),
        device: "eth0".into(),
        lladdr: "02:00:0a:58:00:09".into(),
        ..Default::default()
    };
    c.add_arp_neighbors(vec![n]).await.unwrap();
    let neigh = vm.ip(&["neigh", "show", "nud", "permanent"]);
    assert!(neigh.contains("10.88.0.9 dev eth0 lladdr 02:00:0a:58:00:09 PERMANENT"), "{neigh}");

    // Lists come from the kernel.
    let ifs = c.list_interfaces().await.unwrap();
    let eth0 = ifs.iter().find(|i| i.name == "eth0").expect("eth0 listed");
    assert_eq!(
        eth0.IPAddresses.iter().map(|a| format!("{}/{}", a.address, a.mask)).collect::<Vec<_>>(),
        ["10.88.0.5/24"]
    );
    let rs = c.list_routes().await.unwrap();
    assert!(rs.iter().any(|r| r.dest == "10.88.0.0/24"), "connected route listed: {rs:?}");

    // Hostname (in the agent's own UTS namespace) and DNS.
    let req = CreateSandboxRequest {
        hostname: "pod-".to_string() + &"x".repeat(80),
        dns: vec!["nameserver 10.96.0.10".into(), "search svc.cluster.local".into(), "options ndots:5".into()],
        sandbox_id: "s1".into(),
        kernel_modules: vec![KernelModule::default()],
        ..Default::default()
    };
    c.create_sandbox(&req).await.unwrap();
    assert_eq!(
        std::fs::read_to_string(&resolv).unwrap(),
        "nameserver 10.96.0.10\nsearch svc.cluster.local\noptions ndots:5\n"
    );
    let pid = agent.child.id().to_string();
    let host = run(&["nsenter", "--uts", "--target", &pid, "hostname"]);
    assert_eq!(host.trim(), format!("pod-{}", "x".repeat(60)), "cut to 64 characters");

    // The configured "VM" answers on the wire.
    run(&["ip", "netns", "exec", &peer.name, "ping", "-c", "1", "-W", "2", "10.88.0.5"]);
}
