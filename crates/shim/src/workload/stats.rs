//! A container's metrics as containerd's CRI reads them: the guest's counters of the container
//! (StatsContainer) and the sandbox's NICs.

use containerd_shim_protos::cgroups::metrics::{Metrics, NetworkStat};
use containerd_shim_protos::protobuf::MessageField;

use crate::sandbox::NicCounters;

/// cgroups v1 metrics (`ctr task metrics`, CRI's ContainerStats): `network` from the pod's
/// point of view (receive: what reached the VM), the rest from the guest's cgroup when given.
pub(crate) fn metrics(nics: &[NicCounters], cgroup: Option<&agent_client::protocols::agent::CgroupStats>) -> Metrics {
    let network = nics
        .iter()
        .map(|n| {
            let (rx, tx) = (n.received_by_vm(), n.sent_by_vm());
            NetworkStat {
                name: n.name.clone(),
                rx_bytes: rx.bytes,
                rx_packets: rx.packets,
                rx_errors: rx.errors,
                rx_dropped: rx.dropped,
                tx_bytes: tx.bytes,
                tx_packets: tx.packets,
                tx_errors: tx.errors,
                tx_dropped: tx.dropped,
                ..Default::default()
            }
        })
        .collect();
    let mut m = Metrics { network, ..Default::default() };
    if let Some(c) = cgroup {
        metrics_from_guest(&mut m, c);
    }
    m
}

/// The guest's cgroup counters (kata's CgroupStats) in containerd's cgroup v1 metrics.
fn metrics_from_guest(m: &mut Metrics, c: &agent_client::protocols::agent::CgroupStats) {
    use containerd_shim_protos::cgroups::metrics::{CPUStat, CPUUsage, MemoryEntry, MemoryStat, PidsStat, Throttle};
    if let Some(cpu) = c.cpu_stats.as_ref() {
        let u = cpu.cpu_usage.clone().unwrap_or_default();
        let t = cpu.throttling_data.clone().unwrap_or_default();
        m.cpu = MessageField::some(CPUStat {
            usage: MessageField::some(CPUUsage {
                total: u.total_usage,
                kernel: u.usage_in_kernelmode,
                user: u.usage_in_usermode,
                per_cpu: u.percpu_usage.clone(),
                ..Default::default()
            }),
            throttling: MessageField::some(Throttle {
                periods: t.periods,
                throttled_periods: t.throttled_periods,
                throttled_time: t.throttled_time,
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    if let Some(mem) = c.memory_stats.as_ref() {
        let u = mem.usage.clone().unwrap_or_default();
        let stat = |k: &str| mem.stats.get(k).copied().unwrap_or(0);
        m.memory = MessageField::some(MemoryStat {
            cache: mem.cache,
            rss: stat("anon"),
            inactive_file: stat("inactive_file"),
            active_file: stat("active_file"),
            inactive_anon: stat("inactive_anon"),
            active_anon: stat("active_anon"),
            total_inactive_file: stat("inactive_file"),
            total_rss: stat("anon"),
            total_cache: mem.cache,
            pg_fault: stat("pgfault"),
            pg_maj_fault: stat("pgmajfault"),
            usage: MessageField::some(MemoryEntry {
                usage: u.usage,
                max: u.max_usage,
                failcnt: u.failcnt,
                limit: u.limit,
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    if let Some(p) = c.pids_stats.as_ref() {
        m.pids = MessageField::some(PidsStat { current: p.current, limit: p.limit, ..Default::default() });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_carry_the_pods_view_of_each_nic_and_the_guests_cgroup() {
        use agent_client::protocols::agent::{CgroupStats, CpuStats, CpuUsage, MemoryData, MemoryStats, PidsStats};
        let host = network::nl::LinkCounters { rx_bytes: 10, tx_bytes: 20, tx_packets: 2, ..Default::default() };
        let tap = NicCounters {
            name: "eth0".into(),
            device: "tap0_kata".parse().unwrap(),
            host,
            macvtap: false,
            guest: None,
        };
        let mvt = NicCounters { name: "eth1".into(), macvtap: true, ..tap.clone() };
        let cg = CgroupStats {
            cpu_stats: MessageField::some(CpuStats {
                cpu_usage: MessageField::some(CpuUsage { total_usage: 5_000, ..Default::default() }),
                ..Default::default()
            }),
            memory_stats: MessageField::some(MemoryStats {
                usage: MessageField::some(MemoryData { usage: 4096, limit: 1 << 20, ..Default::default() }),
                stats: [("inactive_file".to_string(), 1024u64)].into(),
                ..Default::default()
            }),
            pids_stats: MessageField::some(PidsStats { current: 3, limit: 10, ..Default::default() }),
            ..Default::default()
        };
        let m = metrics(&[tap, mvt], Some(&cg));
        // A TAP's transmit side is what reached the VM; a macvtap's receive side is.
        assert_eq!((m.network[0].rx_bytes, m.network[0].rx_packets, m.network[0].tx_bytes), (20, 2, 10));
        assert_eq!((m.network[1].name.as_str(), m.network[1].rx_bytes, m.network[1].tx_bytes), ("eth1", 10, 20));
        assert_eq!(m.cpu.usage.total, 5_000);
        assert_eq!((m.memory.usage.usage, m.memory.usage.limit, m.memory.inactive_file), (4096, 1 << 20, 1024));
        assert_eq!((m.pids.current, m.pids.limit), (3, 10));
        let bare = metrics(&[], None);
        assert!(bare.network.is_empty() && bare.cpu.is_none() && bare.memory.is_none(), "no guest: no cgroup");
    }
}
