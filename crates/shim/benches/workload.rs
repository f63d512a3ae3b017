//! `make bench` (workload part), through containerd under TCG, on each agent (ours, kata's
//! 3.2.0): `ctr run` of a command to the container's first output, against `ctr run -d` of the
//! sandbox alone (VM and network up, the image's command started) in the same runs; the `ctr
//! task exec` round trip of `true`, against `ctr task ls` (containerd alone) as baseline; and the
//! memory virtiofsd adds to a sandbox (resident set of its processes) against QEMU's; the pod's
//! overhead on the host (shim, helpers and QEMU resident), against the VM's memory. Medians.

use std::io::Read;
use std::path::Path;
use std::time::Instant;

use tests::containerd::{kata_conf, processes_naming, qemu_pid_in, start_containerd, Containerd};
use tests::guest::Agent;
use tests::{median, CniPod};

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// `ctr run --rm ... sh -c 'echo first'`: ms to the first byte of output.
fn first_output(c: &Containerd, cni: &CniPod, id: &str) -> f64 {
    let ns = format!("network:{}", cni.pod.path());
    let t = Instant::now();
    let mut child = std::process::Command::new("ctr")
        .args(["-a", c.sock().to_str().unwrap(), "run", "--rm", "--runtime", "io.containerd.kata.v2", "--with-ns", &ns])
        .args([tests::containerd::IMAGE, id, "sh", "-c", "echo first"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut b = [0u8; 1];
    child.stdout.as_mut().unwrap().read_exact(&mut b).expect("the container's output");
    let got = ms(t);
    assert!(child.wait().unwrap().success());
    got
}

/// Resident set of the processes whose command line starts with `program` and names `dir`, KiB.
fn rss_of(dir: &Path, program: &str) -> u64 {
    let needle = dir.display().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            let c = String::from_utf8_lossy(&std::fs::read(e.path().join("cmdline")).unwrap_or_default()).into_owned();
            c.starts_with(program) && c.contains(&needle)
        })
        .filter_map(|e| {
            let s = std::fs::read_to_string(e.path().join("status")).ok()?;
            s.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .sum()
}

fn vm_rss(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()).unwrap_or(0)
}

fn bench(agent: Agent, runs: usize) {
    let c = start_containerd(&format!("bw-{agent:?}"), Path::new(env!("CARGO_BIN_EXE_containerd-shim-kata-v2")));
    let conf = kata_conf(&c.run_dir()).replace(Agent::under_test().initrd(), agent.initrd());
    std::fs::write(c.dir.0.join("configuration.toml"), conf).unwrap();
    let cni = CniPod::new();
    let (mut first, mut detached) = (Vec::new(), Vec::new());
    for r in 0..runs {
        first.push(first_output(&c, &cni, &format!("bw{r}")));
        let t = Instant::now();
        c.run_ok(&format!("bd{r}"), &cni.pod.path());
        detached.push(ms(t));
        c.remove_sandbox(&format!("bd{r}"));
    }
    c.run_ok("bx", &cni.pod.path());
    let (mut exec, mut ls) = (Vec::new(), Vec::new());
    for r in 0..runs * 2 {
        let t = Instant::now();
        let out = c.ctr(&["task", "exec", "--exec-id", &format!("x{r}"), "bx", "true"]);
        exec.push(ms(t));
        assert!(out.status.success(), "{out:?}");
        let t = Instant::now();
        assert!(c.ctr(&["task", "ls"]).status.success());
        ls.push(ms(t));
    }
    let run = c.run_dir().join("bx");
    let fsd = rss_of(&run, "/usr/local/bin/virtiofsd");
    let qemu = qemu_pid_in(&run).map(vm_rss).unwrap_or(0);
    assert!(processes_naming(&run, "/usr/local/bin/virtiofsd") >= 1);
    // The pod's overhead on the host (what the RuntimeClass's `overhead.podFixed` covers): the
    // shim, its helpers (virtiofsd, the vsock backend) and QEMU, resident.
    let shim = c.shim_pid("bx").map(vm_rss).unwrap_or(0);
    let helpers = rss_of(&run, "/usr/local/bin/virtiofsd") + rss_of(&run, "vhost-device-vsock");
    let overhead = shim + helpers + qemu;
    c.remove_sandbox("bx");
    let (f, d, e, l) = (median(first), median(detached), median(exec), median(ls));
    println!("workload bench, {agent:?} agent ({runs} runs, medians, TCG):");
    println!("  ctr run -> first output      {f:8.0} ms ({:.2}x ctr run -d of the sandbox alone: {d:.0} ms)", f / d);
    println!("  ctr task exec round trip     {e:8.0} ms ({:.2}x ctr task ls: {l:.0} ms)", e / l);
    println!(
        "  virtiofsd per sandbox        {fsd:8} KiB RSS ({:.3}x QEMU's {qemu} KiB)",
        fsd as f64 / qemu.max(1) as f64
    );
    println!(
        "  pod overhead on the host     {:8.1} MiB RSS (shim {:.1}, helpers {:.1}, QEMU {:.1}; {:.2}x the VM's {} MiB)",
        overhead as f64 / 1024.0,
        shim as f64 / 1024.0,
        helpers as f64 / 1024.0,
        qemu as f64 / 1024.0,
        overhead as f64 / 1024.0 / 512.0,
        512
    );
}

fn main() {
    let runs = std::env::var("BENCH_RUNS").ok().and_then(|r| r.parse().ok()).unwrap_or(5);
    for agent in [Agent::Ours, Agent::Kata] {
        match agent.built() {
            true => bench(agent, runs),
            false => println!("kata's agent: not measured (build its image with KATA_AGENT=<path> make guest-image)"),
        }
    }
}
