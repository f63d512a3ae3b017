//! A tap-mode tun/tap device made by CNI or by hand, bridged to the VM's own TAP through the
//! interworking model. (Under the `none` model a TAP is given to the VM as it is: `direct_tap.rs`.)

use crate::endpoint::{attach_bridged, Attached, EndpointConfig, EndpointState};
use crate::error::Result;
use crate::model::Bridged;
use crate::NetCtx;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgedTapEndpoint {
    pub id: String,
    pub bridged: Bridged,
}

impl BridgedTapEndpoint {
    pub async fn attach(&self, ctx: &NetCtx, cfg: &EndpointConfig) -> Result<Attached> {
        attach_bridged(ctx, &self.id, &self.bridged, cfg, |link, connection| EndpointState::BridgedTap {
            link,
            connection,
        })
        .await
    }
}
