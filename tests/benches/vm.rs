//! `make bench` (VM part): NIC hotplug and unplug latency, and QEMU start to agent-ready time for
//! cold plug versus factory mode (start without NICs, hotplug each) with 1 and 4 NICs. QEMU runs
//! under TCG here; ratios are against the cold-plug run of the same size, in the same process.

use std::time::{Duration, Instant};

use agent_client::{AgentAddr, AgentClient};
use hypervisor::{Vm, VmSpec};
use network::endpoint::{Endpoint, EndpointConfig};
use network::{NetCtx, NicHotplug};
use tests::vm::{qemu_config, wait_agent_ready, Scratch};
use tests::{median, ms, quiet_logger, require_root_and_tools, CniPod};

const HOTPLUG_ROUNDS: usize = 7;

fn spec(dir: &Scratch, factory: bool, slots: u32) -> VmSpec {
    let mut config = qemu_config(slots);
    config.enable_template = factory;
    config.accelerator = hypervisor::config::AccelChoice::Tcg;
    tests::vm::vm_spec(dir, config)
}

async fn connect(dir: &Scratch) -> AgentClient {
    let addr: AgentAddr = format!("unix://{}", dir.0.join("agent.sock").display()).parse().unwrap();
    let c = AgentClient::connect(&addr, Duration::from_secs(10)).await.unwrap();
    assert!(c.check().await.unwrap());
    c
}

fn main() {
    require_root_and_tools(&["qemu-system-x86_64", "ip", "tc"]);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let cni = CniPod::new();
        for i in 1..4 {
            let (eth, p) = (format!("eth{i}"), format!("veth{i}"));
            cni.pod.ip(&["link", "add", &eth, "type", "veth", "peer", "name", &p, "netns", &cni.peer.name]);
            cni.pod.ip(&["link", "set", &eth, "up"]);
        }
        let cfg = EndpointConfig { queues: 1, vhost_net: false, ..EndpointConfig::default() };
        let ctx = NetCtx::open(cni.pod.netns(), quiet_logger()).unwrap();
        let eps = Endpoint::from_scan(&ctx.scan().await.unwrap(), &cfg).unwrap();
        assert_eq!(eps.len(), 4);

        println!("{:<40} {:>12} {:>10}", "QEMU start to agent ready (TCG)", "ms", "ratio");
        for n in [1usize, 4] {
            let mut cold = Duration::ZERO;
            for factory in [false, true] {
                let attached = network::attach_all(&ctx, &eps[..n], &cfg).await.unwrap();
                let states: Vec<_> = attached.iter().map(|a| a.state.clone()).collect();
                let nics = attached.into_iter().map(|a| a.nic).collect();
                let dir = Scratch::new("bench-vm");
                let t = Instant::now();
                let (vm, paths) = Vm::start(spec(&dir, factory, 4), nics).await.unwrap();
                wait_agent_ready(&dir.0, Duration::from_secs(120));
                let _c = connect(&dir).await;
                let took = t.elapsed();
                assert_eq!(paths.len(), n);
                if !factory {
                    cold = took;
                }
                let what = format!("{} with {n} NIC(s)", if factory { "factory (hotplug)" } else { "cold plug" });
                println!("{what:<40} {:>12.0} {:>9.2}x", ms(took), took.as_secs_f64() / cold.as_secs_f64());
                vm.stop(Duration::from_secs(10)).await.unwrap();
                network::detach_all(&ctx, &states).await.unwrap();
            }
        }

        // Hotplug latency in a running VM with no NIC.
        let dir = Scratch::new("bench-hp");
        let (vm, _) = Vm::start(spec(&dir, false, 2), Vec::new()).await.unwrap();
        wait_agent_ready(&dir.0, Duration::from_secs(120));
        let c = connect(&dir).await;
        let (mut qmp_add, mut guest_sees, mut unplug) = (vec![], vec![], vec![]);
        let mac = "02:00:0a:58:00:05";
        for _ in 0..HOTPLUG_ROUNDS {
            let a = eps[0].attach(&ctx, &cfg).await.unwrap();
            let t = Instant::now();
            vm.add_nic(a.nic).await.unwrap();
            qmp_add.push(t.elapsed());
            loop {
                if c.list_interfaces().await.unwrap().iter().any(|i| i.hwAddr == mac) {
                    break;
                }
                assert!(t.elapsed() < Duration::from_secs(30), "the guest never saw the NIC");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            guest_sees.push(t.elapsed());
            let t = Instant::now();
            vm.remove_nic("network-0").await.unwrap();
            unplug.push(t.elapsed());
            a.state.detach(&ctx).await.unwrap();
        }
        vm.stop(Duration::from_secs(10)).await.unwrap();
        let (q, g, u) = (median(qmp_add), median(guest_sees), median(unplug));
        println!();
        println!("{:<40} {:>12}", "NIC hotplug (median of 7, TCG)", "ms");
        println!("{:<40} {:>12.1}", "QMP steps (getfd, netdev_add, device_add)", ms(q));
        println!(
            "{:<40} {:>12.1}   ({:.1}x the QMP steps)",
            "until the guest lists the NIC",
            ms(g),
            g.as_secs_f64() / q.as_secs_f64()
        );
        println!("{:<40} {:>12.1}", "unplug (device_del to DEVICE_DELETED, netdev_del)", ms(u));
    });
}
