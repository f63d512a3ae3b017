//! The `tcfilter` model: a multi-queue TAP `tap<N>_kata`, an ingress qdisc on it and on the
//! link, and a match-all u32 filter on each that redirects every frame to the other.

use crate::error::Result;
use crate::model::{Bridged, Connected, Connection};
use crate::rollback::{Rollback, Undo};
use crate::{nic_fds, nl, NetCtx};

pub(super) async fn connect(ctx: &NetCtx, b: &Bridged, queues: usize, rb: &mut Rollback) -> Result<Connected> {
    let h = &ctx.handle;
    let (link, tap) = (&b.link, &b.vm_dev);
    let (fds, tap_index) = nic_fds::create_tap_in(&ctx.worker, tap, queues, queues > 1)?;
    rb.push(Undo::DeleteLink { name: tap.clone() });
    nl::set_runtime_dev_up(h, tap_index, tap.as_str(), link.mtu).await?;

    nl::add_ingress(h, link.index, link.name.as_str()).await?;
    rb.push(Undo::DeleteIngress { name: link.name.clone() });
    nl::add_ingress(h, tap_index, tap.as_str()).await?;
    nl::add_redirect(h, link.index, link.name.as_str(), tap_index).await?;
    nl::add_redirect(h, tap_index, tap.as_str(), link.index).await?;

    Ok(Connected { queues: fds, connection: Connection::TcFilter { link: link.name.clone(), tap: tap.clone() } })
}
