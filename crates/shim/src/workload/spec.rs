//! A container's OCI spec (the bundle's `config.json`, OCI's JSON) as kata's agent protocol
//! carries it, changed as kata's runtime changes it for the VM: the root is the rootfs shared
//! into the guest; the network and cgroup namespaces are dropped (the guest's network is the
//! pod's) and no namespace keeps a host path; the host's bind mounts become shares, named here
//! and mounted by the caller; the guest's cgroup path is the container's own.

use std::collections::HashMap;
use std::path::PathBuf;

use agent_client::protocols::oci;
use protobuf::MessageField;
use serde_json::Value;

use crate::error::{Error, Result};

/// A host path a bind mount of the spec names, shared into the guest at `guest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    pub host: PathBuf,
    /// The share's name in the container's directory of the shared directory.
    pub name: String,
    pub guest: String,
    pub read_only: bool,
    /// `rbind`: the source's submounts come along (plain `bind`: the source's mount alone).
    pub recursive: bool,
}

fn bad(field: &str, rule: &str) -> Error {
    Error::Spec(format!("{field}: {rule}"))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect()).unwrap_or_default()
}

fn u32_of(v: &Value) -> u32 {
    v.as_u64().and_then(|n| u32::try_from(n).ok()).unwrap_or(0)
}

/// An OCI process (the spec's `process`, or an exec's process spec).
pub fn process(p: &Value) -> Result<oci::Process> {
    let args = strings(&p["args"]);
    if args.is_empty() {
        return Err(bad("process.args", "must name the program to run"));
    }
    let user = &p["user"];
    let caps = &p["capabilities"];
    Ok(oci::Process {
        Terminal: p["terminal"].as_bool().unwrap_or(false),
        ConsoleSize: match p["consoleSize"].is_object() {
            true => MessageField::some(oci::Box {
                Height: u32_of(&p["consoleSize"]["height"]),
                Width: u32_of(&p["consoleSize"]["width"]),
                ..Default::default()
            }),
            false => MessageField::none(),
        },
        User: MessageField::some(oci::User {
            UID: u32_of(&user["uid"]),
            GID: u32_of(&user["gid"]),
            AdditionalGids: user["additionalGids"]
                .as_array()
                .map(|a| a.iter().map(u32_of).collect())
                .unwrap_or_default(),
            Username: user["username"].as_str().unwrap_or_default().to_owned(),
            ..Default::default()
        }),
        Args: args,
        Env: strings(&p["env"]),
        Cwd: p["cwd"].as_str().filter(|c| !c.is_empty()).unwrap_or("/").to_owned(),
        Capabilities: match caps.is_object() {
            true => MessageField::some(oci::LinuxCapabilities {
                Bounding: strings(&caps["bounding"]),
                Effective: strings(&caps["effective"]),
                Inheritable: strings(&caps["inheritable"]),
                Permitted: strings(&caps["permitted"]),
                Ambient: strings(&caps["ambient"]),
                ..Default::default()
            }),
            false => MessageField::none(),
        },
        Rlimits: p["rlimits"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|r| oci::POSIXRlimit {
                        Type: r["type"].as_str().unwrap_or_default().to_owned(),
                        Hard: r["hard"].as_u64().unwrap_or(0),
                        Soft: r["soft"].as_u64().unwrap_or(0),
                        ..Default::default()
                    })
                    .collect()
            })
            .unwrap_or_default(),
        NoNewPrivileges: p["noNewPrivileges"].as_bool().unwrap_or(false),
        OOMScoreAdj: p["oomScoreAdj"].as_i64().unwrap_or(0),
        ..Default::default()
    })
}

/// Mount types the guest makes itself (the rest are the host's bind mounts).
const GUEST_MADE: &[&str] = &["proc", "sysfs", "tmpfs", "devpts", "mqueue", "cgroup", "cgroup2"];

/// The spec for container `cid`, whose rootfs the guest sees at `guest_root`; `shared_guest` is
/// where the guest sees the shared directory. Returns the spec and the host paths to share.
pub fn to_agent(spec: &Value, cid: &str, guest_root: &str, shared_guest: &str) -> Result<(oci::Spec, Vec<Share>)> {
    if !spec.is_object() {
        return Err(bad("config.json", "must be an OCI runtime spec (a JSON object)"));
    }
    let process = process(&spec["process"])?;
    let mut shares = Vec::new();
    let mut mounts = Vec::new();
    for (n, m) in spec["mounts"].as_array().into_iter().flatten().enumerate() {
        let dest = m["destination"].as_str().unwrap_or_default();
        if !dest.starts_with('/') {
            return Err(bad(&format!("mounts[{n}].destination"), "must be an absolute path"));
        }
        let typ = m["type"].as_str().unwrap_or_default();
        let options = strings(&m["options"]);
        let source = m["source"].as_str().unwrap_or_default();
        let bind = typ == "bind" || options.iter().any(|o| o == "bind" || o == "rbind");
        if !bind && GUEST_MADE.contains(&typ) {
            mounts.push(oci::Mount {
                destination: dest.into(),
                source: source.into(),
                type_: typ.into(),
                options,
                ..Default::default()
            });
            continue;
        }
        if !bind {
            return Err(bad(
                &format!("mounts[{n}].type"),
                "must be a bind mount or one of proc, sysfs, tmpfs, devpts, mqueue, cgroup",
            ));
        }
        // The pod's /dev/shm (a bind of the sandbox's shm on the host) is the guest's own tmpfs.
        if dest == "/dev/shm" {
            mounts.push(oci::Mount {
                destination: dest.into(),
                source: "shm".into(),
                type_: "tmpfs".into(),
                options: vec!["nosuid".into(), "noexec".into(), "nodev".into(), "mode=1777".into()],
                ..Default::default()
            });
            continue;
        }
        if !source.starts_with('/') {
            return Err(bad(&format!("mounts[{n}].source"), "a bind mount's source must be an absolute host path"));
        }
        let base = std::path::Path::new(source).file_name().and_then(|b| b.to_str()).unwrap_or("root");
        let name = format!("{n}-{base}");
        let guest = format!("{shared_guest}{cid}/mounts/{name}");
        let read_only = options.iter().any(|o| o == "ro");
        let recursive = options.iter().any(|o| o == "rbind");
        shares.push(Share { host: source.into(), name, guest: guest.clone(), read_only, recursive });
        let opts = options.into_iter().filter(|o| o != "rbind").chain(["bind".to_owned()]);
        mounts.push(oci::Mount {
            destination: dest.into(),
            source: guest,
            type_: "bind".into(),
            options: opts.collect::<std::collections::BTreeSet<_>>().into_iter().collect(),
            ..Default::default()
        });
    }
    let linux = &spec["linux"];
    let namespaces = linux["namespaces"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|ns| ns["type"].as_str())
        .filter(|t| !matches!(*t, "network" | "cgroup"))
        .map(|t| oci::LinuxNamespace { Type: t.into(), Path: String::new(), ..Default::default() })
        .collect();
    let sysctl: HashMap<String, String> = linux["sysctl"]
        .as_object()
        .map(|o| o.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned()))).collect())
        .unwrap_or_default();
    let annotations = spec["annotations"]
        .as_object()
        .map(|o| o.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned()))).collect())
        .unwrap_or_default();
    let spec = oci::Spec {
        Version: spec["ociVersion"].as_str().unwrap_or("1.0.2").into(),
        Process: MessageField::some(process),
        Root: MessageField::some(oci::Root {
            Path: guest_root.into(),
            Readonly: spec["root"]["readonly"].as_bool().unwrap_or(false),
            ..Default::default()
        }),
        Hostname: spec["hostname"].as_str().unwrap_or_default().into(),
        Mounts: mounts,
        Annotations: annotations,
        Linux: MessageField::some(oci::Linux {
            Sysctl: sysctl,
            // The guest's cgroups are the VM's own: one per container, by its id.
            CgroupsPath: format!("/kata/{cid}"),
            Namespaces: namespaces,
            MaskedPaths: strings(&linux["maskedPaths"]),
            ReadonlyPaths: strings(&linux["readonlyPaths"]),
            ..Default::default()
        }),
        ..Default::default()
    };
    Ok((spec, shares))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctr_spec() -> Value {
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
        let (s, shares) = to_agent(&ctr_spec(), "c1", &format!("{g}c1/rootfs"), g).unwrap();
        assert_eq!(s.Root.Path, format!("{g}c1/rootfs"));
        let p = s.Process.as_ref().unwrap();
        assert_eq!((p.Terminal, p.Args.clone(), p.Cwd.as_str()), (true, vec!["sh".to_owned()], "/"));
        assert_eq!(p.Capabilities.Bounding, vec!["CAP_NET_RAW"]);
        assert_eq!(p.Rlimits[0].Type, "RLIMIT_NOFILE");
        let ns: Vec<(&str, &str)> = s.Linux.Namespaces.iter().map(|n| (n.Type.as_str(), n.Path.as_str())).collect();
        assert_eq!(ns, [("pid", ""), ("mount", ""), ("ipc", "")]);
        assert_eq!(s.Linux.CgroupsPath, "/kata/c1");
        assert_eq!(
            shares,
            [Share {
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

    #[test]
    fn what_cannot_run_is_refused_naming_the_field() {
        let mut s = ctr_spec();
        s["process"]["args"] = serde_json::json!([]);
        let e = to_agent(&s, "c1", "/r", "/g/").unwrap_err();
        assert!(crate::error::message(&e).contains("process.args"), "{e}");
        let mut s = ctr_spec();
        s["mounts"][1]["source"] = "rel/path".into();
        let e = to_agent(&s, "c1", "/r", "/g/").unwrap_err();
        assert!(crate::error::message(&e).contains("mounts[1].source"), "{e}");
    }
}
