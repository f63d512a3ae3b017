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
use ipnet::IpNet;
use netmgmt::doc::RouteRequest;
use netmgmt::mg;
use netmgmt::output::{route_out, route_pb};

use super::Sandbox;
use crate::error::{Error, Result};

/// The VM's route table as the shim set it (not the kernel's own routes): the pod's routes,
/// then the operator's.
#[derive(Debug, Default, Clone)]
pub struct RouteTable {
    pub list: Vec<pb::Route>,
}

impl Sandbox {
    pub async fn add_route(&self, r: RouteRequest, deadline: Option<Instant>) -> Result<Vec<mg::Route>> {
        let mut ops = self.ops_by(deadline).await?;
        let route = route_pb(&r, false);
        let mut table = ops.routes.list.clone();
        table.retain(|t| !same_route(t, &route));
        table.push(route.clone());
        if self.extended_agent {
            self.agent.update_routes(vec![route.clone()], true).await?;
        } else {
            self.set_routes(&ops.routes.list, table.clone()).await?;
        }
        ops.routes.list = table;
        Ok(vec![route_out(&route)])
    }

    /// del-route: every route that matches all given fields; returns the routes deleted.
    pub async fn del_route(&self, r: RouteRequest, deadline: Option<Instant>) -> Result<Vec<mg::Route>> {
        let mut ops = self.ops_by(deadline).await?;
        let kept: Vec<pb::Route> = ops.routes.list.iter().filter(|t| !matches(t, &r)).cloned().collect();
        if self.extended_agent {
            // The guest matches (its routes may be more than the table's); what went is what it listed before and not after.
            let before = self.agent.list_routes().await?;
            let after = self.agent.update_routes(vec![route_pb(&r, true)], true).await?;
            ops.routes.list = kept;
            return Ok(before.iter().filter(|b| !after.contains(b)).map(route_out).collect());
        }
        let gone: Vec<pb::Route> = ops.routes.list.iter().filter(|t| matches(t, &r)).cloned().collect();
        if gone.is_empty() {
            let dest = r.dest.map_or("default".into(), |d| d.to_string());
            return Err(Error::NotFound(format!("dest: no route to {dest} that matches in the sandbox")));
        }
        if gone.iter().any(|g| g.device == "lo") {
            return Err(Error::AgentLacks("deleting routes on lo: kata's UpdateRoutes leaves lo's routes alone"));
        }
        self.set_routes(&ops.routes.list, kept.clone()).await?;
        ops.routes.list = kept;
        Ok(gone.iter().map(route_out).collect())
    }

    /// The guest's routes, kernel-made ones included. Where the guest lists a route through a
    /// gateway under a placeholder destination (kata's agent says `0.0.0.0` or `::1`), the
    /// destination is taken from the shim's table.
    pub async fn list_routes(&self) -> Result<Vec<mg::Route>> {
        let ops = self.ops.lock().await;
        let guest = self.agent.list_routes().await?;
        Ok(with_table_dests(guest, &ops.routes.list).iter().map(route_out).collect())
    }

    /// Send `table`; if the guest refuses it, send `before` again (best effort) and fail.
    async fn set_routes(&self, before: &[pb::Route], table: Vec<pb::Route>) -> Result<()> {
        if let Err(e) = self.agent.update_routes(table, false).await {
            if let Err(undo) = self.agent.update_routes(before.to_vec(), false).await {
                slog::warn!(self.log, "restoring the VM's routes failed"; "error" => undo.to_string());
            }
            return Err(e.into());
        }
        Ok(())
    }
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
        && r.device.as_ref().is_none_or(|d| &t.device == d)
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
            device: dev.map(String::from),
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
}
