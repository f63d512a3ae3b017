//! The `none` model for links that are not TAPs: the runtime makes a TAP `tap<N>_kata` for the
//! VM and joins it to nothing; connecting it is left to the operator's own tooling.
//! (A TAP link under `none` is used as it is: see `endpoint::tap`.)

use crate::error::Result;
use crate::model::{Bridged, Connected, Connection};
use crate::rollback::{Rollback, Undo};
use crate::{nic_fds, nl, NetCtx};

pub(super) async fn connect(ctx: &NetCtx, b: &Bridged, queues: usize, rb: &mut Rollback) -> Result<Connected> {
    let h = &ctx.handle;
    let tap = &b.vm_dev;
    let (fds, index) = nic_fds::create_tap_in(&ctx.worker, tap, queues, queues > 1)?;
    rb.push(Undo::DeleteLink { name: tap.clone() });
    nl::set_runtime_dev_up(h, index, tap.as_str(), b.link.mtu).await?;
    Ok(Connected { queues: fds, connection: Connection::Tap { tap: tap.clone() } })
}
