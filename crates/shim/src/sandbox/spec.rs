//! What the OCI spec says about the sandbox's network.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

pub const DNS_ANNOTATION: &str = "io.katacontainers.sandbox_dns";

/// The namespace, hostname and DNS lines a sandbox's spec gives.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpecNetwork {
    pub netns: Option<PathBuf>,
    pub hostname: String,
    pub dns: Vec<String>,
    /// The pod's own rate limits (Kubernetes' bandwidth annotations).
    pub rate: network::RateLimit,
}

/// The most DNS text read from the annotation or the resolv.conf file (glibc reads far less).
pub const MAX_DNS_BYTES: u64 = 64 << 10;

impl SpecNetwork {
    /// Read what the spec says. The resolv.conf file is read with a bound and only when it is a
    /// regular file (a FIFO would block, `/dev/zero` would never end); call it off the async
    /// workers (it reads a file).
    pub fn from_spec(spec: &oci_spec::runtime::Spec) -> Result<Self> {
        use oci_spec::runtime::LinuxNamespaceType;
        let netns = spec
            .linux()
            .as_ref()
            .and_then(|l| l.namespaces().as_ref())
            .and_then(|ns| ns.iter().find(|n| n.typ() == LinuxNamespaceType::Network))
            .and_then(|n| n.path().clone());
        let text = if let Some(v) = spec.annotations().as_ref().and_then(|a| a.get(DNS_ANNOTATION)) {
            if v.len() as u64 > MAX_DNS_BYTES {
                return Err(Error::Dns(format!("annotation {DNS_ANNOTATION}: larger than {MAX_DNS_BYTES} bytes")));
            }
            match v.trim_start().starts_with('{') {
                true => dns_from_json(v)?,
                false => v.replace(',', "\n"),
            }
        } else if let Some(src) = spec
            .mounts()
            .as_ref()
            .and_then(|ms| ms.iter().find(|m| m.destination() == Path::new("/etc/resolv.conf")))
            .and_then(|m| m.source().clone())
        {
            read_resolv_conf(&src)?
        } else {
            String::new()
        };
        let dns =
            text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(String::from).collect();
        let rate = super::bandwidth::from_annotations(spec.annotations().as_ref())?;
        Ok(Self { netns, hostname: spec.hostname().clone().unwrap_or_default().chars().take(64).collect(), dns, rate })
    }
}

/// openEuler's JSON form of the DNS annotation, `{"Servers": [..], "Domain": "..", "Searches":
/// [..], "Options": [..]}`, as resolv.conf lines. Servers must be IP addresses, and no value may
/// hold whitespace or a control character (nothing can add a line of its own).
fn dns_from_json(v: &str) -> Result<String> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "PascalCase")]
    struct Dns {
        #[serde(default)]
        servers: Vec<String>,
        #[serde(default)]
        domain: String,
        #[serde(default)]
        searches: Vec<String>,
        #[serde(default)]
        options: Vec<String>,
    }
    let bad = |why: String| Error::Dns(format!("annotation {DNS_ANNOTATION}: {why}"));
    let d: Dns = serde_json::from_str(v).map_err(|e| bad(e.to_string()))?;
    let word = |field: &str, w: &str| match !w.is_empty() && !w.chars().any(|c| c.is_whitespace() || c.is_control()) {
        true => Ok(()),
        false => Err(bad(format!("{field}: {w:?} is not one word"))),
    };
    let mut lines = Vec::new();
    for s in &d.servers {
        s.parse::<std::net::IpAddr>().map_err(|_| bad(format!("Servers: {s:?} is not an IP address")))?;
        lines.push(format!("nameserver {s}"));
    }
    if !d.domain.is_empty() {
        word("Domain", &d.domain)?;
        lines.push(format!("domain {}", d.domain));
    }
    for (field, list, key) in [("Searches", &d.searches, "search"), ("Options", &d.options, "options")] {
        list.iter().try_for_each(|w| word(field, w))?;
        if !list.is_empty() {
            lines.push(format!("{key} {}", list.join(" ")));
        }
    }
    Ok(lines.join("\n"))
}

/// The file mounted at `/etc/resolv.conf`: a regular file of at most [`MAX_DNS_BYTES`].
fn read_resolv_conf(path: &Path) -> Result<String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let bad = |why: String| Error::Dns(format!("resolv.conf mount {}: {why}", path.display()));
    // O_NONBLOCK: opening a FIFO must not wait for a writer.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| bad(e.to_string()))?;
    let meta = f.metadata().map_err(|e| bad(e.to_string()))?;
    if !meta.is_file() {
        return Err(bad("not a regular file".into()));
    }
    if meta.len() > MAX_DNS_BYTES {
        return Err(bad(format!("larger than {MAX_DNS_BYTES} bytes")));
    }
    let mut text = String::new();
    f.take(MAX_DNS_BYTES).read_to_string(&mut text).map_err(|e| bad(e.to_string()))?;
    Ok(text)
}

/// The CRI annotations naming a container's kind and its sandbox.
const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";

/// The sandbox a container of `spec` belongs to, when it is an app container (CRI's
/// `container-type = container` with the sandbox's id); `None` for a sandbox container.
pub fn sandbox_of(annotations: Option<&std::collections::HashMap<String, String>>) -> Option<String> {
    let a = annotations?;
    match a.get(CONTAINER_TYPE).map(String::as_str) {
        Some("container") => a.get(SANDBOX_ID).cloned(),
        _ => None,
    }
}

/// containerd's sandbox sizing annotations (containerd 1.6+, Kubernetes 1.23+): the pod's CPU
/// quota and period, and its memory limit in bytes.
const CPU_QUOTA: &str = "io.kubernetes.cri.sandbox-cpu-quota";
const CPU_PERIOD: &str = "io.kubernetes.cri.sandbox-cpu-period";
const MEMORY: &str = "io.kubernetes.cri.sandbox-memory";

/// What the pod asks of the VM beyond the runtime's defaults, as kata computes it: vCPUs
/// `ceil(quota / period)`, memory in whole MiB. Missing or unusable annotations ask nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sizing {
    pub vcpus: u32,
    pub memory_mib: u32,
}

impl Sizing {
    pub fn from_annotations(a: Option<&std::collections::HashMap<String, String>>) -> Sizing {
        let num = |k: &str| a.and_then(|a| a.get(k)).and_then(|v| v.trim().parse::<i64>().ok()).filter(|n| *n > 0);
        let vcpus = match (num(CPU_QUOTA), num(CPU_PERIOD)) {
            (Some(q), Some(p)) => u32::try_from((q + p - 1) / p).unwrap_or(u32::MAX),
            _ => 0,
        };
        let memory_mib = num(MEMORY).map_or(0, |b| u32::try_from((b + (1 << 20) - 1) >> 20).unwrap_or(u32::MAX));
        Sizing { vcpus, memory_mib }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_app_container_names_its_sandbox_and_a_sandbox_container_none() {
        let a = |pairs: &[(&str, &str)]| -> std::collections::HashMap<String, String> {
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
        };
        let app = a(&[(CONTAINER_TYPE, "container"), (SANDBOX_ID, "pod1")]);
        assert_eq!(sandbox_of(Some(&app)).as_deref(), Some("pod1"));
        let pause = a(&[(CONTAINER_TYPE, "sandbox"), (SANDBOX_ID, "pod1")]);
        assert_eq!(sandbox_of(Some(&pause)), None);
        assert_eq!(sandbox_of(Some(&a(&[(SANDBOX_ID, "pod1")]))), None, "ctr run: no container type");
        assert_eq!(sandbox_of(None), None);
    }

    #[test]
    fn the_pods_sizing_is_kata_s() {
        let a = |pairs: &[(&str, &str)]| -> std::collections::HashMap<String, String> {
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
        };
        let pod = a(&[(CPU_QUOTA, "150000"), (CPU_PERIOD, "100000"), (MEMORY, "268435456")]);
        assert_eq!(Sizing::from_annotations(Some(&pod)), Sizing { vcpus: 2, memory_mib: 256 });
        let odd = a(&[(CPU_QUOTA, "-1"), (CPU_PERIOD, "100000"), (MEMORY, "1")]);
        assert_eq!(Sizing::from_annotations(Some(&odd)), Sizing { vcpus: 0, memory_mib: 1 }, "no quota: no vCPUs");
        assert_eq!(Sizing::from_annotations(None), Sizing::default());
        assert_eq!(Sizing::from_annotations(Some(&a(&[(MEMORY, "lots")]))), Sizing::default());
    }

    #[test]
    fn openeulers_json_dns_becomes_resolv_conf_lines_and_bad_values_are_refused() {
        let lines = dns_from_json(
            r#"{"Servers":["10.96.0.10","fd00::a"],"Domain":"cluster.local","Searches":["default.svc.cluster.local","svc.cluster.local"],"Options":["ndots:5"]}"#,
        )
        .unwrap();
        assert_eq!(
            lines,
            "nameserver 10.96.0.10\nnameserver fd00::a\ndomain cluster.local\n\
             search default.svc.cluster.local svc.cluster.local\noptions ndots:5"
        );
        assert_eq!(dns_from_json("{}").unwrap(), "");
        for (bad, why) in [
            (r#"{"Servers":["dns.example"]}"#, "Servers: \"dns.example\" is not an IP address"),
            (r#"{"Searches":["a\nnameserver 6.6.6.6"]}"#, "Searches"),
            (r#"{"Options":["ndots:5 rotate"]}"#, "Options"),
            (r#"{"Servers":"10.0.0.1"}"#, "invalid type"),
            (r#"{"Nameservers":[]}"#, "unknown field `Nameservers`"),
        ] {
            let e = dns_from_json(bad).unwrap_err().to_string();
            assert!(e.contains(DNS_ANNOTATION) && e.contains(why), "{bad}: {e}");
        }
    }
}
