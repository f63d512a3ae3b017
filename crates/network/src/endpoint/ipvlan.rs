//! An ipvlan on a host NIC (CNI's ipvlan plugin). All ipvlans share the parent's MAC, so a
//! macvtap cannot take it over: only the `tcfilter` and `none` models fit.

use crate::endpoint::{attach_bridged, Attached, EndpointConfig, EndpointState};
use crate::error::{Error, Result};
use crate::model::Bridged;
use crate::types::NetworkModel;
use crate::NetCtx;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpvlanEndpoint {
    pub id: String,
    pub bridged: Bridged,
}

impl IpvlanEndpoint {
    pub fn new(id: String, bridged: Bridged) -> Result<Self> {
        if bridged.model == NetworkModel::Macvtap {
            return Err(Error::Unsupported {
                name: bridged.link.name.to_string(),
                what: "the macvtap model on an ipvlan",
            });
        }
        Ok(Self { id, bridged })
    }

    pub async fn attach(&self, ctx: &NetCtx, cfg: &EndpointConfig) -> Result<Attached> {
        attach_bridged(ctx, &self.id, &self.bridged, cfg, |link, connection| EndpointState::Ipvlan { link, connection })
            .await
    }
}
