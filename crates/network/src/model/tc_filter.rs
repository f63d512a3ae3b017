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

/// Join the runtime's TAP `tap` to `link` again, a device made anew under the pod's link's name
/// (its old redirects went with the old device; the TAP's own led nowhere): the TAP's ingress is
/// replaced and the link gets its ingress and redirect. Each step is undone on failure.
pub(crate) async fn rejoin(ctx: &NetCtx, link: &crate::IfName, tap: &crate::IfName) -> Result<()> {
    let h = &ctx.handle;
    let (li, ti) = (nl::require_link(h, link.as_str()).await?, nl::require_link(h, tap.as_str()).await?);
    nl::del_ingress(h, tap.as_str()).await?;
    let mut rb = Rollback::new(ctx);
    let joined = async {
        nl::add_ingress(h, li, link.as_str()).await?;
        rb.push(Undo::DeleteIngress { name: link.clone() });
        nl::add_ingress(h, ti, tap.as_str()).await?;
        rb.push(Undo::DeleteIngress { name: tap.clone() });
        nl::add_redirect(h, li, link.as_str(), ti).await?;
        nl::add_redirect(h, ti, tap.as_str(), li).await
    }
    .await;
    match joined {
        Ok(()) => {
            rb.commit();
            Ok(())
        }
        Err(e) => {
            let _ = rb.undo().await;
            Err(e)
        }
    }
}
