//! What a state file may make `delete` remove: only the sandbox's own run directory and the
//! namespace the shim made for it. A state file that names anything else (edited, corrupted, or
//! from another sandbox) leaves it alone and says so.

use std::path::Path;

use shim::sandbox::SandboxState;
use tests::{quiet_logger, require_root_and_tools, TestNs};

#[tokio::test]
async fn teardown_removes_only_the_sandboxs_own_paths() {
    require_root_and_tools(&["ip"]);
    let root = std::env::temp_dir().join(format!("knt-confine-{}", std::process::id()));
    let victim = root.join("victim");
    std::fs::create_dir_all(&victim).unwrap();
    struct Cleanup<'a>(&'a Path);
    impl Drop for Cleanup<'_> {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(self.0);
        }
    }
    let _cleanup = Cleanup(&root);
    let other_ns = TestNs::new("victim");
    let log = quiet_logger();

    // A run directory not named for the sandbox, a namespace the shim did not make.
    let forged = SandboxState {
        id: "sb".into(),
        netns: Some(other_ns.path().into()),
        netns_created: true,
        run_dir: Some(victim.clone()),
        ..Default::default()
    };
    let e = forged.teardown(&log, Some(&root)).await.unwrap_err().to_string();
    assert!(e.contains("is not one the shim made"), "{e}");
    assert!(victim.exists(), "another directory is left alone");
    assert!(Path::new(&other_ns.path()).exists(), "another namespace is left alone");
    // `..` and a run directory outside the configured one are refused too.
    for d in [root.join("x/../sb"), std::env::temp_dir().join("sb")] {
        let s = SandboxState { id: "sb".into(), run_dir: Some(d), ..Default::default() };
        assert!(s.teardown(&log, Some(&root)).await.is_err());
    }
    assert!(victim.exists());

    // The sandbox's own run directory goes.
    let own = root.join("sb");
    std::fs::create_dir_all(own.join("sub")).unwrap();
    let s = SandboxState { id: "sb".into(), run_dir: Some(own.clone()), ..Default::default() };
    s.teardown(&log, Some(&root)).await.unwrap();
    assert!(!own.exists());
}

#[tokio::test]
async fn teardown_refuses_a_namespace_path_that_now_points_at_another_namespace() {
    require_root_and_tools(&["ip"]);
    let pod = TestNs::new("idpod");
    let other = TestNs::new("idother");
    // A device the state says the runtime made, in both namespaces.
    for ns in [&pod, &other] {
        ns.ip(&["tuntap", "add", "dev", "made0", "mode", "tap"]);
    }
    let state = |path: String| SandboxState {
        id: "sb".into(),
        netns: Some(path.into()),
        netns_id: shim::sandbox::netns_identity(Path::new(&pod.path())),
        endpoints: vec![network::endpoint::EndpointState::DirectTap {
            link: "made0".parse().unwrap(),
            created: true,
            restore: None,
        }],
        ..Default::default()
    };
    let log = quiet_logger();
    // The path now leads to another namespace (as /proc/<pid>/ns/net does once the pid is reused).
    let e = state(other.path()).teardown(&log, None).await.unwrap_err().to_string();
    assert!(e.contains("another one now"), "{e}");
    assert!(tests::try_run(&["ip", "-n", &other.name, "link", "show", "made0"]), "the other namespace is untouched");
    // The recorded namespace itself: torn down.
    state(pod.path()).teardown(&log, None).await.unwrap();
    assert!(!tests::try_run(&["ip", "-n", &pod.name, "link", "show", "made0"]));
}
