//! `make bench` (the data path at QEMU's limit): TCP throughput both ways (iperf3, 2 streams)
//! and TCP request/response latency (1 byte each way on one connection) between the peer and
//! the VM, for each interworking model (tcfilter, macvtap) with 1 and 2 queue pairs (the VM's
//! vCPUs, which the queues follow), against two baselines run in the same bench:
//!
//! - the host kernel's own path: the peer to the pod's namespace over the veth, no VM (what a
//!   runc pod gets);
//! - QEMU started here by hand, on the same kernel, initrd and guest command line as the shim's,
//!   its NIC on a TAP made by hand in the client's own namespace (no veth, no redirect), with the
//!   best options QEMU offers here: vnet_hdr with its offloads, `mq=on` and `vectors=2N+2` on a
//!   multi-queue TAP, 1024-entry receive ring. vhost-net is not among them: this kernel has no
//!   /dev/vhost-net (the shim passes vhost=on where it has).
//!
//! The ratios are the figures (TCG bounds the absolute ones): the shim's against the hand-tuned
//! QEMU with the same queues. The iperf3 servers run only in the guest, so an answer is the VM's.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tests::containerd::{kata_conf, qemu_pid_in, start_containerd, wait_until, Containerd};
use tests::{median, CniPod, TestNs};

const SECONDS: &str = "4";
const RR_ROUNDS: usize = 400;

/// One run's figures: Mbit/s peer -> VM, Mbit/s VM -> peer, request/response µs.
type Figures = (f64, f64, f64);

/// iperf3 from namespace `ns` (by name) to `addr`: Mbit/s received (`reverse`: the server sends).
fn iperf(ns: &str, addr: &str, reverse: bool) -> f64 {
    let start = Instant::now();
    loop {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns, "iperf3", "-c", addr, "-t", SECONDS, "-P", "2", "-J"]);
        if reverse {
            cmd.arg("-R");
        }
        let out = cmd.output().unwrap();
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if let Some(bps) = json["end"]["sum_received"]["bits_per_second"].as_f64() {
            return bps / 1e6;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "iperf3 to {addr}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// 1-byte round trips to the echo server at `addr` from the namespace at `netns`: median µs.
fn request_response(netns: &str, addr: &str) -> f64 {
    let file = std::fs::File::open(netns).unwrap();
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let start = Instant::now();
            let mut c = loop {
                match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
                    Ok(c) => break c,
                    Err(e) => assert!(start.elapsed() < Duration::from_secs(30), "dial {addr}: {e}"),
                }
                std::thread::sleep(Duration::from_millis(300));
            };
            c.set_nodelay(true).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut b = [0u8; 1];
            let mut times = Vec::with_capacity(RR_ROUNDS);
            for i in 0..RR_ROUNDS + 20 {
                let t = Instant::now();
                c.write_all(b"x").unwrap();
                c.read_exact(&mut b).expect("the echo");
                if i >= 20 {
                    times.push(t.elapsed().as_secs_f64() * 1e6);
                }
            }
            median(times)
        })
        .join()
        .unwrap()
    })
}

/// Both throughputs and the latency, from namespace `ns` to the servers at `ip`.
fn figures(ns: &TestNs, ip: &str) -> Figures {
    (iperf(&ns.name, ip, false), iperf(&ns.name, ip, true), request_response(&ns.path(), &format!("{ip}:7777")))
}

/// The iperf3 server and the echo server, in the guest.
fn guest_servers(run_dir: &Path) {
    tests::guest::sh(
        run_dir,
        "iperf3 -s -D >/dev/null 2>&1; setsid nc -ll -p 7777 -e cat >/dev/null 2>&1 </dev/null & true",
    );
}

struct Kill(Vec<Child>);

impl Drop for Kill {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The host kernel's path: the servers in the pod's namespace itself, the client in the peer's.
fn veth() -> Figures {
    let cni = CniPod::new();
    let serve = |args: &[&str]| {
        Command::new("ip").args(["netns", "exec", &cni.pod.name]).args(args).stdout(Stdio::null()).spawn().unwrap()
    };
    let _servers = Kill(vec![serve(&["iperf3", "-s"]), serve(&["busybox", "nc", "-ll", "-p", "7777", "-e", "cat"])]);
    figures(&cni.peer, tests::POD_IP)
}

/// A process's command line, by argument.
fn args_of(pid: u32) -> Vec<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    raw.split(|b| *b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect()
}

/// What the hand-run QEMU borrows from the shim's: QEMU's and the vsock backend's programs, and
/// the guest's kernel, initrd, command line, machine and CPU.
#[derive(Debug, Clone)]
struct Guest {
    qemu: String,
    backend: String,
    borrowed: Vec<String>,
}

fn after(args: &[String], flag: &str) -> String {
    let i = args.iter().position(|a| a == flag).unwrap_or_else(|| panic!("{flag} missing in {args:?}"));
    args[i + 1].clone()
}

/// The shim's sandbox with `model` and `queues` (vCPUs): its figures, and the NIC arguments of
/// its QEMU (and what the hand-run QEMU borrows).
fn shim(c: &Containerd, model: &str, queues: u32, id: &str) -> (Figures, String, Guest) {
    let conf = kata_conf(&c.run_dir())
        .replacen("[hypervisor.qemu]\n", &format!("[hypervisor.qemu]\ndefault_vcpus = {queues}\n"), 1)
        .replacen("[runtime]\n", &format!("[runtime]\ninternetworking_model = \"{model}\"\n"), 1);
    std::fs::write(c.dir.0.join("configuration.toml"), conf).unwrap();
    let cni = CniPod::new();
    c.run_ok(id, &cni.pod.path());
    let run = c.run_dir().join(id);
    let qemu = qemu_pid_in(&run).expect("the sandbox's QEMU");
    let args = args_of(qemu);
    let nic: Vec<&String> = args.iter().filter(|a| a.contains("nd-network-0")).collect();
    let backend = tests::run(&["pgrep", "-f", &format!("vhost-device-vsock.*{}", run.display())]);
    let backend = args_of(backend.split_whitespace().next().expect("the vsock backend").parse().unwrap());
    let mut borrowed = Vec::new();
    for flag in ["-kernel", "-initrd", "-append", "-machine", "-cpu"] {
        borrowed.extend([flag.to_owned(), after(&args, flag)]);
    }
    let guest = Guest { qemu: args[0].clone(), backend: backend[0].clone(), borrowed };
    guest_servers(&run);
    let got = figures(&cni.peer, tests::POD_IP);
    c.remove_sandbox(id);
    (got, nic.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" "), guest)
}

/// QEMU run by hand on a TAP made by hand in the client's namespace, `queues` queue pairs and
/// vCPUs: its figures and NIC arguments.
fn hand_tuned(guest: &Guest, queues: u32) -> (Figures, String) {
    let ns = TestNs::new("hand");
    let mut tap = vec!["tuntap", "add", "dev", "tap0", "mode", "tap", "vnet_hdr"];
    if queues > 1 {
        tap.push("multi_queue");
    }
    ns.ip(&tap);
    ns.ip(&["addr", "add", "10.89.0.1/24", "dev", "tap0"]);
    ns.ip(&["link", "set", "tap0", "mtu", "1450", "up"]);
    ns.ip(&["link", "set", "lo", "up"]);
    let dir = tests::vm::Scratch::new("hand");
    let d = |f: &str| -> PathBuf { dir.0.join(f) };
    let backend = Command::new(&guest.backend)
        .arg("--vm")
        .arg(format!("guest-cid=3,socket={},uds-path={}", d("vhost.sock").display(), d("vsock.sock").display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut kill = Kill(vec![backend]);
    wait_until(Duration::from_secs(10), "the vsock backend's socket", || d("vhost.sock").exists());
    let netdev = format!("tap,id=n0,ifname=tap0,script=no,downscript=no,vhost=off,vnet_hdr=on,queues={queues}");
    let mut device = "virtio-net-pci,netdev=n0,mac=02:00:0a:59:00:02,host_mtu=1450,rx_queue_size=1024".to_owned();
    if queues > 1 {
        device.push_str(&format!(",mq=on,vectors={}", 2 * queues + 2));
    }
    let qemu = Command::new("ip")
        .args(["netns", "exec", &ns.name, &guest.qemu])
        .args(&guest.borrowed)
        .args(["-smp", &queues.to_string(), "-m", "512M", "-nodefaults", "-no-user-config", "-nographic"])
        .args(["-object", "memory-backend-memfd,id=mem,size=512M,share=on", "-numa", "node,memdev=mem"])
        .args(["-chardev", &format!("socket,id=vs,path={}", d("vhost.sock").display())])
        .args(["-device", "vhost-user-vsock-pci,chardev=vs"])
        .args(["-netdev", &netdev, "-device", &device])
        .args(["-serial", &format!("file:{}", d("console.log").display())])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    kill.0.push(qemu);
    tests::guest::sh(&dir.0, "ip link set eth0 mtu 1450 up; ip addr add 10.89.0.2/24 dev eth0");
    guest_servers(&dir.0);
    let got = figures(&ns, "10.89.0.2");
    drop(kill);
    (got, format!("-netdev {netdev} -device {device}"))
}

fn main() {
    let runs: usize = std::env::var("BENCH_RUNS").ok().and_then(|r| r.parse().ok()).unwrap_or(2);
    let c = start_containerd("bench-dp", Path::new(env!("CARGO_BIN_EXE_containerd-shim-kata-v2")));
    let cases: [(&str, u32); 4] = [("tcfilter", 1), ("tcfilter", 2), ("macvtap", 1), ("macvtap", 2)];
    let mut shim_runs: Vec<Vec<Figures>> = vec![Vec::new(); cases.len()];
    let mut hand_runs: Vec<Vec<Figures>> = vec![Vec::new(); 2];
    let mut veth_runs = Vec::new();
    let (mut shim_nics, mut hand_nics) = (vec![String::new(); cases.len()], vec![String::new(); 2]);
    let mut guest = None;
    // Interleaved, so that a slow moment of the host does not land on one configuration.
    for r in 0..runs {
        veth_runs.push(veth());
        for (i, (model, queues)) in cases.iter().enumerate() {
            let (f, nic, g) = shim(&c, model, *queues, &format!("dp{i}-{r}"));
            shim_runs[i].push(f);
            shim_nics[i] = nic;
            guest = Some(g);
        }
        for q in [1u32, 2] {
            let (f, nic) = hand_tuned(guest.as_ref().unwrap(), q);
            hand_runs[q as usize - 1].push(f);
            hand_nics[q as usize - 1] = nic;
        }
    }
    let med = |v: &[Figures]| {
        (
            median(v.iter().map(|f| f.0).collect()),
            median(v.iter().map(|f| f.1).collect()),
            median(v.iter().map(|f| f.2).collect()),
        )
    };
    let veth = med(&veth_runs);
    println!("\nthe data path, peer <-> VM (TCG; iperf3 -P 2 for {SECONDS} s each way, {RR_ROUNDS} 1-byte round trips; medians of {runs} runs):");
    println!(
        "{:<26} {:>12} {:>12} {:>10}   {:>8} {:>8} {:>8}",
        "configuration", "to VM Mb/s", "from VM Mb/s", "RR µs", "to", "from", "RR"
    );
    let row = |name: &str, f: Figures, base: Figures, of: &str| {
        println!(
            "{name:<26} {:>12.0} {:>12.0} {:>10.0}   {:>7.2}x {:>7.2}x {:>7.2}x  (ratios to {of})",
            f.0,
            f.1,
            f.2,
            f.0 / base.0,
            f.1 / base.1,
            f.2 / base.2
        );
    };
    row("host veth (no VM)", veth, veth, "itself");
    let hand = [med(&hand_runs[0]), med(&hand_runs[1])];
    for (q, h) in hand.iter().enumerate() {
        row(&format!("hand-tuned QEMU, {} queue(s)", q + 1), *h, veth, "the host veth");
    }
    for (i, (model, queues)) in cases.iter().enumerate() {
        let f = med(&shim_runs[i]);
        row(&format!("shim {model}, {queues} queue(s)"), f, hand[*queues as usize - 1], "hand-tuned QEMU, same queues");
    }
    println!("\nthe NICs as QEMU was given them:");
    for (q, n) in hand_nics.iter().enumerate() {
        println!("  hand-tuned, {} queue(s): {n}", q + 1);
    }
    for (i, (model, queues)) in cases.iter().enumerate() {
        println!("  shim {model}, {queues} queue(s): {}", shim_nics[i]);
    }
}
