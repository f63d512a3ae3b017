//! `kata-runtime kata-network scan-netns` as an operator runs it.

use std::process::Command;

use tests::{require_root_and_tools, CniPod, TestNs};

fn kata_runtime(args: &[&str]) -> (String, String, i32) {
    let out = Command::new(env!("CARGO_BIN_EXE_kata-runtime")).args(args).output().unwrap();
    (String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap(), out.status.code().unwrap_or(-1))
}

#[test]
fn scan_netns_prints_the_cni_namespace_in_agent_shapes() {
    require_root_and_tools(&["ip"]);
    let cni = CniPod::new();
    let before = cni.pod.snapshot();
    let (out, err, code) = kata_runtime(&["kata-network", "scan-netns", &cni.pod.path()]);
    assert_eq!(code, 0, "{err}");
    let want = concat!(
        r#"{"interfaces":[{"device":"eth0","name":"eth0","IPAddresses":[{"family":0,"address":"10.88.0.5","mask":"24"},"#,
        r#"{"family":1,"address":"fd00:88::5","mask":"64"}],"mtu":1450,"hwAddr":"02:00:0a:58:00:05","devicePath":"","#,
        r#""type":"veth","raw_flags":69699,"Queues":0}],"#,
        r#""routes":[{"dest":"10.77.0.0/16","gateway":"","device":"eth0","source":"","scope":253,"family":0,"flags":0,"mtu":0},"#,
        r#"{"dest":"","gateway":"10.88.0.1","device":"eth0","source":"","scope":0,"family":0,"flags":0,"mtu":0},"#,
        r#"{"dest":"10.99.0.0/16","gateway":"10.88.0.254","device":"eth0","source":"","scope":0,"family":0,"flags":0,"mtu":0},"#,
        r#"{"dest":"","gateway":"fd00:88::1","device":"eth0","source":"","scope":0,"family":1,"flags":0,"mtu":0}],"#,
        r#""neighbors":[{"toIPAddress":{"family":0,"address":"10.88.0.9","mask":""},"device":"eth0","lladdr":"02:00:0a:58:00:09","state":128,"flags":0}]}"#,
        "\n"
    );
    assert_eq!(out, want);
    assert_eq!(cni.pod.snapshot(), before, "scan-netns is read-only");
}

#[test]
fn scan_netns_shows_each_link_type() {
    require_root_and_tools(&["ip"]);
    let ns = TestNs::new("cli");
    ns.ip(&["link", "add", "p0", "type", "veth", "peer", "name", "p1"]);
    ns.ip(&["tuntap", "add", "tap-a", "mode", "tap"]);
    ns.ip(&["link", "add", "mvt0", "link", "p0", "type", "macvtap"]);
    let (out, err, code) = kata_runtime(&["kata-network", "scan-netns", &ns.path()]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let mut types: Vec<(String, String)> = v["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["name"].as_str().unwrap().to_owned(), i["type"].as_str().unwrap().to_owned()))
        .collect();
    types.sort();
    let want: Vec<(String, String)> = [("mvt0", "macvtap"), ("p0", "veth"), ("p1", "veth"), ("tap-a", "tuntap")]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(types, want);
}

#[test]
fn scan_netns_refuses_bad_paths_with_null_and_an_error() {
    require_root_and_tools(&["ip"]);
    for (path, needle) in [
        ("relative/ns", "must be absolute"),
        ("/etc/hostname", "not a namespace file"),
        ("/run/netns/does-not-exist-knt", "No such file"),
    ] {
        let (out, err, code) = kata_runtime(&["kata-network", "scan-netns", path]);
        assert_eq!(out, "null\n", "{path}");
        assert_ne!(code, 0, "{path}");
        assert!(err.contains(path) && err.contains(needle), "{path}: {err}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
    }
    // A namespace file that is not a network namespace.
    let (out, err, code) = kata_runtime(&["kata-network", "scan-netns", "/proc/self/ns/mnt"]);
    assert_eq!((out.as_str(), code != 0), ("null\n", true));
    assert!(err.contains("cannot enter network namespace"), "{err}");
    let (out, _, code) = kata_runtime(&["kata-network", "scan-netns"]);
    assert_eq!((out.as_str(), code), ("null\n", 2));
}
