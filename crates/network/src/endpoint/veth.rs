//! A veth whose peer is outside the namespace (CNI's bridge, ptp and most plugins).

use crate::endpoint::{attach_bridged, Attached, EndpointConfig, EndpointState};
use crate::error::Result;
use crate::model::Bridged;
use crate::NetCtx;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VethEndpoint {
    pub id: String,
    pub bridged: Bridged,
}

impl VethEndpoint {
    pub async fn attach(&self, ctx: &NetCtx, cfg: &EndpointConfig) -> Result<Attached> {
        attach_bridged(ctx, &self.id, &self.bridged, cfg, |link, connection| EndpointState::Veth { link, connection })
            .await
    }
}
