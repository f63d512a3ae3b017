//! A tap-mode tun/tap device made by CNI or by hand, joined to the VM through the model (under the `none` model a TAP is used as it is: see `tap.rs`).

use crate::endpoint::{attach_bridged, Attached, EndpointConfig, EndpointState};
use crate::error::Result;
use crate::model::Bridged;
use crate::NetCtx;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TuntapEndpoint {
    pub id: String,
    pub bridged: Bridged,
}

impl TuntapEndpoint {
    pub async fn attach(&self, ctx: &NetCtx, cfg: &EndpointConfig) -> Result<Attached> {
        attach_bridged(ctx, &self.id, &self.bridged, cfg, |link, connection| EndpointState::Tuntap { link, connection })
            .await
    }
}
