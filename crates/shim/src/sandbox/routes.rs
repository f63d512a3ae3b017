//! Routes in a running sandbox's VM (`kata-network add-route` / `del-route` / `list-routes`),
//! through the agent's increment mode.

use std::time::Instant;

use netmgmt::doc::RouteRequest;
use netmgmt::mg;
use netmgmt::output::{route_out, route_pb};

use super::Sandbox;
use crate::error::Result;

impl Sandbox {
    pub async fn add_route(&self, r: RouteRequest, deadline: Option<Instant>) -> Result<Vec<mg::Route>> {
        let _ops = self.ops_by(deadline).await?;
        let route = route_pb(&r, false);
        self.agent.update_routes(vec![route.clone()], true).await?;
        Ok(vec![route_out(&route)])
    }

    /// del-route: every route that matches all given fields; returns the routes deleted.
    pub async fn del_route(&self, r: RouteRequest, deadline: Option<Instant>) -> Result<Vec<mg::Route>> {
        let _ops = self.ops_by(deadline).await?;
        let before = self.agent.list_routes().await?;
        let after = self.agent.update_routes(vec![route_pb(&r, true)], true).await?;
        Ok(before.iter().filter(|b| !after.contains(b)).map(route_out).collect())
    }

    pub async fn list_routes(&self) -> Result<Vec<mg::Route>> {
        let _ops = self.ops.lock().await;
        Ok(self.agent.list_routes().await?.iter().map(route_out).collect())
    }
}
