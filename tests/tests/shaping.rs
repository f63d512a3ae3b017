//! Rate limits in the kernel: each direction's HTB sits where that direction passes for every
//! interworking model (an IFB where it passes only an ingress), teardown and a sweep by tags
//! leave the namespace as CNI left it, and a link whose root qdisc is someone's is refused.

use network::endpoint::{Endpoint, EndpointConfig, EndpointState};
use network::{NetCtx, NetworkModel, RateLimit};
use tests::{quiet_logger, require_root_and_tools, CniPod};

const RX: u64 = 12_000_000;
const TX: u64 = 24_000_000;

fn cfg(model: NetworkModel, rate: RateLimit) -> EndpointConfig {
    EndpointConfig { model, queues: 1, vhost_net: false, rate, ..EndpointConfig::default() }
}

/// The NICs' states, and what holds their queues open (the VM's part: a TAP goes with its fds).
type Nics = (Vec<EndpointState>, Vec<network::NicConfig>);

async fn attach(cni: &CniPod, cfg: &EndpointConfig) -> network::Result<(NetCtx, Nics)> {
    let ctx = NetCtx::open(cni.pod.netns(), quiet_logger()).unwrap();
    let eps = Endpoint::from_scan(&ctx.scan().await.unwrap(), cfg).unwrap();
    let attached = network::attach_all(&ctx, &eps, cfg).await?;
    Ok((ctx, attached.into_iter().map(|a| (a.state, a.nic)).unzip()))
}

/// The rate of the runtime's HTB class on `dev`, as tc prints it (`12Mbit`).
fn class_rate(cni: &CniPod, dev: &str) -> String {
    let out = cni.pod.tc(&["class", "show", "dev", dev]);
    assert!(out.contains("class htb 6b61:1 root"), "{dev}: {out}");
    out.split_whitespace().skip_while(|w| *w != "rate").nth(1).unwrap_or_default().to_owned()
}

/// The runtime's IFB: the one link of kind ifb.
fn ifb(cni: &CniPod) -> String {
    let out = cni.pod.ip(&["-o", "link", "show", "type", "ifb"]);
    let names: Vec<&str> = out.lines().filter_map(|l| l.split(": ").nth(1)).collect();
    assert_eq!(names.len(), 1, "one IFB: {out}");
    names[0].split('@').next().unwrap().to_owned()
}

#[tokio::test]
async fn each_direction_is_limited_where_it_passes_and_teardown_restores_the_namespace() {
    require_root_and_tools(&["ip", "tc"]);
    let rate = RateLimit { rx_bps: Some(RX), tx_bps: Some(TX) };
    for model in [NetworkModel::TcFilter, NetworkModel::Macvtap, NetworkModel::None] {
        let cni = CniPod::new();
        let before = cni.pod.snapshot();
        let (ctx, (states, _queues)) = attach(&cni, &cfg(model, rate)).await.unwrap();
        match model {
            NetworkModel::TcFilter => {
                assert_eq!(class_rate(&cni, "tap0_kata"), "12Mbit", "what the VM receives leaves the TAP");
                assert_eq!(class_rate(&cni, "eth0"), "24Mbit", "what it sends leaves eth0");
            }
            NetworkModel::Macvtap => {
                let ifb = ifb(&cni);
                assert_eq!(class_rate(&cni, &ifb), "12Mbit", "the macvtap's ingress, through the IFB");
                assert_eq!(class_rate(&cni, "tap0_kata"), "24Mbit");
                let f = cni.pod.tc(&["filter", "show", "dev", "tap0_kata", "ingress"]);
                assert!(f.contains(&format!("Egress Redirect to device {ifb}")), "{f}");
            }
            NetworkModel::None => {
                let ifb = ifb(&cni);
                assert_eq!(class_rate(&cni, "tap0_kata"), "12Mbit");
                assert_eq!(class_rate(&cni, &ifb), "24Mbit", "the TAP's ingress, through the IFB");
            }
        }
        network::detach_all(&ctx, &states).await.unwrap();
        assert_eq!(cni.pod.snapshot(), before, "{model:?}");
        // One endpoint's own detach (a followed link removed) takes its limits too.
        let (ctx, (states, _queues)) = attach(&cni, &cfg(model, rate)).await.unwrap();
        states[0].detach(&ctx).await.unwrap();
        assert_eq!(cni.pod.snapshot(), before, "{model:?}, detached alone");
    }
}

#[tokio::test]
async fn limits_left_by_a_crash_are_found_by_their_tags() {
    require_root_and_tools(&["ip", "tc"]);
    for model in [NetworkModel::TcFilter, NetworkModel::None] {
        let cni = CniPod::new();
        let before = cni.pod.snapshot();
        let (ctx, _forgotten_but_held) =
            attach(&cni, &cfg(model, RateLimit { rx_bps: Some(RX), tx_bps: Some(TX) })).await.unwrap();
        assert_ne!(cni.pod.snapshot(), before);
        network::sweep_tags(&ctx).await.unwrap();
        assert_eq!(cni.pod.snapshot(), before, "{model:?}");
    }
}

#[tokio::test]
async fn a_link_with_a_root_qdisc_of_its_own_is_refused_naming_it_and_nothing_changes() {
    require_root_and_tools(&["ip", "tc"]);
    let cni = CniPod::new();
    cni.pod.tc(&[
        "qdisc", "add", "dev", "eth0", "root", "handle", "1:", "tbf", "rate", "1mbit", "burst", "32k", "latency",
        "50ms",
    ]);
    let before = cni.pod.snapshot();
    let err = attach(&cni, &cfg(NetworkModel::TcFilter, RateLimit { rx_bps: Some(RX), tx_bps: Some(TX) }))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("eth0") && err.contains("root qdisc of its own (tbf 1:)"), "{err}");
    assert_eq!(cni.pod.snapshot(), before);
    // Only what the VM receives limited: eth0's root is not touched, so the NIC attaches.
    let (ctx, (states, _queues)) =
        attach(&cni, &cfg(NetworkModel::TcFilter, RateLimit { rx_bps: Some(RX), tx_bps: None })).await.unwrap();
    assert_eq!(class_rate(&cni, "tap0_kata"), "12Mbit");
    network::detach_all(&ctx, &states).await.unwrap();
    assert_eq!(cni.pod.snapshot(), before, "the link's own tbf is still there");
}
