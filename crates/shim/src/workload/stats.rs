//! The guest's counters of a container (StatsContainer) in the metrics containerd's CRI reads.

use containerd_shim_protos::protobuf::MessageField;

/// The guest's cgroup counters (kata's CgroupStats) in containerd's cgroup v1 metrics.
pub(crate) fn metrics_from_guest(
    m: &mut containerd_shim_protos::cgroups::metrics::Metrics,
    c: &agent_client::protocols::agent::CgroupStats,
) {
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
