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
}

impl Default for Runtime {
    fn default() -> Self {
        Self {
            internetworking_model: NetworkModel::TcFilter,
            disable_new_netns: false,
            network_queues: 0,
            run_dir: PathBuf::from(netmgmt::paths::DEFAULT_RUN_DIR),
            follow_netns: true,
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
    /// Parse and check a file's text; `path` is for messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let mut c: Config = toml::from_str(text).map_err(|e| {
            // Name the key: the message alone says "unknown variant" without saying whose.
            let message = match e.span() {
                Some(span) => {
                    let start = text[..span.start].rfind('\n').map_or(0, |i| i + 1);
                    let end = text[span.start..].find('\n').map_or(text.len(), |i| span.start + i);
                    let line_no = text[..span.start].matches('\n').count() + 1;
                    format!("line {line_no} `{}`: {}", text[start..end].trim(), e.message())
                }
                None => e.message().to_owned(),
            };
            ConfigError::Parse { path: path.to_owned(), message }
        })?;
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
            (format!("{base}[runtime]\nenable_debug = true\n"), "enable_debug"),
            (format!("{base}default_vcpus = 0\n"), "default_vcpus"),
            (format!("{base}[runtime]\nnetwork_queues = 99\n"), "network_queues"),
            ("[hypervisor.qemu]\nkernel = \"/nonexistent\"\n".to_owned(), "kernel"),
            (format!("{base}[agent.kata]\ndial_timeout = 0\n"), "dial_timeout"),
            (format!("{base}[agent.kata]\nenable_tracing = true\n"), "enable_tracing"),
        ];
        for (text, key) in cases {
            let e = crate::error::message(&Config::parse(&text, &p()).unwrap_err());
            assert!(e.contains(key), "{key}: {e}");
        }
    }
}
