//! Helpers for the privileged integration tests: uniquely named namespaces removed on drop,
//! commands run as argument vectors, and snapshots of a namespace taken with iproute2 (an
//! oracle independent of the code under test).

pub mod cli;
pub mod containerd;
pub mod cri;
pub mod frames;
pub mod grpc;
pub mod guest;
pub mod vm;

/// The median of timings (benchmarks): durations or milliseconds.
pub fn median<T: PartialOrd + Copy>(mut v: Vec<T>) -> T {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v[v.len() / 2]
}

/// Milliseconds, for printing.
pub fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::Value;

/// Fail loudly (never skip) when the test cannot run here.
pub fn require_root_and_tools(tools: &[&str]) {
    assert!(nix::unistd::geteuid().is_root(), "these tests need root (CI runs them as root)");
    for t in tools {
        let found =
            std::env::var_os("PATH").map(|p| std::env::split_paths(&p).any(|d| d.join(t).is_file())).unwrap_or(false);
        assert!(found, "required tool {t:?} is not installed; .ci/run installs it");
    }
}

/// Run a command, panic with its output when it fails; returns stdout.
pub fn run(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("spawn {args:?}: {e}"));
    assert!(out.status.success(), "{args:?} failed: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Run a command and report whether it succeeded.
pub fn try_run(args: &[&str]) -> bool {
    Command::new(args[0]).args(&args[1..]).output().map(|o| o.status.success()).unwrap_or(false)
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A network namespace named `knt<pid>-<n><tag>`, deleted (with every device in it) on drop.
#[derive(Debug)]
pub struct TestNs {
    pub name: String,
}

impl TestNs {
    pub fn new(tag: &str) -> Self {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("knt{}-{n}{tag}", std::process::id());
        run(&["ip", "netns", "add", &name]);
        Self { name }
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    pub fn netns(&self) -> network::NetNs {
        network::NetNs::new(self.path())
    }

    /// `ip -n <ns> <args...>`
    pub fn ip(&self, args: &[&str]) -> String {
        let mut v = vec!["ip", "-n", &self.name];
        v.extend_from_slice(args);
        run(&v)
    }

    /// `tc -n <ns> <args...>`
    pub fn tc(&self, args: &[&str]) -> String {
        let mut v = vec!["tc", "-n", &self.name];
        v.extend_from_slice(args);
        run(&v)
    }

    /// `ip netns exec <ns> <args...>`
    pub fn exec(&self, args: &[&str]) -> String {
        let mut v = vec!["ip", "netns", "exec", &self.name];
        v.extend_from_slice(args);
        run(&v)
    }

    fn json(&self, args: &[&str]) -> Value {
        let text = self.ip(args);
        serde_json::from_str(&text).unwrap_or(Value::Array(vec![]))
    }

    /// How many ICMP echo requests the namespace received (`Icmp: InEchos` of
    /// `/proc/net/snmp`): whether a ping reached it, whoever answered.
    pub fn icmp_echos_received(&self) -> u64 {
        let out = run(&["ip", "netns", "exec", &self.name, "cat", "/proc/net/snmp"]);
        let mut icmp = out.lines().filter(|l| l.starts_with("Icmp:"));
        let (names, values) = (icmp.next().unwrap_or_default(), icmp.next().unwrap_or_default());
        let i = names.split_whitespace().position(|n| n == "InEchos").expect("InEchos in /proc/net/snmp");
        values.split_whitespace().nth(i).and_then(|v| v.parse().ok()).expect("InEchos value")
    }

    /// How many ICMPv6 echo requests the namespace received (`Icmp6InEchos` of
    /// `/proc/net/snmp6`).
    pub fn icmp6_echos_received(&self) -> u64 {
        let out = run(&["ip", "netns", "exec", &self.name, "cat", "/proc/net/snmp6"]);
        out.lines()
            .find_map(|l| l.strip_prefix("Icmp6InEchos").and_then(|v| v.trim().parse().ok()))
            .expect("Icmp6InEchos in /proc/net/snmp6")
    }

    /// Links (name, kind, MAC, MTU, flags), addresses, routes of every table, neighbours,
    /// qdiscs, ingress filters and nftables, reduced to the fields that say what the namespace holds.
    pub fn snapshot(&self) -> Value {
        let keep = |v: &Value, keys: &[&str]| -> Value {
            let mut m = serde_json::Map::new();
            for k in keys {
                if let Some(x) = v.get(*k) {
                    m.insert((*k).to_owned(), x.clone());
                }
            }
            Value::Object(m)
        };
        let links: Vec<Value> = self
            .json(&["-j", "-d", "link", "show"])
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                let mut v = keep(l, &["ifname", "address", "mtu", "flags", "link_type"]);
                v["kind"] = l.pointer("/linkinfo/info_kind").cloned().unwrap_or(Value::Null);
                // A TAP's features (pi, vnet_hdr, multi_queue, persist): attaching changes them.
                if v["kind"] == "tun" {
                    v["tun"] = l.pointer("/linkinfo/info_data").cloned().unwrap_or(Value::Null);
                }
                v
            })
            .collect();
        let addrs: Vec<Value> =
            self.json(&["-j", "addr", "show"])
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|l| {
                    let name = l["ifname"].clone();
                    l["addr_info"].as_array().cloned().unwrap_or_default().into_iter().map(
                        move |a| serde_json::json!({"dev": name, "local": a["local"], "prefixlen": a["prefixlen"]}),
                    )
                })
                .collect();
        let routes = self.json(&["-j", "route", "show", "table", "all"]);
        let routes6 = self.json(&["-j", "-6", "route", "show", "table", "all"]);
        let neigh: Vec<Value> = self
            .json(&["-j", "neigh", "show", "nud", "permanent"])
            .as_array()
            .unwrap()
            .iter()
            .map(|n| keep(n, &["dst", "dev", "lladdr", "state"]))
            .collect();
        let qdisc_text = self.tc(&["-j", "qdisc", "show"]);
        let qdiscs: Vec<Value> = serde_json::from_str::<Value>(&qdisc_text)
            .unwrap_or(Value::Array(vec![]))
            .as_array()
            .unwrap()
            .iter()
            .map(|q| keep(q, &["kind", "handle", "parent", "dev"]))
            .collect();
        let mut filters = Vec::new();
        for l in &links {
            let dev = l["ifname"].as_str().unwrap();
            // A device that went away since the link dump (a teardown in progress) has none;
            // the next snapshot will not list it.
            let out = Command::new("tc").args(["-n", &self.name, "filter", "show", "dev", dev, "ingress"]).output();
            let text = out.ok().filter(|o| o.status.success()).map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
            if let Some(text) = text.filter(|t| !t.trim().is_empty()) {
                filters.push(serde_json::json!({"dev": dev, "filters": text}));
            }
        }
        // The namespace's netfilter tables (the runtime's port-forward table among them).
        let out = Command::new("ip").args(["netns", "exec", &self.name, "nft", "list", "ruleset"]).output();
        let nft = out.expect("nft (Debian package nftables; install-deps installs it)");
        assert!(nft.status.success(), "nft list ruleset: {}", String::from_utf8_lossy(&nft.stderr));
        let nftables = String::from_utf8_lossy(&nft.stdout).into_owned();
        serde_json::json!({
            "links": links, "addresses": addrs, "routes": routes, "routes6": routes6,
            "neighbors": neigh, "qdiscs": qdiscs, "filters": filters, "nftables": nftables,
        })
    }

    /// The ifindex of a link, read with iproute2.
    pub fn ifindex(&self, dev: &str) -> u32 {
        let v: Value = serde_json::from_str(&self.ip(&["-j", "link", "show", "dev", dev])).unwrap();
        v[0]["ifindex"].as_u64().unwrap() as u32
    }

    /// The MAC of a link, read with iproute2.
    pub fn mac(&self, dev: &str) -> String {
        let v: Value = serde_json::from_str(&self.ip(&["-j", "link", "show", "dev", dev])).unwrap();
        v[0]["address"].as_str().unwrap().to_owned()
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// A pod namespace prepared the way CNI's bridge plugin leaves it, with the far end of its veth
/// in a peer namespace that plays the host/bridge side.
#[derive(Debug)]
pub struct CniPod {
    pub pod: TestNs,
    pub peer: TestNs,
}

pub const POD_IP: &str = "10.88.0.5";
pub const PEER_IP: &str = "10.88.0.1";
pub const POD_MAC: &str = "02:00:0a:58:00:05";

impl CniPod {
    /// `eth0` (veth) with 10.88.0.5/24 and fd00:88::5/64, default routes via the peer, an extra
    /// subnet route, an on-link route and a permanent neighbour; peer `veth0` with 10.88.0.1/24.
    pub fn new() -> Self {
        let pod = TestNs::new("pod");
        let peer = TestNs::new("peer");
        pod.ip(&["link", "add", "eth0", "type", "veth", "peer", "name", "veth0", "netns", &peer.name]);
        pod.ip(&["link", "set", "eth0", "address", POD_MAC, "mtu", "1450"]);
        pod.ip(&["addr", "add", "10.88.0.5/24", "dev", "eth0"]);
        pod.ip(&["addr", "add", "fd00:88::5/64", "dev", "eth0", "nodad"]);
        pod.ip(&["link", "set", "eth0", "up"]);
        pod.ip(&["link", "set", "lo", "up"]);
        pod.ip(&["route", "add", "default", "via", "10.88.0.1", "dev", "eth0"]);
        pod.ip(&["route", "add", "10.99.0.0/16", "via", "10.88.0.254", "dev", "eth0"]);
        pod.ip(&["route", "add", "10.77.0.0/16", "dev", "eth0", "scope", "link"]);
        pod.ip(&["-6", "route", "add", "default", "via", "fd00:88::1", "dev", "eth0"]);
        pod.ip(&["neigh", "add", "10.88.0.9", "lladdr", "02:00:0a:58:00:09", "dev", "eth0", "nud", "permanent"]);
        peer.ip(&["link", "set", "veth0", "mtu", "1450"]);
        peer.ip(&["addr", "add", "10.88.0.1/24", "dev", "veth0"]);
        peer.ip(&["link", "set", "veth0", "up"]);
        peer.ip(&["link", "set", "lo", "up"]);
        // Let duplicate address detection finish, so snapshots taken now match later ones.
        let start = std::time::Instant::now();
        while !pod.ip(&["-6", "addr", "show", "tentative"]).trim().is_empty() {
            assert!(start.elapsed() < std::time::Duration::from_secs(10), "IPv6 DAD did not finish");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Self { pod, peer }
    }
}

impl Default for CniPod {
    fn default() -> Self {
        Self::new()
    }
}

/// A slog logger that discards everything (tests check effects, not logs).
pub fn quiet_logger() -> slog::Logger {
    slog::Logger::root(slog::Discard, slog::o!())
}

/// What containerd's CRI PortForward does, from a thread inside the namespace at `netns`: dial
/// `addr` (retrying for up to `wait` while nothing listens yet), send `payload`, close the
/// sending side, and read until the far end closes. Returns what came back.
pub fn echo_in_netns(netns: &str, addr: &str, payload: &[u8], wait: std::time::Duration) -> Vec<u8> {
    use std::io::{Read, Write};
    let file = std::fs::File::open(netns).unwrap_or_else(|e| panic!("{netns}: {e}"));
    let addr: std::net::SocketAddr = addr.parse().expect("a socket address");
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("enter the namespace");
            let start = std::time::Instant::now();
            loop {
                let mut c = match std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(5)) {
                    Ok(c) => c,
                    Err(e) if start.elapsed() < wait => {
                        eprintln!("dial {addr} in {netns}: {e}; again");
                        std::thread::sleep(std::time::Duration::from_millis(500));
                        continue;
                    }
                    Err(e) => panic!("dial {addr} in {netns}: {e}"),
                };
                c.set_read_timeout(Some(std::time::Duration::from_secs(20))).unwrap();
                c.write_all(payload).expect("send");
                c.shutdown(std::net::Shutdown::Write).expect("close the sending side");
                let mut back = Vec::new();
                match c.read_to_end(&mut back) {
                    // A connection that the far end closed at once: its listener is not up yet.
                    Ok(0) if start.elapsed() < wait => std::thread::sleep(std::time::Duration::from_millis(500)),
                    Ok(_) => return back,
                    Err(e) => panic!("read from {addr} in {netns}: {e} (after {} bytes)", back.len()),
                }
            }
        })
        .join()
        .expect("the dialling thread")
    })
}
