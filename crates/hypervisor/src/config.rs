//! `[hypervisor.qemu]` in kata's keys, parsed and checked before anything starts.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Which accelerator: `auto` uses KVM when it really works (probed), TCG otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccelChoice {
    #[default]
    Auto,
    Kvm,
    Tcg,
}

/// The machine types with a hotplug path the guest kernel supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MachineType {
    /// PCIe root ports, one per future NIC (PCIe native hotplug).
    #[default]
    Q35,
    /// A PCI bridge with ACPI hotplug, slots 1..=30.
    Pc,
}

/// `[hypervisor.qemu]`. Keys are kata's where kata has them; `accelerator`, `hotplug_slots`
/// and `console_log` are this project's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QemuConfig {
    pub path: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub kernel_params: String,
    pub machine_type: MachineType,
    pub default_vcpus: u32,
    /// MiB.
    pub default_memory: u32,
    pub disable_vhost_net: bool,
    /// Factory mode: start the VM without NICs and hotplug every endpoint right after.
    pub enable_template: bool,
    pub accelerator: AccelChoice,
    /// Free slots kept for hotplugged NICs.
    pub hotplug_slots: u32,
    /// How the shim reaches the agent: `auto` (the default, kata's choice: vsock where the host
    /// has `/dev/vhost-vsock`, else hybrid vsock), `hybrid-vsock` (a vhost-user-vsock device and a
    /// `vhost-device-vsock` backend per sandbox), `vsock` (kernel vsock), `serial` (virtio-serial).
    pub agent_channel: AgentChannelChoice,
    /// The sandbox's shared directory in the guest (kata's key): `virtio-fs` (a virtiofsd per
    /// sandbox, mounted by the agent at `/run/kata-containers/shared/containers/`) or `none`.
    pub shared_fs: SharedFs,
    /// virtiofsd (kata's key).
    pub virtio_fs_daemon: PathBuf,
    /// virtiofsd's cache mode (kata's key): `auto`, `always` or `none`.
    pub virtio_fs_cache: String,
    /// Look for DPDK/OVS vhost-user sockets of the pod's links (kata's key; off by default).
    pub enable_vhost_user_store: bool,
    /// Where they are: `<path>/vhostuser_<pod IPv4>/vhu.sock`; every part must be root's.
    pub vhost_user_store_path: PathBuf,
}

impl Default for QemuConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from("/usr/bin/qemu-system-x86_64"),
            kernel: PathBuf::from("/usr/share/kata-net-rs/vmlinuz"),
            initrd: PathBuf::from("/usr/share/kata-net-rs/initrd.img"),
            kernel_params: String::new(),
            machine_type: MachineType::Q35,
            default_vcpus: 1,
            default_memory: 512,
            disable_vhost_net: false,
            enable_template: false,
            accelerator: AccelChoice::Auto,
            hotplug_slots: 8,
            agent_channel: AgentChannelChoice::Auto,
            shared_fs: SharedFs::VirtioFs,
            virtio_fs_daemon: PathBuf::from("/usr/lib/qemu/virtiofsd"),
            virtio_fs_cache: "auto".into(),
            enable_vhost_user_store: false,
            vhost_user_store_path: PathBuf::from("/var/run/kata-containers/vhost-user"),
        }
    }
}

fn file(key: &'static str, p: &Path) -> Result<()> {
    if !p.is_absolute() {
        return Err(Error::Config { key, why: format!("{} must be an absolute path", p.display()) });
    }
    if !p.is_file() {
        return Err(Error::Config { key, why: format!("{} does not exist", p.display()) });
    }
    Ok(())
}

impl QemuConfig {
    /// Check every key; the first bad one is the error, naming it.
    pub fn validate(&self) -> Result<()> {
        file("path", &self.path)?;
        file("kernel", &self.kernel)?;
        file("initrd", &self.initrd)?;
        if !(1..=255).contains(&self.default_vcpus) {
            return Err(Error::Config {
                key: "default_vcpus",
                why: format!("{} is outside 1..=255", self.default_vcpus),
            });
        }
        if !(128..=1_048_576).contains(&self.default_memory) {
            return Err(Error::Config {
                key: "default_memory",
                why: format!("{} MiB is outside 128..=1048576", self.default_memory),
            });
        }
        let max_slots = match self.machine_type {
            MachineType::Q35 => 14,
            MachineType::Pc => 30,
        };
        if self.hotplug_slots > max_slots {
            return Err(Error::Config {
                key: "hotplug_slots",
                why: format!("{} is more than the {max_slots} this machine type offers", self.hotplug_slots),
            });
        }
        if !self.vhost_user_store_path.is_absolute() {
            return Err(Error::Config { key: "vhost_user_store_path", why: "must be an absolute path".into() });
        }
        if self.shared_fs == SharedFs::VirtioFs {
            file("virtio_fs_daemon", &self.virtio_fs_daemon)?;
        }
        if !["auto", "always", "none"].contains(&self.virtio_fs_cache.as_str()) {
            return Err(Error::Config {
                key: "virtio_fs_cache",
                why: format!("{:?} is not auto, always or none", self.virtio_fs_cache),
            });
        }
        if self.kernel_params.contains(['\n', '\0']) {
            return Err(Error::Config { key: "kernel_params", why: "must be one line".into() });
        }
        Ok(())
    }
}

/// `agent_channel`: how the shim reaches the agent. `auto` (the default) chooses as kata does:
/// kernel vsock where the host has `/dev/vhost-vsock`, else hybrid vsock; `serial` only when
/// configured (kata's agent does not serve it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AgentChannelChoice {
    Serial,
    HybridVsock,
    Vsock,
    #[default]
    Auto,
}

/// `shared_fs`: how the sandbox's shared directory reaches the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SharedFs {
    /// None: no container runs in the VM; the sandbox's task is the VM itself.
    None,
    /// virtio-fs (the default): `vhost-user-fs-pci` with the tag `kataShared`, served by
    /// virtiofsd; the containers' root filesystems reach the guest through it.
    #[default]
    VirtioFs,
}

/// The virtio-fs tag kata's runtime and agent use for the sandbox's shared directory.
pub const SHARED_FS_TAG: &str = "kataShared";

/// How the shim reaches the agent.
#[derive(Debug, Clone)]
pub enum AgentChannel {
    /// A virtio-serial port named `agent.channel.0`, exposed as a unix socket QEMU listens on.
    Serial { socket: PathBuf },
    /// Hybrid vsock through a vhost-user-vsock backend listening on `backend`.
    VhostUserVsock { backend: PathBuf },
    /// Kernel vsock (`/dev/vhost-vsock`): the guest's CID and, as kata does it, the vhost-vsock
    /// fd on which the caller reserved that CID (QEMU gets it as `vhostfd`, so no other VM can
    /// take the CID between the reservation and QEMU's start).
    Vsock { cid: u32, vhostfd: Option<std::sync::Arc<std::os::fd::OwnedFd>> },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kata_keys_and_rejects_unknown_ones() {
        let c: QemuConfig = toml::from_str(
            r#"path = "/bin/true"
kernel = "/bin/true"
initrd = "/bin/true"
machine_type = "pc"
default_vcpus = 2
default_memory = 1024
disable_vhost_net = true
enable_template = true"#,
        )
        .unwrap();
        assert_eq!((c.machine_type, c.default_vcpus, c.default_memory), (MachineType::Pc, 2, 1024));
        assert!(c.disable_vhost_net && c.enable_template);
        c.validate().unwrap();
        let e = toml::from_str::<QemuConfig>("block_device_driver = \"virtio-scsi\"").unwrap_err();
        assert!(e.to_string().contains("unknown field `block_device_driver`"), "{e}");
        let fs: QemuConfig = toml::from_str("shared_fs = \"virtio-fs\"\nvirtio_fs_cache = \"sometimes\"").unwrap();
        assert_eq!(fs.shared_fs, SharedFs::VirtioFs);
        let e = QemuConfig { path: c.path.clone(), kernel: c.kernel.clone(), initrd: c.initrd.clone(), ..fs };
        assert!(e.validate().unwrap_err().to_string().contains("virtio_fs_cache"));
        assert!(toml::from_str::<QemuConfig>("machine_type = \"virt\"").is_err());
    }

    #[test]
    fn validation_names_the_key() {
        let base = QemuConfig {
            path: "/bin/true".into(),
            kernel: "/bin/true".into(),
            initrd: "/bin/true".into(),
            ..Default::default()
        };
        let cases: Vec<(QemuConfig, &str)> = vec![
            (QemuConfig { default_vcpus: 0, ..base.clone() }, "default_vcpus"),
            (QemuConfig { default_memory: 64, ..base.clone() }, "default_memory"),
            (QemuConfig { kernel: "relative/vmlinuz".into(), ..base.clone() }, "kernel"),
            (QemuConfig { initrd: "/nonexistent/initrd".into(), ..base.clone() }, "initrd"),
            (QemuConfig { hotplug_slots: 15, ..base.clone() }, "hotplug_slots"),
            (QemuConfig { kernel_params: "a\nb".into(), ..base.clone() }, "kernel_params"),
        ];
        for (c, key) in cases {
            match c.validate() {
                Err(Error::Config { key: k, .. }) => assert_eq!(k, key),
                other => panic!("{key}: {other:?}"),
            }
        }
        base.validate().unwrap();
    }
}
