//! `make bench` (shim part): sandbox start through containerd (`ctr run`) split into the shim's
//! phases — scan, attach, VM boot, agent sync, as the shim logs them — for 1 and 8 interfaces,
//! and the shim's resident memory with the sandbox running. QEMU runs under TCG here.

use std::path::Path;
use std::time::{Duration, Instant};

use tests::containerd::{start_containerd, wait_until};
use tests::CniPod;

/// The number after `key` on the shim's "sandbox started" log line.
fn phase(line: &str, key: &str) -> f64 {
    let rest = &line[line.find(key).unwrap_or_else(|| panic!("{key} missing in {line}")) + key.len()..];
    let num: String =
        rest.chars().skip_while(|c| !c.is_ascii_digit()).take_while(|c| c.is_ascii_digit() || *c == '.').collect();
    num.parse().unwrap()
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)).unwrap().parse().unwrap()
}

fn main() {
    let c = start_containerd("bench-shim", Path::new(env!("CARGO_BIN_EXE_containerd-shim-kata-v2")));
    println!(
        "{:<14} {:>9} {:>10} {:>12} {:>14} {:>14} {:>12}",
        "interfaces", "scan ms", "attach ms", "VM boot ms", "agent sync ms", "ctr run ms", "shim RSS"
    );
    let mut base_net = 0.0;
    for n in [1usize, 8] {
        let cni = CniPod::new();
        for i in 1..n {
            let (eth, p) = (format!("eth{i}"), format!("veth{i}"));
            cni.pod.ip(&["link", "add", &eth, "type", "veth", "peer", "name", &p, "netns", &cni.peer.name]);
            cni.pod.ip(&["addr", "add", &format!("10.{}.0.2/24", 100 + i), "dev", &eth]);
            cni.pod.ip(&["link", "set", &eth, "up"]);
        }
        let id = format!("bench{n}");
        let t = Instant::now();
        let out = c.run(&id, &cni.pod.path(), &[]);
        let total = t.elapsed();
        assert!(out.status.success(), "ctr run: {}", String::from_utf8_lossy(&out.stderr));
        let pid = c.shim_pid(&id).expect("shim running");
        let rss = rss_kib(pid);
        let log = std::fs::read_to_string(c.dir.0.join("containerd.log")).unwrap();
        let line =
            log.lines().rfind(|l| l.contains("sandbox started") && l.contains(&id)).expect("phase line").to_owned();
        let (scan, attach, boot, sync) = (
            phase(&line, "scan_ms"),
            phase(&line, "attach_ms"),
            phase(&line, "vm_boot_ms"),
            phase(&line, "agent_sync_ms"),
        );
        println!(
            "{n:<14} {scan:>9.2} {attach:>10.2} {boot:>12.0} {sync:>14.1} {:>14.0} {:>9.1} MiB",
            total.as_secs_f64() * 1e3,
            rss as f64 / 1024.0
        );
        let net = scan + attach;
        if n == 1 {
            base_net = net;
        } else {
            println!("network phases (scan + attach), 8 vs 1 interface: {net:.2} ms vs {base_net:.2} ms ({:.1}x); target < 20 ms: {}", net / base_net, if net < 20.0 { "met" } else { "NOT met" });
            println!(
                "shim RSS with a running sandbox: {:.1} MiB; target < 10 MB: {}",
                rss as f64 / 1024.0,
                if rss * 1024 < 10_000_000 { "met" } else { "NOT met" }
            );
        }
        assert!(c.ctr(&["task", "kill", "-s", "SIGKILL", &id]).status.success());
        wait_until(Duration::from_secs(20), "stopped", || c.task_status(&id) == "STOPPED");
        let _ = c.ctr(&["task", "rm", &id]);
        assert!(c.ctr(&["container", "rm", &id]).status.success());
    }
}
