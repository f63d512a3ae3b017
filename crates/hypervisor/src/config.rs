//! `[hypervisor.qemu]` in kata's keys, parsed and checked before anything starts.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, Rule};

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

/// This project's guest, where `make install` puts it.
pub(crate) const OUR_KERNEL: &str = "/usr/share/kata-net-rs/vmlinuz";
pub(crate) const OUR_INITRD: &str = "/usr/share/kata-net-rs/initrd.img";
/// kata-deploy's guest, where kata-deploy puts it: used by default when ours is not installed.
pub(crate) const KATA_DEPLOY_KERNEL: &str = "/opt/kata/share/kata-containers/vmlinux.container";
pub(crate) const KATA_DEPLOY_IMAGE: &str = "/opt/kata/share/kata-containers/kata-containers.img";
/// Where virtiofsd is looked for when `virtio_fs_daemon` is unset, in order: the Rust virtiofsd
/// (`cargo install --root /usr/local virtiofsd`, a distribution's package, kata-deploy's), then
/// QEMU 7.2's C one (Debian's qemu-system-common; QEMU 8 removed it).
pub(crate) const VIRTIOFSD_PATHS: [&str; 4] =
    ["/usr/local/bin/virtiofsd", "/usr/libexec/virtiofsd", "/opt/kata/libexec/virtiofsd", "/usr/lib/qemu/virtiofsd"];

/// `virtio_fs_cache` (kata's values): `auto` (the default), `always`, `never` (the C
/// virtiofsd's `none`, accepted as an alias) or `metadata` (the Rust virtiofsd only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VirtioFsCache {
    #[default]
    Auto,
    Always,
    #[serde(alias = "none")]
    Never,
    Metadata,
}

/// `[hypervisor.qemu]`. Keys are kata's where kata has them; `accelerator`, `hotplug_slots`,
/// `image_boot_initrd` and `console_log` are this project's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QemuConfig {
    pub path: PathBuf,
    pub kernel: PathBuf,
    /// The guest as an initramfs (kata's key); exclusive with `image`.
    pub initrd: PathBuf,
    /// The guest as a root filesystem image in kata's osbuilder layout (kata's key): a raw disk
    /// with one ext4 partition, behind a DAX header. Exclusive with `initrd`.
    pub image: PathBuf,
    /// Attach `image` as a read-only virtio-blk disk (`root=/dev/vda1`) instead of an NVDIMM
    /// backed by the file (`root=/dev/pmem0p1`, DAX) (kata's key).
    pub disable_image_nvdimm: bool,
    /// This project's: an initramfs that only loads the drivers a distribution kernel has as
    /// modules (NVDIMM, virtio-blk, ext4) and then boots `image`'s root. kata's guest kernel has
    /// them built in and needs none.
    pub image_boot_initrd: PathBuf,
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
    /// How the shim reaches the agent: `auto` (the default: hybrid vsock, whose socket only root
    /// reaches; kata would take kernel vsock where the host has it), `hybrid-vsock` (a vhost-user-vsock device and a
    /// `vhost-device-vsock` backend per sandbox), `vsock` (kernel vsock), `serial` (virtio-serial).
    pub agent_channel: AgentChannelChoice,
    /// The sandbox's shared directory in the guest (kata's key): `virtio-fs` (a virtiofsd per
    /// sandbox, mounted by the agent at `/run/kata-containers/shared/containers/`) or `none`.
    pub shared_fs: SharedFs,
    /// virtiofsd (kata's key): the Rust virtiofsd (what kata ships) or QEMU's C one, each given
    /// its own command line. Unset: the first installed of [`VIRTIOFSD_PATHS`].
    pub virtio_fs_daemon: PathBuf,
    /// virtiofsd's cache mode (kata's key).
    pub virtio_fs_cache: VirtioFsCache,
    /// More arguments for virtiofsd, after the runtime's own (kata's key), e.g.
    /// `["--thread-pool-size=1"]`.
    pub virtio_fs_extra_args: Vec<String>,
    /// Look for DPDK/OVS vhost-user sockets of the pod's links (kata's key; off by default).
    pub enable_vhost_user_store: bool,
    /// Where they are: `<path>/vhostuser_<pod IPv4>/vhu.sock`; every part must be root's.
    pub vhost_user_store_path: PathBuf,
    /// What each NIC of the VM may receive, in bits per second (kata's key; 0: no limit): an HTB
    /// on the NIC's host side (`network::shaping`).
    pub rx_rate_limiter_max_rate: u64,
    /// What each NIC of the VM may send, in bits per second (kata's key; 0: no limit).
    pub tx_rate_limiter_max_rate: u64,
}

impl Default for QemuConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from("/usr/bin/qemu-system-x86_64"),
            kernel: PathBuf::from(OUR_KERNEL),
            initrd: PathBuf::new(),
            image: PathBuf::new(),
            disable_image_nvdimm: false,
            image_boot_initrd: PathBuf::new(),
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
            virtio_fs_daemon: PathBuf::new(),
            virtio_fs_cache: VirtioFsCache::Auto,
            virtio_fs_extra_args: Vec::new(),
            enable_vhost_user_store: false,
            vhost_user_store_path: PathBuf::from("/var/run/kata-containers/vhost-user"),
            rx_rate_limiter_max_rate: 0,
            tx_rate_limiter_max_rate: 0,
        }
    }
}

/// A file QEMU is given (run as root, it decides what the guest runs): absolute, present, and
/// root's alone to change (`network::trust::check_root_file`).
/// `value` of `key` within `min..=max`.
fn in_range(key: &'static str, value: u64, unit: &'static str, min: u64, max: u64) -> Result<()> {
    match (min..=max).contains(&value) {
        true => Ok(()),
        false => Err(Error::Config { key, rule: Rule::OutOfRange { value, unit, min, max } }),
    }
}

fn file(key: &'static str, p: &Path) -> Result<()> {
    if !p.is_absolute() {
        return Err(Error::Config { key, rule: Rule::NotAbsolute(p.to_owned()) });
    }
    if !p.is_file() {
        return Err(Error::Config { key, rule: Rule::Missing(p.to_owned()) });
    }
    network::trust::check_root_file(p).map_err(|e| Error::Config { key, rule: Rule::Untrusted(e.to_string()) })
}

/// What the guest boots from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GuestRoot<'a> {
    Initrd(&'a Path),
    /// A root filesystem image: an NVDIMM backed by the file, or a read-only virtio-blk disk;
    /// with the initramfs that loads their drivers first, where the kernel needs one.
    Image {
        path: &'a Path,
        nvdimm: bool,
        boot_initrd: Option<&'a Path>,
    },
}

impl GuestRoot<'_> {
    /// The kernel parameters that name the root, as kata's runtime writes them.
    pub fn kernel_params(&self) -> &'static str {
        match self {
            GuestRoot::Initrd(_) => "",
            GuestRoot::Image { nvdimm: true, .. } => {
                "root=/dev/pmem0p1 rootflags=dax,data=ordered,errors=remount-ro ro rootfstype=ext4"
            }
            GuestRoot::Image { nvdimm: false, .. } => {
                "root=/dev/vda1 rootflags=data=ordered,errors=remount-ro ro rootfstype=ext4"
            }
        }
    }
}

impl QemuConfig {
    /// The node's limits on every NIC (0 in a key: none that way).
    pub fn rate_limit(&self) -> network::RateLimit {
        let some = |r: u64| (r != 0).then_some(r);
        network::RateLimit { rx_bps: some(self.rx_rate_limiter_max_rate), tx_bps: some(self.tx_rate_limiter_max_rate) }
    }

    /// Fill in what the file left out: the guest is ours where `make install` put it, else
    /// kata-deploy's where that is installed (kernel `vmlinux.container`, image
    /// `kata-containers.img`), else ours (and the check names the missing file).
    pub fn resolve_defaults(&mut self) {
        let present = |p: &str| Path::new(p).is_file();
        if self.kernel == Path::new(OUR_KERNEL) && !present(OUR_KERNEL) && present(KATA_DEPLOY_KERNEL) {
            self.kernel = KATA_DEPLOY_KERNEL.into();
        }
        if self.virtio_fs_daemon.as_os_str().is_empty() {
            let found = VIRTIOFSD_PATHS.iter().find(|p| present(p)).unwrap_or(&VIRTIOFSD_PATHS[3]);
            self.virtio_fs_daemon = PathBuf::from(found);
        }
        if self.initrd.as_os_str().is_empty() && self.image.as_os_str().is_empty() {
            match !present(OUR_INITRD) && present(KATA_DEPLOY_IMAGE) {
                true => self.image = KATA_DEPLOY_IMAGE.into(),
                false => self.initrd = OUR_INITRD.into(),
            }
        }
    }

    /// What the guest boots from (after [`QemuConfig::validate`]: exactly one of the two is set).
    pub(crate) fn root(&self) -> GuestRoot<'_> {
        match self.image.as_os_str().is_empty() {
            true => GuestRoot::Initrd(&self.initrd),
            false => GuestRoot::Image {
                path: &self.image,
                nvdimm: !self.disable_image_nvdimm,
                boot_initrd: (!self.image_boot_initrd.as_os_str().is_empty()).then_some(&*self.image_boot_initrd),
            },
        }
    }

    /// Check every key; the first bad one is the error, naming it.
    pub fn validate(&self) -> Result<()> {
        file("path", &self.path)?;
        file("kernel", &self.kernel)?;
        let (has_initrd, has_image) = (!self.initrd.as_os_str().is_empty(), !self.image.as_os_str().is_empty());
        match (has_initrd, has_image) {
            (true, true) => return Err(Error::Config { key: "image", rule: Rule::Exclusive("initrd") }),
            (false, false) => return Err(Error::Config { key: "initrd", rule: Rule::NoRoot }),
            (true, false) => file("initrd", &self.initrd)?,
            (false, true) => {
                file("image", &self.image)?;
                let len = std::fs::metadata(&self.image).map(|m| m.len()).unwrap_or(0);
                if len == 0 || len % (2 << 20) != 0 {
                    return Err(Error::Config {
                        key: "image",
                        rule: Rule::ImageSize { path: self.image.clone(), len },
                    });
                }
            }
        }
        if !self.image_boot_initrd.as_os_str().is_empty() {
            if !has_image {
                return Err(Error::Config { key: "image_boot_initrd", rule: Rule::OnlyForImage });
            }
            file("image_boot_initrd", &self.image_boot_initrd)?;
        }
        in_range("default_vcpus", self.default_vcpus.into(), "", 1, 255)?;
        for (key, rate) in [
            ("rx_rate_limiter_max_rate", self.rx_rate_limiter_max_rate),
            ("tx_rate_limiter_max_rate", self.tx_rate_limiter_max_rate),
        ] {
            if rate != 0 {
                in_range(key, rate, " bits/s", 1_000, 1_000_000_000_000_000)?;
            }
        }
        in_range("default_memory", self.default_memory.into(), " MiB", 128, 1_048_576)?;
        let max_slots = match self.machine_type {
            MachineType::Q35 => 14,
            MachineType::Pc => 30,
        };
        if self.hotplug_slots > max_slots {
            let rule = Rule::TooManySlots { value: self.hotplug_slots.into(), max: max_slots.into() };
            return Err(Error::Config { key: "hotplug_slots", rule });
        }
        if !self.vhost_user_store_path.is_absolute() {
            let rule = Rule::NotAbsolute(self.vhost_user_store_path.clone());
            return Err(Error::Config { key: "vhost_user_store_path", rule });
        }
        if self.shared_fs == SharedFs::VirtioFs {
            file("virtio_fs_daemon", &self.virtio_fs_daemon)?;
        }
        if let Some(a) = self.virtio_fs_extra_args.iter().find(|a| !a.starts_with('-') || a.contains(['\n', '\0'])) {
            return Err(Error::Config { key: "virtio_fs_extra_args", rule: Rule::NotAnOption(a.clone()) });
        }
        if self.kernel_params.contains(['\n', '\0']) {
            return Err(Error::Config { key: "kernel_params", rule: Rule::NotOneLine });
        }
        Ok(())
    }
}

/// `agent_channel`: how the shim reaches the agent. `auto` (the default) is hybrid vsock (a
/// root-only socket; kernel vsock lets any local user reach the agent, so it is taken only when
/// named); `serial` only when configured (kata's agent does not serve it).
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
virtio_fs_daemon = "/bin/true"
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
        let e = toml::from_str::<QemuConfig>("shared_fs = \"virtio-fs\"\nvirtio_fs_cache = \"sometimes\"").unwrap_err();
        assert!(e.to_string().contains("unknown variant `sometimes`"), "{e}");
        let fs: QemuConfig = toml::from_str("virtio_fs_cache = \"none\"\nvirtio_fs_extra_args = [\"x\"]").unwrap();
        assert_eq!((fs.shared_fs, fs.virtio_fs_cache), (SharedFs::VirtioFs, VirtioFsCache::Never));
        let e = QemuConfig {
            path: c.path.clone(),
            kernel: c.kernel.clone(),
            initrd: c.initrd.clone(),
            virtio_fs_daemon: "/bin/true".into(),
            ..fs
        };
        assert!(e.validate().unwrap_err().to_string().contains("virtio_fs_extra_args"));
        assert!(toml::from_str::<QemuConfig>("machine_type = \"virt\"").is_err());
    }

    #[test]
    fn validation_names_the_key() {
        let base = QemuConfig {
            path: "/bin/true".into(),
            kernel: "/bin/true".into(),
            initrd: "/bin/true".into(),
            virtio_fs_daemon: "/bin/true".into(),
            ..Default::default()
        };
        let cases: Vec<(QemuConfig, &str)> = vec![
            (QemuConfig { default_vcpus: 0, ..base.clone() }, "default_vcpus"),
            (QemuConfig { default_memory: 64, ..base.clone() }, "default_memory"),
            (QemuConfig { kernel: "relative/vmlinuz".into(), ..base.clone() }, "kernel"),
            (QemuConfig { initrd: "/nonexistent/initrd".into(), ..base.clone() }, "initrd"),
            (QemuConfig { hotplug_slots: 15, ..base.clone() }, "hotplug_slots"),
            (QemuConfig { kernel_params: "a\nb".into(), ..base.clone() }, "kernel_params"),
            (QemuConfig { image: "/bin/true".into(), ..base.clone() }, "image"),
            (QemuConfig { initrd: "".into(), ..base.clone() }, "initrd"),
            (QemuConfig { image_boot_initrd: "/bin/true".into(), ..base.clone() }, "image_boot_initrd"),
        ];
        for (c, key) in cases {
            match c.validate() {
                Err(Error::Config { key: k, .. }) => assert_eq!(k, key),
                other => panic!("{key}: {other:?}"),
            }
        }
        base.validate().unwrap();
    }

    /// A scratch file of `len` bytes and `mode`, root's; removed on drop.
    struct Image(PathBuf);
    impl Image {
        fn new(tag: &str, len: u64, mode: u32) -> Self {
            use std::os::unix::fs::PermissionsExt;
            let p = std::env::temp_dir().join(format!("knt-img-{}-{tag}", std::process::id()));
            let f = std::fs::File::create(&p).unwrap();
            f.set_len(len).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            Self(p)
        }
    }
    impl Drop for Image {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    #[test]
    fn an_image_instead_of_an_initrd_as_kata_boots_it() {
        let img = Image::new("ok", 8 << 20, 0o644);
        let c = QemuConfig {
            path: "/bin/true".into(),
            kernel: "/bin/true".into(),
            image: img.0.clone(),
            virtio_fs_daemon: "/bin/true".into(),
            ..Default::default()
        };
        c.validate().unwrap();
        assert_eq!(c.root(), GuestRoot::Image { path: &img.0, nvdimm: true, boot_initrd: None });
        assert_eq!(
            c.root().kernel_params(),
            "root=/dev/pmem0p1 rootflags=dax,data=ordered,errors=remount-ro ro rootfstype=ext4"
        );
        let blk = QemuConfig { disable_image_nvdimm: true, image_boot_initrd: "/bin/true".into(), ..c.clone() };
        blk.validate().unwrap();
        assert_eq!(
            blk.root().kernel_params(),
            "root=/dev/vda1 rootflags=data=ordered,errors=remount-ro ro rootfstype=ext4"
        );
        assert_eq!(
            blk.root(),
            GuestRoot::Image { path: &img.0, nvdimm: false, boot_initrd: Some(Path::new("/bin/true")) }
        );

        // Another user could write it: refused, naming the key and the rule.
        let writable = Image::new("ww", 8 << 20, 0o666);
        let e = QemuConfig { image: writable.0.clone(), ..c.clone() }.validate().unwrap_err().to_string();
        assert!(e.contains("[hypervisor.qemu] image: refused:") && e.contains("writable by group or others"), "{e}");
        // Not kata's layout (a whole number of 2 MiB blocks).
        let odd = Image::new("odd", (8 << 20) + 512, 0o644);
        let e = QemuConfig { image: odd.0.clone(), ..c.clone() }.validate().unwrap_err().to_string();
        assert!(e.contains("2 MiB"), "{e}");
        // Both: kata's rule.
        let e = QemuConfig { initrd: "/bin/true".into(), ..c }.validate().unwrap_err().to_string();
        assert!(e.contains("image: is exclusive with initrd"), "{e}");
    }

    #[test]
    fn defaults_are_ours_and_the_file_may_name_either() {
        let mut c = QemuConfig::default();
        c.resolve_defaults();
        // Ours or kata-deploy's, never both, never neither.
        assert!(c.initrd.as_os_str().is_empty() != c.image.as_os_str().is_empty(), "{c:?}");
        if !Path::new(KATA_DEPLOY_IMAGE).exists() {
            assert_eq!(c.initrd, Path::new(OUR_INITRD));
        }
        let mut named: QemuConfig = toml::from_str("image = \"/x/kata-containers.img\"").unwrap();
        named.resolve_defaults();
        assert_eq!((named.initrd.as_os_str().is_empty(), named.image), (true, PathBuf::from("/x/kata-containers.img")));
    }
}
