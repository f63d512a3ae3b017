//! The shim binary's own flags, as containerd 2.x calls them: `-v` prints the version (not an
//! error about containerd's environment), `-info` the RuntimeInfo protobuf with the OCI features.

use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::types::introspection::RuntimeInfo;

fn shim(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_containerd-shim-kata-v2"))
        .args(args)
        .env_remove("TTRPC_ADDRESS")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run the shim")
}

#[test]
fn version_and_info_answer_without_containerds_environment() {
    for flag in ["-v", "-version"] {
        let out = shim(&[flag]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{flag}: {out:?}");
        assert!(text.starts_with("containerd-shim-kata-v2:\n  Version:  "), "{flag}: {text}");
        assert!(text.contains(env!("CARGO_PKG_VERSION")), "{text}");
    }
    let out = shim(&["-info"]);
    assert!(out.status.success(), "{out:?}");
    let info = RuntimeInfo::parse_from_bytes(&out.stdout).expect("a RuntimeInfo");
    assert_eq!(info.name, "io.containerd.kata.v2");
    assert_eq!(info.version.version, env!("CARGO_PKG_VERSION"));
    let features: serde_json::Value = serde_json::from_slice(&info.features.value).expect("the features as JSON");
    assert_eq!(features["ociVersionMin"], "1.0.0");
    assert!(features["linux"]["namespaces"].as_array().unwrap().iter().any(|n| n == "pid"));
}
