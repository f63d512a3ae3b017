//! Rate limits through containerd and a real VM: the node's `[hypervisor.qemu]`
//! `rx_rate_limiter_max_rate` limits what the VM receives, a pod's
//! `kubernetes.io/egress-bandwidth` (below the node's `tx_rate_limiter_max_rate`) what it sends;
//! TCP at full speed each way holds to within 10 % of the limit, measured on the devices the
//! frames leave by; teardown leaves the namespace as CNI left it.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tests::containerd::{kata_conf, Containerd};
use tests::{CniPod, TestNs, PEER_IP, POD_IP};

const RX_BPS: f64 = 8_000_000.0;
/// The node allows 16 Mbit/s out; the pod asks 6.
const TX_NODE: &str = "16000000";
const TX_POD_BPS: f64 = 6_000_000.0;

/// A device's byte counter in its namespace (`rx_bytes` or `tx_bytes`).
fn bytes(ns: &TestNs, dev: &str, which: &str) -> u64 {
    ns.exec(&["cat", &format!("/sys/class/net/{dev}/statistics/{which}")]).trim().parse().unwrap()
}

/// The rate in bits/s of `dev`'s counter over 5 s, once the flow has run 2 s (slow start over).
fn measured(ns: &TestNs, dev: &str, which: &str) -> f64 {
    std::thread::sleep(Duration::from_secs(2));
    let (b0, t0) = (bytes(ns, dev, which), Instant::now());
    std::thread::sleep(Duration::from_secs(5));
    let (b1, t1) = (bytes(ns, dev, which), Instant::now());
    (b1 - b0) as f64 * 8.0 / (t1 - t0).as_secs_f64()
}

fn within_10_percent(what: &str, got: f64, limit: f64) {
    let ratio = got / limit;
    println!("{what}: {:.2} Mbit/s against a limit of {:.2} ({ratio:.3})", got / 1e6, limit / 1e6);
    assert!((0.9..=1.1).contains(&ratio), "{what}: {:.2} Mbit/s, the limit is {:.2}", got / 1e6, limit / 1e6);
}

/// A process in the peer, killed when dropped (also when the test fails).
struct Peer(std::process::Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn python_in(ns: &TestNs, code: &str) -> Peer {
    let child = Command::new("ip")
        .args(["netns", "exec", &ns.name, "python3", "-c", code])
        .stdout(Stdio::null())
        .spawn()
        .expect("python3 in the peer");
    Peer(child)
}

#[test]
fn the_vm_receives_and_sends_at_the_limits_of_the_node_and_the_pod() {
    tests::require_root_and_tools(&["python3", "tc"]);
    let c = tests::containerd::start_containerd("rate", Path::new(env!("CARGO_BIN_EXE_containerd-shim-kata-v2")));
    let conf = kata_conf(&c.run_dir()).replacen(
        "[hypervisor.qemu]\n",
        &format!("[hypervisor.qemu]\nrx_rate_limiter_max_rate = {RX_BPS}\ntx_rate_limiter_max_rate = {TX_NODE}\n")
            .replace(".0\n", "\n"),
        1,
    );
    std::fs::write(c.dir.0.join("configuration.toml"), conf).unwrap();
    let cni = CniPod::new();
    let before = cni.pod.snapshot();
    let out = c.run("rl", &cni.pod.path(), &["--annotation", "kubernetes.io/egress-bandwidth=6M"]);
    assert!(out.status.success(), "ctr run: {}", String::from_utf8_lossy(&out.stderr));
    let run_dir = c.run_dir().join("rl");
    let classes = cni.pod.tc(&["class", "show", "dev", "tap0_kata"]) + &cni.pod.tc(&["class", "show", "dev", "eth0"]);
    assert!(classes.contains("rate 8Mbit") && classes.contains("rate 6Mbit"), "{classes}");

    // What the VM receives: the peer sends as fast as TCP goes to a sink in the guest; the
    // frames reach the VM by the TAP's transmit side.
    tests::guest::sh(&run_dir, "setsid nc -l -p 5001 >/dev/null 2>&1 </dev/null & true");
    let sender = python_in(
        &cni.peer,
        &format!(
            "import socket,time\nfor i in range(50):\n  try:\n    s=socket.create_connection(('{POD_IP}',5001)); break\n  except OSError: time.sleep(0.2)\nb=b'x'*65536\nwhile True: s.sendall(b)"
        ),
    );
    let rx = measured(&cni.pod, "tap0_kata", "tx_bytes");
    drop(sender);
    within_10_percent("the VM receives", rx, RX_BPS);

    // What the VM sends: the guest sends zeros to a sink in the peer, counted where they arrive.
    let sink = python_in(
        &cni.peer,
        &format!("import socket\nl=socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); l.bind(('{PEER_IP}',5002)); l.listen(1)\nc,_=l.accept()\nwhile c.recv(1<<16): pass"),
    );
    std::thread::sleep(Duration::from_millis(500));
    tests::guest::sh(
        &run_dir,
        &format!(
            "setsid sh -c 'dd if=/dev/zero bs=64k count=100000 | nc {PEER_IP} 5002' >/dev/null 2>&1 </dev/null & true"
        ),
    );
    let tx = measured(&cni.peer, "veth0", "rx_bytes");
    drop(sink);
    within_10_percent("the VM sends", tx, TX_POD_BPS);

    c.remove_sandbox("rl");
    assert_eq!(cni.pod.snapshot(), before, "the HTBs went with the NIC; eth0's root qdisc is the kernel's again");
    drop::<Containerd>(c);
}
