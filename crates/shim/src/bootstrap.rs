//! containerd's `start`, owned here for every containerd this runtime serves: 1.6 and 1.7, 2.0 to
//! 2.2 (flags, `TTRPC_ADDRESS` in the environment, the runtime's options as a protobuf `Any` on
//! stdin, the socket's address as plain text on stdout) and 2.3 and later (a protobuf
//! `BootstrapParams` on stdin, a `BootstrapResult` on stdout). Both are read into one
//! [`StartParams`]; the runtime options may be kata's (`runtimeoptions.v1.Options`, its
//! `ConfigPath` and `ConfigBody` choosing the configuration: kata-deploy sets one per
//! RuntimeClass) or runc's (`containerd.runc.v1.Options`, its `shim_cgroup`).

use std::path::PathBuf;

use containerd_shim::Flags;
use protobuf::Message;

/// Code generated from `protos/` at build time.
#[allow(clippy::all, unused, nonstandard_style, missing_debug_implementations, unused_qualifications, unreachable_pub)]
pub mod protos {
    pub mod any {
        pub use ::protobuf::well_known_types::any::*;
    }
    pub mod bootstrap {
        include!(concat!(env!("OUT_DIR"), "/protos/bootstrap.rs"));
    }
    pub mod runtimeoptions {
        include!(concat!(env!("OUT_DIR"), "/protos/runtimeoptions.rs"));
    }
}

use protos::any::Any;
use protos::bootstrap::{BootstrapParams, BootstrapResult};

/// The task API this shim serves (containerd.task.v2.Task).
pub const TASK_API_VERSION: i32 = 2;
/// The most containerd writes to `start`'s stdin (its own bound).
const MAX_INPUT: u64 = 10 << 20;
/// The type of kata's runtime options, as containerd's CRI names them.
pub const KATA_OPTIONS: &str = "runtimeoptions.v1.Options";
/// The type of runc's runtime options.
pub const RUNC_OPTIONS: &str = "containerd.runc.v1.Options";

/// How containerd spoke to `start`, which says how to answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// containerd 2.3+: `BootstrapParams` in, `BootstrapResult` out.
    Bootstrap,
    /// containerd 1.6 to 2.2: flags and environment in, the address out.
    Legacy,
}

/// What the runtime options say that this runtime uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuntimeOptions {
    /// kata's `ConfigPath`: the configuration file.
    pub config_path: Option<PathBuf>,
    /// kata's `ConfigBody`: the configuration itself.
    pub config_body: Option<String>,
    /// runc's `shim_cgroup`: the cgroup the serving shim goes into.
    pub shim_cgroup: Option<String>,
}

/// What containerd gave `start`, whichever protocol it spoke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartParams {
    pub protocol: Protocol,
    pub id: String,
    pub namespace: String,
    /// containerd's gRPC address (`-address`): the serving shim's socket is derived from it.
    pub address: String,
    /// containerd's ttrpc address, where the serving shim publishes events.
    pub ttrpc_address: String,
    pub publish_binary: String,
    pub debug: bool,
    /// Where the socket goes (2.3+ may say; else containerd's `/run/containerd/s`).
    pub socket_dir: Option<String>,
    pub options: RuntimeOptions,
}

/// Why `start` cannot go on; said on stderr, which containerd shows.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StartError {
    #[error("start: bootstrap params for {params_ns}/{params_id} do not match the flags' {flag_ns}/{flag_id}")]
    Mismatch { params_id: String, params_ns: String, flag_id: String, flag_ns: String },
    #[error("start: no containerd ttrpc address (neither the bootstrap params nor TTRPC_ADDRESS give one)")]
    NoTtrpcAddress,
    #[error("start: runtime options of type {type_url}: {why}")]
    Options { type_url: String, why: String },
    #[error("start: {0}")]
    Io(String),
}

/// Read `start`'s stdin (nothing from a terminal), bounded as containerd bounds it.
pub fn read_stdin() -> Result<Vec<u8>, StartError> {
    use std::io::{IsTerminal, Read};
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        return Ok(Vec::new());
    }
    let mut input = Vec::new();
    stdin.lock().take(MAX_INPUT).read_to_end(&mut input).map_err(|e| StartError::Io(format!("reading stdin: {e}")))?;
    Ok(input)
}

/// `start`'s input as one [`StartParams`]: `input` is its stdin, `flags` its command line,
/// `env_ttrpc` the `TTRPC_ADDRESS` it inherited.
pub fn parse_start(input: &[u8], flags: &Flags, env_ttrpc: Option<String>) -> Result<StartParams, StartError> {
    let (mut p, extensions) = match bootstrap_params(input, flags)? {
        Some(b) => {
            let ext = b.extensions.iter().filter_map(|e| e.value.clone().into_option()).collect();
            let p = StartParams {
                protocol: Protocol::Bootstrap,
                id: b.instance_id,
                namespace: b.namespace,
                address: b.containerd_grpc_address,
                ttrpc_address: b.containerd_ttrpc_address,
                publish_binary: b.containerd_binary,
                // DEBUG and TRACE are at or below -4.
                debug: flags.debug || b.log_level <= -4,
                socket_dir: b.socket_dir.filter(|d| !d.is_empty()),
                options: RuntimeOptions::default(),
            };
            (p, ext)
        }
        None => {
            let ext: Vec<Any> =
                Any::parse_from_bytes(input).ok().filter(|a| !a.type_url.is_empty()).into_iter().collect();
            let p = StartParams {
                protocol: Protocol::Legacy,
                id: flags.id.clone(),
                namespace: flags.namespace.clone(),
                address: flags.address.clone(),
                ttrpc_address: env_ttrpc.unwrap_or_default(),
                publish_binary: flags.publish_binary.clone(),
                debug: flags.debug,
                socket_dir: None,
                options: RuntimeOptions::default(),
            };
            (p, ext)
        }
    };
    if p.ttrpc_address.is_empty() {
        return Err(StartError::NoTtrpcAddress);
    }
    for any in &extensions {
        p.options.read(any)?;
    }
    Ok(p)
}

/// `input` as containerd 2.3's `BootstrapParams`, or `None` for the legacy protocol. A legacy
/// `Any` decodes as `BootstrapParams` too (its type URL as the id, its value as the namespace,
/// nothing else): only one that names the flags' id and namespace is taken for one.
fn bootstrap_params(input: &[u8], flags: &Flags) -> Result<Option<BootstrapParams>, StartError> {
    if input.is_empty() {
        return Ok(None);
    }
    let Ok(b) = BootstrapParams::parse_from_bytes(input) else { return Ok(None) };
    if b.instance_id == flags.id && b.namespace == flags.namespace {
        return Ok(Some(b));
    }
    let identity_only =
        BootstrapParams { instance_id: b.instance_id.clone(), namespace: b.namespace.clone(), ..Default::default() };
    match b == identity_only {
        true => Ok(None),
        false => Err(StartError::Mismatch {
            params_id: b.instance_id,
            params_ns: b.namespace,
            flag_id: flags.id.clone(),
            flag_ns: flags.namespace.clone(),
        }),
    }
}

impl RuntimeOptions {
    /// Take what `any` says, by its type (the last segment of its URL); other types are left.
    fn read(&mut self, any: &Any) -> Result<(), StartError> {
        let name = any.type_url.rsplit('/').next().unwrap_or_default();
        let bad = |e: protobuf::Error| StartError::Options { type_url: any.type_url.clone(), why: e.to_string() };
        match name {
            KATA_OPTIONS => {
                let o = protos::runtimeoptions::Options::parse_from_bytes(&any.value).map_err(bad)?;
                self.config_path = Some(o.config_path).filter(|p| !p.is_empty()).map(PathBuf::from);
                self.config_body = Some(o.config_body).filter(|b| !b.is_empty());
                if let Some(p) = self.config_path.as_ref().filter(|p| !p.is_absolute()) {
                    let why = format!("ConfigPath {}: must be an absolute path", p.display());
                    return Err(StartError::Options { type_url: any.type_url.clone(), why });
                }
            }
            RUNC_OPTIONS => {
                let o = containerd_shim::protos::shim::oci::Options::parse_from_bytes(&any.value).map_err(bad)?;
                self.shim_cgroup = Some(o.shim_cgroup).filter(|c| !c.is_empty());
            }
            _ => {}
        }
        Ok(())
    }
}

/// `start`'s answer on stdout, as `protocol` expects it.
pub fn start_result(address: &str, protocol: Protocol) -> Vec<u8> {
    match protocol {
        Protocol::Legacy => address.as_bytes().to_vec(),
        Protocol::Bootstrap => BootstrapResult {
            version: TASK_API_VERSION,
            address: address.to_owned(),
            protocol: "ttrpc".into(),
            ..Default::default()
        }
        .write_to_bytes()
        .unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags() -> Flags {
        Flags {
            id: "sb1".into(),
            namespace: "k8s.io".into(),
            address: "/run/containerd/containerd.sock".into(),
            publish_binary: "/usr/bin/containerd".into(),
            ..Default::default()
        }
    }

    fn kata_options(path: &str) -> Any {
        let o = protos::runtimeoptions::Options { config_path: path.into(), ..Default::default() };
        Any { type_url: KATA_OPTIONS.into(), value: o.write_to_bytes().unwrap(), ..Default::default() }
    }

    #[test]
    fn the_legacy_protocol_takes_flags_environment_and_kata_options() {
        let input =
            kata_options("/opt/kata/share/defaults/kata-containers/configuration-qemu.toml").write_to_bytes().unwrap();
        let p = parse_start(&input, &flags(), Some("/run/containerd/containerd.sock.ttrpc".into())).unwrap();
        assert_eq!(p.protocol, Protocol::Legacy);
        assert_eq!((p.id.as_str(), p.namespace.as_str()), ("sb1", "k8s.io"));
        assert_eq!(p.ttrpc_address, "/run/containerd/containerd.sock.ttrpc");
        assert_eq!(
            p.options.config_path.as_deref(),
            Some(std::path::Path::new("/opt/kata/share/defaults/kata-containers/configuration-qemu.toml"))
        );
        assert_eq!(start_result("unix:///run/containerd/s/x", p.protocol), b"unix:///run/containerd/s/x");
        // Nothing on stdin, and runc's options.
        let p = parse_start(b"", &flags(), Some("t".into())).unwrap();
        assert_eq!((p.protocol, p.options.clone()), (Protocol::Legacy, RuntimeOptions::default()));
        let runc = containerd_shim::protos::shim::oci::Options { shim_cgroup: "/shims".into(), ..Default::default() };
        let any = Any { type_url: RUNC_OPTIONS.into(), value: runc.write_to_bytes().unwrap(), ..Default::default() };
        let p = parse_start(&any.write_to_bytes().unwrap(), &flags(), Some("t".into())).unwrap();
        assert_eq!(p.options.shim_cgroup.as_deref(), Some("/shims"));
        assert_eq!(parse_start(b"", &flags(), None), Err(StartError::NoTtrpcAddress));
    }

    #[test]
    fn containerd_2_3s_params_are_read_and_answered_in_kind() {
        let b = BootstrapParams {
            instance_id: "sb1".into(),
            namespace: "k8s.io".into(),
            log_level: -4,
            containerd_version: "v2.3.0".into(),
            containerd_ttrpc_address: "/run/containerd/containerd.sock.ttrpc".into(),
            containerd_grpc_address: "/run/containerd/containerd.sock".into(),
            containerd_binary: "/usr/bin/containerd".into(),
            extensions: vec![protos::bootstrap::Extension {
                value: protobuf::MessageField::some(kata_options("/etc/kata/k.toml")),
                ..Default::default()
            }],
            ..Default::default()
        };
        let p = parse_start(&b.write_to_bytes().unwrap(), &flags(), None).unwrap();
        assert_eq!(p.protocol, Protocol::Bootstrap);
        assert!(p.debug, "DEBUG asks for debug logs");
        assert_eq!(p.ttrpc_address, "/run/containerd/containerd.sock.ttrpc", "from the params, not the environment");
        assert_eq!(p.options.config_path.as_deref(), Some(std::path::Path::new("/etc/kata/k.toml")));
        let r = BootstrapResult::parse_from_bytes(&start_result("unix:///run/containerd/s/x", p.protocol)).unwrap();
        assert_eq!((r.version, r.address.as_str(), r.protocol.as_str()), (2, "unix:///run/containerd/s/x", "ttrpc"));
        // Params of another shim are refused, naming both.
        let other = BootstrapParams { instance_id: "sb2".into(), ..b };
        let e = parse_start(&other.write_to_bytes().unwrap(), &flags(), None).unwrap_err().to_string();
        assert!(e.contains("k8s.io/sb2") && e.contains("k8s.io/sb1"), "{e}");
    }

    #[test]
    fn a_relative_config_path_is_refused_naming_it() {
        let input = kata_options("configuration.toml").write_to_bytes().unwrap();
        let e = parse_start(&input, &flags(), Some("t".into())).unwrap_err().to_string();
        assert!(e.contains("ConfigPath configuration.toml: must be an absolute path"), "{e}");
    }
}
