//! `make bench` (the cost of a pod): host memory per running pod, as PSS (a shared page counted
//! once, split among the processes that map it) of each of its processes — the shim, virtiofsd,
//! the vsock backend, QEMU — with 1 and 4 pods running (what a further pod adds shows in the
//! difference), the shim's set against kata's Go shim (about 24 MB RSS, kata's own figure: its
//! shim is not on this machine); and where a start's time goes (scan, attach, helpers, QEMU,
//! guest boot to the agent's answer, agent sync), medians over the pods, as shares of the whole
//! `ctr run`. QEMU runs under TCG here. Pods per minute: `churn.rs` (the Makefile runs it at 1,
//! 4 and 8 at a time).

use std::path::Path;
use std::time::Instant;

use tests::containerd::{start_containerd, Containerd};
use tests::{median, CniPod};

/// kata's Go shim's resident set with a running pod (kata's documentation), MB.
const KATA_GO_SHIM_RSS_MB: f64 = 24.0;

/// One pod's processes: (kind, pid).
fn processes_of(c: &Containerd, id: &str) -> Vec<(&'static str, u32)> {
    let run = c.run_dir().join(id).display().to_string();
    let mut v = vec![("shim", c.shim_pid(id).expect("the pod's shim"))];
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else { continue };
        let cmd = String::from_utf8_lossy(&std::fs::read(e.path().join("cmdline")).unwrap_or_default()).into_owned();
        if !cmd.contains(&run) {
            continue;
        }
        let kind = match cmd.split('\0').next().unwrap_or_default() {
            p if p.ends_with("virtiofsd") => "virtiofsd",
            p if p.ends_with("vhost-device-vsock") => "vsock backend",
            p if p.contains("qemu-system") => "QEMU",
            _ => continue,
        };
        v.push((kind, pid));
    }
    v
}

/// `Pss:` and `Rss:` of `/proc/<pid>/smaps_rollup`, KiB.
fn pss_rss(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let field = |key: &str| {
        text.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0u64)
    };
    (field("Pss:"), field("Rss:"))
}

const KINDS: [&str; 4] = ["shim", "virtiofsd", "vsock backend", "QEMU"];

/// Per kind, the mean over `ids` of the pod's PSS and RSS (MiB).
fn memory(c: &Containerd, ids: &[String]) -> Vec<(f64, f64)> {
    let mut sums = [(0u64, 0u64); 4];
    for id in ids {
        for (kind, pid) in processes_of(c, id) {
            let i = KINDS.iter().position(|k| *k == kind).unwrap();
            let (p, r) = pss_rss(pid);
            sums[i].0 += p;
            sums[i].1 += r;
        }
    }
    let n = ids.len() as f64 * 1024.0;
    sums.iter().map(|(p, r)| (*p as f64 / n, *r as f64 / n)).collect()
}

/// The number after `key: ` on the shim's log line.
fn field(line: &str, key: &str) -> f64 {
    let at = line.find(&format!("{key}: ")).unwrap_or_else(|| panic!("{key} missing in {line}")) + key.len() + 2;
    line[at..].chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect::<String>().parse().unwrap()
}

fn main() {
    let c = start_containerd("bench-pods", Path::new(env!("CARGO_BIN_EXE_containerd-shim-kata-v2")));
    let pods: Vec<(String, CniPod)> = (0..4).map(|i| (format!("cost{i}"), CniPod::new())).collect();
    let mut totals = Vec::new();
    let mut tables = Vec::new();
    for (i, (id, cni)) in pods.iter().enumerate() {
        let t = Instant::now();
        c.run_ok(id, &cni.pod.path());
        totals.push(t.elapsed().as_secs_f64() * 1e3);
        if i == 0 || i == pods.len() - 1 {
            let ids: Vec<String> = pods[..=i].iter().map(|(id, _)| id.clone()).collect();
            tables.push((ids.len(), memory(&c, &ids)));
        }
    }
    println!("\nhost memory per running pod (mean over the pods running; PSS splits shared pages among their users):");
    println!("{:<16} {:>14} {:>14} {:>14} {:>14}", "process", "PSS, 1 pod", "RSS, 1 pod", "PSS, 4 pods", "RSS, 4 pods");
    let (one, four) = (&tables[0].1, &tables[1].1);
    for (k, kind) in KINDS.iter().enumerate() {
        println!(
            "{kind:<16} {:>10.1} MiB {:>10.1} MiB {:>10.1} MiB {:>10.1} MiB",
            one[k].0, one[k].1, four[k].0, four[k].1
        );
    }
    let sum = |t: &[(f64, f64)]| t.iter().fold((0.0, 0.0), |(p, r), (a, b)| (p + a, r + b));
    let (s1, s4) = (sum(one), sum(four));
    println!("{:<16} {:>10.1} MiB {:>10.1} MiB {:>10.1} MiB {:>10.1} MiB", "pod", s1.0, s1.1, s4.0, s4.1);
    let shim_mb = |mib: f64| mib * 1.048_576;
    println!(
        "the shim against kata's Go shim ({KATA_GO_SHIM_RSS_MB} MB RSS): RSS {:.1} MB ({:.2}x), PSS with 4 pods {:.1} MB ({:.2}x)",
        shim_mb(four[0].1),
        shim_mb(four[0].1) / KATA_GO_SHIM_RSS_MB,
        shim_mb(four[0].0),
        shim_mb(four[0].0) / KATA_GO_SHIM_RSS_MB
    );

    // Where each start's time went, from the shim's "sandbox started" line.
    let log = std::fs::read_to_string(c.dir.0.join("containerd.log")).unwrap();
    let keys = ["scan_ms", "attach_ms", "helpers_ms", "qemu_ms", "guest_boot_ms", "agent_sync_ms"];
    let mut got: Vec<Vec<f64>> = vec![Vec::new(); keys.len()];
    for (id, _) in &pods {
        let line = log.lines().rfind(|l| l.contains("sandbox started") && l.contains(id.as_str())).expect("phases");
        for (k, key) in keys.iter().enumerate() {
            got[k].push(field(line, key));
        }
    }
    let total = median(totals.clone());
    println!(
        "\nwhere a start's time goes ({} pods started one after another, medians; share of `ctr run`):",
        pods.len()
    );
    let mut accounted = 0.0;
    for (key, v) in keys.iter().zip(got) {
        let m = median(v);
        accounted += m;
        println!("  {:<14} {m:>9.1} ms {:>6.1}%", key.trim_end_matches("_ms"), 100.0 * m / total);
    }
    println!(
        "  {:<14} {:>9.1} ms {:>6.1}%  (ctr, containerd, the shim's start, the container's start)",
        "the rest",
        total - accounted,
        100.0 * (total - accounted) / total
    );
    println!("  {:<14} {total:>9.1} ms", "ctr run");
    for (id, _) in &pods {
        c.remove_sandbox(id);
    }
}
