//! `make bench` (management part), against a sandbox running under containerd (QEMU under TCG):
//!
//! - add-iface and del-iface end to end, `kata-runtime` start to output, against a plain
//!   management round trip (`list-ifaces`) measured the same way;
//! - IPVS: 20,000 rules by one `--restore` against the same rules one command at a time (the
//!   first 500 timed, the rest extrapolated). Target: restore at least 100x faster.

use std::path::Path;
use std::time::{Duration, Instant};

use tests::cli::KataRuntime;
use tests::containerd::{start_containerd, wait_until};
use tests::{median, ms, CniPod};

const RUNS: usize = 9;
const SINGLE: usize = 500;

/// Run the command and time it, start to output.
fn cli(k: &KataRuntime, args: &[&str], stdin: Option<&str>) -> Duration {
    let t = Instant::now();
    k.ok(args, stdin);
    t.elapsed()
}

/// 5,000 services with 3 real servers each, in `ipvsadm --save` syntax.
fn rule_file() -> Vec<String> {
    let mut lines = Vec::with_capacity(20_000);
    for i in 0..5000 {
        let vip = format!("10.{}.{}.{}:80", 100 + i / 62_500, (i / 250) % 250, 1 + i % 250);
        lines.push(format!("-A -t {vip} -s rr -p 3000"));
        for j in 0..3 {
            lines.push(format!("-a -t {vip} -r 172.16.{j}.{}:80 -m", 1 + i % 250));
        }
    }
    lines
}

fn main() {
    let c = start_containerd("bench-mgmt", Path::new(env!("CARGO_BIN_EXE_containerd-shim-kata-v2")));
    let conf = KataRuntime { bin: tests::cli::kata_runtime_bin(), conf: c.dir.0.join("configuration.toml") };
    let cni = CniPod::new();
    let id = "benchmgmt";
    let out = c.run(id, &cni.pod.path(), &[]);
    assert!(out.status.success(), "ctr run: {}", String::from_utf8_lossy(&out.stderr));
    cni.pod.ip(&["tuntap", "add", "dev", "tap-bench", "mode", "tap"]);
    cni.pod.ip(&["link", "set", "tap-bench", "up"]);

    let doc = r#"{"device":"tap-bench","name":"eth-bench","IPAddresses":[{"address":"172.16.0.3","mask":"16"}],"hwAddr":"02:42:20:6f:a3:69","mtu":1500}"#;
    let (mut base, mut add, mut del) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..RUNS {
        base.push(cli(&conf, &["kata-network", "list-ifaces", id], None));
        add.push(cli(&conf, &["kata-network", "add-iface", id, "-"], Some(doc)));
        del.push(cli(&conf, &["kata-network", "del-iface", id, "-"], Some(doc)));
    }
    let (base, add, del) = (median(base), median(add), median(del));
    println!("management, {RUNS} runs, medians, CLI start to output:");
    println!("  list-ifaces (round trip, baseline) {:>8.1} ms", ms(base));
    println!("  add-iface (TAP, hotplug, guest)    {:>8.1} ms  {:>5.1}x the round trip", ms(add), ms(add) / ms(base));
    println!("  del-iface (unplug, guest ack)      {:>8.1} ms  {:>5.1}x the round trip", ms(del), ms(del) / ms(base));

    let rules = rule_file();
    let t = Instant::now();
    for line in &rules[..SINGLE] {
        cli(&conf, &["kata-ipvs", "ipvsadm", "--parameters", line, id], None);
    }
    let single = t.elapsed();
    let per_rule = single / SINGLE as u32;
    let extrapolated = per_rule * rules.len() as u32;
    cli(&conf, &["kata-ipvs", "ipvsadm", "--parameters", "--clear", id], None);
    let file = rules.join("\n") + "\n";
    let restore = cli(&conf, &["kata-ipvs", "ipvsadm", "--restore", "-", id], Some(&file));
    let ratio = extrapolated.as_secs_f64() / restore.as_secs_f64();
    println!("IPVS, {} rules:", rules.len());
    println!(
        "  one command at a time: {:.1} ms per rule ({SINGLE} timed, {:.1} s) -> {:.0} s for all (extrapolated)",
        ms(per_rule),
        single.as_secs_f64(),
        extrapolated.as_secs_f64()
    );
    println!("  one --restore:         {:.2} s", restore.as_secs_f64());
    println!("  restore is {ratio:.0}x faster; target >= 100x: {}", if ratio >= 100.0 { "met" } else { "NOT met" });

    assert!(c.ctr(&["task", "kill", "-s", "SIGKILL", id]).status.success());
    wait_until(Duration::from_secs(20), "stopped", || c.task_status(id) == "STOPPED");
    let _ = c.ctr(&["task", "rm", id]);
    assert!(c.ctr(&["container", "rm", id]).status.success());
}
