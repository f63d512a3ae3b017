//! What the OCI spec says about the sandbox's network.

use std::path::{Path, PathBuf};

pub const DNS_ANNOTATION: &str = "io.katacontainers.sandbox_dns";

/// The namespace, hostname and DNS lines a sandbox's spec gives.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpecNetwork {
    pub netns: Option<PathBuf>,
    pub hostname: String,
    pub dns: Vec<String>,
}

impl SpecNetwork {
    pub fn from_spec(spec: &oci_spec::runtime::Spec) -> Self {
        use oci_spec::runtime::LinuxNamespaceType;
        let netns = spec
            .linux()
            .as_ref()
            .and_then(|l| l.namespaces().as_ref())
            .and_then(|ns| ns.iter().find(|n| n.typ() == LinuxNamespaceType::Network))
            .and_then(|n| n.path().clone());
        let mut dns: Vec<String> = Vec::new();
        if let Some(v) = spec.annotations().as_ref().and_then(|a| a.get(DNS_ANNOTATION)) {
            dns = v.split(['\n', ',']).map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect();
        } else if let Some(m) =
            spec.mounts().as_ref().and_then(|ms| ms.iter().find(|m| m.destination() == Path::new("/etc/resolv.conf")))
        {
            if let Some(src) = m.source() {
                dns = std::fs::read_to_string(src)
                    .unwrap_or_default()
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(String::from)
                    .collect();
            }
        }
        Self { netns, hostname: spec.hostname().clone().unwrap_or_default().chars().take(64).collect(), dns }
    }
}
