//! `make bench` (shim part): sandbox start through containerd (`ctr run`) split into the shim's
//! phases — scan, attach, VM boot, agent sync, as the shim logs them — for 1 and 8 interfaces,
//! and the shim's resident memory with the sandbox running; then QEMU start -> agent ready ->
//! network synced with each agent (ours, kata's 3.2.0) over each channel it serves (virtio-serial:
//! ours only; hybrid vsock), runs interleaved, medians and ratios against ours over
//! virtio-serial. QEMU runs under TCG here.

use std::path::Path;
use std::time::{Duration, Instant};

use tests::containerd::{kata_conf, start_containerd, wait_until, Containerd};
use tests::guest::Agent;
use tests::{median, CniPod};

/// The number after `key` on the shim's "sandbox started" log line.
fn phase(line: &str, key: &str) -> f64 {
    let rest = &line[line.find(key).unwrap_or_else(|| panic!("{key} missing in {line}")) + key.len()..];
    let num: String =
        rest.chars().skip_while(|c| !c.is_ascii_digit()).take_while(|c| c.is_ascii_digit() || *c == '.').collect();
    num.parse().unwrap()
}

/// A `/proc/<pid>/status` value in KiB (`VmRSS`, `RssAnon`, `RssFile`).
fn status_kib(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status.lines().find(|l| l.starts_with(key)).and_then(|l| l.split_whitespace().nth(1)).unwrap().parse().unwrap()
}

/// One sandbox with `conf`: (VM boot to the agent's answer, agent sync, `ctr run`) in ms.
fn one_start(c: &Containerd, cni: &CniPod, id: &str, conf: &str) -> (f64, f64, f64) {
    std::fs::write(c.dir.0.join("configuration.toml"), conf).unwrap();
    let t = Instant::now();
    let out = c.run(id, &cni.pod.path(), &[]);
    let total = t.elapsed().as_secs_f64() * 1e3;
    assert!(out.status.success(), "ctr run {id}: {}", String::from_utf8_lossy(&out.stderr));
    let log = std::fs::read_to_string(c.dir.0.join("containerd.log")).unwrap();
    let line = log.lines().rfind(|l| l.contains("sandbox started") && l.contains(id)).expect("phase line").to_owned();
    c.remove_sandbox(id);
    (phase(&line, "vm_boot_ms"), phase(&line, "agent_sync_ms"), total)
}

/// Each agent over each channel it serves, `runs` times, interleaved.
fn agents_and_channels(c: &Containerd, runs: usize) {
    let base = kata_conf(&c.run_dir());
    let conf = |agent: Agent, channel: &str| {
        base.replace(Agent::under_test().initrd(), agent.initrd())
            .replace("[agent.kata]", &format!("agent_channel = \"{channel}\"\n[agent.kata]"))
    };
    let mut cases = vec![(Agent::Ours, "serial"), (Agent::Ours, "hybrid-vsock")];
    match Agent::Kata.built() {
        true => cases.push((Agent::Kata, "hybrid-vsock")),
        false => println!("kata's agent: not measured (build its image with KATA_AGENT=<path> make guest-image)"),
    }
    let confs: Vec<String> = cases.iter().map(|(a, ch)| conf(*a, ch)).collect();
    let cni = CniPod::new();
    let mut got: Vec<Vec<(f64, f64, f64)>> = vec![Vec::new(); cases.len()];
    for r in 0..runs {
        for (i, conf) in confs.iter().enumerate() {
            got[i].push(one_start(c, &cni, &format!("bagent{i}-{r}"), conf));
        }
    }
    println!("\nQEMU start -> agent answers -> network synced ({runs} runs each, interleaved, medians; ratio to ours over virtio-serial)");
    println!(
        "{:<26} {:>16} {:>15} {:>12} {:>8}",
        "agent, channel", "QEMU->agent ms", "agent sync ms", "ctr run ms", "ratio"
    );
    let mut base_total = 0.0;
    for (i, (agent, ch)) in cases.iter().enumerate() {
        let col = |f: fn(&(f64, f64, f64)) -> f64| median(got[i].iter().map(f).collect());
        let (boot, sync, total) = (col(|x| x.0), col(|x| x.1), col(|x| x.2));
        if i == 0 {
            base_total = boot + sync;
        }
        let name = format!("{}, {ch}", if *agent == Agent::Kata { "kata" } else { "ours" });
        println!("{name:<26} {boot:>16.0} {sync:>15.1} {total:>12.0} {:>7.2}x", (boot + sync) / base_total);
    }
    println!("(kata's agent serves no virtio-serial port: that pair does not exist)");
}

/// CPU time (user + system, clock ticks) of process `pid` so far.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// Following the namespace: from a link's address appearing in the pod's namespace to the guest
/// having it (the link added, hotplugged, configured), `runs` times; and the shim's idle CPU with
/// and without following.
fn following(c: &Containerd, runs: usize) {
    let base = kata_conf(&c.run_dir());
    let cni = CniPod::new();
    c.run_ok("bfollow", &cni.pod.path());
    let run = c.run_dir().join("bfollow");
    let mut took = Vec::new();
    for r in 0..runs {
        let (eth, peer) = (format!("eth{}", r + 1), format!("veth{}", r + 1));
        let addr = format!("10.{}.0.2", 90 + r);
        let t = Instant::now();
        cni.pod.ip(&["link", "add", &eth, "type", "veth", "peer", "name", &peer, "netns", &cni.peer.name]);
        cni.pod.ip(&["addr", "add", &format!("{addr}/24"), "dev", &eth]);
        cni.pod.ip(&["link", "set", &eth, "up"]);
        while !tests::guest::sh(&run, "ip -4 addr").contains(&format!("inet {addr}/24")) {
            assert!(t.elapsed() < Duration::from_secs(60), "{eth} never reached the guest");
        }
        took.push(t.elapsed().as_secs_f64() * 1e3);
        cni.pod.ip(&["link", "del", &eth]);
    }
    // Idle: the same sandbox (following) and one that does not follow, 10 s each, side by side.
    std::fs::write(
        c.dir.0.join("configuration.toml"),
        base.replace("[runtime]\n", "[runtime]\nfollow_netns = false\n"),
    )
    .unwrap();
    let cni2 = CniPod::new();
    c.run_ok("bnofollow", &cni2.pod.path());
    std::fs::write(c.dir.0.join("configuration.toml"), &base).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let (a, b) = (c.shim_pid("bfollow").unwrap(), c.shim_pid("bnofollow").unwrap());
    let (a0, b0) = (cpu_ticks(a), cpu_ticks(b));
    std::thread::sleep(Duration::from_secs(10));
    let (a1, b1) = (cpu_ticks(a) - a0, cpu_ticks(b) - b0);
    let tick = 1000.0 / nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).unwrap().unwrap() as f64;
    println!("\nfollowing the namespace: a veth with an address added to the pod -> the guest has the address (debounce, endpoint, hotplug, configuration), {runs} runs:");
    println!(
        "  median {:.0} ms (min {:.0}, max {:.0}); target < 1000 ms under TCG: {}",
        median(took.clone()),
        took.iter().cloned().fold(f64::MAX, f64::min),
        took.iter().cloned().fold(0.0, f64::max),
        if median(took.clone()) < 1000.0 { "met" } else { "NOT met" }
    );
    println!(
        "  idle shim CPU over 10 s: following {:.0} ms, not following {:.0} ms",
        a1 as f64 * tick,
        b1 as f64 * tick
    );
    c.remove_sandbox("bfollow");
    c.remove_sandbox("bnofollow");
}

fn main() {
    let c = start_containerd("bench-shim", Path::new(env!("CARGO_BIN_EXE_containerd-shim-kata-v2")));
    following(&c, 5);
    agents_and_channels(&c, 5);
    std::fs::write(c.dir.0.join("configuration.toml"), kata_conf(&c.run_dir())).unwrap();
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
        let rss = status_kib(pid, "VmRSS:");
        let (anon, file) = (status_kib(pid, "RssAnon:"), status_kib(pid, "RssFile:"));
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
            println!(
                "  of which anonymous (the shim's own data: what each further sandbox adds) {:.1} MiB, \
                 file-backed (pages of its binary and libraries, shared by every shim of the node) {:.1} MiB",
                anon as f64 / 1024.0,
                file as f64 / 1024.0
            );
        }
        assert!(c.ctr(&["task", "kill", "-s", "SIGKILL", &id]).status.success());
        wait_until(Duration::from_secs(20), "stopped", || c.task_status(&id) == "STOPPED");
        let _ = c.ctr(&["task", "rm", &id]);
        assert!(c.ctr(&["container", "rm", &id]).status.success());
    }
}
