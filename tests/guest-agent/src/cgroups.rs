//! The containers' cgroups in the guest (cgroup v2, mounted by the agent at `/sys/fs/cgroup`):
//! one per container at `/sys/fs/cgroup/kata/<cid>`, with the spec's `linux.resources` (OCI's
//! cgroup v1 terms, converted as runc converts them for cgroup v2), the counters StatsContainer
//! reads, and the OOM kills `memory.events` counts. A guest kernel without cgroup v2 runs the
//! containers without limits (and says so once).

use std::path::{Path, PathBuf};

use agent_client::protocols::agent::{
    CgroupStats, CpuStats, CpuUsage, MemoryData, MemoryStats, PidsStats, ThrottlingData,
};
use agent_client::protocols::oci::LinuxResources;
use protobuf::MessageField;

const ROOT: &str = "/sys/fs/cgroup";
const CONTROLLERS: &str = "+memory +cpu +pids";

/// Mount cgroup v2 and let the containers' parent cgroup use memory, cpu and pids. `false`: the
/// guest has no cgroup v2.
pub fn init() -> bool {
    let root = Path::new(ROOT);
    if !root.join("cgroup.controllers").exists() {
        let _ = std::fs::create_dir_all(root);
        let none = None::<&str>;
        if nix::mount::mount(Some("cgroup2"), root, Some("cgroup2"), nix::mount::MsFlags::empty(), none).is_err() {
            eprintln!("guest-agent: no cgroup v2 in this kernel: containers run without resource limits");
            return false;
        }
    }
    let kata = root.join("kata");
    let _ = std::fs::create_dir_all(&kata);
    for dir in [root, kata.as_path()] {
        if let Err(e) = std::fs::write(dir.join("cgroup.subtree_control"), CONTROLLERS) {
            eprintln!("guest-agent: enabling {CONTROLLERS} in {}: {e}", dir.display());
        }
    }
    true
}

/// Container `cid`'s cgroup directory.
pub fn dir(cid: &str) -> PathBuf {
    Path::new(ROOT).join("kata").join(cid)
}

fn write(dir: &Path, file: &str, value: &str) -> Result<(), String> {
    std::fs::write(dir.join(file), value).map_err(|e| format!("{file} = {value}: {e}"))
}

/// cgroup v1's cpu.shares (2..262144) as cgroup v2's cpu.weight (1..10000), as runc maps it.
pub fn weight_of_shares(shares: u64) -> u64 {
    match shares {
        0 => 100,
        s => 1 + (s.clamp(2, 262_144) - 2) * 9999 / 262_142,
    }
}

/// Make container `cid`'s cgroup with `res` applied. The error names the file and value.
pub fn create(cid: &str, res: Option<&LinuxResources>) -> Result<PathBuf, String> {
    let d = dir(cid);
    std::fs::create_dir_all(&d).map_err(|e| format!("making {}: {e}", d.display()))?;
    let Some(res) = res else { return Ok(d) };
    if let Some(m) = res.Memory.as_ref() {
        if m.Limit > 0 {
            write(&d, "memory.max", &m.Limit.to_string())?;
            // OCI's swap is memory + swap; cgroup v2 counts swap alone.
            if m.Swap > 0 && m.Swap >= m.Limit {
                write(&d, "memory.swap.max", &(m.Swap - m.Limit).to_string())?;
            }
        }
        if m.Reservation > 0 {
            write(&d, "memory.low", &m.Reservation.to_string())?;
        }
        if m.DisableOOMKiller {
            // cgroup v2 has no switch for it: the whole cgroup is not killed as a group either.
            write(&d, "memory.oom.group", "0")?;
        }
    }
    if let Some(c) = res.CPU.as_ref() {
        if c.Shares > 0 {
            write(&d, "cpu.weight", &weight_of_shares(c.Shares).to_string())?;
        }
        if c.Quota != 0 || c.Period != 0 {
            let period = if c.Period == 0 { 100_000 } else { c.Period };
            let quota = if c.Quota > 0 { c.Quota.to_string() } else { "max".to_owned() };
            write(&d, "cpu.max", &format!("{quota} {period}"))?;
        }
    }
    if let Some(p) = res.Pids.as_ref() {
        if p.Limit != 0 {
            write(&d, "pids.max", &if p.Limit > 0 { p.Limit.to_string() } else { "max".to_owned() })?;
        }
    }
    Ok(d)
}

/// The pids in the cgroup (none when it is gone).
pub fn procs(d: &Path) -> Vec<i32> {
    std::fs::read_to_string(d.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Send `sig` to every process of the cgroup (SIGKILL: `cgroup.kill` where the kernel has it).
pub fn signal_all(d: &Path, sig: nix::sys::signal::Signal) {
    if sig == nix::sys::signal::Signal::SIGKILL && std::fs::write(d.join("cgroup.kill"), "1").is_ok() {
        return;
    }
    for pid in procs(d) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
    }
}

/// `key value` lines of a cgroup file as pairs.
fn keyed(d: &Path, file: &str) -> Vec<(String, u64)> {
    std::fs::read_to_string(d.join(file))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_owned(), v.trim().parse().ok()?))
        })
        .collect()
}

fn value(d: &Path, file: &str) -> Option<u64> {
    std::fs::read_to_string(d.join(file)).ok()?.trim().parse().ok()
}

/// How many processes of the cgroup the OOM killer killed.
pub fn oom_kills(d: &Path) -> u64 {
    keyed(d, "memory.events").into_iter().find(|(k, _)| k == "oom_kill").map(|(_, v)| v).unwrap_or(0)
}

/// The counters of StatsContainer, in kata's (cgroup v1 shaped) message: CPU in nanoseconds.
pub fn stats(d: &Path) -> CgroupStats {
    let cpu = keyed(d, "cpu.stat");
    let get = |k: &str| cpu.iter().find(|(n, _)| n == k).map(|(_, v)| *v).unwrap_or(0);
    let mem = keyed(d, "memory.stat");
    let mem_get = |k: &str| mem.iter().find(|(n, _)| n == k).map(|(_, v)| *v).unwrap_or(0);
    let limit = value(d, "memory.max").unwrap_or(u64::MAX);
    CgroupStats {
        cpu_stats: MessageField::some(CpuStats {
            cpu_usage: MessageField::some(CpuUsage {
                total_usage: get("usage_usec") * 1000,
                usage_in_usermode: get("user_usec") * 1000,
                usage_in_kernelmode: get("system_usec") * 1000,
                ..Default::default()
            }),
            throttling_data: MessageField::some(ThrottlingData {
                periods: get("nr_periods"),
                throttled_periods: get("nr_throttled"),
                throttled_time: get("throttled_usec") * 1000,
                ..Default::default()
            }),
            ..Default::default()
        }),
        memory_stats: MessageField::some(MemoryStats {
            cache: mem_get("file"),
            usage: MessageField::some(MemoryData {
                usage: value(d, "memory.current").unwrap_or(0),
                max_usage: value(d, "memory.peak").unwrap_or(0),
                failcnt: keyed(d, "memory.events").into_iter().find(|(k, _)| k == "max").map(|(_, v)| v).unwrap_or(0),
                limit,
                ..Default::default()
            }),
            use_hierarchy: true,
            stats: mem.into_iter().collect(),
            ..Default::default()
        }),
        pids_stats: MessageField::some(PidsStats {
            current: value(d, "pids.current").unwrap_or(0),
            limit: value(d, "pids.max").unwrap_or(0),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Remove the cgroup (its processes are gone).
pub fn remove(d: &Path) {
    let _ = std::fs::remove_dir(d);
}

#[cfg(test)]
mod tests {
    #[test]
    fn cpu_shares_become_weights_as_runc_maps_them() {
        assert_eq!(super::weight_of_shares(2), 1);
        assert_eq!(super::weight_of_shares(1024), 39);
        assert_eq!(super::weight_of_shares(262_144), 10_000);
        assert_eq!(super::weight_of_shares(0), 100);
    }
}
