//! The `macvtap` model: a bridge-mode macvtap `tap<N>_kata` on the link takes over the link's
//! MAC (the one CNI's bridge expects to see), the link gets a random MAC and gives up its
//! addresses so that it no longer answers ARP for the VM. The VM reads and writes the macvtap's
//! queues. Teardown gives the link back its MAC, addresses, routes and permanent neighbours.

use crate::error::{Error, Result};
use crate::model::{Bridged, Connected, Connection};
use crate::rollback::{Rollback, Undo};
use crate::types::MacAddr;
use crate::{nic_fds, nl, NetCtx};

pub(super) async fn connect(ctx: &NetCtx, b: &Bridged, queues: usize, rb: &mut Rollback) -> Result<Connected> {
    let h = &ctx.handle;
    let (link, mvt) = (&b.link, &b.vm_dev);
    let mac = link.mac.ok_or_else(|| Error::Kernel { dev: link.name.to_string(), what: "no MAC address".into() })?;
    nl::ensure_absent(h, mvt).await?;

    // A MAC change flushes the link's neighbours, permanent ones too; they come back last.
    rb.push(Undo::AddNeighbors { name: link.name.clone(), neighbors: b.neighbors.clone() });
    let other = MacAddr::random_local().map_err(Error::io("pick a random MAC for", link.name.as_str()))?;
    nl::set_mac(h, link.index, link.name.as_str(), other).await?;
    rb.push(Undo::SetMac { name: link.name.clone(), mac });

    nl::add_macvtap(h, mvt, link.index, mac, link.mtu).await?;
    rb.push(Undo::DeleteLink { name: mvt.clone() });

    // Pushed before the addresses go, so the rollback restores routes after addresses.
    rb.push(Undo::AddRoutes { name: link.name.clone(), routes: b.routes.clone() });
    rb.push(Undo::AddAddresses { name: link.name.clone(), addresses: link.addresses.clone() });
    nl::del_addresses(h, link.index, link.name.as_str(), &link.addresses).await?;

    let index = nl::require_link(h, mvt.as_str()).await?;
    let fds = nic_fds::open_macvtap_queues(&ctx.netns, mvt, index, queues)?;
    Ok(Connected {
        queues: fds,
        connection: Connection::Macvtap {
            link: link.name.clone(),
            macvtap: mvt.clone(),
            link_mac: mac,
            addresses: link.addresses.clone(),
            routes: b.routes.clone(),
            neighbors: b.neighbors.clone(),
        },
    })
}
