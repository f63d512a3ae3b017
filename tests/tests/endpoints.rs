//! The endpoint kinds that do not go through a model, and namespaces the runtime makes itself.

use std::fs::File;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use network::endpoint::{Endpoint, EndpointConfig, EndpointState};
use network::{Error, NetCtx, NetNs, NicBackend};
use tests::{frames, quiet_logger, require_root_and_tools, run, TestNs};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_macvtap_link_carries_ping_through_its_tap_device_fds() {
    require_root_and_tools(&["ip", "ping"]);
    let pod = TestNs::new("mvt");
    let peer = TestNs::new("mvtpeer");
    pod.ip(&["link", "add", "eth0", "type", "veth", "peer", "name", "veth0", "netns", &peer.name]);
    pod.ip(&["link", "set", "eth0", "up"]);
    pod.ip(&["link", "add", "mvt0", "link", "eth0", "type", "macvtap", "mode", "bridge"]);
    pod.ip(&["link", "set", "mvt0", "address", "02:00:0a:59:00:05", "up"]);
    peer.ip(&["addr", "add", "10.89.0.1/24", "dev", "veth0"]);
    peer.ip(&["link", "set", "veth0", "up"]);
    let before = pod.snapshot();

    let cfg = EndpointConfig { queues: 2, vhost_net: false, ..EndpointConfig::default() };
    let ctx = NetCtx::open(pod.netns(), quiet_logger()).unwrap();
    let eps = Endpoint::from_scan(&ctx.scan().await.unwrap(), &cfg).unwrap();
    let ep = eps.iter().find(|e| matches!(e, Endpoint::Macvtap(_))).expect("a macvtap endpoint");
    let attached = ep.attach(&ctx, &cfg).await.unwrap();
    assert_eq!(attached.state, EndpointState::Macvtap { link: "mvt0".parse().unwrap() });
    assert_eq!(attached.nic.guest_mac.to_string(), "02:00:0a:59:00:05");
    let queues: Vec<File> = match attached.nic.backend {
        NicBackend::Tap { queues, .. } => queues.into_iter().map(File::from).collect(),
        other => panic!("{other:?}"),
    };
    assert_eq!(queues.len(), 2);
    // The fds were opened through a private device node: none was left in /dev or /tmp.
    let idx = pod.ifindex("mvt0");
    assert!(!std::path::Path::new(&format!("/tmp/tap{idx}")).exists());

    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let ip: Ipv4Addr = "10.89.0.5".parse().unwrap();
    let vm = std::thread::spawn(move || {
        let mut q = queues;
        frames::serve(&mut q, [2, 0, 0x0a, 0x59, 0, 5], ip, Duration::from_secs(30), || stop2.load(Ordering::SeqCst))
    });
    let ok =
        tests::try_run(&["ip", "netns", "exec", &peer.name, "ping", "-c", "3", "-i", "0.2", "-W", "3", "10.89.0.5"]);
    stop.store(true, Ordering::SeqCst);
    let seen = vm.join().unwrap();
    assert!(ok, "ping through the macvtap queues failed; VM side saw {seen:?}");
    assert!(seen.echo_requests >= 3, "{seen:?}");

    attached.state.detach(&ctx).await.unwrap();
    assert_eq!(pod.snapshot(), before, "nothing was made, nothing is removed");
}

/// A directory removed on drop.
struct Cleanup(std::path::PathBuf);
impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A namespace with a veth `eth0` holding 10.90.0.5/24.
fn pod_with_eth0(tag: &str) -> TestNs {
    require_root_and_tools(&["ip"]);
    let pod = TestNs::new(tag);
    pod.ip(&["link", "add", "eth0", "type", "veth", "peer", "name", "p0"]);
    pod.ip(&["addr", "add", "10.90.0.5/24", "dev", "eth0"]);
    pod
}

/// `<dir>/vhostuser_10.90.0.5/vhu.sock` as a listening socket (both directories made 0755).
fn vhost_user_socket_in(dir: &std::path::Path) -> (std::os::unix::net::UnixListener, std::path::PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let sock_dir = dir.join("vhostuser_10.90.0.5");
    std::fs::create_dir_all(&sock_dir).unwrap();
    for d in [dir, sock_dir.as_path()] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let sock = sock_dir.join("vhu.sock");
    (std::os::unix::net::UnixListener::bind(&sock).unwrap(), sock)
}

#[tokio::test]
async fn a_link_with_a_vhost_user_socket_becomes_a_vhost_user_endpoint() {
    let pod = pod_with_eth0("vhu");
    // Under /run: every directory above is root's and only root's to change.
    let dir = std::path::PathBuf::from(format!("/run/knt-vhu-{}", std::process::id()));
    let _cleanup = Cleanup(dir.clone());
    let (_listener, sock) = vhost_user_socket_in(&dir);

    let cfg = EndpointConfig { vhost_user_dir: Some(dir.clone()), ..EndpointConfig::default() };
    let ctx = NetCtx::open(pod.netns(), quiet_logger()).unwrap();
    let eps = Endpoint::from_scan(&ctx.scan().await.unwrap(), &cfg).unwrap();
    let ep = eps.iter().find(|e| e.link_name().as_str() == "eth0").unwrap();
    assert!(matches!(ep, Endpoint::VhostUser(_)), "{ep:?}");
    let a = ep.attach(&ctx, &cfg).await.unwrap();
    match a.nic.backend {
        NicBackend::VhostUser { socket } => assert_eq!(socket, sock),
        other => panic!("{other:?}"),
    }
    // Discovery is off by default: the same link is an ordinary veth.
    let eps = Endpoint::from_scan(&ctx.scan().await.unwrap(), &EndpointConfig::default()).unwrap();
    assert!(matches!(eps.iter().find(|e| e.link_name().as_str() == "eth0").unwrap(), Endpoint::Veth(_)));
    // A plain file there is not a socket: refused, naming the path.
    std::fs::remove_file(&sock).unwrap();
    std::fs::write(&sock, b"").unwrap();
    let e = Endpoint::from_scan(&ctx.scan().await.unwrap(), &cfg).unwrap_err().to_string();
    assert!(e.contains("vhu.sock") && e.contains("is not a socket"), "{e}");
}

#[tokio::test]
async fn a_vhost_user_socket_another_user_could_have_placed_is_refused_naming_the_check() {
    use std::os::unix::fs::PermissionsExt;
    let pod = pod_with_eth0("vhx");
    let ctx = NetCtx::open(pod.netns(), quiet_logger()).unwrap();
    let info = ctx.scan().await.unwrap();
    let refused = |dir: &std::path::Path| {
        let cfg = EndpointConfig { vhost_user_dir: Some(dir.to_owned()), ..EndpointConfig::default() };
        Endpoint::from_scan(&info, &cfg).unwrap_err().to_string()
    };
    // Under /tmp, which every user can write to.
    let tmp = std::env::temp_dir().join(format!("knt-vhx-{}", std::process::id()));
    let _c1 = Cleanup(tmp.clone());
    let (_l1, _) = vhost_user_socket_in(&tmp);
    let e = refused(&tmp);
    assert!(e.starts_with("/tmp: writable by group or others (mode 1777)"), "{e}");
    // Under /run, but the socket's directory is writable by others, then owned by a user.
    let run = std::path::PathBuf::from(format!("/run/knt-vhx-{}", std::process::id()));
    let _c2 = Cleanup(run.clone());
    let (_l2, sock) = vhost_user_socket_in(&run);
    let sock_dir = sock.parent().unwrap();
    std::fs::set_permissions(sock_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let e = refused(&run);
    assert!(e.contains("vhostuser_10.90.0.5: writable by group or others (mode 777)"), "{e}");
    std::fs::set_permissions(sock_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::chown(&sock, Some(65534), None).unwrap();
    let e = refused(&run);
    assert!(e.contains("vhu.sock: owned by uid 65534, not root"), "{e}");
    std::os::unix::fs::chown(&sock, Some(0), None).unwrap();
    let ok = EndpointConfig { vhost_user_dir: Some(run.clone()), ..EndpointConfig::default() };
    assert!(Endpoint::from_scan(&info, &ok).is_ok(), "root's again: accepted");
}

#[tokio::test]
async fn the_runtime_creates_and_removes_its_own_namespace() {
    require_root_and_tools(&["ip"]);
    let name = format!("knt{}-own", std::process::id());
    let ns = NetNs::create(&name).unwrap();
    struct Guard(String);
    impl Drop for Guard {
        fn drop(&mut self) {
            if std::path::Path::new("/run/netns").join(&self.0).exists() {
                let _ = std::process::Command::new("ip").args(["netns", "del", &self.0]).status();
            }
        }
    }
    let _g = Guard(name.clone());
    assert!(run(&["ip", "netns", "list"]).contains(&name));
    // It is a new, empty network namespace, not ours.
    let ctx = NetCtx::open(ns.clone(), quiet_logger()).unwrap();
    assert_eq!(ctx.scan().await.unwrap(), network::NetworkInfo::default());
    let links = run(&["ip", "-n", &name, "-o", "link"]);
    assert_eq!(links.lines().count(), 1, "only lo: {links}");
    assert!(matches!(NetNs::create(&name), Err(Error::NetnsCreate { .. })), "a second create is refused");
    assert!(matches!(NetNs::create("bad/name"), Err(Error::NetnsCreate { .. })));
    drop(ctx);
    ns.remove().unwrap();
    assert!(!run(&["ip", "netns", "list"]).contains(&name));
    assert!(!std::path::Path::new("/run/netns").join(&name).exists());
}
