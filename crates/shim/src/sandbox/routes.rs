//! Routes in a running sandbox's VM (`kata-network add-route` / `del-route` / `list-routes`).
//!
//! The shim keeps the VM's route table (every route it put there: the pod's, then the
//! operator's). An agent with openEuler's extensions takes single routes (`increment`); kata's
//! agent knows no `increment` and replaces every route it did not make from an address (lo's
//! excepted) with the list it gets, so a single route sent alone would wipe the others: it gets
//! the whole table on each change, and a change it refuses is undone by sending the table as it
//! was. kata's agent cannot delete a route on lo: del-route says so before anything is sent.

use std::net::IpAddr;
use std::time::Instant;

use agent_client::protocols::types as pb;
use agent_client::NetworkAgent;
use ipnet::IpNet;
use netmgmt::doc::RouteRequest;
use netmgmt::mg;
use netmgmt::output::{route_out, route_pb};

use super::Sandbox;
use crate::error::{Error, Result};

/// The VM's route table as the shim set it (not the kernel's own routes): the pod's routes,
/// then the operator's. Each change is made in the guest first, then recorded.
#[derive(Debug, Default, Clone)]
pub struct RouteTable {
    pub list: Vec<pb::Route>,
}

impl RouteTable {
    /// add-route through `agent` (`extended`: it takes single routes); the route added.
    pub(crate) async fn add(
        &mut self,
        agent: &dyn NetworkAgent,
        extended: bool,
        r: &RouteRequest,
        log: &slog::Logger,
    ) -> Result<Vec<mg::Route>> {
        let route = route_pb(r, false);
        let mut table = self.list.clone();
        table.retain(|t| !same_route(t, &route));
        table.push(route.clone());
        if extended {
            agent.update_routes(vec![route.clone()], true).await?;
        } else {
            set_routes(agent, &self.list, table.clone(), log).await?;
        }
        self.list = table;
        Ok(vec![route_out(&route)])
    }

    /// del-route: every route that matches all given fields; the routes deleted.
    pub(crate) async fn del(
        &mut self,
        agent: &dyn NetworkAgent,
        extended: bool,
        r: &RouteRequest,
        log: &slog::Logger,
    ) -> Result<Vec<mg::Route>> {
        let kept: Vec<pb::Route> = self.list.iter().filter(|t| !matches(t, r)).cloned().collect();
        if extended {
            // The guest matches (its routes may be more than the table's); what went is what it listed before and not after.
            let before = agent.list_routes().await?;
            let after = agent.update_routes(vec![route_pb(r, true)], true).await?;
            self.list = kept;
            return Ok(before.iter().filter(|b| !after.contains(b)).map(route_out).collect());
        }
        let gone: Vec<pb::Route> = self.list.iter().filter(|t| matches(t, r)).cloned().collect();
        if gone.is_empty() {
            let dest = r.dest.map_or("default".into(), |d| d.to_string());
            return Err(Error::NotFound(format!("dest: no route to {dest} that matches in the sandbox")));
        }
        if gone.iter().any(|g| g.device == "lo") {
            return Err(Error::AgentLacks("deleting routes on lo: kata's UpdateRoutes leaves lo's routes alone"));
        }
        set_routes(agent, &self.list, kept.clone(), log).await?;
        self.list = kept;
        Ok(gone.iter().map(route_out).collect())
    }

    /// The guest's routes, kernel-made ones included. Where the guest lists a route through a
    /// gateway under a placeholder destination (kata's agent says `0.0.0.0` or `::1`), the
    /// destination is taken from the table.
    pub(crate) async fn listed(&self, agent: &dyn NetworkAgent) -> Result<Vec<mg::Route>> {
        let guest = agent.list_routes().await?;
        Ok(with_table_dests(guest, &self.list).iter().map(route_out).collect())
    }
}

impl Sandbox {
    pub async fn add_route(&self, r: RouteRequest, deadline: Option<Instant>) -> Result<Vec<mg::Route>> {
        let mut ops = self.ops_by(deadline).await?;
        ops.routes.add(&self.agent, self.extended_agent, &r, &self.log).await
    }

    pub async fn del_route(&self, r: RouteRequest, deadline: Option<Instant>) -> Result<Vec<mg::Route>> {
        let mut ops = self.ops_by(deadline).await?;
        ops.routes.del(&self.agent, self.extended_agent, &r, &self.log).await
    }

    pub async fn list_routes(&self) -> Result<Vec<mg::Route>> {
        self.ops.lock().await.routes.listed(&self.agent).await
    }
}

/// Send `table`; if the guest refuses it, send `before` again (best effort) and fail.
pub(crate) async fn set_routes(
    agent: &dyn NetworkAgent,
    before: &[pb::Route],
    table: Vec<pb::Route>,
    log: &slog::Logger,
) -> Result<()> {
    if let Err(e) = agent.update_routes(table, false).await {
        if let Err(undo) = agent.update_routes(before.to_vec(), false).await {
            slog::warn!(log, "restoring the VM's routes failed"; "error" => undo.to_string());
        }
        return Err(e.into());
    }
    Ok(())
}

/// A table entry's destination: `None` for a default route.
fn dest_of(r: &pb::Route) -> Option<IpNet> {
    match r.dest.as_str() {
        "" | "default" => None,
        d => d.parse::<IpNet>().ok().or_else(|| d.parse::<IpAddr>().ok().map(IpNet::from)),
    }
}

fn v6(r: &pb::Route) -> bool {
    match (dest_of(r), r.gateway.parse::<IpAddr>()) {
        (Some(d), _) => d.addr().is_ipv6(),
        (None, Ok(g)) => g.is_ipv6(),
        (None, Err(_)) => r.family.enum_value() == Ok(pb::IPFamily::v6),
    }
}

/// Same destination, device and gateway (the kernel's identity of a route, near enough).
fn same_route(a: &pb::Route, b: &pb::Route) -> bool {
    dest_of(a) == dest_of(b) && v6(a) == v6(b) && a.device == b.device && a.gateway == b.gateway
}

/// Does table entry `t` match del-route's fields (dest always; device and gateway when given)?
fn matches(t: &pb::Route, r: &RouteRequest) -> bool {
    let want_v6 = r.dest.map(|d| d.addr().is_ipv6()).or(r.gateway.map(|g| g.is_ipv6())).unwrap_or(false);
    dest_of(t) == r.dest
        && v6(t) == want_v6
        && r.device.as_ref().is_none_or(|d| t.device == d.as_str())
        && r.gateway.is_none_or(|g| t.gateway.parse::<IpAddr>().ok() == Some(g))
}

/// Replace kata's placeholder destinations of gateway routes by the table's.
fn with_table_dests(guest: Vec<pb::Route>, table: &[pb::Route]) -> Vec<pb::Route> {
    let mut out = Vec::with_capacity(guest.len());
    let mut used = vec![false; table.len()];
    for g in guest {
        let placeholder = !g.gateway.is_empty() && (g.dest == "0.0.0.0" || g.dest == "::1");
        if !placeholder {
            out.push(g);
            continue;
        }
        let found = table.iter().enumerate().find(|(i, t)| !used[*i] && t.gateway == g.gateway && t.device == g.device);
        match found {
            Some((i, t)) => {
                used[i] = true;
                out.push(pb::Route { dest: t.dest.clone(), ..g });
            }
            None => out.push(pb::Route { dest: String::new(), ..g }),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(dest: &str, gw: &str, dev: &str) -> pb::Route {
        pb::Route { dest: dest.into(), gateway: gw.into(), device: dev.into(), ..Default::default() }
    }

    #[test]
    fn kata_placeholders_take_the_tables_destinations() {
        let table = [r("", "10.88.0.1", "eth0"), r("10.99.0.0/16", "10.88.0.254", "eth0")];
        let guest = vec![
            r("0.0.0.0", "10.88.0.1", "eth0"),
            r("0.0.0.0", "10.88.0.254", "eth0"),
            r("10.88.0.0/24", "", "eth0"),
            r("0.0.0.0", "10.88.0.9", "eth0"),
        ];
        let dests: Vec<String> = with_table_dests(guest, &table).into_iter().map(|g| g.dest).collect();
        assert_eq!(dests, ["", "10.99.0.0/16", "10.88.0.0/24", ""]);
    }

    #[test]
    fn del_route_matches_dest_and_the_given_fields() {
        let req = |dest: Option<&str>, gw: Option<&str>, dev: Option<&str>| RouteRequest {
            dest: dest.map(|d| d.parse().unwrap()),
            gateway: gw.map(|g| g.parse().unwrap()),
            device: dev.map(|d| d.parse().unwrap()),
        };
        let t = r("10.99.0.0/16", "10.88.0.254", "eth0");
        assert!(matches(&t, &req(Some("10.99.0.0/16"), None, None)));
        assert!(matches(&t, &req(Some("10.99.0.0/16"), Some("10.88.0.254"), Some("eth0"))));
        assert!(!matches(&t, &req(Some("10.99.0.0/16"), Some("10.88.0.1"), None)));
        assert!(!matches(&t, &req(Some("10.99.0.0/16"), None, Some("eth1"))));
        assert!(!matches(&t, &req(Some("10.98.0.0/16"), None, None)));
        assert!(matches(&r("", "10.88.0.1", "eth0"), &req(None, Some("10.88.0.1"), None)));
        assert!(!matches(&r("", "fd00::1", "eth0"), &req(None, Some("10.88.0.1"), None)));
    }

    fn table(routes: &[pb::Route]) -> RouteTable {
        RouteTable { list: routes.to_vec() }
    }

    fn req(dest: &str) -> RouteRequest {
        RouteRequest { dest: Some(dest.parse().unwrap()), gateway: None, device: Some("eth0".parse().unwrap()) }
    }

    fn log() -> slog::Logger {
        slog::Logger::root(slog::Discard, slog::o!())
    }

    #[tokio::test]
    async fn kata_gets_the_whole_table_and_a_refused_change_is_undone_and_not_recorded() {
        use crate::sandbox::agent_double::{AgentDouble, Call};
        let agent = AgentDouble::default();
        let pod = r("", "10.88.0.1", "eth0");
        let mut t = table(std::slice::from_ref(&pod));
        t.add(&agent, false, &req("10.99.0.0/16"), &log()).await.unwrap();
        let added = route_pb(&req("10.99.0.0/16"), false);
        assert_eq!(agent.calls(), [Call::Routes(vec![pod.clone(), added.clone()], false)]);
        assert_eq!(t.list, [pod.clone(), added.clone()]);
        // Refused: the table as it was is sent again, and the shim's table is unchanged.
        agent.refuse_routes.store(1, std::sync::atomic::Ordering::SeqCst);
        let before = t.list.clone();
        assert!(t.add(&agent, false, &req("10.98.0.0/16"), &log()).await.is_err());
        let calls = agent.calls();
        assert_eq!(calls[2], Call::Routes(before.clone(), false), "the table restored");
        assert_eq!(t.list, before);
        // The same route again replaces its entry.
        t.add(&agent, false, &req("10.99.0.0/16"), &log()).await.unwrap();
        assert_eq!(t.list, before);
    }

    #[tokio::test]
    async fn del_route_refuses_before_sending_what_kata_cannot_do_and_what_is_not_there() {
        use crate::sandbox::agent_double::{AgentDouble, Call};
        let agent = AgentDouble::default();
        let lo = r("127.0.0.0/8", "", "lo");
        let mut t = table(&[r("", "10.88.0.1", "eth0"), lo]);
        let on_lo = RouteRequest { dest: Some("127.0.0.0/8".parse().unwrap()), gateway: None, device: None };
        let e = t.del(&agent, false, &on_lo, &log()).await.unwrap_err().to_string();
        assert!(e.contains("lo"), "{e}");
        let e = t.del(&agent, false, &req("10.97.0.0/16"), &log()).await.unwrap_err().to_string();
        assert!(e.contains("dest: no route to 10.97.0.0/16"), "{e}");
        assert_eq!(agent.calls(), Vec::<Call>::new(), "nothing sent");
        assert_eq!(t.list.len(), 2);
    }

    #[tokio::test]
    async fn an_extended_agent_gets_single_routes() {
        use crate::sandbox::agent_double::{AgentDouble, Call};
        let agent = AgentDouble::default();
        let mut t = table(&[r("", "10.88.0.1", "eth0")]);
        t.add(&agent, true, &req("10.99.0.0/16"), &log()).await.unwrap();
        assert_eq!(agent.calls(), [Call::Routes(vec![route_pb(&req("10.99.0.0/16"), false)], true)]);
        assert_eq!(t.list.len(), 2);
    }
}
