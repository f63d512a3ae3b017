//! A macvlan on a host NIC (CNI's macvlan plugin).

use crate::endpoint::{attach_bridged, Attached, EndpointConfig, EndpointState};
use crate::error::Result;
use crate::model::Bridged;
use crate::NetCtx;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MacvlanEndpoint {
    pub id: String,
    pub bridged: Bridged,
}

impl MacvlanEndpoint {
    pub async fn attach(&self, ctx: &NetCtx, cfg: &EndpointConfig) -> Result<Attached> {
        attach_bridged(ctx, &self.id, &self.bridged, cfg, |link, connection| EndpointState::Macvlan {
            link,
            connection,
        })
        .await
    }
}
