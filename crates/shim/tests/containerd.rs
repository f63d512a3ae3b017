//! The shim under real containerd (Debian's 1.6), with its own root, state and socket:
//! `ctr run --runtime io.containerd.kata.v2 --with-ns network:<netns>` on a CNI-like namespace.

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tests::containerd::{kata_conf, qemu_running_in, wait_until, Containerd};
use tests::CniPod;
use tests::{PEER_IP, POD_IP, POD_MAC};

/// containerd, a CNI-like pod namespace, and the namespace as CNI left it.
fn start_with_pod(tag: &str) -> (Containerd, CniPod, serde_json::Value) {
    let c = start_containerd(tag);
    let cni = CniPod::new();
    let before = cni.pod.snapshot();
    (c, cni, before)
}

fn start_containerd(tag: &str) -> Containerd {
    tests::containerd::start_containerd(tag, Path::new(env!("CARGO_BIN_EXE_containerd-shim-kata-v2")))
}

#[test]
fn ctr_run_gives_the_vm_the_pod_network_and_teardown_leaves_nothing() {
    let (c, cni, before) = start_with_pod("ctr");
    let dns = "io.katacontainers.sandbox_dns=nameserver 10.96.0.10,search svc.cluster.local";
    let out = c.run("sb1", &cni.pod.path(), &["--annotation", dns]);
    assert!(out.status.success(), "ctr run: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(c.task_status("sb1"), "RUNNING");

    // The VM has the pod's address, routes, neighbour and DNS; the peer reaches it.
    tests::run(&["ip", "netns", "exec", &cni.peer.name, "ping", "-c", "3", "-i", "0.3", "-W", "5", POD_IP]);
    assert_pod_network_in_guest(&c.run_dir().join("sb1"));
    // The offloads the guest's NIC has: checksums and segmentation both ways, which need the
    // TAP's virtio-net header (vnet_hdr); without it the guest computes every checksum and
    // segments every frame itself.
    let offloads = tests::guest::sh(&c.run_dir().join("sb1"), "ethtool -k eth0");
    for want in [
        "rx-checksumming: on",
        "tx-checksumming: on",
        "scatter-gather: on",
        "tcp-segmentation-offload: on",
        "tx-tcp6-segmentation: on",
        "generic-receive-offload: on",
    ] {
        let has = offloads.lines().any(|l| l.trim().trim_end_matches(" [fixed]") == want);
        assert!(has, "the guest's eth0 lacks {want:?}:\n{offloads}");
    }
    // Dual stack: the peer's ping6 of the pod's IPv6 address is answered by the VM, which the
    // pod namespace's own ICMPv6 counter shows (it receives none).
    cni.peer.ip(&["addr", "add", "fd00:88::1/64", "dev", "veth0", "nodad"]);
    let echos6 = cni.pod.icmp6_echos_received();
    tests::run(&["ip", "netns", "exec", &cni.peer.name, "ping", "-6", "-c", "3", "-i", "0.3", "-W", "5", "fd00:88::5"]);
    assert_eq!(cni.pod.icmp6_echos_received(), echos6, "the VM answers ping6, not the namespace");
    // kubectl port-forward: the dial containerd's CRI makes (localhost:<port> inside the pod's
    // namespace, IPv4 and IPv6) reaches a listener in the VM: bytes both ways, and each side's
    // close (the echo ends when it reads the client's close, and the client reads its close).
    // kata's agent serves no port-forward: the dial is closed at once, nothing comes back.
    tests::guest::sh(&c.run_dir().join("sb1"), "setsid nc -ll -p 8080 -e cat >/dev/null 2>&1 </dev/null & true");
    let kata = tests::guest::Agent::under_test() == tests::guest::Agent::Kata;
    for (addr, payload) in [("127.0.0.1:8080", "through the loopback\n"), ("[::1]:8080", "and over IPv6\n")] {
        let wait = Duration::from_secs(if kata { 2 } else { 20 });
        let back = tests::echo_in_netns(&cni.pod.path(), addr, payload.as_bytes(), wait);
        let want = if kata { "" } else { payload };
        let log = || std::fs::read_to_string(c.dir.0.join("containerd.log")).unwrap_or_default();
        assert_eq!(String::from_utf8_lossy(&back), want, "port-forward to {addr}; {}", log());
    }
    // Whatever the guest writes on its console, console.log stays within its cap (1 MiB), the
    // cap before it in console.log.1.
    let run = c.run_dir().join("sb1");
    let flood = "setsid sh -c \"head -c 2500000 /dev/zero | tr '\\\\0' x > /dev/ttyS0; echo flood-done > /dev/ttyS0\" \
                 >/dev/null 2>&1 </dev/null & true";
    tests::guest::sh(&run, flood);
    wait_until(Duration::from_secs(180), "the console's flood written and rotated", || {
        run.join("console.log.1").exists()
            && std::fs::read_to_string(run.join("console.log")).unwrap_or_default().contains("flood-done")
    });
    for f in ["console.log", "console.log.1"] {
        let len = std::fs::metadata(run.join(f)).map(|m| m.len()).unwrap_or(0);
        assert!(len <= 1 << 20, "{f} is {len} bytes, over its cap");
    }
    let table = cni.pod.exec(&["nft", "list", "table", "inet", "kata_portfwd"]);
    assert!(table.contains("redirect to :"), "the port-forward table: {table}");
    // QEMU, the task's process, runs in the pod's namespace (what `ctr run --cni` configures).
    let qemu = tests::containerd::qemu_pid_in(&c.run_dir().join("sb1")).expect("QEMU of sb1");
    let ident = |p: String| std::fs::metadata(p).map(|m| (m.dev(), m.ino())).unwrap();
    assert_eq!(ident(format!("/proc/{qemu}/ns/net")), ident(cni.pod.path()), "QEMU is in the pod's namespace");

    c.remove_sandbox("sb1");
    assert!(!qemu_running_in(&c.run_dir()), "QEMU left behind");
    assert_eq!(cni.pod.snapshot(), before, "TAP, qdiscs and filters are gone; the namespace is as CNI left it");
    assert!(!c.run_dir().join("sb1").exists());
}

/// What the guest's own tools say: the pod's address, MTU and MAC, routes, permanent neighbour
/// and DNS (whichever agent applied them).
fn assert_pod_network_in_guest(run_dir: &Path) {
    let guest = tests::guest::sh(run_dir, "ip addr show eth0; ip route; ip -6 route; ip neigh; cat /etc/resolv.conf");
    for want in [
        "mtu 1450",
        "link/ether 02:00:0a:58:00:05",
        "inet 10.88.0.5/24",
        "inet6 fd00:88::5/64",
        "default via 10.88.0.1 dev eth0",
        "10.99.0.0/16 via 10.88.0.254 dev eth0",
        "10.77.0.0/16 dev eth0",
        "nameserver 10.96.0.10",
        "search svc.cluster.local",
    ] {
        assert!(guest.contains(want), "missing {want:?} in the guest:\n{guest}");
    }
    let neigh = guest.lines().find(|l| l.starts_with("10.88.0.9 ")).unwrap_or_default();
    assert!(neigh.contains("dev eth0 lladdr 02:00:0a:58:00:09") && neigh.trim_end().ends_with("PERMANENT"), "{guest}");
}

#[test]
fn factory_mode_hotplugs_the_pod_nic_and_the_guest_configures_it() {
    let (c, cni, before) = start_with_pod("factory");
    let conf = kata_conf(&c.run_dir()).replace("[agent.kata]", "enable_template = true\n[agent.kata]");
    std::fs::write(c.dir.0.join("configuration.toml"), conf).unwrap();
    // The DNS annotation in openEuler's JSON form (the other tests give the line form).
    let dns = r#"io.katacontainers.sandbox_dns={"Servers":["10.96.0.10"],"Searches":["svc.cluster.local"]}"#;
    let out = c.run("sbf", &cni.pod.path(), &["--annotation", dns]);
    assert!(out.status.success(), "ctr run: {}", String::from_utf8_lossy(&out.stderr));
    tests::run(&["ip", "netns", "exec", &cni.peer.name, "ping", "-c", "2", "-i", "0.3", "-W", "5", POD_IP]);
    assert_pod_network_in_guest(&c.run_dir().join("sbf"));
    c.remove_sandbox("sbf");
    assert!(!qemu_running_in(&c.run_dir()), "QEMU left behind");
    assert_eq!(cni.pod.snapshot(), before);
}

#[test]
fn the_shared_directory_over_virtio_fs_reaches_the_guest_and_its_virtiofsd_goes_with_the_sandbox() {
    let (c, cni, before) = start_with_pod("virtiofs");
    // The Rust virtiofsd (the default where installed, as kata ships it) and QEMU 7.2's C one.
    let rust = "/usr/local/bin/virtiofsd";
    let qemu_c = "/usr/lib/qemu/virtiofsd";
    for (id, crash, daemon) in [("sbfs1", false, rust), ("sbfs2", true, rust), ("sbfs3", false, qemu_c)] {
        let keys = format!("shared_fs = \"virtio-fs\"\nvirtio_fs_daemon = \"{daemon}\"\n[agent.kata]");
        let conf = kata_conf(&c.run_dir()).replace("[agent.kata]", &keys);
        std::fs::write(c.dir.0.join("configuration.toml"), conf).unwrap();
        let daemons = |run: &Path| tests::containerd::processes_naming(run, daemon);
        c.run_ok(id, &cni.pod.path());
        let run = c.run_dir().join(id);
        // virtiofsd forks its sandboxed worker: two processes of one daemon.
        assert!(daemons(&run) >= 1, "the sandbox's virtiofsd ({daemon}) runs");
        assert_eq!(tests::containerd::virtiofsds_in(&run), daemons(&run), "only {daemon} serves {id}");
        // What the host puts into the shared directory, the guest reads where kata's agent
        // mounts the share.
        std::fs::write(run.join("fs/mounts/hello"), format!("from the host to {id}\n")).unwrap();
        let script = "grep kataShared /proc/mounts; cat /run/kata-containers/shared/containers/hello; \
                      ln -s /etc /run/kata-containers/shared/containers/planted 2>&1; \
                      echo x > /run/kata-containers/shared/containers/hello 2>&1; echo done";
        let guest = tests::guest::sh(&run, script);
        assert!(guest.contains("kataShared /run/kata-containers/shared/containers virtiofs"), "{guest}");
        assert!(guest.contains(&format!("from the host to {id}")), "{guest}");
        // The guest cannot leave anything where the host makes files (a symlink there would
        // steer the host): the share is read-only to it, but inside a container's rootfs.
        assert!(guest.contains("Read-only file system") && guest.contains("done"), "{guest}");
        assert!(std::fs::symlink_metadata(run.join("fs/mounts/planted")).is_err(), "the guest planted a symlink");
        assert_eq!(std::fs::read_to_string(run.join("fs/mounts/hello")).unwrap(), format!("from the host to {id}\n"));
        if crash {
            c.kill_shim(id);
            wait_until(Duration::from_secs(30), "delete removed QEMU, virtiofsd and devices", || {
                !qemu_running_in(&run) && daemons(&run) == 0 && cni.pod.snapshot() == before
            });
            let _ = c.ctr(&["container", "rm", id]);
        } else {
            c.remove_sandbox(id);
        }
        assert_eq!(daemons(&run), 0, "no virtiofsd left");
        assert!(!run.exists(), "no shared directory or socket left");
        assert_eq!(cni.pod.snapshot(), before);
    }
}

#[test]
fn nic_counters_read_on_the_host_match_ip_s_link_within_a_burst() {
    let (c, cni, before) = start_with_pod("stats");
    c.run_ok("sbst", &cni.pod.path());
    let k = tests::cli::KataRuntime { bin: tests::cli::kata_runtime_bin(), conf: c.dir.0.join("configuration.toml") };
    // The TAP's counters as iproute2 reads them: (rx bytes, rx packets, tx bytes, tx packets).
    let ip_s = || {
        let out = cni.pod.ip(&["-j", "-s", "link", "show", "tap0_kata"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let s = &v[0]["stats64"];
        let n = |d: &str, k: &str| s[d][k].as_u64().unwrap();
        (n("rx", "bytes"), n("rx", "packets"), n("tx", "bytes"), n("tx", "packets"))
    };
    let stats = || {
        let v: serde_json::Value = serde_json::from_str(&k.ok(&["kata-network", "stats", "sbst"], None)).unwrap();
        assert_eq!(v.as_array().unwrap().len(), 1, "one NIC: {v}");
        assert_eq!(
            (v[0]["name"].as_str(), v[0]["device"].as_str(), v[0]["kind"].as_str()),
            (Some("eth0"), Some("tap0_kata"), Some("tap"))
        );
        let n = |k: &str| v[0]["host"][k].as_u64().unwrap();
        let g = |k: &str| v[0]["guest"][k].as_u64().expect("the guest's own counters");
        ((n("rx_bytes"), n("rx_packets"), n("tx_bytes"), n("tx_packets")), (g("rx_packets"), g("tx_packets")))
    };
    let (_, guest_start) = stats();
    let start = ip_s();
    // A measured burst from the peer: 300 echo requests of 1200 bytes, answered by the VM. Under
    // TCG on a loaded machine a few may be lost (a full TAP queue drops them, counted as drops):
    // the counters must match within the burst whatever got through, so ping's exit status is
    // not the check; how many replies came back is.
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &cni.peer.name, "ping", "-q", "-c", "300", "-i", "0.005", "-s", "1200", "-W", "2"])
        .arg(POD_IP)
        .output()
        .unwrap();
    let summary = String::from_utf8_lossy(&out.stdout).into_owned();
    let replies: u64 = summary
        .split(", ")
        .find_map(|p| p.strip_suffix(" received").or_else(|| p.strip_suffix(" packets received")))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("ping's summary: {summary}"));
    assert!(replies >= 270, "most of the burst answered: {summary}");
    let low = ip_s();
    let (got, guest_end) = stats();
    let high = ip_s();
    // The guest's own counters, beside: it received the requests and sent the replies.
    assert!(
        guest_end.0 >= guest_start.0 + replies && guest_end.1 >= guest_start.1 + replies,
        "{guest_start:?} -> {guest_end:?}, {replies} replies"
    );
    assert!(
        low.1 >= start.1 + replies && low.3 >= start.3 + replies,
        "the burst went through the TAP: {start:?} -> {low:?}, {replies} replies"
    );
    for (name, l, g, h) in [
        ("rx bytes", low.0, got.0, high.0),
        ("rx packets", low.1, got.1, high.1),
        ("tx bytes", low.2, got.2, high.2),
        ("tx packets", low.3, got.3, high.3),
    ] {
        assert!(l <= g && g <= h, "{name}: ip -s link said {l} then {h}, kata-network stats {g}");
    }
    // The same numbers through the Task API, from the pod's side: what the TAP sent, the VM received.
    let out = c.ctr(&["task", "metrics", "--format", "json", "sbst"]);
    let m: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("ctr task metrics: {e}: {}", String::from_utf8_lossy(&out.stderr)));
    let net = &m["network"][0];
    assert_eq!(net["name"], "eth0", "{m}");
    let rx = net["rx_bytes"].as_u64().unwrap();
    assert!(rx >= low.2 && rx <= ip_s().2, "the VM received what the TAP transmitted: {m}");
    c.remove_sandbox("sbst");
    assert_eq!(cni.pod.snapshot(), before);
}

#[test]
fn a_nic_whose_device_went_away_does_not_take_the_others_counters() {
    let c = start_containerd("stats2");
    let cni = CniPod::new();
    // A second pod link, so the sandbox has two NICs.
    cni.pod.ip(&["link", "add", "eth1", "type", "veth", "peer", "name", "veth1", "netns", &cni.peer.name]);
    cni.pod.ip(&["addr", "add", "10.89.0.5/24", "dev", "eth1"]);
    cni.pod.ip(&["link", "set", "eth1", "up"]);
    let before = cni.pod.snapshot();
    c.run_ok("sbst2", &cni.pod.path());
    let names = |m: &serde_json::Value| -> Vec<String> {
        m["network"]
            .as_array()
            .map(|a| a.iter().filter_map(|n| n["name"].as_str().map(String::from)).collect())
            .unwrap_or_default()
    };
    let metrics = || {
        let out = c.ctr(&["task", "metrics", "--format", "json", "sbst2"]);
        assert!(out.status.success(), "ctr task metrics: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let mut both = names(&metrics());
    both.sort();
    assert_eq!(both, ["eth0", "eth1"]);
    // eth1's TAP removed behind the runtime's back: eth0's counters still come.
    cni.pod.ip(&["link", "del", "tap1_kata"]);
    assert_eq!(names(&metrics()), ["eth0"]);
    c.remove_sandbox("sbst2");
    assert_eq!(cni.pod.snapshot(), before);
}

#[test]
fn following_the_namespace_a_link_added_after_start_reaches_the_vm_and_its_removal_leaves_nothing() {
    let (c, cni, before) = start_with_pod("follow");
    // follow_netns is on by default.
    c.run_ok("sbfl", &cni.pod.path());
    let run = c.run_dir().join("sbfl");
    let guest = |script: &str| tests::guest::sh(&run, script);
    let running = cni.pod.snapshot();
    // A second network after start, as Multus or `ctr run --cni` would add it: a veth with an
    // address and a route through its gateway in the peer namespace.
    cni.pod.ip(&["link", "add", "eth1", "type", "veth", "peer", "name", "veth1", "netns", &cni.peer.name]);
    cni.pod.ip(&["addr", "add", "10.89.0.2/24", "dev", "eth1"]);
    cni.pod.ip(&["link", "set", "eth1", "up"]);
    cni.peer.ip(&["addr", "add", "10.89.0.1/24", "dev", "veth1"]);
    cni.peer.ip(&["link", "set", "veth1", "up"]);
    cni.pod.ip(&["route", "add", "10.123.0.0/16", "via", "10.89.0.1", "dev", "eth1"]);
    wait_until(Duration::from_secs(60), "the new link configured in the guest", || {
        let g = guest("ip -4 addr show eth1; ip route");
        g.contains("inet 10.89.0.2/24") && g.contains("10.123.0.0/16 via 10.89.0.1 dev eth1")
    });
    // eth1's ingress goes to the VM (tc redirect): the reply is the VM's.
    tests::run(&["ip", "netns", "exec", &cni.peer.name, "ping", "-c", "2", "-i", "0.3", "-W", "5", "10.89.0.2"]);
    // An address, a route and a permanent neighbour added by hand reach the guest too (the route
    // on the first link).
    cni.pod.ip(&["addr", "add", "10.89.0.3/24", "dev", "eth1"]);
    cni.pod.ip(&["route", "add", "10.124.0.0/16", "via", "10.88.0.254", "dev", "eth0"]);
    cni.pod.ip(&["neigh", "add", "10.89.0.9", "lladdr", "02:00:0a:59:00:09", "dev", "eth1", "nud", "permanent"]);
    wait_until(Duration::from_secs(30), "the new address, route and neighbour in the guest", || {
        let g = guest("ip -4 addr show eth1; ip route; ip neigh");
        let neigh = g.lines().find(|l| l.starts_with("10.89.0.9 ")).unwrap_or_default();
        g.contains("inet 10.89.0.3/24")
            && g.contains("10.124.0.0/16 via 10.88.0.254 dev eth0")
            && neigh.contains("lladdr 02:00:0a:59:00:09")
            && neigh.trim_end().ends_with("PERMANENT")
    });
    cni.pod.ip(&["route", "del", "10.124.0.0/16"]);
    wait_until(Duration::from_secs(30), "the route gone from the guest", || {
        !guest("ip route").contains("10.124.0.0/16")
    });
    // The link renamed, then removed and made again under its new name in one go: each time the
    // VM ends up on the link as it is now (the peer's ping answered by the VM, the pod's own
    // InEchos unchanged), with one TAP of the runtime's and no redirect left on a stale link.
    let runtime_devs = || cni.pod.ip(&["-o", "link", "show", "group", "1801548897"]).lines().count();
    let ours_now = runtime_devs();
    let on_eth5 = |what: &str| {
        let start = std::time::Instant::now();
        loop {
            // The redirect on the link as it is now, and the guest's NIC configured for it.
            let redirected = cni.pod.tc(&["filter", "show", "dev", "eth5", "ingress"]).contains("mirred");
            let g = guest("ip -4 addr show eth5; ip -o link");
            if redirected && g.contains("inet 10.89.0.2/24") && !g.contains("eth1") {
                break;
            }
            let log = std::fs::read_to_string(c.dir.0.join("containerd.log")).unwrap_or_default();
            let follow: Vec<&str> = log.lines().filter(|l| l.contains("link") || l.contains("follow")).collect();
            assert!(start.elapsed() < Duration::from_secs(60), "{what}: the guest has {g}\n{}", follow.join("\n"));
            std::thread::sleep(Duration::from_millis(500));
        }
        let echos = cni.pod.icmp_echos_received();
        tests::run(&["ip", "netns", "exec", &cni.peer.name, "ping", "-c", "2", "-i", "0.3", "-W", "5", "10.89.0.2"]);
        assert_eq!(cni.pod.icmp_echos_received(), echos, "{what}: the VM answered, not the namespace");
        assert_eq!(runtime_devs(), ours_now, "{what}: one TAP for the link, none left over");
        let filters = cni.pod.tc(&["filter", "show", "dev", "eth5", "ingress"]);
        assert_eq!(filters.matches("mirred").count(), 1, "{what}: one redirect on eth5: {filters}");
    };
    cni.pod.ip(&["link", "set", "eth1", "down"]);
    cni.pod.ip(&["link", "set", "eth1", "name", "eth5"]);
    cni.pod.ip(&["link", "set", "eth5", "up"]);
    on_eth5("renamed");
    cni.pod.ip(&["link", "del", "eth5"]);
    cni.pod.ip(&["link", "add", "eth5", "type", "veth", "peer", "name", "veth1", "netns", &cni.peer.name]);
    cni.pod.ip(&["addr", "add", "10.89.0.2/24", "dev", "eth5"]);
    cni.pod.ip(&["link", "set", "eth5", "up"]);
    cni.peer.ip(&["addr", "add", "10.89.0.1/24", "dev", "veth1"]);
    cni.peer.ip(&["link", "set", "veth1", "up"]);
    on_eth5("made again");
    // The link goes: its NIC leaves the VM, the runtime's TAP leaves the namespace.
    cni.pod.ip(&["link", "del", "eth5"]);
    wait_until(Duration::from_secs(60), "the NIC unplugged and the namespace as it was before eth1", || {
        !guest("ip link").contains("eth5") && cni.pod.snapshot() == running
    });
    assert!(guest("ip route").contains("default via 10.88.0.1 dev eth0"), "the pod's first network is untouched");
    c.remove_sandbox("sbfl");
    assert_eq!(cni.pod.snapshot(), before);
}

/// The host's links, addresses and routes (`ip -j`), to show a test changed none of them.
fn host_network() -> String {
    let ip = |args: &[&str]| tests::run(&[&["ip", "-j"][..], args].concat());
    let links: serde_json::Value = serde_json::from_str(&ip(&["link", "show"])).unwrap();
    let names: Vec<&str> = links.as_array().unwrap().iter().filter_map(|l| l["ifname"].as_str()).collect();
    format!("{names:?}\n{}\n{}\n{}", ip(&["addr", "show"]), ip(&["route", "show"]), ip(&["-6", "route", "show"]))
}

#[test]
fn ctr_run_cni_configures_the_pod_never_the_host_and_the_vm_answers_on_the_cni_address() {
    tests::require_root_and_tools(&["unshare", "nsenter", "/usr/lib/cni/bridge"]);
    let c = start_containerd("ctrcni");
    // ctr runs the CNI plugins itself, from /etc/cni/net.d and /opt/cni/bin: it runs here in a
    // private mount namespace where both are overlays with the test's files, and in a network
    // namespace of the test's that plays the node (the bridge plugin makes its bridge there).
    let node = tests::TestNs::new("cninode");
    node.ip(&["link", "set", "lo", "up"]);
    let d = c.dir.0.clone();
    for sub in ["etc-up/cni/net.d", "etc-work", "opt-up/cni", "opt-work", "ipam"] {
        std::fs::create_dir_all(d.join(sub)).unwrap();
    }
    std::os::unix::fs::symlink("/usr/lib/cni", d.join("opt-up/cni/bin")).unwrap();
    std::fs::write(
        d.join("etc-up/cni/net.d/10-knt.conflist"),
        format!(
            r#"{{"cniVersion":"0.4.0","name":"knt-ctr","plugins":[{{"type":"bridge","bridge":"kntbr1","isGateway":true,"ipMasq":false,
"ipam":{{"type":"host-local","subnet":"10.223.0.0/24","routes":[{{"dst":"0.0.0.0/0"}}],"dataDir":"{}/ipam"}}}}]}}"#,
            d.display()
        ),
    )
    .unwrap();
    let host_before = host_network();
    let script = format!(
        "set -e; mount -t overlay overlay -o lowerdir=/etc,upperdir={d}/etc-up,workdir={d}/etc-work /etc; \
         mount -t overlay overlay -o lowerdir=/opt,upperdir={d}/opt-up,workdir={d}/opt-work /opt; \
         exec timeout 180 ctr -a {sock} run -d --cni --runtime io.containerd.kata.v2 {image} sbcni",
        d = d.display(),
        sock = c.sock().display(),
        image = tests::containerd::IMAGE
    );
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net={}", node.path()))
        .args(["unshare", "-m", "--propagation", "private", "sh", "-c", &script])
        .output()
        .unwrap();
    assert!(out.status.success(), "ctr run --cni: {}", String::from_utf8_lossy(&out.stderr));
    // CNI gave the pod (the task's namespace: QEMU's, the shim's own) 10.223.0.2; the shim
    // followed the namespace and the guest has it.
    let run = c.run_dir().join("sbcni");
    wait_until(Duration::from_secs(60), "the CNI address in the guest", || {
        tests::guest::sh(&run, "ip -4 addr show eth0").contains("inet 10.223.0.2/24")
    });
    tests::run(&["ip", "netns", "exec", &node.name, "ping", "-c", "2", "-i", "0.3", "-W", "5", "10.223.0.2"]);
    assert_eq!(host_network(), host_before, "the host's namespace is untouched");
    c.remove_sandbox("sbcni");
    assert_eq!(host_network(), host_before);
}

/// Run the shim binary's `delete` as containerd does (in the bundle, with containerd's flags) for
/// `id`, with a bundle whose spec names `netns` and carries `annotations`, and no state file.
fn delete_in_bundle(c: &Containerd, id: &str, netns: &str, annotations: serde_json::Value) -> std::process::Output {
    let bundle = c.dir.0.join(format!("bundle-{id}"));
    std::fs::create_dir_all(bundle.join("rootfs")).unwrap();
    let spec = serde_json::json!({
        "ociVersion": "1.0.2",
        "root": {"path": "rootfs"},
        "process": {"args": ["sh"], "cwd": "/"},
        "linux": {"namespaces": [{"type": "network", "path": netns}]},
        "annotations": annotations,
    });
    std::fs::write(bundle.join("config.json"), spec.to_string()).unwrap();
    let b = bundle.display().to_string();
    let sock = c.sock().display().to_string();
    let args = [
        "-namespace",
        "default",
        "-address",
        &sock,
        "-publish-binary",
        "/bin/false",
        "-id",
        id,
        "-bundle",
        &b,
        "delete",
    ];
    std::process::Command::new(env!("CARGO_BIN_EXE_containerd-shim-kata-v2"))
        .args(args)
        .current_dir(&bundle)
        .env("TTRPC_ADDRESS", format!("{sock}.ttrpc"))
        .env("KATA_CONF_FILE", c.dir.0.join("configuration.toml"))
        .output()
        .unwrap()
}

#[test]
fn delete_for_an_app_container_or_another_id_leaves_a_live_sandbox_and_its_network_alone() {
    let (c, cni, before) = start_with_pod("deltag");
    c.run_ok("sbl", &cni.pod.path());
    let live = cni.pod.snapshot();
    assert_ne!(live, before, "the sandbox's TAP and redirect are in the namespace");
    // containerd runs `delete` for every closed container connection: a CRI app container of the
    // pod (its spec names the pod's namespace) and, as after a crash before the first record, an
    // id with no state whose spec names the same namespace.
    let app =
        serde_json::json!({"io.kubernetes.cri.container-type": "container", "io.kubernetes.cri.sandbox-id": "sbl"});
    for (id, annotations) in [("sbl-app", app), ("stranger", serde_json::json!({}))] {
        let out = delete_in_bundle(&c, id, &cni.pod.path(), annotations);
        assert!(out.status.success(), "delete {id}: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(cni.pod.snapshot(), live, "delete of {id} changed the live sandbox's namespace");
        assert!(qemu_running_in(&c.run_dir().join("sbl")), "delete of {id} stopped the live sandbox");
    }
    // The VM still answers on the pod's address (not the pod namespace's own kernel).
    let echos = cni.pod.icmp_echos_received();
    tests::run(&["ip", "netns", "exec", &cni.peer.name, "ping", "-c", "2", "-i", "0.3", "-W", "5", POD_IP]);
    assert_eq!(cni.pod.icmp_echos_received(), echos, "the VM answers, not the namespace");
    c.remove_sandbox("sbl");
    assert_eq!(cni.pod.snapshot(), before);
}

#[test]
fn the_same_id_in_a_second_containerd_namespace_is_refused_and_the_first_sandbox_is_untouched() {
    let (c, cni, before) = start_with_pod("dupid");
    c.run_ok("sbdup", &cni.pod.path());
    let live = cni.pod.snapshot();
    let qemu = tests::containerd::qemu_pid_in(&c.run_dir().join("sbdup")).expect("QEMU of the first");
    // The same id, another containerd namespace, another pod.
    let other = CniPod::new();
    let other_before = other.pod.snapshot();
    let image = c.dir.0.join("image.tar");
    assert!(c.ctr(&["-n", "second", "images", "import", image.to_str().unwrap()]).status.success());
    let ns = format!("network:{}", other.pod.path());
    let args = [
        "-n",
        "second",
        "run",
        "-d",
        "--runtime",
        "io.containerd.kata.v2",
        "--with-ns",
        &ns,
        tests::containerd::IMAGE,
        "sbdup",
    ];
    let out = c.ctr(&args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a second sandbox with the same id must be refused");
    assert!(err.contains("sandbox id \"sbdup\" is in use by a running sandbox"), "{err}");
    let _ = c.ctr(&["-n", "second", "container", "rm", "sbdup"]);
    // containerd ran the second's delete too (it said it touched nothing): the first is as it
    // was, and still answers.
    match tests::containerd::is_v2() {
        false => {
            c.wait_for_log(Duration::from_secs(20), &["cleanup warnings", "held by a live shim", "nothing touched"])
        }
        // 2.x logs no delete's stderr; it removes the bundle once the delete has ended.
        true => wait_until(Duration::from_secs(20), "containerd ran the second's delete", || {
            !c.dir.0.join("state/io.containerd.runtime.v2.task/second/sbdup").exists()
        }),
    }
    assert_eq!(tests::containerd::qemu_pid_in(&c.run_dir().join("sbdup")), Some(qemu), "the first sandbox's QEMU");
    assert_eq!(cni.pod.snapshot(), live, "the first sandbox's devices");
    assert_eq!(other.pod.snapshot(), other_before, "nothing was made in the second pod");
    let echos = cni.pod.icmp_echos_received();
    tests::run(&["ip", "netns", "exec", &cni.peer.name, "ping", "-c", "2", "-i", "0.3", "-W", "5", POD_IP]);
    assert_eq!(cni.pod.icmp_echos_received(), echos, "the first sandbox's VM answers");
    c.remove_sandbox("sbdup");
    assert_eq!(cni.pod.snapshot(), before);
    // Its id is free again: a sandbox of that id now starts in the second namespace.
    let out = c.ctr(&args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = c.ctr(&["-n", "second", "task", "kill", "-s", "SIGKILL", "sbdup"]);
    assert!(out.status.success(), "{out:?}");
    wait_until(Duration::from_secs(20), "stopped", || {
        String::from_utf8_lossy(&c.ctr(&["-n", "second", "task", "ls"]).stdout).contains("STOPPED")
    });
    assert!(c.ctr(&["-n", "second", "task", "rm", "sbdup"]).status.success());
    assert!(c.ctr(&["-n", "second", "container", "rm", "sbdup"]).status.success());
    wait_until(Duration::from_secs(20), "the second's run directory gone", || !c.run_dir().join("sbdup").exists());
    assert_eq!(other.pod.snapshot(), other_before);
}

#[test]
fn a_pod_whose_agent_is_wedged_still_stops_when_its_init_is_killed() {
    let (c, cni, before) = start_with_pod("wedged");
    c.run_ok("sbw", &cni.pod.path());
    let run = c.run_dir().join("sbw");
    // The agent's channel wedged: its hybrid vsock backend stopped (SIGSTOP), so no agent call
    // is answered any more.
    let backend = tests::run(&["pgrep", "-f", &format!("vhost-device-vsock.*{}", run.display())]);
    let backend = backend.split_whitespace().next().expect("the sandbox's vsock backend").to_owned();
    tests::run(&["kill", "-STOP", &backend]);
    let out = c.ctr(&["task", "kill", "-s", "SIGTERM", "sbw"]);
    assert!(out.status.success(), "{out:?}");
    wait_until(Duration::from_secs(40), "the task stopped", || c.task_status("sbw") == "STOPPED");
    // The VM ended, and the exit is a killed process's.
    assert!(!qemu_running_in(&run), "QEMU still runs");
    let out = c.ctr(&["task", "rm", "sbw"]);
    assert!(out.status.success() && String::from_utf8_lossy(&out.stderr).contains("exit code 137"), "{out:?}");
    assert!(c.ctr(&["container", "rm", "sbw"]).status.success());
    assert_nothing_left(&c, "sbw", &cni, &before);
}

#[test]
fn a_killed_shim_is_cleaned_up_by_the_delete_subcommand() {
    let (c, cni, before) = start_with_pod("crash");
    c.run_ok("sb2", &cni.pod.path());
    assert!(qemu_running_in(&c.run_dir()));
    let socket = c.shim_socket("sb2").expect("the shim's socket");
    c.kill_shim("sb2");
    // containerd notices the dead shim and runs `containerd-shim-kata-v2 ... delete` in the bundle.
    wait_until(Duration::from_secs(30), "QEMU and devices removed after the shim died", || {
        !qemu_running_in(&c.run_dir()) && cni.pod.snapshot() == before
    });
    let _ = c.ctr(&["container", "rm", "sb2"]);
    assert_eq!(cni.pod.snapshot(), before);
    // The killed shim's socket is removed by delete (nothing listens there any more).
    wait_until(Duration::from_secs(10), "the dead shim's socket removed", || !socket.exists());

    // A state file that cannot be read: delete logs it and removes what is tagged as the
    // sandbox's (its QEMU by the run directory, the runtime's devices by their link group).
    c.run_ok("sb2b", &cni.pod.path());
    let state = c.dir.0.join("state/io.containerd.runtime.v2.task/default/sb2b/kata-net-state.json");
    assert!(state.exists(), "{}", state.display());
    std::fs::write(&state, b"{ not json").unwrap();
    c.kill_shim("sb2b");
    let gone = || !qemu_running_in(&c.run_dir()) && cni.pod.snapshot() == before && !c.run_dir().join("sb2b").exists();
    let t = std::time::Instant::now();
    while !gone() && t.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        gone(),
        "without a readable state, delete left: QEMU {}, namespace changed {}, run dir {:?}, mounts {:?}; {:#?}",
        qemu_running_in(&c.run_dir()),
        cni.pod.snapshot() != before,
        std::fs::read_dir(c.run_dir().join("sb2b")).map(|d| d.flatten().map(|e| e.file_name()).collect::<Vec<_>>()),
        mounts_under(&c.run_dir()),
        String::from_utf8_lossy(&std::fs::read(c.dir.0.join("containerd.log")).unwrap_or_default())
            .lines()
            .filter(|l| l.contains("sb2b") || l.contains("delete") || l.contains("cleanup"))
            .map(String::from)
            .collect::<Vec<_>>()
    );
    let _ = c.ctr(&["container", "rm", "sb2b"]);
}

#[test]
fn bad_configuration_and_unsupported_links_fail_clearly_and_leave_nothing() {
    let c = start_containerd("bad");
    let cni = CniPod::new();
    // `ctr run` of `id` fails with `want` and the code containerd's errdefs names after it (the
    // shim's INTERNAL would read "unknown"); the pod namespace is unchanged, no QEMU runs.
    let refused = |id: &str, want: &str, code: &str| {
        let before = cni.pod.snapshot();
        let out = c.run(id, &cni.pod.path(), &[]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{err}");
        // ctr 1.x names the code last; 2.x's prints the message alone (the codes themselves are
        // checked by this pass on 1.x and by the shim's unit test of its code mapping).
        if !tests::containerd::is_v2() {
            assert!(err.trim_end().ends_with(&format!(": {code}")), "{code}: {err}");
        }
        assert_eq!(cni.pod.snapshot(), before);
        assert!(!qemu_running_in(&c.run_dir()));
        let _ = c.ctr(&["container", "rm", id]);
    };
    // A link the runtime cannot attach (a bridge with an address): FAILED_PRECONDITION.
    cni.pod.ip(&["link", "add", "br0", "type", "bridge"]);
    cni.pod.ip(&["addr", "add", "192.168.50.1/24", "dev", "br0"]);
    refused("sb3", "link br0 has kind \"bridge\"", "failed precondition");
    // An unknown key in the configuration: INVALID_ARGUMENT.
    std::fs::write(c.dir.0.join("configuration.toml"), format!("{}bogus_key = 1\n", kata_conf(&c.run_dir()))).unwrap();
    cni.pod.ip(&["link", "del", "br0"]);
    refused("sb4", "unknown field `bogus_key`", "invalid argument");
    std::fs::write(c.dir.0.join("configuration.toml"), kata_conf(&c.run_dir())).unwrap();

    // A resolv.conf mount that is no regular file, or too large: refused at once, before
    // anything is made (a FIFO used to hang Create; /dev/zero would never end).
    let fifo = c.dir.0.join("resolv.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    let big = c.dir.0.join("resolv.big");
    std::fs::write(&big, "nameserver 10.88.0.1\n".repeat(4000)).unwrap();
    for (id, src, want) in [
        ("sb6", fifo.as_path(), "not a regular file"),
        ("sb7", Path::new("/dev/zero"), "not a regular file"),
        ("sb8", big.as_path(), "larger than 65536 bytes"),
    ] {
        let mount = format!("type=bind,src={},dst=/etc/resolv.conf,options=rbind:ro", src.display());
        let before = cni.pod.snapshot();
        let out = c.run(id, &cni.pod.path(), &["--mount", &mount]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(want), "{id}: {err}");
        if !tests::containerd::is_v2() {
            assert!(err.trim_end().ends_with(": invalid argument"), "{err}");
        }
        assert_eq!(cni.pod.snapshot(), before);
        let _ = c.ctr(&["container", "rm", id]);
    }
}

#[test]
fn without_a_namespace_path_the_shim_makes_its_own_and_removes_it() {
    let c = start_containerd("ownns");
    // No --with-ns: the spec's network namespace has no path. Two ids that share their first 32
    // characters each get their own namespace (named from the whole id).
    let pid = std::process::id();
    let ids = [format!("sb5-{pid:0>10}-0123456789abcdefgh-one"), format!("sb5-{pid:0>10}-0123456789abcdefgh-two")];
    assert_eq!(ids[0][..32], ids[1][..32]);
    for id in &ids {
        let out = c.ctr(&["run", "-d", "--runtime", "io.containerd.kata.v2", tests::containerd::IMAGE, id]);
        assert!(out.status.success(), "ctr run {id}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let ns: Vec<std::path::PathBuf> =
        ids.iter().map(|id| Path::new("/run/netns").join(format!("kata-net-{id}"))).collect();
    assert!(ns.iter().all(|n| n.exists()), "the shim created a namespace for each: {ns:?}");
    for (id, n) in ids.iter().zip(&ns) {
        assert!(qemu_running_in(&c.run_dir().join(id)));
        c.remove_sandbox(id);
        assert!(!n.exists(), "the shim removed the namespace it created");
    }
    assert!(!qemu_running_in(&c.run_dir()));
}

#[test]
fn qemu_dying_on_its_own_reaches_containerd_as_task_exit() {
    let (c, cni, before) = start_with_pod("qdie");
    c.run_ok("sb9", &cni.pod.path());
    let qemu = tests::containerd::qemu_pid_in(&c.run_dir().join("sb9")).expect("the sandbox's QEMU");
    let exit = c.task_exit_after("sb9", || {
        tests::run(&["kill", "-9", &qemu.to_string()]);
    });
    let exit = exit.expect("a TaskExit event for sb9 within 60 s");
    assert!(exit.contains("137"), "exit status of a SIGKILLed QEMU: {exit}");
    assert_eq!(c.task_status("sb9"), "STOPPED");
    assert!(c.ctr(&["task", "rm", "sb9"]).status.success());
    assert!(c.ctr(&["container", "rm", "sb9"]).status.success());
    assert_eq!(cni.pod.snapshot(), before);
    assert!(!c.run_dir().join("sb9").exists());
}

#[test]
fn a_helper_that_dies_stops_the_vm_and_reaches_containerd_as_task_exit() {
    let (c, cni, before) = start_with_pod("helper");
    for (id, helper) in [("sbhd1", "virtiofsd"), ("sbhd2", "vhost-device-vsock")] {
        c.run_ok(id, &cni.pod.path());
        let run = c.run_dir().join(id);
        assert!(qemu_running_in(&run));
        let pattern = format!("{helper}.*{}", run.display());
        let exit = c.task_exit_after(id, || {
            let _ = tests::try_run(&["pkill", "-9", "-f", &pattern]);
        });
        exit.unwrap_or_else(|| panic!("no TaskExit for {id} within 60 s of its {helper}'s death"));
        let log = std::fs::read_to_string(c.dir.0.join("containerd.log")).unwrap();
        assert!(
            log.lines().any(|l| l.contains("a helper of the sandbox exited") && l.contains(helper) && l.contains(id)),
            "the death of {helper} is logged"
        );
        assert!(!qemu_running_in(&run), "the VM was stopped");
        assert_eq!(c.task_status(id), "STOPPED");
        assert!(c.ctr(&["task", "rm", id]).status.success());
        assert!(c.ctr(&["container", "rm", id]).status.success());
        wait_until(Duration::from_secs(20), "the shim exited", || c.shim_pid(id).is_none());
        assert!(!run.exists());
        assert_eq!(cni.pod.snapshot(), before);
    }
}

/// Processes whose command line mentions `dir` and that are `vhost-device-vsock`.
fn vsock_backends_in(dir: &Path) -> usize {
    tests::containerd::processes_naming(dir, "vhost-device-vsock")
}

#[test]
fn the_agent_over_hybrid_vsock_and_its_backend_gone_after_teardown_and_after_a_crash() {
    let (c, cni, before) = start_with_pod("hvsock");
    tests::require_root_and_tools(&["vhost-device-vsock"]);
    let conf = kata_conf(&c.run_dir()).replace("[agent.kata]", "agent_channel = \"hybrid-vsock\"\n[agent.kata]");
    std::fs::write(c.dir.0.join("configuration.toml"), conf).unwrap();
    for (id, crash) in [("sbhv1", false), ("sbhv2", true)] {
        c.run_ok(id, &cni.pod.path());
        let run = c.run_dir().join(id);
        assert_eq!(vsock_backends_in(&run), 1, "the sandbox's backend runs");
        tests::run(&["ip", "netns", "exec", &cni.peer.name, "ping", "-c", "2", "-i", "0.3", "-W", "5", POD_IP]);
        if !crash {
            assert_only_root_reaches_the_agent(&run);
        }
        if crash {
            c.kill_shim(id);
            wait_until(Duration::from_secs(30), "delete removed QEMU, backend and devices", || {
                !qemu_running_in(&run) && vsock_backends_in(&run) == 0 && cni.pod.snapshot() == before
            });
            let _ = c.ctr(&["container", "rm", id]);
        } else {
            c.remove_sandbox(id);
        }
        assert_eq!(vsock_backends_in(&run), 0, "no vhost-device-vsock left");
        assert!(!run.exists(), "no socket left: the run directory is gone");
        assert_eq!(cni.pod.snapshot(), before);
    }
}

/// The agent's socket (hybrid vsock, what `auto` picks) is root's: root connects, another user
/// (nobody) is refused.
fn assert_only_root_reaches_the_agent(run: &Path) {
    let sock = run.join("vsock.sock");
    let meta = std::fs::metadata(run).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o777), (0, 0o700), "{} is root's alone", run.display());
    let connect = |uid: u32| {
        let script =
            "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ntry:\n s.connect(sys.argv[1]); print('connected')\n\
                      except OSError as e:\n print(e.strerror)";
        let out = std::process::Command::new("/usr/bin/python3")
            .args(["-c", script, sock.to_str().unwrap()])
            .uid(uid)
            .gid(uid)
            .output()
            .expect("python3 (installed by scripts/install-deps.sh)");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(connect(0), "connected");
    assert_eq!(connect(65534), "Permission denied", "nobody reached the agent's socket");
}

/// What is mounted at or under `dir` on the host.
fn mounts_under(dir: &Path) -> Vec<String> {
    let m = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let d = dir.display().to_string();
    m.lines().filter_map(|l| l.split(' ').nth(4)).filter(|p| p.starts_with(&d)).map(String::from).collect()
}

/// After a sandbox went: no QEMU, virtiofsd, mount or run directory of it, the namespace as CNI
/// left it.
fn assert_nothing_left(c: &Containerd, id: &str, cni: &CniPod, before: &serde_json::Value) {
    let run = c.run_dir().join(id);
    wait_until(Duration::from_secs(20), "QEMU gone", || !qemu_running_in(&run));
    wait_until(Duration::from_secs(10), "the shim exited", || c.shim_pid(id).is_none());
    assert_eq!(tests::containerd::virtiofsds_in(&run), 0, "virtiofsd left");
    assert_eq!(mounts_under(&c.run_dir()), Vec::<String>::new(), "mounts left");
    assert!(!run.exists(), "{} left", run.display());
    assert_eq!(&cni.pod.snapshot(), before, "the namespace is as CNI left it");
}

#[test]
fn a_command_runs_in_the_vm_reaches_the_peer_and_ctr_returns_its_output_and_exit_code() {
    let (c, cni, before) = start_with_pod("workload");
    let resolv = c.dir.0.join("resolv.conf");
    std::fs::write(&resolv, "nameserver 10.96.0.10\nsearch svc.cluster.local\n").unwrap();
    let bind = format!("type=bind,src={},dst=/etc/resolv.conf,options=rbind:ro", resolv.display());
    let echos = cni.peer.icmp_echos_received();
    let script =
        format!("ping -c 1 -W 10 {PEER_IP} >/dev/null && echo reached; cat /etc/resolv.conf; ip -o -4 addr show eth0");
    let out = c.run_fg("wl1", &cni.pod.path(), &["--mount", &bind], &["sh", "-c", &script]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "ctr run: {out:?}");
    for want in ["reached", "nameserver 10.96.0.10", "search svc.cluster.local", "inet 10.88.0.5/24"] {
        assert!(stdout.contains(want), "missing {want:?} in the container's output:\n{stdout}");
    }
    // The peer got the echo request (from the VM: the pod's namespace itself sent nothing).
    assert_eq!(cni.peer.icmp_echos_received(), echos + 1, "the peer received the container's ping");
    assert_nothing_left(&c, "wl1", &cni, &before);

    // An exit code and standard error reach ctr; so does output written just before the exit.
    let out = c.run_fg("wl2", &cni.pod.path(), &[], &["sh", "-c", "echo to-stderr >&2; echo last-words; exit 3"]);
    assert_eq!(out.status.code(), Some(3), "ctr run returns the command's exit code: {out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("last-words"), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("to-stderr"), "{out:?}");
    assert_nothing_left(&c, "wl2", &cni, &before);
}

fn mountinfo() -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo").unwrap().lines().map(String::from).collect()
}

/// The peer group (`shared:N`) of the mount whose mount point is `at`.
fn peer_group(info: &[String], at: &Path) -> Option<String> {
    let at = at.display().to_string();
    info.iter()
        .find(|l| l.split(' ').nth(4) == Some(at.as_str()))
        .and_then(|l| l.split(' ').find(|f| f.starts_with("shared:")).map(String::from))
}

#[test]
fn a_read_only_rbind_of_a_shared_source_is_a_private_read_only_copy_and_its_removal_leaves_the_hosts_mounts() {
    // As on a systemd node: the source is a shared mount, with a submount inside.
    let (c, cni, before) = start_with_pod("binds");
    let src = c.dir.0.join("src");
    std::fs::create_dir_all(&src).unwrap();
    tests::run(&["mount", "-t", "tmpfs", "knt-src", src.to_str().unwrap()]);
    tests::run(&["mount", "--make-shared", src.to_str().unwrap()]);
    std::fs::create_dir(src.join("sub")).unwrap();
    tests::run(&["mount", "-t", "tmpfs", "knt-sub", src.join("sub").to_str().unwrap()]);
    std::fs::write(src.join("top.txt"), "top\n").unwrap();
    std::fs::write(src.join("sub/inner.txt"), "inner\n").unwrap();
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = tests::try_run(&["umount", "-R", "-l", self.0.to_str().unwrap()]);
        }
    }
    let _src_mounts = Unmount(src.clone());
    let host_before = mountinfo();
    let group = peer_group(&host_before, &src).expect("the source is shared");
    // Each virtiofsd serves the copies as they are (the Rust one announces the submount).
    for daemon in ["/usr/local/bin/virtiofsd", "/usr/lib/qemu/virtiofsd"] {
        let keys = format!("virtio_fs_daemon = \"{daemon}\"\n[agent.kata]");
        std::fs::write(c.dir.0.join("configuration.toml"), kata_conf(&c.run_dir()).replace("[agent.kata]", &keys))
            .unwrap();
        one_read_only_rbind(&c, &cni, &src, &group, &host_before, daemon);
    }
    assert_eq!(cni.pod.snapshot(), before);
}

fn one_read_only_rbind(c: &Containerd, cni: &CniPod, src: &Path, group: &str, host_before: &[String], daemon: &str) {
    let bind = format!("type=bind,src={},dst=/data,options=rbind:ro", src.display());
    let out = c.run("sbbind", &cni.pod.path(), &["--mount", &bind]);
    assert!(out.status.success(), "ctr run: {}", String::from_utf8_lossy(&out.stderr));
    let run = c.run_dir().join("sbbind");
    // Every copy the host keeps for the guest (in mounts/ and in shared/, the source and its
    // submount) is read-only and in none of the source's peer groups.
    let info = mountinfo();
    let copies: Vec<&String> = info
        .iter()
        .filter(|l| {
            l.split(' ').nth(4).is_some_and(|m| m.starts_with(&run.display().to_string()) && m.contains("/mounts/"))
        })
        .filter(|l| l.contains("knt-src") || l.contains("knt-sub"))
        .collect();
    assert!(copies.len() >= 4, "the source and its submount, in mounts/ and shared/: {copies:#?}");
    for l in &copies {
        let opts = l.split(' ').nth(5).unwrap_or_default();
        assert!(opts.split(',').any(|o| o == "ro"), "a copy is writable: {l}");
        assert!(!l.split(' ').any(|f| f == group), "a copy joined the source's peer group {group}: {l}");
    }
    // The container sees both files and cannot write either.
    let script = "cat /data/top.txt /data/sub/inner.txt; echo x > /data/top.txt; echo x > /data/sub/inner.txt; true";
    let out = c.ctr(&["task", "exec", "--exec-id", "b1", "sbbind", "sh", "-c", script]);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("top") && stdout.contains("inner"), "{daemon}: {out:?}");
    assert_eq!(stderr.matches("Read-only file system").count(), 2, "{daemon}: {out:?}");
    assert_eq!(std::fs::read_to_string(src.join("top.txt")).unwrap(), "top\n");

    c.remove_sandbox("sbbind");
    // The host's own mounts are all there, and nothing more.
    let after = mountinfo();
    assert_eq!(after.len(), host_before.len(), "mount count back where it was");
    for m in [src.to_path_buf(), src.join("sub")] {
        assert!(
            after.iter().any(|l| l.split(' ').nth(4) == Some(m.to_str().unwrap())),
            "{} was unmounted",
            m.display()
        );
    }
    assert_eq!(std::fs::read_to_string(src.join("sub/inner.txt")).unwrap(), "inner\n");
}

/// The mount points at or under `dir`, from the host's mount table.
fn mount_points_under(info: &[String], dir: &Path) -> Vec<String> {
    info.iter()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| Path::new(m).starts_with(dir))
        .map(String::from)
        .collect()
}

#[test]
fn a_sandboxs_mounts_never_leave_its_run_directory_and_another_sandboxs_rbind_of_run_copies_none_of_them() {
    // As on a systemd node: the run root lies in a shared mount (standing for `/run`), which has
    // a peer elsewhere (another view of `/run`), and both sandboxes bind it recursively.
    let c = start_containerd("bounded");
    let node = c.dir.0.join("node");
    let peer = c.dir.0.join("peer");
    struct Unmount(Vec<PathBuf>);
    impl Drop for Unmount {
        fn drop(&mut self) {
            for m in &self.0 {
                let _ = tests::try_run(&["umount", "-R", "-l", m.to_str().unwrap()]);
            }
        }
    }
    let _mounts = Unmount(vec![peer.clone(), node.clone()]);
    for d in [&node, &peer] {
        std::fs::create_dir_all(d).unwrap();
    }
    tests::run(&["mount", "-t", "tmpfs", "knt-node", node.to_str().unwrap()]);
    tests::run(&["mount", "--make-shared", node.to_str().unwrap()]);
    tests::run(&["mount", "--bind", node.to_str().unwrap(), peer.to_str().unwrap()]);
    let root = node.join("kn");
    std::fs::write(c.dir.0.join("configuration.toml"), kata_conf(&root)).unwrap();
    let bind = format!("type=bind,src={},dst=/node,options=rbind:ro", node.display());
    let pods = [CniPod::new(), CniPod::new()];
    let as_cni_left: Vec<serde_json::Value> = pods.iter().map(|p| p.pod.snapshot()).collect();
    let base = mountinfo();
    assert_eq!(peer_group(&base, &node), peer_group(&base, &peer), "the peer is in the node's peer group");
    let mut added = Vec::new();
    for (id, pod) in ["sbra", "sbrb"].iter().zip(&pods) {
        let out = c.run(id, &pod.pod.path(), &["--mount", &bind]);
        assert!(out.status.success(), "ctr run {id}: {}", String::from_utf8_lossy(&out.stderr));
        added.push(mount_points_under(&mountinfo(), &root.join(id)));
    }
    // Each sandbox adds as many mounts as its own binds make: the second one's recursive copy
    // of the node's tree holds nothing of the first sandbox's.
    assert!(added[0].iter().any(|m| m.ends_with("-node")), "sbra's bind is there: {:#?}", added[0]);
    assert_eq!(added[0].len(), added[1].len(), "sbra: {:#?}\nsbrb: {:#?}", added[0], added[1]);
    assert!(!added[1].iter().any(|m| m.contains("/sbra/")), "sbrb's copy holds sbra's mounts: {:#?}", added[1]);
    // Nothing propagates to the node's peer but each sandbox's (empty) `fs` tmpfs, once.
    let at_peer = mount_points_under(&mountinfo(), &peer);
    let want: Vec<String> = [peer.clone(), peer.join("kn/sbra/fs"), peer.join("kn/sbrb/fs")]
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    assert_eq!(at_peer, want, "what the sandboxes' mounts reached in the node's peer");
    for ((id, pod), before) in ["sbra", "sbrb"].iter().zip(&pods).zip(&as_cni_left) {
        c.remove_sandbox(id);
        assert!(!root.join(id).exists(), "{id}'s run directory is gone");
        assert_eq!(&pod.pod.snapshot(), before);
    }
    let after = mountinfo();
    assert_eq!(
        after.len(),
        base.len(),
        "the mount table is back where it was: {:#?}",
        mount_points_under(&after, &c.dir.0)
    );
    assert_eq!(mount_points_under(&after, &peer), [peer.display().to_string()]);
}

/// Bytes written to the FIFO at `path` that no reader took yet (FIONREAD on a reader of our own
/// that never reads).
fn unread_in_fifo(path: &Path) -> usize {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path).unwrap();
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int through a valid pointer; the fd is open.
    assert_eq!(unsafe { libc::ioctl(f.as_raw_fd(), libc::FIONREAD, &mut n) }, 0);
    n as usize
}

#[test]
fn output_written_while_no_one_reads_and_containerd_restarts_reaches_the_next_reader_with_the_exit_code() {
    let (mut c, cni, before) = start_with_pod("fifos");
    let fifos = c.dir.0.join("fifos");
    std::fs::create_dir(&fifos).unwrap();
    let ns = format!("network:{}", cni.pod.path());
    let script = "echo before; while [ ! -e /go ]; do sleep 0.2; done; echo after-the-restart; \
                  while [ ! -e /end ]; do sleep 0.2; done; exit 7";
    let fifo_dir = fifos.to_str().unwrap();
    let run = ["run", "-d", "--fifo-dir", fifo_dir, "--runtime", "io.containerd.kata.v2", "--with-ns", &ns];
    let out = c.ctr(&[&run[..], &[tests::containerd::IMAGE, "sbout", "sh", "-c", script]].concat());
    assert!(out.status.success(), "ctr run -d: {}", String::from_utf8_lossy(&out.stderr));
    // `ctr run -d` has exited: nobody reads the output. containerd goes down and comes back.
    let shim = c.shim_pid("sbout").expect("the sandbox's shim");
    c.restart();
    assert_eq!(c.shim_pid("sbout"), Some(shim), "the shim outlived containerd");
    assert_eq!(
        c.task_status("sbout"),
        "RUNNING",
        "the restarted containerd found the sandbox's shim again (through the bundle's address file)"
    );
    let stdout = std::fs::read_dir(&fifos)
        .unwrap()
        .flatten()
        .map(|d| d.path().join("sbout-stdout"))
        .find(|p| p.exists())
        .expect("the task's stdout FIFO");
    let out = c.ctr(&["task", "exec", "--exec-id", "go", "sbout", "sh", "-c", ": > /go"]);
    assert!(out.status.success(), "{out:?}");
    // The line written with no reader stays in the FIFO (the old shim lost it to EPIPE).
    wait_until(Duration::from_secs(20), "the output waits in the FIFO", || unread_in_fifo(&stdout) > 0);
    // The next reader gets it, and then the exit code.
    let attach = std::process::Command::new("timeout")
        .arg("120")
        .arg(tests::containerd::bin("ctr"))
        .args(["-a", c.sock().to_str().unwrap(), "task", "attach", "sbout"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Attached once it has read what waited in the FIFO.
    wait_until(Duration::from_secs(20), "ctr task attach reads the FIFO", || unread_in_fifo(&stdout) == 0);
    let out = c.ctr(&["task", "exec", "--exec-id", "end", "sbout", "sh", "-c", ": > /end"]);
    assert!(out.status.success(), "{out:?}");
    let out = attach.wait_with_output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("after-the-restart"), "ctr task attach: {out:?}");
    assert_eq!(out.status.code(), Some(7), "ctr task attach: {out:?}");
    // The sandbox ends with its init: its task is stopped, or already deleted.
    wait_until(Duration::from_secs(20), "task stopped", || matches!(&*c.task_status("sbout"), "STOPPED" | ""));
    let _ = c.ctr(&["task", "rm", "sbout"]);
    assert!(c.ctr(&["container", "rm", "sbout"]).status.success());
    wait_until(Duration::from_secs(20), "the shim exited", || c.shim_pid("sbout").is_none());
    assert!(!c.run_dir().join("sbout").exists());
    assert_eq!(cni.pod.snapshot(), before);
}

#[test]
fn a_bind_of_the_runtimes_own_run_directory_even_through_a_symlink_is_refused_naming_the_mount() {
    let (c, cni, before) = start_with_pod("ownbind");
    c.run_ok("sbown", &cni.pod.path());
    let link = c.dir.0.join("innocent");
    std::os::unix::fs::symlink(c.run_dir().join("sbown"), &link).unwrap();
    let other = CniPod::new();
    let other_before = other.pod.snapshot();
    for src in [c.run_dir().join("sbown"), link] {
        let bind = format!("type=bind,src={},dst=/snoop,options=rbind:ro", src.display());
        let out = c.run("sbsnoop", &other.pod.path(), &["--mount", &bind]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "a bind of {} was accepted", src.display());
        assert!(stderr.contains("mounts[") && stderr.contains("in the runtime's own run directory"), "{stderr}");
        let _ = c.ctr(&["task", "rm", "-f", "sbsnoop"]);
        let _ = c.ctr(&["container", "rm", "sbsnoop"]);
        wait_until(Duration::from_secs(20), "the refused sandbox is gone", || {
            !c.run_dir().join("sbsnoop").exists() && other.pod.snapshot() == other_before
        });
    }
    // The sandbox whose directory was named runs on.
    assert_eq!(c.task_status("sbown"), "RUNNING");
    c.remove_sandbox("sbown");
    assert_eq!(cni.pod.snapshot(), before);
}

/// containerd's `tasks.v1.DeleteProcessRequest` (containerd's api/services/tasks/v1/tasks.proto).
#[derive(Clone, PartialEq, prost::Message)]
struct DeleteProcessRequest {
    #[prost(string, tag = "1")]
    container_id: String,
    #[prost(string, tag = "2")]
    exec_id: String,
}

/// containerd's `tasks.v1.DeleteResponse` (its first three fields).
#[derive(Clone, PartialEq, prost::Message)]
struct DeleteResponse {
    #[prost(string, tag = "1")]
    id: String,
    #[prost(uint32, tag = "2")]
    pid: u32,
    #[prost(uint32, tag = "3")]
    exit_status: u32,
}

/// containerd's DeleteProcess for exec `exec_id` of task `id` (namespace `default`), as a
/// client of containerd's API sends it (ctr refuses a running process on its own side).
fn delete_process(c: &Containerd, id: &str, exec_id: &str) -> Result<DeleteResponse, tonic::Status> {
    let sock = c.sock();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let channel = tests::grpc::unix_channel(&sock).await;
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready().await.expect("containerd ready");
        let mut req = tonic::Request::new(DeleteProcessRequest { container_id: id.into(), exec_id: exec_id.into() });
        req.metadata_mut().insert("containerd-namespace", "default".parse().unwrap());
        let path =
            tonic::codegen::http::uri::PathAndQuery::from_static("/containerd.services.tasks.v1.Tasks/DeleteProcess");
        let codec = tonic_prost::ProstCodec::<DeleteProcessRequest, DeleteResponse>::default();
        grpc.unary(req, path, codec).await.map(|r| r.into_inner())
    })
}

#[test]
fn deleting_a_running_exec_ends_it_in_the_vm() {
    let (c, cni, before) = start_with_pod("delexec");
    c.run_ok("sbdx", &cni.pod.path());
    let run = c.run_dir().join("sbdx");
    let out = c.ctr(&["task", "exec", "-d", "--exec-id", "long", "sbdx", "sleep", "4242"]);
    assert!(out.status.success(), "{out:?}");
    let sleeps = || tests::guest::sh(&run, "ps -o args | grep -c '^sleep 4242'").trim().parse::<u32>().unwrap_or(99);
    wait_until(Duration::from_secs(20), "the exec runs in the VM", || sleeps() == 1);
    let deleted = delete_process(&c, "sbdx", "long").expect("DeleteProcess");
    // Killed by SIGKILL: 137, as runc gives it (the agents say 9; the shim sent the signal).
    assert_eq!(deleted.exit_status, 137, "the deleted exec was killed: {deleted:?}");
    assert_eq!(sleeps(), 0, "the deleted exec still runs in the VM");
    // The exec is gone for containerd too, and the container runs on.
    assert!(delete_process(&c, "sbdx", "long").is_err(), "the exec is still known");
    assert_eq!(c.task_status("sbdx"), "RUNNING");
    c.remove_sandbox("sbdx");
    assert_eq!(cni.pod.snapshot(), before);
}

#[test]
fn exec_in_a_running_container_and_kill_reach_its_processes_in_the_vm() {
    let (c, cni, before) = start_with_pod("exec");
    c.run_ok("wx1", &cni.pod.path());
    let shim = c.shim_pid("wx1").expect("the shim runs");
    let fifo_waits = || {
        std::fs::read_dir(format!("/proc/{shim}/task"))
            .unwrap()
            .flatten()
            .filter(|t| std::fs::read_to_string(t.path().join("wchan")).is_ok_and(|w| w == "wait_for_partner"))
            .count()
    };
    // The init's own copies start with it.
    std::thread::sleep(Duration::from_millis(500));
    let waits_before = fifo_waits();
    let out = c.ctr(&["task", "exec", "--exec-id", "e1", "wx1", "sh", "-c", "ip -o -4 addr show eth0; exit 7"]);
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("inet 10.88.0.5/24"), "{out:?}");
    // ctr's copy of its (empty) stdin came and went before the shim opened the exec's stdin
    // FIFO: once the exec exited, no thread of the shim waits on that FIFO any more (the init's
    // stdin may: it runs, and `ctr task attach` could still come).
    wait_until(Duration::from_secs(5), "no thread waits on the exec's FIFO", || fifo_waits() <= waits_before);
    // stdin reaches an exec and its end ends the process.
    let mut child = std::process::Command::new(tests::containerd::bin("ctr"))
        .args(["-a", c.sock().to_str().unwrap(), "task", "exec", "--exec-id", "e2", "wx1", "cat"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"through stdin\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "through stdin\n");
    // An exec id that is the container's own would alias its init: refused, naming it.
    let out = c.ctr(&["task", "exec", "--exec-id", "wx1", "wx1", "true"]);
    assert!(!out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("is the container's own id"), "{out:?}");
    // An exec ended by a signal the runtime sent exits 128+N, as under runc: 143 for SIGTERM,
    // 137 for SIGKILL (the agents report N).
    for (sig, code) in [("SIGTERM", 143), ("SIGKILL", 137)] {
        let exec = std::process::Command::new(tests::containerd::bin("ctr"))
            .args(["-a", c.sock().to_str().unwrap(), "task", "exec", "--exec-id", "sig1", "wx1", "sleep", "4243"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let run = c.run_dir().join("wx1");
        wait_until(Duration::from_secs(20), "the exec runs", || {
            tests::guest::sh(&run, "ps -o args | grep -c '^sleep 4243'").trim() == "1"
        });
        let out = c.ctr(&["task", "kill", "-s", sig, "--exec-id", "sig1", "wx1"]);
        assert!(out.status.success(), "{out:?}");
        let out = exec.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(code), "an exec ended by {sig}");
    }
    // The init's process: a SIGTERM ends it, ctr sees the task stopped with its status.
    let out = c.ctr(&["task", "kill", "-s", "SIGTERM", "wx1"]);
    assert!(out.status.success(), "{out:?}");
    wait_until(Duration::from_secs(30), "task stopped", || c.task_status("wx1") == "STOPPED");
    assert!(c.ctr(&["task", "rm", "wx1"]).status.success());
    assert!(c.ctr(&["container", "rm", "wx1"]).status.success());
    assert_nothing_left(&c, "wx1", &cni, &before);

    // containerd's log URIs (`--log-uri`: file://, binary://) are refused before anything is
    // made, naming the stream.
    for uri in ["file:///dev/null", "binary:///bin/true"] {
        let out = c.run("wxlog", &cni.pod.path(), &["--log-uri", uri]);
        assert!(!out.status.success(), "{uri}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("process stdout:") && err.contains("log URIs are not supported"), "{uri}: {err}");
        let _ = c.ctr(&["container", "rm", "wxlog"]);
        assert!(!qemu_running_in(&c.run_dir()), "{uri}: a VM was started");
        assert_eq!(cni.pod.snapshot(), before);
    }
}

#[test]
fn ctr_run_t_gives_an_interactive_shell_that_sees_the_pod_address() {
    let (c, cni, before) = start_with_pod("tty");
    tests::require_root_and_tools(&["tmux"]);
    let session = format!("kata-net-tty-{}", std::process::id());
    let cmd = format!(
        "ctr -a {} run -t --rm --runtime io.containerd.kata.v2 --with-ns network:{} {} wt1 sh",
        c.sock().display(),
        cni.pod.path(),
        tests::containerd::IMAGE
    );
    struct Tmux(String);
    impl Drop for Tmux {
        fn drop(&mut self) {
            let _ = std::process::Command::new("tmux").args(["kill-session", "-t", &self.0]).status();
        }
    }
    let tmux = Tmux(session.clone());
    tests::run(&["tmux", "new-session", "-d", "-s", &tmux.0, "-x", "160", "-y", "50", &cmd]);
    let pane = || tests::run(&["tmux", "capture-pane", "-p", "-t", &session]);
    wait_until(Duration::from_secs(90), "the shell's prompt", || pane().contains('#'));
    tests::run(&["tmux", "send-keys", "-t", &session, "ip -o -4 addr show eth0; stty size", "Enter"]);
    wait_until(Duration::from_secs(20), "ip's output in the terminal", || pane().contains("inet 10.88.0.5/24"));
    // The terminal's size is the pane's (ResizePty reached the process's terminal).
    let size = tests::run(&["tmux", "display", "-p", "-t", &session, "#{pane_height} #{pane_width}"]);
    wait_until(Duration::from_secs(20), "stty size", || pane().contains(size.trim()));
    tests::run(&["tmux", "send-keys", "-t", &session, "exit", "Enter"]);
    let gone = || {
        let s = std::process::Command::new("tmux").args(["has-session", "-t", &session]).output().unwrap();
        !s.status.success()
    };
    wait_until(Duration::from_secs(30), "ctr run -t ended", gone);
    drop(tmux);
    assert_nothing_left(&c, "wt1", &cni, &before);
}

#[test]
fn a_cold_plugged_pod_link_renamed_or_made_again_keeps_the_vm_on_it() {
    let (c, cni, before) = start_with_pod("cold");
    c.run_ok("sbcold", &cni.pod.path());
    let run = c.run_dir().join("sbcold");
    let runtime_devs = || cni.pod.ip(&["-o", "link", "show", "group", "1801548897"]).lines().count();
    let ours = runtime_devs();
    // The VM answers on `dev` (the guest's NIC renamed to it), through one TAP and one redirect.
    let on = |dev: &str, what: &str| {
        wait_until(Duration::from_secs(60), what, || {
            let redirected = cni.pod.tc(&["filter", "show", "dev", dev, "ingress"]).contains("mirred");
            let g = tests::guest::sh(&run, &format!("ip -4 addr show {dev}"));
            redirected && g.contains("inet 10.88.0.5/24")
        });
        let echos = cni.pod.icmp_echos_received();
        tests::run(&["ip", "netns", "exec", &cni.peer.name, "ping", "-c", "2", "-i", "0.3", "-W", "5", POD_IP]);
        assert_eq!(cni.pod.icmp_echos_received(), echos, "{what}: the VM answered, not the namespace");
        assert_eq!(runtime_devs(), ours, "{what}: the same TAP, no other");
        let filters = cni.pod.tc(&["filter", "show", "dev", dev, "ingress"]);
        assert_eq!(filters.matches("mirred").count(), 1, "{what}: one redirect on {dev}: {filters}");
    };
    let rename = |from: &str, to: &str| {
        cni.pod.ip(&["link", "set", from, "down"]);
        cni.pod.ip(&["link", "set", from, "name", to]);
        cni.pod.ip(&["link", "set", to, "up"]);
    };
    rename("eth0", "eth7");
    on("eth7", "renamed");
    // Removed and made again under its name, with its MAC and address, in one go.
    cni.pod.ip(&["link", "del", "eth7"]);
    cni.pod.ip(&["link", "add", "eth7", "type", "veth", "peer", "name", "veth0", "netns", &cni.peer.name]);
    cni.pod.ip(&["link", "set", "eth7", "address", POD_MAC, "mtu", "1450"]);
    cni.pod.ip(&["addr", "add", "10.88.0.5/24", "dev", "eth7"]);
    cni.pod.ip(&["link", "set", "eth7", "up"]);
    cni.peer.ip(&["link", "set", "veth0", "mtu", "1450"]);
    cni.peer.ip(&["addr", "add", &format!("{PEER_IP}/24"), "dev", "veth0"]);
    cni.peer.ip(&["link", "set", "veth0", "up"]);
    on("eth7", "made again");

    // Back to the layout CNI made (its name, v6 address, routes, neighbour), then teardown.
    rename("eth7", "eth0");
    cni.pod.ip(&["addr", "add", "fd00:88::5/64", "dev", "eth0", "nodad"]);
    cni.pod.ip(&["route", "add", "default", "via", PEER_IP, "dev", "eth0"]);
    cni.pod.ip(&["route", "add", "10.99.0.0/16", "via", "10.88.0.254", "dev", "eth0"]);
    cni.pod.ip(&["route", "add", "10.77.0.0/16", "dev", "eth0", "scope", "link"]);
    cni.pod.ip(&["-6", "route", "add", "default", "via", "fd00:88::1", "dev", "eth0"]);
    cni.pod.ip(&["neigh", "add", "10.88.0.9", "lladdr", "02:00:0a:58:00:09", "dev", "eth0", "nud", "permanent"]);
    on("eth0", "renamed back");
    wait_until(Duration::from_secs(30), "the guest's routes back", || {
        tests::guest::sh(&run, "ip route").contains("default via 10.88.0.1 dev eth0")
    });
    wait_until(Duration::from_secs(10), "IPv6 DAD", || {
        cni.pod.ip(&["-6", "addr", "show", "tentative"]).trim().is_empty()
    });
    // Each time the cold-plugged NIC stayed and was joined again (it cannot be unplugged).
    assert_eq!(c.log_lines("pod link joined again"), 3, "renamed, made again, renamed back");
    c.remove_sandbox("sbcold");
    assert!(!qemu_running_in(&c.run_dir()), "QEMU left behind");
    assert_eq!(cni.pod.snapshot(), before, "no TAP, qdisc or filter left; the namespace as CNI made it");
}
