//! The StartVM flow's last phase: the agent connected and checked, then the pod's network and
//! the sandbox given to it (the calls through `NetworkAgent`, so the sync runs against a double
//! too).

use std::time::Duration;

use agent_client::protocols::agent::CreateSandboxRequest;
use agent_client::protocols::types as pb;
use agent_client::{AgentAddr, AgentClient};
use network::{NetworkInfo, PciPath};

use super::{SpecNetwork, NIC_WAIT};
use crate::error::{Error, Result};
use crate::failpoint;

/// The guest side of the pod's links: the scan, and where each NIC sits in the VM.
pub(super) struct GuestNics {
    pub(super) info: NetworkInfo,
    pub(super) links: Vec<network::Link>,
    /// Per link: the NIC's id and PCI path.
    pub(super) paths: Vec<Option<PciPath>>,
    pub(super) queues: usize,
}

/// Connect to the agent (retrying while the guest boots, up to `dial_timeout`) and check it serves.
/// Each agent call's own timeout once connected (kata's default request timeout).
pub(crate) const AGENT_CALL_TIMEOUT: Duration = Duration::from_secs(60);

pub(super) async fn connect_agent(addr: &AgentAddr, left: Duration, dial_timeout_secs: u32) -> Result<AgentClient> {
    let silent = |e: agent_client::Error| Error::AgentSilent {
        addr: addr.to_string(),
        secs: dial_timeout_secs.into(),
        cause: crate::error::message(&e),
    };
    // The dial gets what is left of dial_timeout; each call after it a fixed timeout of its own.
    let agent = AgentClient::connect(addr, left).await.map_err(silent)?.with_call_timeout(AGENT_CALL_TIMEOUT);
    if !agent.check().await.map_err(silent)? {
        return Err(Error::AgentNotServing);
    }
    Ok(agent)
}

/// Does the agent serve openEuler's extensions? Asked with a call that changes nothing (the
/// guest's IPVS rules, saved); kata's agent answers that it does not serve it.
pub(super) async fn serves_extensions(agent: &AgentClient) -> bool {
    match agent.update_ipvs_rule("ipvsadm -S -n").await {
        Ok(_) => true,
        Err(e) => !super::ipvs::unserved(&e),
    }
}

/// Interfaces, then routes, then neighbours, then CreateSandbox with hostname and DNS. Returns
/// the routes set.
pub(super) async fn sync_agent(
    agent: &dyn agent_client::NetworkAgent,
    g: &GuestNics,
    id: &str,
    net: &SpecNetwork,
    storages: Vec<agent_client::protocols::agent::Storage>,
) -> Result<Vec<pb::Route>> {
    let mut ifaces = agent_client::interfaces(&g.links);
    for (iface, path) in ifaces.iter_mut().zip(&g.paths) {
        if let Some(p) = path {
            iface.device_path = p.to_string();
        }
        iface.queues = g.queues as u32;
        agent.update_interface(&pb::Interface::from(&*iface), NIC_WAIT).await?;
        failpoint::hit_async(&format!("start:agent:interface:{}", iface.name)).await?;
    }
    let ours = |dev: &network::IfName| g.links.iter().any(|l| &l.name == dev);
    let routes: Vec<network::Route> = g.info.routes.iter().filter(|r| ours(&r.device)).cloned().collect();
    let routes: Vec<pb::Route> = agent_client::routes(&routes).iter().map(pb::Route::from).collect();
    if !routes.is_empty() {
        agent.update_routes(routes.clone(), false).await?;
    }
    failpoint::hit_async("start:agent:routes").await?;
    let neigh: Vec<network::Neighbor> = g.info.neighbors.iter().filter(|n| ours(&n.device)).cloned().collect();
    if !neigh.is_empty() {
        agent.add_arp_neighbors(agent_client::neighbors(&neigh).iter().map(pb::ARPNeighbor::from).collect()).await?;
    }
    failpoint::hit_async("start:agent:neighbors").await?;
    let req = CreateSandboxRequest {
        hostname: net.hostname.clone(),
        dns: net.dns.clone(),
        storages,
        sandbox_id: id.to_owned(),
        // A container may ask for the pod's PID namespace (CRI's PodPID): kata's agent then needs
        // the pod's namespace made at CreateSandbox (its pause process); ours joins the sandbox
        // container's.
        sandbox_pidns: true,
        ..Default::default()
    };
    agent.create_sandbox(&req).await?;
    failpoint::hit_async("start:agent:sandbox").await?;
    Ok(routes)
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn the_sync_gives_the_guest_the_pods_links_then_their_routes_and_neighbours_then_the_sandbox() {
        use crate::sandbox::agent_double::{AgentDouble, Call};
        use network::{Link, LinkKind, Neighbor, NetworkInfo, Route};
        let name = |n: &str| -> network::IfName { n.parse().unwrap() };
        let link = Link {
            index: 2,
            name: name("eth0"),
            kind: LinkKind::Veth,
            mac: Some("02:00:0a:58:00:05".parse().unwrap()),
            mtu: 1500,
            flags: 0,
            addresses: vec!["10.88.0.5/24".parse().unwrap()],
        };
        let route = |dest: Option<&str>, gw: Option<&str>, dev: &str| Route {
            dest: dest.map(|d| d.parse().unwrap()),
            gateway: gw.map(|g| g.parse().unwrap()),
            device: name(dev),
            source: None,
            scope: 0,
            ipv6: false,
            flags: 0,
            mtu: 0,
            protocol: 4,
            metric: 0,
        };
        let neighbor = |ip: &str, dev: &str| Neighbor {
            ip: ip.parse().unwrap(),
            device: name(dev),
            lladdr: Some("02:00:0a:58:00:01".parse().unwrap()),
            state: 0x80,
            flags: 0,
        };
        let info = NetworkInfo {
            links: vec![link.clone()],
            routes: vec![route(None, Some("10.88.0.1"), "eth0"), route(Some("10.77.0.0/16"), None, "vhost0")],
            neighbors: vec![neighbor("10.88.0.1", "eth0"), neighbor("10.77.0.1", "vhost0")],
        };
        let g = super::GuestNics { info, links: vec![link], paths: vec![Some("02/00".parse().unwrap())], queues: 2 };
        let net = crate::sandbox::SpecNetwork {
            netns: None,
            hostname: "pod-a".into(),
            dns: vec!["nameserver 10.96.0.10".into()],
            rate: Default::default(),
        };
        let agent = AgentDouble::default();
        let routes = super::sync_agent(&agent, &g, "sb1", &net, Vec::new()).await.unwrap();
        let calls = agent.calls();
        assert_eq!(calls.len(), 4, "{calls:#?}");
        let Call::Interface(iface) = &calls[0] else { panic!("first the NIC: {calls:#?}") };
        assert_eq!((iface.name.as_str(), iface.devicePath.as_str(), iface.Queues), ("eth0", "02/00", 2));
        let Call::Routes(sent, false) = &calls[1] else { panic!("then the routes, whole: {calls:#?}") };
        assert_eq!(sent, &routes);
        assert_eq!(sent.iter().map(|r| r.device.as_str()).collect::<Vec<_>>(), ["eth0"], "only the pod links'");
        let Call::Neighbors(n) = &calls[2] else { panic!("then the neighbours: {calls:#?}") };
        assert_eq!(n.iter().map(|n| n.device.as_str()).collect::<Vec<_>>(), ["eth0"]);
        let Call::Sandbox(req) = &calls[3] else { panic!("the sandbox last: {calls:#?}") };
        assert_eq!((req.hostname.as_str(), req.sandbox_id.as_str(), req.sandbox_pidns), ("pod-a", "sb1", true));
        assert_eq!(req.dns, ["nameserver 10.96.0.10"]);
    }
}
