//! kata's `configuration.toml` as a drop-in: the keys of kata 3.x's `configuration-qemu.toml`
//! this runtime does not implement are taken out before the file is read (and said once in the
//! log), so a stock file loads; what is left is read as strictly as ever, so a misspelt key or a
//! bad value of one we implement is still refused naming it. `[factory] enable_template` is
//! kata's place for the factory mode, which this runtime keeps in `[hypervisor.qemu]`.

/// kata's keys of `[hypervisor.qemu]` that this runtime does not implement: accepted, ignored.
const QEMU_IGNORED: &[&str] = &[
    "confidential_guest",
    "sev_snp_guest",
    "rootless",
    "enable_annotations",
    "valid_hypervisor_paths",
    "firmware",
    "firmware_volume",
    "machine_accelerators",
    "seccompsandbox",
    "cpu_features",
    "default_maxvcpus",
    "default_bridges",
    "memory_slots",
    "default_maxmemory",
    "memory_offset",
    "enable_virtio_mem",
    "disable_block_device_use",
    "valid_virtio_fs_daemon_paths",
    "virtio_fs_cache_size",
    "virtio_fs_queue_size",
    "virtio_fs_inode_file_handles",
    "block_device_driver",
    "block_device_aio",
    "block_device_cache_set",
    "block_device_cache_direct",
    "block_device_cache_noflush",
    "enable_iothreads",
    "enable_mem_prealloc",
    "reclaim_guest_freed_memory",
    "enable_hugepages",
    "enable_iommu",
    "enable_iommu_platform",
    "valid_vhost_user_store_paths",
    "vhost_user_reconnect_timeout_sec",
    "file_mem_backend",
    "valid_file_mem_backends",
    "pflashes",
    "enable_debug",
    "extra_monitor_socket",
    "disable_nesting_checks",
    "msize_9p",
    "hot_plug_vfio",
    "cold_plug_vfio",
    "pcie_root_port",
    "entropy_source",
    "valid_entropy_sources",
    "guest_hook_path",
    "guest_memory_dump_path",
    "guest_memory_dump_paging",
    "enable_guest_swap",
    "use_legacy_serial",
    "disable_selinux",
    "disable_guest_selinux",
    // kata 2.x's, still in older files.
    "use_vsock",
    "hotplug_vfio_on_root_bus",
    "enable_swap",
];

/// kata's `[factory]` keys besides `enable_template`.
const FACTORY_IGNORED: &[&str] = &["template_path", "vm_cache_number", "vm_cache_endpoint"];

/// kata's `[agent.kata]` keys that this runtime does not implement.
const AGENT_IGNORED: &[&str] = &["enable_tracing", "kernel_modules", "cdh_api_timeout"];

/// kata's `[runtime]` keys that this runtime does not implement.
const RUNTIME_IGNORED: &[&str] = &[
    "enable_debug",
    "enable_vcpus_pinning",
    "guest_selinux_label",
    "enable_tracing",
    "jaeger_endpoint",
    "jaeger_user",
    "jaeger_password",
    "sandbox_cgroup_only",
    "sandbox_bind_mounts",
    "vfio_mode",
    "disable_guest_empty_dir",
    "experimental",
    "enable_pprof",
    "create_container_timeout",
    "dan_conf",
];

/// Why a kata key this runtime reads in its own way is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("[{section}] {key}: {why}")]
pub struct Refused {
    pub section: &'static str,
    pub key: &'static str,
    pub why: String,
}

/// Take kata's unimplemented keys out of `file` (parsed TOML); the keys taken, as
/// `[section] key`. `[factory] enable_template` moves to `[hypervisor.qemu]`; `rootfs_type` is
/// only ext4 here (kata's guest image's), so another value is refused.
pub fn strip(file: &mut toml::Table) -> Result<Vec<String>, Refused> {
    let mut ignored = Vec::new();
    let mut take = |t: &mut toml::Table, section: &str, keys: &[&str]| {
        for k in keys {
            if t.remove(*k).is_some() {
                ignored.push(format!("[{section}] {k}"));
            }
        }
    };
    let factory_template = match file.get_mut("factory").and_then(toml::Value::as_table_mut) {
        Some(f) => {
            take(f, "factory", FACTORY_IGNORED);
            f.remove("enable_template")
        }
        None => None,
    };
    if file.get("factory").and_then(toml::Value::as_table).is_some_and(toml::Table::is_empty) {
        file.remove("factory");
    }
    if let Some(q) = table_at(file, &["hypervisor", "qemu"]) {
        take(q, "hypervisor.qemu", QEMU_IGNORED);
        if let Some(v) = q.remove("rootfs_type") {
            if v.as_str() != Some("ext4") {
                let why = format!("{v} is not supported (the guest's root is ext4, as kata's image has it)");
                return Err(Refused { section: "hypervisor.qemu", key: "rootfs_type", why });
            }
        }
        if let Some(t) = factory_template {
            q.entry("enable_template").or_insert(t);
        }
    } else if let Some(t) = factory_template {
        let qemu = toml::Table::from_iter([("enable_template".to_owned(), t)]);
        let hv = file.entry("hypervisor").or_insert_with(|| toml::Value::Table(Default::default()));
        if let Some(hv) = hv.as_table_mut() {
            hv.insert("qemu".into(), toml::Value::Table(qemu));
        }
    }
    if let Some(a) = table_at(file, &["agent", "kata"]) {
        take(a, "agent.kata", AGENT_IGNORED);
    }
    if let Some(r) = table_at(file, &["runtime"]) {
        take(r, "runtime", RUNTIME_IGNORED);
    }
    Ok(ignored)
}

fn table_at<'a>(t: &'a mut toml::Table, path: &[&str]) -> Option<&'a mut toml::Table> {
    let (first, rest) = path.split_first()?;
    let inner = t.get_mut(*first)?.as_table_mut()?;
    match rest.is_empty() {
        true => Some(inner),
        false => table_at(inner, rest),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kata_keys_go_ours_stay_and_the_factory_mode_moves() {
        let mut t: toml::Table = toml::from_str(
            r#"
[hypervisor.qemu]
path = "/opt/kata/bin/qemu-system-x86_64"
rootfs_type = "ext4"
enable_iothreads = false
block_device_driver = "virtio-scsi"
bogus = 1
[factory]
enable_template = true
template_path = "/run/vc/vm/template"
[agent.kata]
kernel_modules = []
dial_timeout = 45
[runtime]
internetworking_model = "tcfilter"
sandbox_cgroup_only = false
"#,
        )
        .unwrap();
        let ignored = strip(&mut t).unwrap();
        assert_eq!(
            ignored,
            [
                "[factory] template_path",
                "[hypervisor.qemu] block_device_driver",
                "[hypervisor.qemu] enable_iothreads",
                "[agent.kata] kernel_modules",
                "[runtime] sandbox_cgroup_only"
            ]
        );
        let q = t["hypervisor"]["qemu"].as_table().unwrap();
        assert_eq!(q.get("enable_template").and_then(toml::Value::as_bool), Some(true));
        assert!(q.contains_key("path") && q.contains_key("bogus"), "ours and the unknown stay: {q:?}");
        assert!(!t.contains_key("factory"));
        assert_eq!(t["agent"]["kata"]["dial_timeout"].as_integer(), Some(45));
    }

    #[test]
    fn a_root_other_than_ext4_is_refused_naming_the_key() {
        let mut t: toml::Table = toml::from_str("[hypervisor.qemu]\nrootfs_type = \"erofs\"\n").unwrap();
        let e = strip(&mut t).unwrap_err().to_string();
        assert!(e.starts_with("[hypervisor.qemu] rootfs_type: \"erofs\" is not supported"), "{e}");
    }
}
