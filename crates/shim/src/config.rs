//! `configuration.toml` in kata's format: `[hypervisor.qemu]`, `[agent.kata]` and `[runtime]`.
//!
//! Found through `KATA_CONF_FILE`, then `/etc/kata-containers/configuration.toml`, then
//! `/usr/share/defaults/kata-containers/configuration.toml`; without any, the built-in default
//! (QEMU from Debian, the guest image installed by `make install` under
//! `/usr/share/kata-net-rs`). Unknown keys and bad values are errors at start, naming the key.

use std::path::{Path, PathBuf};

use network::NetworkModel;
use serde::Deserialize;

pub use netmgmt::paths::{CONF_ENV, CONF_PATHS};

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Hypervisors {
    pub qemu: hypervisor::QemuConfig,
}

/// `[runtime]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Runtime {
    pub internetworking_model: NetworkModel,
    /// Use only the namespace the OCI spec names; never create one.
    pub disable_new_netns: bool,
    /// Queue pairs per NIC; 0 means one per vCPU.
    pub network_queues: u32,
    /// Where the shim keeps each sandbox's run directory (QMP, agent socket, console log).
    pub run_dir: PathBuf,
    /// Follow the pod's namespace after start: links, addresses and routes that CNI or an
    /// operator changes reach the VM (`sandbox/follow.rs`). On by default.
    pub follow_netns: bool,
    /// Containers' seccomp profiles are not given to the guest (kata's key; kata's stock file
    /// sets it, its absence means they are).
    pub disable_guest_seccomp: bool,
    /// The VM is sized from the pod before it boots (kata's key): the sandbox sizing containerd
    /// passes (`io.kubernetes.cri.sandbox-cpu-*`, `-memory`) is added to `default_vcpus` and
    /// `default_memory`, and the NICs' queues follow the vCPUs.
    pub static_sandbox_resource_mgmt: bool,
}

impl Default for Runtime {
    fn default() -> Self {
        Self {
            internetworking_model: NetworkModel::TcFilter,
            disable_new_netns: false,
            network_queues: 0,
            run_dir: PathBuf::from(netmgmt::paths::DEFAULT_RUN_DIR),
            follow_netns: true,
            disable_guest_seccomp: false,
            static_sandbox_resource_mgmt: false,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Agents {
    pub kata: KataAgent,
}

/// `[agent.kata]`: what the guest's agent is told on the kernel command line (`agent.*`, which
/// kata's agent reads), and how long the shim waits for it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KataAgent {
    /// `agent.log=debug`.
    pub enable_debug: bool,
    /// A shell on vsock port 1026 (`agent.debug_console agent.debug_console_vport=1026`), as
    /// `kata-runtime exec` expects; for debugging only.
    pub debug_console_enabled: bool,
    /// Seconds from QEMU's start to the agent answering; kata's default is 45, ours 90 (TCG).
    pub dial_timeout: u32,
}

impl Default for KataAgent {
    fn default() -> Self {
        Self { enable_debug: false, debug_console_enabled: false, dial_timeout: 90 }
    }
}

/// kata's debug console port.
pub const DEBUG_CONSOLE_VPORT: u32 = 1026;

impl KataAgent {
    /// The kernel parameters for the agent, as kata's runtime writes them.
    pub fn kernel_params(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.enable_debug {
            p.push("agent.log=debug".to_owned());
        }
        if self.debug_console_enabled {
            p.push("agent.debug_console".to_owned());
            p.push(format!("agent.debug_console_vport={DEBUG_CONSOLE_VPORT}"));
        }
        p
    }
}

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub hypervisor: Hypervisors,
    pub agent: Agents,
    pub runtime: Runtime,
    /// kata's keys the file has that this runtime does not implement (`[section] key`): logged
    /// once when the shim loads the file.
    #[serde(skip)]
    pub ignored: Vec<String>,
}

/// A TOML error in `read` (the text parsed: the file, or the file without kata's ignored
/// keys) said with the key's line of the original file `text`: the message alone says
/// "unknown variant" without saying whose.
fn located(text: &str, read: &str, e: &toml::de::Error) -> String {
    let Some(span) = e.span() else { return e.message().to_owned() };
    let start = read[..span.start].rfind('\n').map_or(0, |i| i + 1);
    let end = read[span.start..].find('\n').map_or(read.len(), |i| span.start + i);
    let line = read[start..end].trim();
    // The same key's line in the file (the first one: a key appears once per table).
    let key = line.split('=').next().unwrap_or_default().trim();
    let found = text.lines().enumerate().find(|(_, l)| {
        let l = l.trim_start();
        !key.is_empty() && l.starts_with(key) && l[key.len()..].trim_start().starts_with('=')
    });
    match found {
        Some((n, l)) => format!("line {} `{}`: {}", n + 1, l.trim(), e.message()),
        None => format!("`{line}`: {}", e.message()),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("configuration {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("configuration {path}")]
    Invalid {
        path: PathBuf,
        #[source]
        source: hypervisor::Error,
    },
    #[error("configuration {path}: [runtime] {key}: {why}")]
    Runtime { path: PathBuf, key: &'static str, why: String },
    #[error("configuration {path}: [agent.kata] {key}: {why}")]
    Agent { path: PathBuf, key: &'static str, why: String },
}

impl Config {
    /// Parse and check a file's text; `path` is for messages. kata's keys this runtime does
    /// not implement are taken out first and listed in [`Config::ignored`] (`kata_compat`).
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let bad = |message: String| ConfigError::Parse { path: path.to_owned(), message };
        let mut table: toml::Table = toml::from_str(text).map_err(|e| bad(located(text, text, &e)))?;
        let ignored = crate::kata_compat::strip(&mut table).map_err(|e| bad(e.to_string()))?;
        let stripped = toml::to_string(&table).map_err(|e| bad(e.to_string()))?;
        let mut c: Config = toml::from_str(&stripped).map_err(|e| bad(located(text, &stripped, &e)))?;
        c.ignored = ignored;
        c.hypervisor.qemu.resolve_defaults();
        c.hypervisor.qemu.validate().map_err(|source| ConfigError::Invalid { path: path.to_owned(), source })?;
        if c.runtime.network_queues > 16 {
            return Err(ConfigError::Runtime {
                path: path.to_owned(),
                key: "network_queues",
                why: format!("{} is more than 16", c.runtime.network_queues),
            });
        }
        if !(1..=3600).contains(&c.agent.kata.dial_timeout) {
            return Err(ConfigError::Agent {
                path: path.to_owned(),
                key: "dial_timeout",
                why: format!("{} is not 1 to 3600 seconds", c.agent.kata.dial_timeout),
            });
        }
        if !c.runtime.run_dir.is_absolute() {
            return Err(ConfigError::Runtime { path: path.to_owned(), key: "run_dir", why: "must be absolute".into() });
        }
        Ok(c)
    }

    /// The configuration in effect: from `KATA_CONF_FILE`, the usual paths, or built in.
    pub fn load() -> Result<(Self, PathBuf), ConfigError> {
        Self::load_file(netmgmt::paths::config_file())
    }

    /// The configuration in file `file`, or built in.
    pub fn load_file(file: Option<PathBuf>) -> Result<(Self, PathBuf), ConfigError> {
        match file {
            Some(p) => {
                let text =
                    std::fs::read_to_string(&p).map_err(|source| ConfigError::Read { path: p.clone(), source })?;
                Ok((Self::parse(&text, &p)?, p))
            }
            None => {
                let p = PathBuf::from("(built-in)");
                Ok((Self::parse("", &p)?, p))
            }
        }
    }

    /// Queue pairs per NIC.
    pub fn queues(&self) -> usize {
        match self.runtime.network_queues {
            0 => self.hypervisor.qemu.default_vcpus as usize,
            n => n as usize,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> PathBuf {
        PathBuf::from("/t/configuration.toml")
    }

    #[test]
    fn kata_keys_parse() {
        let c = Config::parse(
            r#"
[hypervisor.qemu]
path = "/bin/sh"
kernel = "/bin/sh"
initrd = "/bin/sh"
default_vcpus = 2
[runtime]
internetworking_model = "macvtap"
disable_new_netns = true
"#,
            &p(),
        )
        .unwrap();
        assert_eq!(c.runtime.internetworking_model, NetworkModel::Macvtap);
        assert!(c.runtime.disable_new_netns);
        assert_eq!(c.queues(), 2);
        assert!(c.agent.kata.kernel_params().is_empty());
        let c = Config::parse(
            "[hypervisor.qemu]\npath = \"/bin/sh\"\nkernel = \"/bin/sh\"\ninitrd = \"/bin/sh\"\n\
             [agent.kata]\nenable_debug = true\ndebug_console_enabled = true\ndial_timeout = 30\n",
            &p(),
        );
        let c = c.unwrap();
        assert_eq!(
            c.agent.kata.kernel_params(),
            ["agent.log=debug", "agent.debug_console", "agent.debug_console_vport=1026"]
        );
        assert_eq!(c.agent.kata.dial_timeout, 30);
    }

    #[test]
    fn bad_keys_and_values_name_the_key() {
        let base = "[hypervisor.qemu]\npath = \"/bin/sh\"\nkernel = \"/bin/sh\"\ninitrd = \"/bin/sh\"\n";
        let cases = [
            (format!("{base}[runtime]\ninternetworking_model = \"bridged\"\n"), "internetworking_model"),
            (
                format!("{base}[runtime]\nenable_debgu = true\n"),
                "line 6 `enable_debgu = true`: unknown field `enable_debgu`",
            ),
            (format!("{base}default_vcpus = 0\n"), "default_vcpus"),
            (format!("{base}[runtime]\nnetwork_queues = 99\n"), "network_queues"),
            ("[hypervisor.qemu]\nkernel = \"/nonexistent\"\n".to_owned(), "kernel"),
            (format!("{base}[agent.kata]\ndial_timeout = 0\n"), "dial_timeout"),
            (format!("{base}[agent.kata]\nenable_tracer = true\n"), "unknown field `enable_tracer`"),
            (format!("{base}defualt_vcpus = 2\n"), "line 5 `defualt_vcpus = 2`: unknown field `defualt_vcpus`"),
            (format!("{base}default_vcpus = \"two\"\n"), "default_vcpus"),
            (format!("{base}rootfs_type = \"xfs\"\n"), "[hypervisor.qemu] rootfs_type"),
            (format!("{base}[runtime]\ndisable_guest_seccomp = \"yes\"\n"), "disable_guest_seccomp"),
        ];
        for (text, key) in cases {
            let e = crate::error::message(&Config::parse(&text, &p()).unwrap_err());
            assert!(e.contains(key), "{key}: {e}");
        }
    }

    /// A file laid out as kata 3.x's `configuration-qemu.toml` is (its sections and keys, with
    /// kata's stock values; the guest's paths this machine's): it loads, kata's keys we do not
    /// implement are listed, and the ones we do implement behave as in kata.
    #[test]
    fn a_stock_kata_file_loads_and_its_unimplemented_keys_are_listed() {
        let text = r#"
[hypervisor.qemu]
path = "/bin/sh"
kernel = "/bin/sh"
initrd = "/bin/sh"
machine_type = "q35"
rootfs_type = "ext4"
enable_annotations = ["enable_iommu", "virtio_fs_extra_args", "kernel_params"]
valid_hypervisor_paths = ["/opt/kata/bin/qemu-system-x86_64"]
kernel_params = ""
firmware = ""
firmware_volume = ""
machine_accelerators = ""
cpu_features = "pmu=off"
default_vcpus = 1
default_maxvcpus = 0
default_bridges = 1
default_memory = 2048
default_maxmemory = 0
disable_block_device_use = false
shared_fs = "virtio-fs"
virtio_fs_daemon = "/bin/sh"
valid_virtio_fs_daemon_paths = ["/opt/kata/libexec/virtiofsd"]
virtio_fs_cache_size = 0
virtio_fs_queue_size = 1024
virtio_fs_extra_args = ["--thread-pool-size=1", "--announce-submounts"]
virtio_fs_cache = "auto"
block_device_driver = "virtio-scsi"
block_device_aio = "io_uring"
enable_iothreads = false
enable_vhost_user_store = false
vhost_user_store_path = "/var/run/kata-containers/vhost-user"
valid_vhost_user_store_paths = ["/var/run/kata-containers/vhost-user"]
vhost_user_reconnect_timeout_sec = 0
valid_file_mem_backends = [""]
pflashes = []
disable_image_nvdimm = false
valid_entropy_sources = ["/dev/urandom", "/dev/random", ""]
disable_selinux = false
disable_guest_selinux = true

[factory]
enable_template = false

[agent.kata]
kernel_modules = []
dial_timeout = 45

[runtime]
internetworking_model = "tcfilter"
disable_guest_seccomp = true
sandbox_cgroup_only = false
static_sandbox_resource_mgmt = false
sandbox_bind_mounts = []
vfio_mode = "guest-kernel"
disable_guest_empty_dir = false
experimental = []
create_container_timeout = 60
dan_conf = "/run/kata-containers/dans"
"#;
        let c = Config::parse(text, &p()).unwrap();
        assert_eq!((c.hypervisor.qemu.default_memory, c.agent.kata.dial_timeout), (2048, 45));
        assert_eq!(c.runtime.internetworking_model, NetworkModel::TcFilter);
        assert!(c.runtime.disable_guest_seccomp && !c.hypervisor.qemu.enable_template);
        for key in
            ["[hypervisor.qemu] block_device_driver", "[runtime] sandbox_cgroup_only", "[agent.kata] kernel_modules"]
        {
            assert!(c.ignored.iter().any(|k| k == key), "{key} in {:?}", c.ignored);
        }
        assert!(!c.ignored.iter().any(|k| k.contains("default_memory") || k.contains("dial_timeout")));
        // kata's place for the factory mode.
        let on = text.replace("[factory]\nenable_template = false", "[factory]\nenable_template = true");
        assert!(Config::parse(&on, &p()).unwrap().hypervisor.qemu.enable_template);
    }

    /// The commented file in `deploy/` names only keys this runtime reads (its paths are
    /// `make install`'s, so only the keys are checked here).
    #[test]
    fn the_deploy_files_keys_are_all_known() {
        let text = include_str!("../../../deploy/configuration.toml");
        let mut t: toml::Table = toml::from_str(text).unwrap();
        assert_eq!(crate::kata_compat::strip(&mut t).unwrap(), Vec::<String>::new(), "no kata key ignored");
        let c: Config = toml::from_str(text).unwrap();
        assert!(!c.runtime.static_sandbox_resource_mgmt && !c.runtime.disable_guest_seccomp);
    }
}
