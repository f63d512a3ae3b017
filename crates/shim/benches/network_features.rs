//! `make bench` (issue 23's part): through containerd and a TCG VM,
//! - the rate limiter's cost at start (the shim's attach phase and the whole `ctr run`, with and
//!   without node limits, interleaved runs, medians and their ratio) and its accuracy (TCP at
//!   full speed into the VM against an 8 Mbit/s limit, counted on the TAP);
//! - port-forward against a direct connection to the pod's address from the peer: round trips of
//!   one byte on one connection (median), and the throughput of 16 MiB sent to a sink in the VM.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use tests::containerd::{kata_conf, start_containerd, Containerd};
use tests::{median, CniPod, TestNs, POD_IP};

const RUNS: usize = 3;
const LIMIT_BPS: f64 = 8_000_000.0;

/// The number after `key` on the shim's "sandbox started" line of `id`.
fn phase(c: &Containerd, id: &str, key: &str) -> f64 {
    let log = std::fs::read_to_string(c.dir.0.join("containerd.log")).unwrap();
    let line = log.lines().rfind(|l| l.contains("sandbox started") && l.contains(id)).expect("phase line");
    let rest = &line[line.find(key).expect(key) + key.len()..];
    let num: String =
        rest.chars().skip_while(|c| !c.is_ascii_digit()).take_while(|c| c.is_ascii_digit() || *c == '.').collect();
    num.parse().unwrap()
}

/// Run `f` on a thread inside the namespace at `path`.
fn in_ns<T: Send>(path: &str, f: impl FnOnce() -> T + Send) -> T {
    let ns = std::fs::File::open(path).unwrap();
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            f()
        })
        .join()
        .unwrap()
    })
}

fn connect(addr: &str) -> TcpStream {
    let start = Instant::now();
    loop {
        match TcpStream::connect(addr) {
            Ok(s) => {
                s.set_nodelay(true).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                return s;
            }
            Err(e) if start.elapsed() < Duration::from_secs(20) => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("{addr}: {e}"),
        }
    }
}

/// Median round trip of one byte over one connection to the guest's echo at `addr`, in µs.
fn round_trips(addr: &str) -> f64 {
    let mut s = connect(addr);
    let mut b = [0u8; 1];
    let mut got = Vec::new();
    for i in 0..220 {
        let t = Instant::now();
        s.write_all(b"x").unwrap();
        s.read_exact(&mut b).unwrap();
        if i >= 20 {
            got.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    median(got)
}

/// Mbit/s of 16 MiB sent to the guest's sink at `addr` (until the sink closes).
fn throughput(addr: &str) -> f64 {
    let mut s = connect(addr);
    let chunk = vec![0u8; 64 * 1024];
    let t = Instant::now();
    for _ in 0..256 {
        s.write_all(&chunk).unwrap();
    }
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    (16.0 * 8.0 * 1024.0 * 1024.0 / 1e6) / t.elapsed().as_secs_f64()
}

fn bytes(ns: &TestNs, dev: &str, which: &str) -> u64 {
    ns.exec(&["cat", &format!("/sys/class/net/{dev}/statistics/{which}")]).trim().parse().unwrap()
}

fn main() {
    tests::require_root_and_tools(&["containerd", "ctr", "qemu-system-x86_64", "nft", "python3"]);
    let c = start_containerd("benchnet", Path::new(env!("CARGO_BIN_EXE_containerd-shim-kata-v2")));
    let plain = kata_conf(&c.run_dir());
    let limited = plain.replacen(
        "[hypervisor.qemu]\n",
        "[hypervisor.qemu]\nrx_rate_limiter_max_rate = 8000000\ntx_rate_limiter_max_rate = 8000000\n",
        1,
    );
    let cni = CniPod::new();

    // The limiter's cost at start: interleaved runs, medians.
    let (mut attach, mut total) = ([Vec::new(), Vec::new()], [Vec::new(), Vec::new()]);
    for r in 0..RUNS {
        for (i, conf) in [&plain, &limited].into_iter().enumerate() {
            std::fs::write(c.dir.0.join("configuration.toml"), conf).unwrap();
            let id = format!("brl{i}-{r}");
            let t = Instant::now();
            c.run_ok(&id, &cni.pod.path());
            total[i].push(t.elapsed().as_secs_f64() * 1e3);
            attach[i].push(phase(&c, &id, "attach_ms"));
            c.remove_sandbox(&id);
        }
    }
    let (a0, a1) = (median(attach[0].clone()), median(attach[1].clone()));
    let (t0, t1) = (median(total[0].clone()), median(total[1].clone()));
    println!("rate limiter at start ({RUNS} runs each, medians): attach {a0:.2} ms without, {a1:.2} ms with (x{:.2}); ctr run {t0:.0} ms without, {t1:.0} ms with (x{:.3})", a1 / a0, t1 / t0);

    // Accuracy, and port-forward against the direct path, on one limited and one plain sandbox.
    std::fs::write(c.dir.0.join("configuration.toml"), &limited).unwrap();
    c.run_ok("brlacc", &cni.pod.path());
    let run = c.run_dir().join("brlacc");
    tests::guest::sh(&run, "setsid nc -l -p 5001 >/dev/null 2>&1 </dev/null & true");
    let mut sender = std::process::Command::new("ip")
        .args(["netns", "exec", &cni.peer.name, "/usr/bin/python3", "-c"])
        .arg(format!("import socket,time\nfor i in range(50):\n  try:\n    s=socket.create_connection(('{POD_IP}',5001)); break\n  except OSError: time.sleep(0.2)\nb=b'x'*65536\nwhile True: s.sendall(b)"))
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let (b0, t) = (bytes(&cni.pod, "tap0_kata", "tx_bytes"), Instant::now());
    std::thread::sleep(Duration::from_secs(5));
    let got = (bytes(&cni.pod, "tap0_kata", "tx_bytes") - b0) as f64 * 8.0 / t.elapsed().as_secs_f64();
    let _ = sender.kill();
    let _ = sender.wait();
    println!(
        "rate limiter accuracy: {:.2} Mbit/s into the VM against {:.2} (x{:.3} of the limit)",
        got / 1e6,
        LIMIT_BPS / 1e6,
        got / LIMIT_BPS
    );
    c.remove_sandbox("brlacc");

    std::fs::write(c.dir.0.join("configuration.toml"), &plain).unwrap();
    c.run_ok("bpf", &cni.pod.path());
    let run = c.run_dir().join("bpf");
    tests::guest::sh(&run, "setsid nc -ll -p 9000 -e cat >/dev/null 2>&1 </dev/null & true");
    let sink = "printf '#!/bin/sh\\ncat >/dev/null\\n' > /tmp/sink; chmod +x /tmp/sink; \
                setsid nc -ll -p 9001 -e /tmp/sink >/dev/null 2>&1 </dev/null & true";
    tests::guest::sh(&run, sink);
    let pod = cni.pod.path();
    let peer = cni.peer.path();
    let (mut rt_direct, mut rt_fwd, mut tp_direct, mut tp_fwd) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..RUNS {
        rt_direct.push(in_ns(&peer, || round_trips(&format!("{POD_IP}:9000"))));
        rt_fwd.push(in_ns(&pod, || round_trips("127.0.0.1:9000")));
        tp_direct.push(in_ns(&peer, || throughput(&format!("{POD_IP}:9001"))));
        tp_fwd.push(in_ns(&pod, || throughput("127.0.0.1:9001")));
    }
    let (rd, rf) = (median(rt_direct), median(rt_fwd));
    let (td, tf) = (median(tp_direct), median(tp_fwd));
    println!("port-forward round trip (1 byte, median of 200, median of {RUNS} runs): {rf:.0} µs against {rd:.0} µs direct from the peer (x{:.2})", rf / rd);
    println!("port-forward throughput (16 MiB into the VM): {tf:.1} Mbit/s against {td:.1} direct (x{:.2})", tf / td);
    c.remove_sandbox("bpf");
}
