//! A container's OCI spec (the bundle's `config.json`) as kata's agent protocol carries it,
//! changed as kata's runtime changes it for the VM: the root is the rootfs shared into the
//! guest; the network and cgroup namespaces are dropped (the guest's network is the pod's) and no
//! namespace keeps a host path; the host's bind mounts become shares, named here and mounted by
//! the caller; the guest's cgroup path is the container's own.
//!
//! The spec is parsed into `oci_spec`'s types first, so a field of the wrong type is refused
//! naming its path (`process.user.uid: invalid type: string "0", expected u32`), never read as
//! a default (a wrong-typed uid used to become 0, root).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use agent_client::protocols::oci as agent;
use oci_spec::runtime::{Process, Spec};
use protobuf::MessageField;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};
use crate::sandbox::shares::Share;

fn bad(field: &str, rule: &str) -> Error {
    Error::Spec(format!("{field}: {rule}"))
}

/// `bytes` as a `T`, the error naming the path of the field that does not fit (in `what`).
fn parse<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let at = e.path().to_string();
        match at.as_str() {
            "." | "" => Error::Spec(format!("{what}: {}", e.inner())),
            _ => Error::Spec(format!("{what}: {at}: {}", e.inner())),
        }
    })
}

/// A bundle's `config.json`.
pub fn parse_spec(bytes: &[u8]) -> Result<Spec> {
    parse(bytes, "config.json")
}

/// An exec's process spec.
pub fn parse_process(bytes: &[u8]) -> Result<Process> {
    parse(bytes, "the exec's process")
}

/// The name a value of `oci_spec` serializes to (its name in OCI's JSON).
fn json_name<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
}

fn caps(set: &Option<oci_spec::runtime::Capabilities>) -> Vec<String> {
    let mut names: Vec<String> = set.iter().flatten().map(json_name).collect();
    names.sort();
    names
}

/// An OCI process (the spec's `process`, or an exec's process spec) for the agent.
pub fn process(p: &Process) -> Result<agent::Process> {
    let args = p.args().clone().unwrap_or_default();
    if args.is_empty() {
        return Err(bad("process.args", "must name the program to run"));
    }
    let cwd = p.cwd();
    if !cwd.is_absolute() {
        return Err(bad("process.cwd", "must be an absolute path"));
    }
    let user = p.user();
    Ok(agent::Process {
        Terminal: p.terminal().unwrap_or(false),
        ConsoleSize: match p.console_size() {
            Some(b) => MessageField::some(agent::Box {
                Height: b.height() as u32,
                Width: b.width() as u32,
                ..Default::default()
            }),
            None => MessageField::none(),
        },
        User: MessageField::some(agent::User {
            UID: user.uid(),
            GID: user.gid(),
            AdditionalGids: user.additional_gids().clone().unwrap_or_default(),
            Username: user.username().clone().unwrap_or_default(),
            ..Default::default()
        }),
        Args: args,
        Env: p.env().clone().unwrap_or_default(),
        Cwd: cwd.display().to_string(),
        Capabilities: match p.capabilities() {
            Some(c) => MessageField::some(agent::LinuxCapabilities {
                Bounding: caps(c.bounding()),
                Effective: caps(c.effective()),
                Inheritable: caps(c.inheritable()),
                Permitted: caps(c.permitted()),
                Ambient: caps(c.ambient()),
                ..Default::default()
            }),
            None => MessageField::none(),
        },
        Rlimits: p
            .rlimits()
            .iter()
            .flatten()
            .map(|r| agent::POSIXRlimit {
                Type: json_name(&r.typ()),
                Hard: r.hard(),
                Soft: r.soft(),
                ..Default::default()
            })
            .collect(),
        NoNewPrivileges: p.no_new_privileges().unwrap_or(false),
        OOMScoreAdj: p.oom_score_adj().unwrap_or(0) as i64,
        ..Default::default()
    })
}

/// Where the container's rootfs is on the host when containerd gave no rootfs mounts: the
/// spec's `root.path`, relative to the bundle unless absolute (OCI's default: `rootfs`).
pub fn host_root(spec: &Spec, bundle: &Path) -> PathBuf {
    let path = spec.root().as_ref().map(|r| r.path().clone()).unwrap_or_else(|| PathBuf::from("rootfs"));
    match path.is_absolute() {
        true => path,
        false => bundle.join(path),
    }
}

/// Mount types the guest makes itself (the rest are the host's bind mounts).
const GUEST_MADE: &[&str] = &["proc", "sysfs", "tmpfs", "devpts", "mqueue", "cgroup", "cgroup2"];

/// What the agent is told beside the spec: whether the container shares the pod's PID namespace
/// (its spec's PID namespace has a path: CRI's PodPID), as kata's runtime tells kata's agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AgentHints {
    pub sandbox_pidns: bool,
}

/// The spec for container `cid`, whose rootfs the guest sees at `guest_root`; `shared_guest` is
/// where the guest sees the shared directory. Returns the spec and the host paths to share.
pub fn to_agent(
    spec: &Spec,
    cid: &str,
    guest_root: &str,
    shared_guest: &str,
) -> Result<(agent::Spec, Vec<Share>, AgentHints)> {
    let process = process(spec.process().as_ref().ok_or_else(|| bad("process", "is required"))?)?;
    let mut shares = Vec::new();
    let mut mounts = Vec::new();
    for (n, m) in spec.mounts().iter().flatten().enumerate() {
        let (mount, share) = mount(n, m, &format!("{shared_guest}{cid}/mounts/"))?;
        mounts.push(mount);
        shares.extend(share);
    }
    let (linux, hints) = linux(&spec.linux().clone().unwrap_or_default(), cid);
    let spec = agent::Spec {
        Version: match spec.version().as_str() {
            "" => "1.0.2".into(),
            v => v.into(),
        },
        Process: MessageField::some(process),
        Root: MessageField::some(agent::Root {
            Path: guest_root.into(),
            Readonly: spec.root().as_ref().and_then(|r| r.readonly()).unwrap_or(false),
            ..Default::default()
        }),
        Hostname: spec.hostname().clone().unwrap_or_default(),
        Mounts: mounts,
        Annotations: spec.annotations().clone().unwrap_or_default().into_iter().collect(),
        Linux: MessageField::some(linux),
        ..Default::default()
    };
    Ok((spec, shares, hints))
}

/// The spec's `n`th mount as the guest makes it: its own (proc, tmpfs, ...; the pod's
/// `/dev/shm` too), or a bind of a host path shared into `mounts_guest` (returned beside).
fn mount(n: usize, m: &oci_spec::runtime::Mount, mounts_guest: &str) -> Result<(agent::Mount, Option<Share>)> {
    let dest = m.destination().to_str().ok_or_else(|| bad(&format!("mounts[{n}].destination"), "must be UTF-8"))?;
    if !dest.starts_with('/') {
        return Err(bad(&format!("mounts[{n}].destination"), "must be an absolute path"));
    }
    let typ = m.typ().as_deref().unwrap_or_default();
    let options = m.options().clone().unwrap_or_default();
    let source = match m.source() {
        Some(src) => src.to_str().ok_or_else(|| bad(&format!("mounts[{n}].source"), "must be UTF-8"))?,
        None => "",
    };
    let guest_mount = |source: &str, typ: &str, options: Vec<String>| agent::Mount {
        destination: dest.into(),
        source: source.into(),
        type_: typ.into(),
        options,
        ..Default::default()
    };
    let bind = typ == "bind" || options.iter().any(|o| o == "bind" || o == "rbind");
    if !bind && GUEST_MADE.contains(&typ) {
        return Ok((guest_mount(source, typ, options), None));
    }
    if !bind {
        return Err(bad(
            &format!("mounts[{n}].type"),
            "must be a bind mount or one of proc, sysfs, tmpfs, devpts, mqueue, cgroup",
        ));
    }
    // The pod's /dev/shm (a bind of the sandbox's shm on the host) is the guest's own tmpfs.
    if dest == "/dev/shm" {
        let options = ["nosuid", "noexec", "nodev", "mode=1777"].map(String::from).to_vec();
        return Ok((guest_mount("shm", "tmpfs", options), None));
    }
    if !source.starts_with('/') {
        return Err(bad(&format!("mounts[{n}].source"), "a bind mount's source must be an absolute host path"));
    }
    let base = std::path::Path::new(source).file_name().and_then(|b| b.to_str()).unwrap_or("root");
    let name = format!("{n}-{base}");
    let guest = format!("{mounts_guest}{name}");
    let read_only = options.iter().any(|o| o == "ro");
    let recursive = options.iter().any(|o| o == "rbind");
    let share = Share { index: n, host: source.into(), name, guest: guest.clone(), read_only, recursive };
    let opts = options.into_iter().filter(|o| o != "rbind").chain(["bind".to_owned()]);
    let opts = opts.collect::<std::collections::BTreeSet<_>>().into_iter().collect();
    Ok((guest_mount(&guest, "bind", opts), Some(share)))
}

/// The spec's `linux` section for the agent: the guest's cgroup `/kata/<cid>`, the namespaces
/// the agent makes (network, cgroup and PID are the VM's or the pod's), resources, seccomp,
/// sysctls, masked and read-only paths.
fn linux(linux: &oci_spec::runtime::Linux, cid: &str) -> (agent::Linux, AgentHints) {
    let namespaces = || linux.namespaces().iter().flatten();
    // The PID namespace goes (the agent makes one, or joins the pod's), as kata's runtime does
    // it: a path (another container's, the pause's) means the pod's.
    let sandbox_pidns = namespaces()
        .any(|ns| json_name(&ns.typ()) == "pid" && ns.path().as_ref().is_some_and(|p| !p.as_os_str().is_empty()));
    let kept = namespaces()
        .map(|ns| json_name(&ns.typ()))
        .filter(|t| !matches!(t.as_str(), "network" | "cgroup" | "pid"))
        .map(|t| agent::LinuxNamespace { Type: t, Path: String::new(), ..Default::default() })
        .collect();
    let sysctl: HashMap<String, String> = linux.sysctl().clone().unwrap_or_default();
    let out = agent::Linux {
        Sysctl: sysctl,
        // The guest's cgroups are the VM's own: one per container, by its id.
        CgroupsPath: format!("/kata/{cid}"),
        Namespaces: kept,
        Resources: linux.resources().as_ref().map(resources).into(),
        Seccomp: linux.seccomp().as_ref().map(seccomp).into(),
        MaskedPaths: linux.masked_paths().clone().unwrap_or_default(),
        ReadonlyPaths: linux.readonly_paths().clone().unwrap_or_default(),
        ..Default::default()
    };
    (out, AgentHints { sandbox_pidns })
}

/// OCI's `linux.resources` in kata's message (memory, CPU, pids: what the guest's cgroups take).
fn resources(r: &oci_spec::runtime::LinuxResources) -> agent::LinuxResources {
    agent::LinuxResources {
        Memory: r
            .memory()
            .as_ref()
            .map(|m| agent::LinuxMemory {
                Limit: m.limit().unwrap_or(0),
                Reservation: m.reservation().unwrap_or(0),
                Swap: m.swap().unwrap_or(0),
                Swappiness: m.swappiness().unwrap_or(0),
                DisableOOMKiller: m.disable_oom_killer().unwrap_or(false),
                ..Default::default()
            })
            .into(),
        CPU: r
            .cpu()
            .as_ref()
            .map(|c| agent::LinuxCPU {
                Shares: c.shares().unwrap_or(0),
                Quota: c.quota().unwrap_or(0),
                Period: c.period().unwrap_or(0),
                Cpus: c.cpus().clone().unwrap_or_default(),
                Mems: c.mems().clone().unwrap_or_default(),
                ..Default::default()
            })
            .into(),
        Pids: r.pids().as_ref().map(|p| agent::LinuxPids { Limit: p.limit(), ..Default::default() }).into(),
        ..Default::default()
    }
}

/// OCI's `linux.seccomp` in kata's message: actions and operators by their libseccomp names.
fn seccomp(s: &oci_spec::runtime::LinuxSeccomp) -> agent::LinuxSeccomp {
    agent::LinuxSeccomp {
        DefaultAction: json_name(&s.default_action()),
        Architectures: s.architectures().iter().flatten().map(json_name).collect(),
        Flags: s.flags().iter().flatten().map(json_name).collect(),
        Syscalls: s
            .syscalls()
            .iter()
            .flatten()
            .map(|c| {
                let mut out = agent::LinuxSyscall {
                    Names: c.names().clone(),
                    Action: json_name(&c.action()),
                    Args: c
                        .args()
                        .iter()
                        .flatten()
                        .map(|a| agent::LinuxSeccompArg {
                            Index: a.index() as u64,
                            Value: a.value(),
                            ValueTwo: a.value_two().unwrap_or(0),
                            Op: json_name(&a.op()),
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                };
                if let Some(e) = c.errno_ret() {
                    out.set_errnoret(e);
                }
                out
            })
            .collect(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctr_spec() -> serde_json::Value {
        serde_json::json!({
            "ociVersion": "1.0.2-dev",
            "process": {"terminal": true, "user": {"uid": 0, "gid": 0}, "args": ["sh"], "env": ["PATH=/bin"],
                        "cwd": "/", "capabilities": {"bounding": ["CAP_NET_RAW"]},
                        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}]},
            "root": {"path": "rootfs"},
            "hostname": "pod",
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid"]},
                {"destination": "/etc/resolv.conf", "type": "bind", "source": "/var/lib/x/resolv.conf",
                 "options": ["rbind", "ro"]},
                {"destination": "/dev/shm", "type": "bind", "source": "/run/containerd/sb/shm", "options": ["rbind"]}
            ],
            "linux": {"namespaces": [{"type": "pid"}, {"type": "network", "path": "/var/run/netns/x"},
                                     {"type": "mount"}, {"type": "ipc", "path": "/proc/1/ns/ipc"}, {"type": "cgroup"}],
                      "cgroupsPath": "/default/c1", "maskedPaths": ["/proc/kcore"]}
        })
    }

    #[test]
    fn the_spec_as_kata_runtime_gives_it_to_the_agent() {
        let g = "/run/kata-containers/shared/containers/";
        let (s, shares, hints) = to_agent(&typed(&ctr_spec()).unwrap(), "c1", &format!("{g}c1/rootfs"), g).unwrap();
        assert_eq!(hints, AgentHints { sandbox_pidns: false }, "its PID namespace has no path");
        assert_eq!(s.Root.Path, format!("{g}c1/rootfs"));
        let p = s.Process.as_ref().unwrap();
        assert_eq!((p.Terminal, p.Args.clone(), p.Cwd.as_str()), (true, vec!["sh".to_owned()], "/"));
        assert_eq!(p.Capabilities.Bounding, vec!["CAP_NET_RAW"]);
        assert_eq!(p.Rlimits[0].Type, "RLIMIT_NOFILE");
        let ns: Vec<(&str, &str)> = s.Linux.Namespaces.iter().map(|n| (n.Type.as_str(), n.Path.as_str())).collect();
        assert_eq!(ns, [("mount", ""), ("ipc", "")]);
        assert_eq!(s.Linux.CgroupsPath, "/kata/c1");
        assert_eq!(
            shares,
            [Share {
                index: 1,
                host: "/var/lib/x/resolv.conf".into(),
                name: "1-resolv.conf".into(),
                guest: format!("{g}c1/mounts/1-resolv.conf"),
                read_only: true,
                recursive: true
            }]
        );
        let m: Vec<(&str, &str, &str)> =
            s.Mounts.iter().map(|m| (m.destination.as_str(), m.type_.as_str(), m.source.as_str())).collect();
        assert_eq!(
            m,
            [
                ("/proc", "proc", "proc"),
                ("/etc/resolv.conf", "bind", &*format!("{g}c1/mounts/1-resolv.conf")),
                ("/dev/shm", "tmpfs", "shm")
            ]
        );
        assert_eq!(s.Mounts[1].options, ["bind", "ro"]);
    }

    fn typed(v: &serde_json::Value) -> Result<Spec> {
        parse_spec(&serde_json::to_vec(v).unwrap())
    }

    fn refusal(v: &serde_json::Value) -> String {
        match typed(v).and_then(|s| to_agent(&s, "c1", "/r", "/g/")) {
            Ok(_) => panic!("accepted: {v}"),
            Err(e) => crate::error::message(&e),
        }
    }

    #[test]
    fn what_cannot_run_is_refused_naming_the_field() {
        let mut s = ctr_spec();
        s["process"]["args"] = serde_json::json!([]);
        assert!(refusal(&s).contains("process.args"), "{}", refusal(&s));
        let mut s = ctr_spec();
        s["mounts"][1]["source"] = "rel/path".into();
        assert!(refusal(&s).contains("mounts[1].source"), "{}", refusal(&s));
        let mut s = ctr_spec();
        s["process"]["cwd"] = "relative".into();
        assert!(refusal(&s).contains("process.cwd"), "{}", refusal(&s));
    }

    #[test]
    fn a_field_of_the_wrong_type_is_refused_never_read_as_a_default() {
        // A uid given as a string used to become 0 (root); a non-string argument was dropped.
        let mut s = ctr_spec();
        s["process"]["user"]["uid"] = "1000".into();
        let e = refusal(&s);
        assert!(e.contains("config.json: process.user.uid: invalid type: string \"1000\""), "{e}");
        let mut s = ctr_spec();
        s["process"]["args"] = serde_json::json!(["sh", 7]);
        let e = refusal(&s);
        assert!(e.contains("process.args[1]: invalid type"), "{e}");
        let mut s = ctr_spec();
        s["process"]["capabilities"]["bounding"] = serde_json::json!(["CAP_NOT_A_CAPABILITY"]);
        assert!(refusal(&s).contains("process.capabilities.bounding"), "{}", refusal(&s));
        let e = parse_process(br#"{"user": {"uid": -1}, "args": ["true"], "cwd": "/"}"#).unwrap_err();
        assert!(crate::error::message(&e).contains("the exec's process: user.uid"), "{e}");
    }

    #[test]
    fn the_rootfs_without_mounts_is_the_specs_root_path() {
        let mut s = ctr_spec();
        let bundle = Path::new("/run/containerd/b");
        assert_eq!(host_root(&typed(&s).unwrap(), bundle), bundle.join("rootfs"));
        s["root"]["path"] = "/var/lib/images/r1".into();
        assert_eq!(host_root(&typed(&s).unwrap(), bundle), Path::new("/var/lib/images/r1"));
        s["root"]["path"] = "other".into();
        assert_eq!(host_root(&typed(&s).unwrap(), bundle), bundle.join("other"));
    }
}
