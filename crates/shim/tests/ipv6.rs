//! IPv6 end to end through containerd and a real VM: an IPv6-only pod (no IPv4 anywhere) gets
//! its addresses, default route and neighbours in the guest, the peer's ping6 is answered by the
//! VM (the pod namespace's `Icmp6InEchos` stays), the operator CLI's IPv6 documents work on the
//! live sandbox, an address added after start is followed, and teardown leaves the namespace as
//! it was. (The dual-stack pod is `containerd.rs`'s first test.)

use std::path::Path;
use std::time::Duration;

use tests::cli::KataRuntime;
use tests::containerd::wait_until;
use tests::TestNs;

const POD6: &str = "fd00:66::5";
const PEER6: &str = "fd00:66::1";

/// A pod namespace with IPv6 only: `eth0` (veth) fd00:66::5/64, default via the peer's
/// fd00:66::1, a permanent neighbour; IPv4 has no address and no route.
fn ipv6_only_pod() -> (TestNs, TestNs) {
    let pod = TestNs::new("pod6");
    let peer = TestNs::new("peer6");
    pod.ip(&["link", "add", "eth0", "type", "veth", "peer", "name", "veth0", "netns", &peer.name]);
    pod.ip(&["link", "set", "eth0", "address", "02:00:00:66:00:05"]);
    pod.ip(&["addr", "add", &format!("{POD6}/64"), "dev", "eth0", "nodad"]);
    pod.ip(&["link", "set", "eth0", "up"]);
    pod.ip(&["link", "set", "lo", "up"]);
    pod.ip(&["-6", "route", "add", "default", "via", PEER6, "dev", "eth0"]);
    pod.ip(&["-6", "neigh", "add", "fd00:66::9", "lladdr", "02:00:00:66:00:09", "dev", "eth0", "nud", "permanent"]);
    peer.ip(&["addr", "add", &format!("{PEER6}/64"), "dev", "veth0", "nodad"]);
    peer.ip(&["link", "set", "veth0", "up"]);
    peer.ip(&["link", "set", "lo", "up"]);
    // The link-local addresses' duplicate detection done, so that snapshots compare.
    wait_until(Duration::from_secs(10), "IPv6 DAD", || pod.ip(&["-6", "addr", "show", "tentative"]).trim().is_empty());
    (pod, peer)
}

#[test]
fn an_ipv6_only_pod_reaches_the_vm_and_the_operators_v6_documents_work() {
    let c = tests::containerd::start_containerd("ipv6", Path::new(env!("CARGO_BIN_EXE_containerd-shim-kata-v2")));
    let (pod, peer) = ipv6_only_pod();
    let before = pod.snapshot();
    assert!(pod.ip(&["-4", "addr", "show", "dev", "eth0"]).trim().is_empty(), "no IPv4 in the pod");
    let id = "sbv6only";
    c.run_ok(id, &pod.path());
    let run_dir = c.run_dir().join(id);

    // The guest: the address, the default route, the permanent neighbour; no IPv4 on eth0.
    let guest = tests::guest::sh(&run_dir, "ip -6 addr show eth0; ip -4 addr show eth0; ip -6 route; ip -6 neigh");
    assert!(guest.contains(&format!("inet6 {POD6}/64")), "{guest}");
    assert!(!guest.contains("inet "), "no IPv4 address in the guest's eth0: {guest}");
    assert!(guest.contains(&format!("default via {PEER6} dev eth0")), "{guest}");
    let neigh = guest.lines().find(|l| l.starts_with("fd00:66::9 ")).unwrap_or_default();
    assert!(neigh.contains("lladdr 02:00:00:66:00:09") && neigh.trim_end().ends_with("PERMANENT"), "{guest}");

    // The peer's ping6 is answered by the VM: the namespace received no echo request.
    let echos = pod.icmp6_echos_received();
    tests::run(&["ip", "netns", "exec", &peer.name, "ping", "-6", "-c", "3", "-i", "0.3", "-W", "5", POD6]);
    assert_eq!(pod.icmp6_echos_received(), echos, "the VM answers ping6, not the namespace");

    // The operator CLI's IPv6 documents on the live sandbox.
    let cli = KataRuntime { bin: tests::cli::kata_runtime_bin(), conf: c.dir.0.join("configuration.toml") };
    let route = r#"{"dest":"fd00:77::/64","gateway":"fd00:66::1","device":"eth0"}"#;
    assert_eq!(cli.ok(&["kata-network", "add-route", id, "-"], Some(route)), format!("[{route}]"));
    let listed = cli.ok(&["kata-network", "list-routes", id], None);
    assert!(listed.contains(route), "{listed}");
    assert!(listed.contains(r#"{"dest":"default","gateway":"fd00:66::1","device":"eth0"}"#), "{listed}");
    let guest = tests::guest::sh(&run_dir, "ip -6 route");
    assert!(guest.contains("fd00:77::/64 via fd00:66::1 dev eth0"), "{guest}");
    assert_eq!(
        cli.ok(&["kata-network", "del-route", id, "-"], Some(r#"{"dest":"fd00:77::/64"}"#)),
        format!("[{route}]")
    );
    assert!(!tests::guest::sh(&run_dir, "ip -6 route").contains("fd00:77::"), "the route left the guest");
    // An operator's TAP with an IPv6 address: the host reaches the VM over it.
    pod.ip(&["tuntap", "add", "dev", "tap6", "mode", "tap"]);
    pod.ip(&["addr", "add", "fd00:99::1/64", "dev", "tap6", "nodad"]);
    pod.ip(&["link", "set", "tap6", "up"]);
    let iface = r#"{"device":"tap6","name":"eth6","IPAddresses":[{"address":"fd00:99::3","mask":"64"}],"hwAddr":"02:42:20:6f:a6:06","mtu":1500}"#;
    let out = cli.ok(&["kata-network", "add-iface", id, "-"], Some(iface));
    assert!(out.contains(r#""IPAddresses":[{"Family":10,"Address":"fd00:99::3","Mask":"64"}]"#), "{out}");
    assert_eq!(
        cli.ok(&["kata-network", "list-ifaces", id], None),
        r#"[{"name":"eth6","mac":"02:42:20:6f:a6:06","ip":["fd00:99::3/64"],"mtu":1500}]"#
    );
    pod.exec(&["ping", "-6", "-c", "3", "-i", "0.3", "-W", "5", "fd00:99::3"]);
    assert_eq!(cli.ok(&["kata-network", "del-iface", id, "-"], Some(r#"{"name":"eth6"}"#)), "null");
    pod.ip(&["link", "del", "tap6"]);

    // Following the namespace: an IPv6 address added after start reaches the guest, and its
    // removal too.
    pod.ip(&["addr", "add", "fd00:66::50/64", "dev", "eth0", "nodad"]);
    wait_until(Duration::from_secs(20), "the new address in the guest", || {
        tests::guest::sh(&run_dir, "ip -6 addr show eth0").contains("inet6 fd00:66::50/64")
    });
    pod.ip(&["addr", "del", "fd00:66::50/64", "dev", "eth0"]);
    wait_until(Duration::from_secs(20), "the address gone from the guest", || {
        !tests::guest::sh(&run_dir, "ip -6 addr show eth0").contains("fd00:66::50")
    });

    c.remove_sandbox(id);
    assert!(!tests::containerd::qemu_running_in(&c.run_dir()), "QEMU left behind");
    assert_eq!(pod.snapshot(), before, "the namespace is as it was");
    drop(peer);
}
