//! The sandbox's NIC counters, in a form of their own that containerd's Task Stats and the
//! management service each render.

use network::nl::LinkCounters;
use network::IfName;

use super::Sandbox;
use crate::error::Result;

/// One NIC's counters.
#[derive(Debug, Clone)]
pub struct NicCounters {
    /// The NIC's name in the guest.
    pub name: String,
    /// The host device its frames pass through, and its counters.
    pub device: IfName,
    pub host: LinkCounters,
    /// The host device is a macvtap (else a TAP): its receive side is what it delivers to the
    /// VM, where a TAP's is what the VM sent.
    pub macvtap: bool,
    /// The guest's own counters of the NIC, when its agent gives them.
    pub guest: Option<LinkCounters>,
}

/// Traffic one way: bytes, packets, errors, dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Flow {
    pub bytes: u64,
    pub packets: u64,
    pub errors: u64,
    pub dropped: u64,
}

impl NicCounters {
    fn rx(&self) -> Flow {
        let h = &self.host;
        Flow { bytes: h.rx_bytes, packets: h.rx_packets, errors: h.rx_errors, dropped: h.rx_dropped }
    }

    fn tx(&self) -> Flow {
        let h = &self.host;
        Flow { bytes: h.tx_bytes, packets: h.tx_packets, errors: h.tx_errors, dropped: h.tx_dropped }
    }

    /// What reached the VM (the pod's receive side), counted on the host device.
    pub fn received_by_vm(&self) -> Flow {
        if self.macvtap {
            self.rx()
        } else {
            self.tx()
        }
    }

    /// What the VM sent (the pod's transmit side), counted on the host device.
    pub fn sent_by_vm(&self) -> Flow {
        if self.macvtap {
            self.tx()
        } else {
            self.rx()
        }
    }
}

impl Sandbox {
    /// Per NIC, the counters of the host device its frames pass through (see
    /// `EndpointState::host_device`), read in the sandbox's namespace: the pod's NICs (named in
    /// the guest as their links are), then the operator's. A vhost-user NIC has no such device.
    pub async fn nic_counters(&self) -> Result<Vec<NicCounters>> {
        // What to read, taken under the operation lock and read without it: the guest's answer
        // may take a while, and nothing else on the sandbox waits for that.
        let nics: Vec<(IfName, String, bool)> = {
            let ops = self.ops.lock().await;
            ops.state
                .endpoints
                .iter()
                .filter_map(|e| {
                    let device = e.host_device()?.clone();
                    let name = match ops.operator.added.iter().find(|a| &a.device == e.link()) {
                        Some(a) => a.name.clone(),
                        None => e.link().to_string(),
                    };
                    Some((device, name, e.host_device_is_macvtap()))
                })
                .collect()
        };
        // The guest's own counters, beside (an agent without GetMetrics gives none).
        let guest = match self.agent.get_metrics().await {
            Ok(text) => agent_client::metrics::guest_netdev(&text),
            Err(e) => {
                slog::debug!(self.log, "no guest counters"; "error" => e.to_string());
                Default::default()
            }
        };
        let mut out = Vec::new();
        for (device, name, macvtap) in nics {
            // A device gone (being unplugged, removed under the runtime) costs its own row only.
            let host = match network::nl::link_counters(&self.ctx.handle, device.as_str()).await {
                Ok(c) => c,
                Err(e) => {
                    slog::warn!(self.log, "no counters for a NIC"; "device" => device.as_str(), "error" => e.to_string());
                    continue;
                }
            };
            let guest = guest.get(&name).cloned();
            out.push(NicCounters { name, device, host, macvtap, guest });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_taps_receive_side_is_what_the_vm_sent_and_a_macvtaps_what_it_delivers() {
        let host = LinkCounters { rx_bytes: 1, rx_packets: 2, tx_bytes: 30, tx_packets: 40, ..Default::default() };
        let tap = NicCounters {
            name: "eth0".into(),
            device: "tap0_kata".parse().unwrap(),
            host,
            macvtap: false,
            guest: None,
        };
        assert_eq!((tap.received_by_vm().bytes, tap.received_by_vm().packets), (30, 40));
        assert_eq!((tap.sent_by_vm().bytes, tap.sent_by_vm().packets), (1, 2));
        let mvt = NicCounters { macvtap: true, ..tap };
        assert_eq!((mvt.received_by_vm().bytes, mvt.sent_by_vm().bytes), (1, 30));
    }
}
