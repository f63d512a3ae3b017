//! `make bench`: the netlink path against the same work done with `ip`/`tc` processes (the way
//! a shell script or the seeds' recipes do it), in one run, as medians and ratios.
//!
//! - attach + detach of 1, 8 and 32 tcfilter endpoints;
//! - a scan of a namespace holding 10,000 routes.

use std::time::{Duration, Instant};

use network::endpoint::{Endpoint, EndpointConfig};
use network::{attach_all, NetCtx, NetworkModel};
use tests::{median, ms, quiet_logger, require_root_and_tools, TestNs};

const ROUNDS: usize = 15;
const SCAN_ROUNDS: usize = 11;

/// A pod namespace with `n` veths `eth0..` (peers in `peer`), each up with an address.
fn pod_with_links(n: usize) -> (TestNs, TestNs) {
    let pod = TestNs::new("bpod");
    let peer = TestNs::new("bpeer");
    for i in 0..n {
        let (eth, p) = (format!("eth{i}"), format!("veth{i}"));
        pod.ip(&["link", "add", &eth, "type", "veth", "peer", "name", &p, "netns", &peer.name]);
        pod.ip(&["addr", "add", &format!("10.{}.{}.2/24", 100 + i / 200, i % 200), "dev", &eth]);
        pod.ip(&["link", "set", &eth, "up"]);
    }
    (pod, peer)
}

/// The same tcfilter connection made with iproute2 processes.
fn attach_with_commands(pod: &TestNs, n: usize) {
    for i in 0..n {
        let (eth, tap) = (format!("eth{i}"), format!("tap{i}_kata"));
        pod.ip(&["tuntap", "add", &tap, "mode", "tap", "vnet_hdr"]);
        pod.ip(&["link", "set", &tap, "mtu", "1500", "up"]);
        pod.tc(&["qdisc", "add", "dev", &eth, "ingress"]);
        pod.tc(&["qdisc", "add", "dev", &tap, "ingress"]);
        for (from, to) in [(&eth, &tap), (&tap, &eth)] {
            pod.tc(&[
                "filter", "add", "dev", from, "parent", "ffff:", "protocol", "all", "u32", "match", "u32", "0", "0",
                "action", "mirred", "egress", "redirect", "dev", to,
            ]);
        }
    }
}

fn detach_with_commands(pod: &TestNs, n: usize) {
    for i in 0..n {
        pod.tc(&["qdisc", "del", "dev", &format!("eth{i}"), "ingress"]);
        pod.ip(&["link", "del", &format!("tap{i}_kata")]);
    }
}

/// Median time of `ip link del` of one TAP alone: the kernel's unregister cost, which every
/// detach pays per batch whatever issues the request.
fn link_del_floor(pod: &TestNs) -> Duration {
    let mut v = Vec::new();
    for _ in 0..ROUNDS {
        pod.ip(&["tuntap", "add", "floor_kata", "mode", "tap"]);
        let t = Instant::now();
        pod.ip(&["link", "del", "floor_kata"]);
        v.push(t.elapsed());
    }
    median(v)
}

/// What a script runs to learn the same as one scan: links, addresses, routes, neighbours.
fn scan_with_commands(ns: &TestNs) -> usize {
    let mut total = 0;
    for args in [
        &["-j", "-d", "link", "show"][..],
        &["-j", "addr", "show"],
        &["-j", "route", "show"],
        &["-j", "-6", "route", "show"],
        &["-j", "neigh", "show", "nud", "permanent"],
    ] {
        let v: serde_json::Value = serde_json::from_str(&ns.ip(args)).unwrap_or_default();
        total += v.as_array().map_or(0, |a| a.len());
    }
    total
}

struct Row {
    what: String,
    ours: Duration,
    cmds: Duration,
}

fn main() {
    require_root_and_tools(&["ip", "tc"]);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let cfg =
        EndpointConfig { model: NetworkModel::TcFilter, queues: 1, vhost_net: false, ..EndpointConfig::default() };
    let mut rows = Vec::new();

    for n in [1usize, 8, 32] {
        let (pod, _peer) = pod_with_links(n);
        let before = pod.snapshot();
        let ctx = rt.block_on(async { NetCtx::open(pod.netns(), quiet_logger()) }).unwrap();
        let eps = rt.block_on(ctx.scan()).map(|i| Endpoint::from_scan(&i, &cfg).unwrap()).unwrap();
        assert_eq!(eps.len(), n);
        let (mut att, mut det, mut catt, mut cdet) = (vec![], vec![], vec![], vec![]);
        for _ in 0..ROUNDS {
            let t = Instant::now();
            let attached = rt.block_on(attach_all(&ctx, &eps, &cfg)).unwrap();
            att.push(t.elapsed());
            let t = Instant::now();
            let states: Vec<_> = attached.iter().map(|a| a.state.clone()).collect();
            rt.block_on(network::detach_all(&ctx, &states)).unwrap();
            det.push(t.elapsed());
            drop(attached);

            let t = Instant::now();
            attach_with_commands(&pod, n);
            catt.push(t.elapsed());
            let t = Instant::now();
            detach_with_commands(&pod, n);
            cdet.push(t.elapsed());
        }
        assert_eq!(pod.snapshot(), before, "both paths leave the namespace as they found it");
        rows.push(Row { what: format!("attach {n} tcfilter endpoint(s)"), ours: median(att), cmds: median(catt) });
        rows.push(Row { what: format!("detach {n} tcfilter endpoint(s)"), ours: median(det), cmds: median(cdet) });
    }

    let (floor_ns, _floor_peer) = pod_with_links(0);
    let floor = link_del_floor(&floor_ns);

    // 10,000 routes through one link.
    let (pod, _peer) = pod_with_links(1);
    let batch = std::env::temp_dir().join(format!("knt-bench-routes-{}", std::process::id()));
    let mut text = String::new();
    for i in 0..10_000u32 {
        text.push_str(&format!("route add 100.{}.{}.0/24 via 10.100.0.1 dev eth0\n", 64 + i / 256, i % 256));
    }
    std::fs::write(&batch, text).unwrap();
    let loaded = tests::try_run(&["ip", "-n", &pod.name, "-batch", batch.to_str().unwrap()]);
    let _ = std::fs::remove_file(&batch);
    assert!(loaded, "loading 10,000 routes with ip -batch failed");
    let ctx = rt.block_on(async { NetCtx::open(pod.netns(), quiet_logger()) }).unwrap();
    let (mut ours, mut cmds) = (vec![], vec![]);
    for _ in 0..SCAN_ROUNDS {
        let t = Instant::now();
        let info = rt.block_on(ctx.scan()).unwrap();
        ours.push(t.elapsed());
        assert_eq!(info.routes.len(), 10_000);
        let t = Instant::now();
        let n = scan_with_commands(&pod);
        cmds.push(t.elapsed());
        assert!(n >= 10_000);
    }
    rows.push(Row { what: "scan with 10,000 routes".into(), ours: median(ours), cmds: median(cmds) });

    println!("{:<34} {:>14} {:>18} {:>9}", "operation (median)", "netlink ms", "ip/tc commands ms", "ratio");
    for r in &rows {
        println!(
            "{:<34} {:>14.3} {:>18.3} {:>8.1}x",
            r.what,
            ms(r.ours),
            ms(r.cmds),
            r.cmds.as_secs_f64() / r.ours.as_secs_f64()
        );
    }
    let attach1 = rows[0].ours;
    let scan = rows.last().unwrap().ours;
    let worst_ratio = rows.iter().map(|r| r.cmds.as_secs_f64() / r.ours.as_secs_f64()).fold(f64::MAX, f64::min);
    println!();
    println!(
        "kernel floor: `ip link del` of one TAP takes {:.3} ms (median); a detach pays it once per batch",
        ms(floor)
    );
    println!(
        "target attach of 1 endpoint < 1 ms: {:.3} ms ({})",
        ms(attach1),
        verdict(attach1 < Duration::from_millis(1))
    );
    println!("target 10,000-route scan < 50 ms: {:.3} ms ({})", ms(scan), verdict(scan < Duration::from_millis(50)));
    println!("target >= 20x faster than commands: worst {worst_ratio:.1}x ({})", verdict(worst_ratio >= 20.0));
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "NOT met"
    }
}
