//! NICs in a real VM (QEMU, TCG here) with the guest agent configuring them: cold plug through a
//! tcfilter endpoint and a ping from a peer namespace; hotplug and unplug over QMP; a device_add
//! QEMU refuses leaves nothing behind; a dead QEMU is reported; factory mode.

use std::time::Duration;

use agent_client::protocols::types::{IPAddress, IPFamily, Interface};
use agent_client::{AgentAddr, AgentClient};
use hypervisor::{Vm, VmSpec};
use network::endpoint::{Endpoint, EndpointConfig};
use network::{NetCtx, NicHotplug};
use protobuf::EnumOrUnknown;
use serde_json::json;
use tests::vm::{fds_pointing_at, qemu_config, wait_agent_ready, Scratch};
use tests::{quiet_logger, require_root_and_tools, run, try_run, CniPod, POD_IP, POD_MAC};

fn cfg() -> EndpointConfig {
    EndpointConfig { queues: 1, vhost_net: false, ..EndpointConfig::default() }
}

fn iface(name: &str, mac: &str, ip: &str, path: &str) -> Interface {
    Interface {
        name: name.into(),
        hwAddr: mac.into(),
        mtu: 1450,
        IPAddresses: vec![IPAddress {
            family: EnumOrUnknown::new(IPFamily::v4),
            address: ip.into(),
            mask: "24".into(),
            ..Default::default()
        }],
        devicePath: path.into(),
        ..Default::default()
    }
}

async fn agent(dir: &Scratch) -> AgentClient {
    wait_agent_ready(&dir.0, Duration::from_secs(120));
    let addr: AgentAddr = format!("unix://{}", dir.0.join("agent.sock").display()).parse().unwrap();
    AgentClient::connect(&addr, Duration::from_secs(10)).await.unwrap()
}

fn spec(dir: &Scratch, factory: bool) -> VmSpec {
    // QEMU starts under the soft fd limit most shims get.
    tests::vm::limit_fds_to_1024().unwrap();
    let mut config = qemu_config(2);
    config.enable_template = factory;
    tests::vm::vm_spec(dir, config)
}

/// A second link `eth1` in the pod, its peer `veth1` with 10.89.0.1/24 in the peer namespace.
fn add_eth1(cni: &CniPod) {
    cni.pod.ip(&["link", "add", "eth1", "type", "veth", "peer", "name", "veth1", "netns", &cni.peer.name]);
    cni.pod.ip(&["link", "set", "eth1", "address", "02:00:0a:59:00:05", "mtu", "1450", "up"]);
    cni.peer.ip(&["addr", "add", "10.89.0.1/24", "dev", "veth1"]);
    cni.peer.ip(&["link", "set", "veth1", "mtu", "1450", "up"]);
}

async fn info_network(vm: &Vm) -> String {
    let v = vm.qmp().execute("human-monitor-command", json!({"command-line": "info network"})).await.unwrap();
    v.as_str().unwrap_or_default().to_owned()
}

async fn pci_ids(vm: &Vm) -> String {
    vm.qmp().execute("query-pci", json!({})).await.unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_plug_ping_hotplug_unplug_and_refused_device_add() {
    require_root_and_tools(&["qemu-system-x86_64", "ip", "tc", "ping"]);
    let cni = CniPod::new();
    add_eth1(&cni);
    let ctx = NetCtx::open(cni.pod.netns(), quiet_logger()).unwrap();
    let eps = Endpoint::from_scan(&ctx.scan().await.unwrap(), &cfg()).unwrap();
    let (eth0, eth1) = (&eps[0], &eps[1]);
    assert_eq!((eth0.link_name().as_str(), eth1.link_name().as_str()), ("eth0", "eth1"));

    // Cold plug eth0's tcfilter endpoint.
    let a0 = eth0.attach(&ctx, &cfg()).await.unwrap();
    let dir = Scratch::new("vmnet");
    let (vm, paths) = Vm::start(spec(&dir, false), vec![a0.nic]).await.unwrap();
    assert_eq!(vm.accel(), hypervisor::Accel::Tcg, "KVM does not work on this machine; auto must fall back");
    assert_eq!(paths.len(), 1);
    assert_eq!(fds_pointing_at(vm.pid(), "/dev/net/tun"), 1, "the TAP queue fd reached QEMU");
    let c = agent(&dir).await;
    let got = c
        .update_interface(&iface("eth0", POD_MAC, POD_IP, &paths[0].1.to_string()), Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(got.hwAddr, POD_MAC);
    run(&["ip", "netns", "exec", &cni.peer.name, "ping", "-c", "3", "-i", "0.3", "-W", "5", POD_IP]);

    // Hotplug eth1's endpoint: the guest sees it at the returned path and it carries traffic.
    let a1 = eth1.attach(&ctx, &cfg()).await.unwrap();
    let path = vm.add_nic(a1.nic).await.unwrap();
    assert_eq!(path.to_string(), "10/00");
    c.update_interface(&iface("eth1", "02:00:0a:59:00:05", "10.89.0.5", &path.to_string()), Duration::from_secs(30))
        .await
        .unwrap();
    run(&["ip", "netns", "exec", &cni.peer.name, "ping", "-c", "2", "-i", "0.3", "-W", "5", "10.89.0.5"]);
    assert!(info_network(&vm).await.contains("nd-network-1"));
    assert!(pci_ids(&vm).await.contains("\"qdev_id\":\"network-1\""));

    // Unplug: gone from the guest and QEMU, the slot is free, QEMU closed the TAP fds (the
    // non-persistent TAP vanished with them).
    vm.remove_nic("network-1").await.unwrap();
    let ifs = c.list_interfaces().await.unwrap();
    assert!(ifs.iter().all(|i| i.hwAddr != "02:00:0a:59:00:05"), "{ifs:?}");
    assert!(!info_network(&vm).await.contains("nd-network-1"));
    assert!(!pci_ids(&vm).await.contains("network-1"));
    assert_eq!(vm.slots_in_use().await, 0);
    assert!(!try_run(&["ip", "-n", &cni.pod.name, "link", "show", "tap1_kata"]), "TAP fds were closed");
    a1.state.detach(&ctx).await.unwrap();

    // A device_add QEMU refuses (host_mtu is a uint16): no netdev, no passed fd, no slot left.
    let mut a1 = eth1.attach(&ctx, &cfg()).await.unwrap();
    a1.nic.mtu = 70_000;
    let err = vm.add_nic(a1.nic).await.unwrap_err();
    assert!(matches!(&err, hypervisor::Error::Qmp { command, .. } if command == "device_add"), "{err:?}");
    assert!(!info_network(&vm).await.contains("nd-network-1"));
    assert_eq!(vm.slots_in_use().await, 0);
    assert_eq!(fds_pointing_at(vm.pid(), "/dev/net/tun"), 1, "only the cold-plugged NIC's queue is left");
    let fds = vm.qmp().execute("human-monitor-command", json!({"command-line": "info network"})).await.unwrap();
    assert!(!fds.to_string().contains("fd-network-1"));
    a1.state.detach(&ctx).await.unwrap();
    // The freed slot is the next one used.
    let a1 = eth1.attach(&ctx, &cfg()).await.unwrap();
    assert_eq!(vm.add_nic(a1.nic).await.unwrap().to_string(), "10/00");
    // An unplug whose wait runs out (a loaded guest takes longer) stays pending; the next one
    // asks again (QEMU refuses a second device_del on q35 while the first runs: no cancel) and
    // finishes it: netdev, fds and slot released.
    vm.set_unplug_timeout(Duration::from_millis(1));
    let err = vm.remove_nic("network-1").await.unwrap_err();
    assert!(matches!(err, hypervisor::Error::Timeout(_)), "{err:?}");
    vm.set_unplug_timeout(Duration::from_secs(10));
    vm.remove_nic("network-1").await.unwrap();
    assert!(!info_network(&vm).await.contains("nd-network-1"));
    assert!(!pci_ids(&vm).await.contains("network-1"));
    assert_eq!(vm.slots_in_use().await, 0);
    assert_eq!(fds_pointing_at(vm.pid(), "/dev/net/tun"), 1, "only the cold-plugged NIC's queue is left");
    a1.state.detach(&ctx).await.unwrap();

    // A VM that dies is reported.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(vm.pid() as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), vm.wait()).await.unwrap();
    assert!(status.contains("signal: 9"), "{status}");
    let a1 = eth1.attach(&ctx, &cfg()).await.unwrap();
    assert!(matches!(vm.add_nic(a1.nic).await, Err(hypervisor::Error::Dead(_))));
    a1.state.detach(&ctx).await.unwrap();
    a0.state.detach(&ctx).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn factory_mode_hotplugs_every_endpoint_and_stop_quits_qemu() {
    require_root_and_tools(&["qemu-system-x86_64", "ip", "tc", "ping"]);
    let cni = CniPod::new();
    let ctx = NetCtx::open(cni.pod.netns(), quiet_logger()).unwrap();
    let eps = Endpoint::from_scan(&ctx.scan().await.unwrap(), &cfg()).unwrap();
    let attached = network::attach_all(&ctx, &eps, &cfg()).await.unwrap();
    let states: Vec<_> = attached.iter().map(|a| a.state.clone()).collect();
    let nics = attached.into_iter().map(|a| a.nic).collect();
    let dir = Scratch::new("vmfactory");
    let (vm, paths) = Vm::start(spec(&dir, true), nics).await.unwrap();
    assert_eq!(paths[0].1.to_string(), "10/00", "hotplugged behind the first root port, not cold-plugged");
    let c = agent(&dir).await;
    c.update_interface(&iface("eth0", POD_MAC, POD_IP, &paths[0].1.to_string()), Duration::from_secs(30))
        .await
        .unwrap();
    run(&["ip", "netns", "exec", &cni.peer.name, "ping", "-c", "2", "-i", "0.3", "-W", "5", POD_IP]);
    vm.stop(Duration::from_secs(10)).await.unwrap();
    assert!(vm.exit_status().is_some());
    network::detach_all(&ctx, &states).await.unwrap();
}

#[test]
fn the_accelerator_probe_is_kept_for_the_host_in_a_root_only_directory() {
    use hypervisor::config::{AccelChoice, MachineType};
    use std::os::unix::fs::PermissionsExt;
    require_root_and_tools(&["qemu-system-x86_64"]);
    let qemu = std::path::Path::new("/usr/bin/qemu-system-x86_64");
    // A kernel of its own, so this process has not probed it yet.
    let kernel_in = |dir: &Scratch| {
        let k = dir.0.join("vmlinuz");
        std::fs::copy(tests::vm::guest_image().join("vmlinuz"), &k).unwrap();
        k
    };
    // A directory others may write to is not used.
    let open = Scratch::new("accel-open");
    std::fs::set_permissions(&open.0, std::fs::Permissions::from_mode(0o777)).unwrap();
    hypervisor::Accel::resolve(AccelChoice::Auto, qemu, MachineType::Q35, &kernel_in(&open), Some(&open.0));
    assert!(!open.0.join("accel-probe").exists());
    // A root-only one keeps the answer, for this QEMU, machine, kernel and boot of the host.
    let dir = Scratch::new("accel");
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    let kernel = kernel_in(&dir);
    let a = hypervisor::Accel::resolve(AccelChoice::Auto, qemu, MachineType::Q35, &kernel, Some(&dir.0));
    let text = std::fs::read_to_string(dir.0.join("accel-probe")).unwrap();
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    assert!(text.starts_with(&format!("{} /usr/bin/qemu-system-x86_64|Q35|", a.as_str())), "{text}");
    assert!(text.trim_end().ends_with(boot.trim()), "{text}");
}
