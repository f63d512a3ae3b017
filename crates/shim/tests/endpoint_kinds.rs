//! Every kind of pod link carries traffic into a real VM through containerd (`ctr run`): a
//! macvlan, a CNI-made macvtap and a CNI-made TAP beside the veth, in one sandbox under
//! `tcfilter`; the `macvtap` model on a multi-queue NIC of a 2-vCPU VM, traffic seen on more
//! than one queue; the `none` model with a CNI TAP. Each time the VM answers (the pod
//! namespace's own `InEchos` stays) and teardown leaves the namespace as it was.

use std::net::Ipv4Addr;
use std::path::Path;

use tests::containerd::{kata_conf, qemu_running_in, Containerd};
use tests::{CniPod, TestNs, PEER_IP, POD_IP};

fn containerd(tag: &str, extra: &str) -> Containerd {
    let c = tests::containerd::start_containerd(tag, Path::new(env!("CARGO_BIN_EXE_containerd-shim-kata-v2")));
    let conf = kata_conf(&c.run_dir()).replacen("[runtime]\n", &format!("[runtime]\n{extra}"), 1);
    std::fs::write(c.dir.0.join("configuration.toml"), conf).unwrap();
    c
}

/// A link of kind `kind` (`macvlan` or `macvtap`, bridge mode) in the pod named `name` with
/// `addr`/24, on a veth of the peer whose other end holds `gw`/24: frames the pod's link sends
/// reach the peer's stack.
fn lower_link(cni: &CniPod, kind: &str, name: &str, mac: &str, addr: &str, gw: &str) {
    let (wire, lower) = (format!("{name}w"), format!("{name}l"));
    cni.peer.ip(&["link", "add", &wire, "type", "veth", "peer", "name", &lower]);
    cni.peer.ip(&["addr", "add", &format!("{gw}/24"), "dev", &wire]);
    cni.peer.ip(&["link", "set", &wire, "up"]);
    cni.peer.ip(&["link", "set", &lower, "up"]);
    let tmp = format!("{name}t");
    cni.peer.ip(&["link", "add", &tmp, "link", &lower, "type", kind, "mode", "bridge"]);
    cni.peer.ip(&["link", "set", &tmp, "netns", &cni.pod.name]);
    cni.pod.ip(&["link", "set", &tmp, "name", name, "address", mac]);
    cni.pod.ip(&["addr", "add", &format!("{addr}/24"), "dev", name]);
    cni.pod.ip(&["link", "set", name, "up"]);
}

fn ping_from(ns: &TestNs, ip: &str) {
    tests::run(&["ip", "netns", "exec", &ns.name, "ping", "-c", "3", "-i", "0.3", "-W", "5", ip]);
}

fn settle(ns: &TestNs) {
    tests::containerd::wait_until(std::time::Duration::from_secs(10), "IPv6 DAD", || {
        ns.ip(&["-6", "addr", "show", "tentative"]).trim().is_empty()
    });
}

#[test]
fn a_macvlan_a_cni_macvtap_and_a_cni_tap_reach_the_vm_under_tcfilter() {
    let c = containerd("kinds", "");
    let cni = CniPod::new();
    lower_link(&cni, "macvlan", "eth1", "02:00:0a:59:00:05", "10.89.0.5", "10.89.0.1");
    lower_link(&cni, "macvtap", "eth2", "02:00:0a:5a:00:05", "10.90.0.5", "10.90.0.1");
    // A TAP a CNI plugin made (persistent, nobody attached yet); its user is the test.
    cni.pod.ip(&["tuntap", "add", "dev", "eth3", "mode", "tap"]);
    cni.pod.ip(&["link", "set", "eth3", "address", "02:00:0a:5b:00:05"]);
    cni.pod.ip(&["addr", "add", "10.91.0.5/24", "dev", "eth3"]);
    cni.pod.ip(&["link", "set", "eth3", "up"]);
    // Its user attached: the carrier comes up, and with it the link-local address.
    let mut wire = tests::frames::open_tap_in(&cni.pod.path(), "eth3");
    tests::containerd::wait_until(std::time::Duration::from_secs(10), "eth3's link-local address", || {
        cni.pod.ip(&["-6", "addr", "show", "dev", "eth3"]).contains("fe80:")
    });
    settle(&cni.pod);
    let before = cni.pod.snapshot();

    c.run_ok("kinds", &cni.pod.path());
    let echos = cni.pod.icmp_echos_received();
    ping_from(&cni.peer, POD_IP);
    ping_from(&cni.peer, "10.89.0.5");
    ping_from(&cni.peer, "10.90.0.5");
    let me = [0x02, 0, 0x0a, 0x5b, 0, 0x01];
    let (mac, replies) =
        tests::frames::ping_over(&mut wire, me, Ipv4Addr::new(10, 91, 0, 1), Ipv4Addr::new(10, 91, 0, 5), 3);
    assert_eq!((mac, replies), ([0x02, 0, 0x0a, 0x5b, 0, 0x05], 3), "the VM's NIC on the CNI TAP answers");
    assert_eq!(cni.pod.icmp_echos_received(), echos, "the VM answered every ping, the namespace none");
    let guest = tests::guest::sh(&c.run_dir().join("kinds"), "ip -o -4 addr");
    for want in ["inet 10.88.0.5/24", "inet 10.89.0.5/24", "inet 10.90.0.5/24", "inet 10.91.0.5/24"] {
        assert!(guest.contains(want), "{want} in the guest: {guest}");
    }

    c.remove_sandbox("kinds");
    assert!(!qemu_running_in(&c.run_dir()), "QEMU left behind");
    assert_eq!(cni.pod.snapshot(), before, "the namespace is as CNI left it");
    drop(wire);
}

/// The interrupts of the guest NIC's receive queues (`virtioN-input.Q` in /proc/interrupts),
/// summed over CPUs, queue by queue.
fn rx_interrupts(run_dir: &Path) -> Vec<u64> {
    let text = tests::guest::sh(run_dir, "cat /proc/interrupts");
    let mut by_queue: Vec<(String, u64)> = text
        .lines()
        .filter_map(|l| {
            let name = l.split_whitespace().last()?;
            name.contains("-input.").then(|| {
                let n = l.split_whitespace().skip(1).map_while(|w| w.parse::<u64>().ok()).sum();
                (name.to_owned(), n)
            })
        })
        .collect();
    by_queue.sort();
    by_queue.into_iter().map(|(_, n)| n).collect()
}

#[test]
fn the_macvtap_model_on_a_two_queue_nic_of_a_two_vcpu_vm_uses_both_queues() {
    let c = containerd("mq", "internetworking_model = \"macvtap\"\n");
    let conf = std::fs::read_to_string(c.dir.0.join("configuration.toml")).unwrap();
    let conf = conf.replacen("[hypervisor.qemu]\n", "[hypervisor.qemu]\ndefault_vcpus = 2\n", 1);
    std::fs::write(c.dir.0.join("configuration.toml"), conf).unwrap();
    let cni = CniPod::new();
    let before = cni.pod.snapshot();
    c.run_ok("mq", &cni.pod.path());
    let run_dir = c.run_dir().join("mq");
    let links = cni.pod.ip(&["-d", "link", "show", "tap0_kata"]);
    assert!(links.contains("macvtap"), "the model made a macvtap: {links}");
    let guest = tests::guest::sh(&run_dir, "nproc; ls /sys/class/net/eth0/queues");
    assert!(guest.contains("rx-0") && guest.contains("rx-1"), "two queues in the guest: {guest}");

    // Many flows from the peer: the macvtap spreads them over its queues by flow hash.
    let echos = cni.pod.icmp_echos_received();
    let start = rx_interrupts(&run_dir);
    assert_eq!(start.len(), 2, "two receive queues: {start:?}");
    tests::guest::sh(&run_dir, "setsid nc -ll -p 7000 -e true >/dev/null 2>&1 </dev/null & true");
    let flows = "import socket,time\nfor p in range(64):\n  for i in range(30):\n    try:\n      s=socket.create_connection(('10.88.0.5',7000),timeout=5); s.sendall(b'x'*20000); s.close(); break\n    except OSError: time.sleep(0.2)\n";
    tests::run(&["ip", "netns", "exec", &cni.peer.name, "/usr/bin/python3", "-c", flows]);
    ping_from(&cni.peer, POD_IP);
    let end = rx_interrupts(&run_dir);
    let grew: Vec<u64> = end.iter().zip(&start).map(|(e, s)| e - s).collect();
    println!("receive interrupts by queue over 64 flows: {grew:?}");
    assert!(grew.iter().all(|n| *n > 0), "traffic on every queue: {grew:?}");
    assert_eq!(cni.pod.icmp_echos_received(), echos, "the VM answered, not the namespace");

    c.remove_sandbox("mq");
    assert!(!qemu_running_in(&c.run_dir()), "QEMU left behind");
    assert_eq!(cni.pod.snapshot(), before, "the link has its MAC and addresses back");
    let _ = PEER_IP;
}

#[test]
fn under_the_none_model_a_cni_tap_is_the_vms_nic_as_it_is() {
    let c = containerd("none", "internetworking_model = \"none\"\n");
    let pod = TestNs::new("podnone");
    pod.ip(&["link", "set", "lo", "up"]);
    // A TAP a CNI plugin made for the VM: the runtime gives it to QEMU as it is.
    pod.ip(&["tuntap", "add", "dev", "eth0", "mode", "tap"]);
    pod.ip(&["link", "set", "eth0", "address", "02:00:0a:5c:00:05"]);
    pod.ip(&["addr", "add", "10.92.0.5/24", "dev", "eth0"]);
    // IPv4 only on the TAP, as on many OVS ports: else the kernel gives it an IPv6 link-local
    // address the first time it has a carrier (QEMU attached), whoever attaches.
    pod.exec(&["sysctl", "-q", "-w", "net.ipv6.conf.eth0.disable_ipv6=1"]);
    pod.ip(&["link", "set", "eth0", "up"]);
    let before = pod.snapshot();
    c.run_ok("none", &pod.path());
    let qemu = tests::containerd::qemu_pid_in(&c.run_dir().join("none")).expect("QEMU");
    assert_eq!(tests::vm::fds_pointing_at(qemu, "/dev/net/tun"), 1, "QEMU holds the CNI TAP's queue");
    assert!(!tests::try_run(&["ip", "-n", &pod.name, "link", "show", "tap0_kata"]), "nothing was made");

    // What leaves by the TAP goes to the VM: an ARP request and pings sent out of it (a packet
    // socket, not the namespace's stack) are answered by the guest's NIC.
    let mut sock = tests::frames::packet_socket_in(&pod.path(), "eth0");
    let echos = pod.icmp_echos_received();
    let me = [0x02, 0, 0x0a, 0x5c, 0, 0x01];
    let (mac, replies) = tests::frames::ping_by_packet_socket(
        &mut sock,
        me,
        Ipv4Addr::new(10, 92, 0, 1),
        Ipv4Addr::new(10, 92, 0, 5),
        3,
    );
    assert_eq!((mac, replies), ([0x02, 0, 0x0a, 0x5c, 0, 0x05], 3), "the guest's NIC answers through the TAP");
    assert_eq!(pod.icmp_echos_received(), echos, "the namespace received no echo request");
    drop(sock);

    c.remove_sandbox("none");
    assert!(!qemu_running_in(&c.run_dir()), "QEMU left behind");
    // The TAP has its own features back (opening queues for QEMU gave it a virtio-net header).
    assert_eq!(pod.snapshot(), before, "the TAP as CNI left it");
}

/// bookworm-backports' QEMU, as `scripts/install-deps.sh` unpacks it.
const QEMU_10: &str = "/var/lib/kata-net-test/qemu-10/usr/bin/qemu-system-x86_64";

/// A process killed when dropped (also when the test fails), and a directory removed.
struct Cleanup(Option<std::process::Child>, std::path::PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

/// vhost-user: DPDK's `testpmd` (Debian's dpdk-dev) is the switch a user would run, serving the
/// vhost-user socket kata's discovery finds for the pod's address
/// (`<vhost_user_store_path>/vhostuser_<ip>/vhu.sock`) and forwarding between it and a veth (its
/// af_packet port) to a client namespace. The client's ping reaches the VM only through testpmd.
///
/// On QEMU 10 (bookworm-backports, unpacked by install-deps beside the system's): Debian 12's
/// QEMU 7.2 segfaults (a NULL read) as soon as the guest's virtio-net driver starts a vhost-user
/// NIC on DPDK 22.11's vhost PMD (the repro without the runtime is in `docs/network.md`).
#[test]
fn a_vhost_user_nic_on_dpdk_testpmd_carries_the_pods_traffic() {
    use std::os::unix::fs::PermissionsExt;
    tests::require_root_and_tools(&["dpdk-testpmd"]);
    // Root's, not writable by others (the discovery refuses anything else): not under /tmp.
    let store = std::path::PathBuf::from(format!("/run/knt-vhu-{}", std::process::id()));
    let mut guard = Cleanup(None, store.clone());
    let dir = store.join(format!("vhostuser_{POD_IP}"));
    std::fs::create_dir_all(&dir).unwrap();
    for d in [&store, &dir] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let sock = dir.join("vhu.sock");
    let switch = TestNs::new("sw");
    let client = TestNs::new("client");
    switch.ip(&["link", "add", "sw0", "type", "veth", "peer", "name", "cl0", "netns", &client.name]);
    switch.ip(&["link", "set", "sw0", "up"]);
    client.ip(&["addr", "add", &format!("{PEER_IP}/24"), "dev", "cl0"]);
    client.ip(&["link", "set", "cl0", "up"]);
    let testpmd = std::process::Command::new("ip")
        .args(["netns", "exec", &switch.name, "dpdk-testpmd", "--no-huge", "-m", "256", "--no-pci"])
        .arg(format!("--file-prefix=knt{}", std::process::id()))
        .arg(format!("--vdev=net_vhost0,iface={},queues=1", sock.display()))
        .args(["--vdev=net_af_packet0,iface=sw0", "--", "--forward-mode=io", "--auto-start", "--total-num-mbufs=2048"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::fs::File::create(store.join("testpmd.log")).unwrap())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("dpdk-testpmd");
    guard.0 = Some(testpmd);
    tests::containerd::wait_until(std::time::Duration::from_secs(20), "testpmd's vhost-user socket", || sock.exists());

    let qemu10 = Path::new(QEMU_10);
    assert!(qemu10.is_file(), "{QEMU_10} missing: scripts/install-deps.sh unpacks bookworm-backports' QEMU there");
    let c = containerd("vhu", "");
    let conf = std::fs::read_to_string(c.dir.0.join("configuration.toml"))
        .unwrap()
        .replace("path = \"/usr/bin/qemu-system-x86_64\"", &format!("path = \"{QEMU_10}\""))
        .replacen(
            "[hypervisor.qemu]\n",
            &format!(
                "[hypervisor.qemu]\nenable_vhost_user_store = true\nvhost_user_store_path = \"{}\"\n",
                store.display()
            ),
            1,
        );
    assert!(conf.contains(&format!("path = \"{QEMU_10}\"")), "the configuration names QEMU 10: {conf}");
    std::fs::write(c.dir.0.join("configuration.toml"), conf).unwrap();
    let cni = CniPod::new();
    let before = cni.pod.snapshot();
    c.run_ok("vhu", &cni.pod.path());
    let qemu = tests::containerd::qemu_pid_in(&c.run_dir().join("vhu")).expect("QEMU");
    let cmdline = String::from_utf8_lossy(&std::fs::read(format!("/proc/{qemu}/cmdline")).unwrap()).replace('\0', " ");
    assert!(cmdline.contains("vhost-user") && cmdline.contains(&sock.display().to_string()), "{cmdline}");
    assert_eq!(tests::vm::fds_pointing_at(qemu, "/dev/net/tun"), 0, "no TAP: the NIC is testpmd's");

    ping_from(&client, POD_IP);
    let log = std::fs::read_to_string(store.join("testpmd.log")).unwrap_or_default();
    println!(
        "testpmd: {}",
        log.lines().filter(|l| l.contains("vhost") || l.contains("Port")).collect::<Vec<_>>().join(" | ")
    );

    c.remove_sandbox("vhu");
    assert!(!qemu_running_in(&c.run_dir()), "QEMU left behind");
    assert_eq!(cni.pod.snapshot(), before, "the namespace is as CNI left it");
    assert!(sock.exists(), "testpmd's socket is testpmd's: the runtime leaves it");
    drop(guard);
}
