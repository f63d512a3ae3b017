//! Failure injection through real containerd: at every named step of StartVM (cold plug and
//! factory mode), of the sandbox's container in the VM and of the operator's operations, a
//! failure leaves the namespace, QEMU, the run directory, its mounts and the state file as they
//! were, and a SIGKILL of the shim there, followed by
//! containerd's `delete`, leaves nothing either. Also: an operator command killed halfway does
//! not cut the operation, and a deadline that passed while waiting for the sandbox refuses to
//! start one. The shim reads its failpoints from the file `KATA_NET_FAILPOINTS` names (debug
//! builds only).

use std::path::{Path, PathBuf};
use std::time::Duration;

use tests::cli::KataRuntime;
use tests::containerd::{kata_conf, qemu_running_in, wait_until, Containerd};
use tests::CniPod;

struct Harness {
    c: Containerd,
    failpoints: PathBuf,
    _scratch: tests::vm::Scratch,
}

impl Harness {
    fn new(tag: &str) -> Self {
        tests::require_root_and_tools(&["containerd", "ctr", "qemu-system-x86_64", "ip", "tc", "ping"]);
        let shim = Path::new(env!("CARGO_BIN_EXE_containerd-shim-kata-v2"));
        let scratch = tests::vm::Scratch::new(&format!("{tag}-fp"));
        let failpoints = scratch.0.join("failpoints");
        std::fs::write(&failpoints, "").unwrap();
        let c = Containerd::start_with_env(tag, "", shim, &[("KATA_NET_FAILPOINTS", &failpoints)]);
        std::fs::write(c.dir.0.join("configuration.toml"), kata_conf(&c.run_dir())).unwrap();
        Self { c, failpoints, _scratch: scratch }
    }

    /// Print how many steps were covered, each failed and killed.
    fn report(&self, what: &str, covered: usize, steps: usize) {
        self.set("");
        eprintln!("failure injection: {covered} {what} step/action pairs covered ({steps} steps)");
        assert_eq!(covered, 2 * steps);
    }

    /// A harness and a CNI-like pod namespace.
    fn with_pod(tag: &str) -> (Self, CniPod) {
        (Self::new(tag), CniPod::new())
    }

    fn set(&self, text: &str) {
        std::fs::write(&self.failpoints, text).unwrap();
    }

    fn factory(&self, on: bool) {
        let conf =
            kata_conf(&self.c.run_dir()).replace("[agent.kata]", &format!("enable_template = {on}\n[agent.kata]"));
        std::fs::write(self.c.dir.0.join("configuration.toml"), conf).unwrap();
    }

    /// No state file anywhere in containerd's bundles.
    fn no_state_file(&self) -> bool {
        let out = std::process::Command::new("find")
            .arg(self.c.dir.0.join("state"))
            .args(["-name", "kata-net-state.json"])
            .output()
            .unwrap();
        out.stdout.is_empty()
    }

    /// Nothing of sandbox `id` is left: no QEMU, no run directory, no state file, the pod's
    /// namespace as it was (or, without one, no namespace of the shim's).
    /// `in_pod`: the sandbox ran in the test's pod namespace, which the caller checks (unless
    /// `pod` gives the snapshot to compare), else in a namespace of the shim's own.
    fn nothing_left(&self, id: &str, pod: Option<(&CniPod, &serde_json::Value)>, in_pod: bool) -> bool {
        let ns_ok = match pod {
            Some((cni, before)) => cni.pod.snapshot() == *before,
            None => in_pod || !Path::new("/run/netns").join(format!("kata-net-{id}")).exists(),
        };
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let run = self.c.run_dir().display().to_string();
        let unmounted = !mounts.lines().any(|l| l.split(' ').nth(4).is_some_and(|m| m.starts_with(&run)));
        ns_ok
            && unmounted
            && !qemu_running_in(&self.c.run_dir())
            && !self.c.run_dir().join(id).exists()
            && self.no_state_file()
    }

    fn run(&self, id: &str, pod: Option<&CniPod>) -> std::process::Output {
        match pod {
            Some(cni) => self.c.run(id, &cni.pod.path(), &[]),
            None => self.c.ctr(&["run", "-d", "--runtime", "io.containerd.kata.v2", tests::containerd::IMAGE, id]),
        }
    }
}

/// StartVM: every step, failed and killed.
#[test]
fn every_start_step_failed_or_killed_leaves_nothing() {
    let (h, cni) = Harness::with_pod("fpstart");
    let before = cni.pod.snapshot();
    let steps: Vec<(&str, bool, bool)> = vec![
        // (step, in the CNI pod (else the shim's own namespace), factory mode)
        ("start:netns", false, false),
        ("start:endpoint:0", true, false),
        ("start:qemu:spawned", true, false),
        ("start:portfwd", true, false),
        ("hotplug:getfd", true, true),
        ("hotplug:netdev_add", true, true),
        ("hotplug:device_add", true, true),
        ("start:agent:interface:eth0", true, false),
        ("start:agent:routes", true, false),
        ("start:agent:neighbors", true, false),
        ("start:agent:sandbox", true, false),
        // The sandbox's own container in the VM, after the sandbox started.
        ("container:shared", true, false),
        ("container:created", true, false),
    ];
    let mut covered = 0;
    for (n, (step, in_pod, factory)) in steps.iter().enumerate() {
        h.factory(*factory);
        let pod = in_pod.then_some(&cni);
        let snap = in_pod.then_some((&cni, &before));
        for action in ["fail", "kill"] {
            let id = format!("fp{n}{}", &action[..1]);
            h.set(&format!("{step} {action}\n"));
            let out = h.run(&id, pod);
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{step} {action}: ctr run succeeded");
            if action == "fail" {
                assert!(err.contains(&format!("failure injected at step {step}")), "{step}: {err}");
                assert!(h.nothing_left(&id, snap, false), "{step} fail: something is left");
            } else {
                // containerd notices the dead shim and runs its `delete` in the bundle.
                wait_until(Duration::from_secs(60), &format!("{step} kill: cleaned by delete"), || {
                    h.nothing_left(&id, snap, false)
                });
            }
            let _ = h.c.ctr(&["container", "rm", &id]);
            covered += 1;
        }
    }
    h.report("StartVM", covered, steps.len());
}

/// A sandbox's removal (Delete): every step failed (logged, the removal goes on) or killed
/// (containerd's `delete` finishes it, a teardown done twice included).
#[test]
fn every_removal_step_failed_or_killed_leaves_nothing() {
    let (h, cni) = Harness::with_pod("fpremove");
    let before = cni.pod.snapshot();
    let steps = ["remove:container", "remove:vm-stopped", "remove:torn-down"];
    let mut covered = 0;
    for (n, step) in steps.iter().enumerate() {
        for action in ["fail", "kill"] {
            let id = format!("fprm{n}{}", &action[..1]);
            let out = h.run(&id, Some(&cni));
            assert!(out.status.success(), "{id} starts: {}", String::from_utf8_lossy(&out.stderr));
            assert!(h.c.ctr(&["task", "kill", "-s", "SIGKILL", &id]).status.success());
            wait_until(Duration::from_secs(20), "task stopped", || h.c.task_status(&id) == "STOPPED");
            h.set(&format!("{step} {action}\n"));
            let rm = h.c.ctr(&["task", "rm", &id]);
            if action == "fail" {
                assert!(rm.status.success(), "{step} fail: the removal goes on: {rm:?}");
            }
            wait_until(Duration::from_secs(60), &format!("{step} {action}: nothing left"), || {
                h.nothing_left(&id, Some((&cni, &before)), true)
            });
            h.set("");
            let _ = h.c.ctr(&["task", "rm", &id]);
            assert!(h.c.ctr(&["container", "rm", &id]).status.success(), "{step} {action}: container rm");
            wait_until(Duration::from_secs(20), "the shim exited", || h.c.shim_pid(&id).is_none());
            covered += 1;
        }
    }
    h.report("removal", covered, steps.len());
}

/// The operator's add-iface and del-iface: every step, failed and killed.
#[test]
fn every_operator_step_failed_or_killed_leaves_nothing() {
    let (h, cni) = Harness::with_pod("fpop");
    // The operator's TAP, made once the sandbox runs (a TAP there at start is one of the pod's).
    let add_tap = || {
        cni.pod.ip(&["tuntap", "add", "dev", "tap-op", "mode", "tap"]);
        cni.pod.exec(&["sysctl", "-q", "-w", "net.ipv6.conf.tap-op.disable_ipv6=1"]);
        cni.pod.snapshot()
    };
    let cli = KataRuntime { bin: tests::cli::kata_runtime_bin(), conf: h.c.dir.0.join("configuration.toml") };
    let doc = r#"{"device":"tap-op","name":"eth-op","IPAddresses":[{"address":"172.18.0.3","mask":"24"}],"hwAddr":"02:42:20:6f:b3:01","mtu":1500}"#;
    let steps = [
        "add-iface:host",
        "hotplug:getfd",
        "hotplug:netdev_add",
        "hotplug:device_add",
        "add-iface:hotplugged",
        "add-iface:configured",
        "del-iface:found",
    ];
    let mut covered = 0;
    // Failed: one sandbox for all.
    h.set("");
    let id = "fpopfail";
    assert!(h.run(id, Some(&cni)).status.success());
    let before = add_tap();
    let settled = |what: &str| wait_until(Duration::from_secs(10), what, || cni.pod.snapshot() == before);
    let qemu = tests::containerd::qemu_pid_in(&h.c.run_dir().join(id)).unwrap();
    let tun_fds = || tests::vm::fds_pointing_at(qemu, "/dev/net/tun");
    let base_fds = tun_fds();
    for step in steps {
        if step == "del-iface:found" {
            h.set("");
            assert_eq!(cli.run(&["kata-network", "add-iface", id, "-"], Some(doc)).2, 0);
        }
        h.set(&format!("{step} fail\n"));
        let verb = if step.starts_with("del-iface") { "del-iface" } else { "add-iface" };
        let (out, err, code) = cli.run(&["kata-network", verb, id, "-"], Some(doc));
        assert_ne!(code, 0, "{step}: {out}");
        assert!(err.contains(&format!("failure injected at step {step}")), "{step}: {err}");
        h.set("");
        if verb == "del-iface" {
            // Refused before anything: still listed; then removed for real.
            assert!(cli.ok(&["kata-network", "list-ifaces", id], None).contains("eth-op"));
            assert_eq!(cli.run(&["kata-network", "del-iface", id, "-"], Some(doc)).2, 0);
        }
        assert_eq!(cli.ok(&["kata-network", "list-ifaces", id], None), "null", "{step}");
        wait_until(Duration::from_secs(10), "QEMU let go of the TAP", || tun_fds() == base_fds);
        settled(&format!("{step} fail: the TAP and the namespace are as they were"));
        covered += 1;
    }
    h.c.remove_sandbox(id);
    cni.pod.ip(&["link", "del", "tap-op"]);
    // Killed: a sandbox each; containerd's delete removes everything, and gives the operator's
    // TAP its own features back.
    let cni_only = cni.pod.snapshot();
    let tap_as_made = || {
        let v: serde_json::Value =
            serde_json::from_str(&cni.pod.ip(&["-j", "-d", "link", "show", "tap-op"])).unwrap_or_default();
        v.pointer("/0/linkinfo/info_data/vnet_hdr") == Some(&serde_json::Value::Bool(false))
    };
    for (n, step) in steps.iter().enumerate() {
        let id = format!("fpopkill{n}");
        h.set("");
        let out = h.run(&id, Some(&cni));
        assert!(out.status.success(), "{step}: ctr run {id}: {}", String::from_utf8_lossy(&out.stderr));
        add_tap();
        if *step == "del-iface:found" {
            assert_eq!(cli.run(&["kata-network", "add-iface", &id, "-"], Some(doc)).2, 0);
        }
        h.set(&format!("{step} kill\n"));
        let verb = if step.starts_with("del-iface") { "del-iface" } else { "add-iface" };
        let (_, _, code) = cli.run(&["kata-network", verb, &id, "-"], Some(doc));
        assert_ne!(code, 0, "{step} kill");
        wait_until(Duration::from_secs(60), &format!("{step} kill: cleaned by delete"), || {
            h.nothing_left(&id, None, true) && tap_as_made()
        });
        let _ = h.c.ctr(&["container", "rm", &id]);
        cni.pod.ip(&["link", "del", "tap-op"]);
        assert_eq!(cni.pod.snapshot(), cni_only, "{step} kill: the namespace is as CNI left it");
        covered += 1;
    }
    h.report("operator", covered, steps.len());
}

/// A killed operator command does not cut its operation; a deadline that passes while the
/// operation waits for the sandbox keeps it from starting.
#[test]
fn an_interrupted_command_never_leaves_half_an_operation() {
    let (h, cni) = Harness::with_pod("fpcancel");
    let id = "fpcancel";
    assert!(h.run(id, Some(&cni)).status.success());
    cni.pod.ip(&["tuntap", "add", "dev", "tap-op", "mode", "tap"]);
    cni.pod.ip(&["tuntap", "add", "dev", "tap-two", "mode", "tap"]);
    let cli = KataRuntime { bin: tests::cli::kata_runtime_bin(), conf: h.c.dir.0.join("configuration.toml") };
    let doc = r#"{"device":"tap-op","name":"eth-op","hwAddr":"02:42:20:6f:b3:01","mtu":1500}"#;
    let doc2 = r#"{"device":"tap-two","name":"eth-two","hwAddr":"02:42:20:6f:b3:02","mtu":1500}"#;

    // Nobody holds the operator's TAP yet: up, and no carrier.
    cni.pod.ip(&["link", "set", "tap-op", "up"]);
    let tap_op = || cni.pod.ip(&["-o", "link", "show", "dev", "tap-op"]);
    assert!(tap_op().contains("NO-CARRIER"), "{}", tap_op());

    // The CLI is killed while the NIC is plugged but not yet configured in the guest.
    h.set("add-iface:hotplugged stall 3000\n");
    let mut child = std::process::Command::new(&cli.bin)
        .args(["kata-network", "add-iface", id, "-"])
        .env("KATA_CONF_FILE", &cli.conf)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(doc.as_bytes()).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    child.kill().unwrap();
    let _ = child.wait();
    // The operation went on to its end: the NIC is configured and listed, so del-iface works.
    wait_until(Duration::from_secs(20), "the add-iface finished without its client", || {
        cli.run(&["kata-network", "list-ifaces", id], None).0.contains("eth-op")
    });
    h.set("");
    assert!(!tap_op().contains("NO-CARRIER"), "QEMU holds the TAP while the NIC is there: {}", tap_op());
    assert_eq!(cli.run(&["kata-network", "del-iface", id, "-"], Some(doc)).2, 0);
    // After del-iface nothing holds the TAP any more (no fd of QEMU's or the shim's outlives it).
    assert!(tap_op().contains("NO-CARRIER"), "the TAP is held after del-iface returned: {}", tap_op());

    // A second command whose deadline (2 s) passes while the first holds the sandbox (4 s):
    // refused, and it never starts.
    h.set("add-iface:host stall 4000\n");
    let first = {
        let (bin, conf) = (cli.bin.clone(), cli.conf.clone());
        std::thread::spawn(move || KataRuntime { bin, conf }.run(&["kata-network", "add-iface", id, "-"], Some(doc)))
    };
    std::thread::sleep(Duration::from_millis(500));
    let second = std::process::Command::new(&cli.bin)
        .args(["kata-network", "add-iface", id, "-"])
        .env("KATA_CONF_FILE", &cli.conf)
        .env("KATA_RUNTIME_TIMEOUT", "2")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut second = second;
    second.stdin.take().unwrap().write_all(doc2.as_bytes()).unwrap();
    let out = second.wait_with_output().unwrap();
    assert!(!out.status.success(), "the second command times out");
    assert_eq!(first.join().unwrap().2, 0, "the first finishes");
    h.set("");
    // The sandbox's operations take its lock in the order they asked (tokio's Mutex is fair):
    // this list-ifaces queues behind the second command's add-iface, so it answers only after
    // that one was refused or had run.
    let listed = cli.ok(&["kata-network", "list-ifaces", id], None);
    assert!(listed.contains("eth-op") && !listed.contains("eth-two"), "the late one never started: {listed}");
    assert_eq!(cli.run(&["kata-network", "del-iface", id, "-"], Some(doc)).2, 0);
    assert!(tap_op().contains("NO-CARRIER"), "the TAP is held after the second del-iface: {}", tap_op());
    h.c.remove_sandbox(id);
}

/// The shim's IPVS table and the guest's never drift: a call that fails after the guest applied
/// it is counted again from the guest; a restore that fails is cleared in the guest.
#[test]
fn ipvs_rules_never_drift_from_the_guests() {
    let (h, cni) = Harness::with_pod("fpipvs");
    let id = "fpipvs";
    assert!(h.run(id, Some(&cni)).status.success());
    let cli = KataRuntime { bin: tests::cli::kata_runtime_bin(), conf: h.c.dir.0.join("configuration.toml") };
    let ipvsadm = |p: &str| cli.run(&["kata-ipvs", "ipvsadm", "--parameters", p, id], None);
    let services = |list: &str| list.lines().filter(|l| l.starts_with("TCP ")).count();
    let servers =
        |list: &str| list.lines().filter(|l| l.trim_start().starts_with("-> ") && !l.contains("RemoteAddress")).count();

    // The guest applies the service, the call then fails: the shim knows the service anyway.
    h.set("ipvs:applied fail\n");
    let (_, err, code) = ipvsadm("--add-service --tcp-service 10.9.0.1:80 --scheduler rr");
    assert_ne!(code, 0);
    assert!(err.contains("failure injected at step ipvs:applied"), "{err}");
    h.set("");
    let (_, err, code) = ipvsadm("--add-server --tcp-service 10.9.0.1:80 --real-server 10.9.9.9:80 --masquerading");
    assert_eq!(code, 0, "the recounted table has the service: {err}");
    let (list, _, _) = ipvsadm("--list");
    assert_eq!((services(&list), servers(&list)), (1, 1), "{list}");

    // A restore that fails after the guest loaded it: the guest is cleared, the table empty.
    assert_eq!(ipvsadm("--clear").2, 0);
    h.set("ipvs:restored fail\n");
    let rules = "-A -t 10.8.0.1:80 -s rr\n-a -t 10.8.0.1:80 -r 10.8.9.9:80 -m -w 1\n-A -t 10.8.0.2:80 -s rr\n";
    let (_, err, code) = cli.run(&["kata-ipvs", "ipvsadm", "--restore", "-", id], Some(rules));
    assert_ne!(code, 0);
    assert!(err.contains("failure injected at step ipvs:restored"), "{err}");
    h.set("");
    let (list, _, _) = ipvsadm("--list");
    assert_eq!(services(&list), 0, "the guest holds nothing of the failed restore: {list}");
    let (_, err, code) = cli.run(&["kata-ipvs", "ipvsadm", "--restore", "-", id], Some(rules));
    assert_eq!(code, 0, "the table is empty, so a restore is accepted: {err}");
    let (list, _, _) = ipvsadm("--list");
    assert_eq!((services(&list), servers(&list)), (2, 1), "{list}");
    h.c.remove_sandbox(id);
}

/// Following the namespace: a pod link that appears after start, failed at each step of bringing
/// it into the VM (undone, and not tried again in a loop), then the shim killed at each step;
/// containerd's delete leaves the namespace as the pod made it (the new link there, nothing of
/// the runtime's).
#[test]
fn a_shim_killed_while_following_a_new_pod_link_is_cleaned_by_delete() {
    let (h, cni) = Harness::with_pod("fpfollow");
    let add_eth1 = || {
        cni.pod.ip(&[
            "link",
            "add",
            "eth1",
            "address",
            "02:00:0a:59:00:02",
            "type",
            "veth",
            "peer",
            "name",
            "veth1",
            "netns",
            &cni.peer.name,
        ]);
        cni.pod.ip(&["addr", "add", "10.89.0.2/24", "dev", "eth1"]);
        cni.pod.ip(&["link", "set", "eth1", "up"]);
        cni.peer.ip(&["link", "set", "veth1", "up"]);
    };
    // The namespace as the pod leaves it with its new link, taken without a sandbox.
    add_eth1();
    std::thread::sleep(Duration::from_secs(3));
    let expected = cni.pod.snapshot();
    cni.pod.ip(&["link", "del", "eth1"]);
    let steps = ["follow:attached", "hotplug:device_add", "follow:hotplugged"];
    // Failed: undone, not tried again in a loop, tried again when the link is made again.
    let id = "fpfollowfail";
    h.set("");
    assert!(h.run(id, Some(&cni)).status.success());
    let run = h.c.run_dir().join(id);
    const UNDONE: &str = "a new pod link could not be plugged in (undone";
    for step in steps {
        h.set(&format!("{step} fail\n"));
        let undone = h.c.log_lines(UNDONE);
        add_eth1();
        // The shim says it undid the plugging once it has: then nothing of it may be left.
        wait_until(Duration::from_secs(30), &format!("{step} fail: the shim undid the new link"), || {
            h.c.log_lines(UNDONE) > undone
        });
        let links = cni.pod.ip(&["-o", "link"]);
        assert!(!links.contains("tap1_kata"), "{step} fail: the new TAP is removed again: {links}");
        assert!(!cni.pod.exec(&["tc", "qdisc", "show", "dev", "eth1"]).contains("ingress"), "{step}: no redirect left");
        assert!(!tests::guest::sh(&run, "ip link").contains("eth1"), "{step} fail: no NIC in the guest");
        assert!(h.c.shim_pid(id).is_some(), "the shim lives on");
        h.set("");
        cni.pod.ip(&["link", "del", "eth1"]);
    }
    add_eth1();
    wait_until(Duration::from_secs(60), "made again, the link is plugged in", || {
        tests::guest::sh(&run, "ip -4 addr").contains("inet 10.89.0.2/24")
    });
    cni.pod.ip(&["link", "del", "eth1"]);
    h.c.remove_sandbox(id);
    for (n, step) in steps.iter().enumerate() {
        let id = format!("fpfollow{n}");
        h.set("");
        assert!(h.run(&id, Some(&cni)).status.success(), "{step}: ctr run");
        h.set(&format!("{step} kill\n"));
        add_eth1();
        wait_until(Duration::from_secs(90), &format!("{step} kill: cleaned by delete"), || {
            h.nothing_left(&id, Some((&cni, &expected)), true)
        });
        let _ = h.c.ctr(&["container", "rm", &id]);
        cni.pod.ip(&["link", "del", "eth1"]);
    }
    h.set("");
    eprintln!("failure injection: {} follow steps failed (undone) and killed (cleaned by delete)", steps.len());
}

/// The hybrid vsock backend stops serving the VM while the shim waits for the agent (the fault of
/// vhost-device-vsock 0.3.0 whose worker thread ends on an error of its event handler; simulated
/// at `start:vsock:worker`, where the shim looks for that thread): the start is undone and made
/// once more, and the sandbox runs; lost again, `ctr run` fails with the cause instead of waiting
/// out dial_timeout, and nothing is left.
#[test]
fn a_hybrid_vsock_backend_that_stops_serving_gets_the_start_made_again() {
    let (h, cni) = Harness::with_pod("fpvsock");
    tests::require_root_and_tools(&["vhost-device-vsock"]);
    let conf = kata_conf(&h.c.run_dir()).replace("[agent.kata]", "agent_channel = \"hybrid-vsock\"\n[agent.kata]");
    std::fs::write(h.c.dir.0.join("configuration.toml"), conf).unwrap();
    let before = cni.pod.snapshot();
    let backends = |id: &str| tests::containerd::processes_naming(&h.c.run_dir().join(id), "vhost-device-vsock");

    h.set("start:vsock:worker fail-once\n");
    let out = h.run("fpvs1", Some(&cni));
    assert!(out.status.success(), "made again, the start succeeds: {}", String::from_utf8_lossy(&out.stderr));
    let log = std::fs::read_to_string(h.c.dir.0.join("containerd.log")).unwrap();
    assert!(
        log.contains("the sandbox's start is undone and made again"),
        "the shim says why it started twice: {}",
        log.lines().filter(|l| l.contains("fpvs1")).collect::<Vec<_>>().join("\n")
    );
    assert_eq!(backends("fpvs1"), 1, "one backend: the first one is gone");
    tests::run(&["ip", "netns", "exec", &cni.peer.name, "ping", "-c", "2", "-i", "0.3", "-W", "5", tests::POD_IP]);
    h.c.remove_sandbox("fpvs1");
    assert!(h.nothing_left("fpvs1", Some((&cni, &before)), true));

    h.set("start:vsock:worker fail\n");
    let out = h.run("fpvs2", Some(&cni));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "lost twice: ctr run fails");
    assert!(err.contains("the hybrid vsock backend (vhost-device-vsock) stopped serving the VM"), "{err}");
    assert!(h.nothing_left("fpvs2", Some((&cni, &before)), true), "something is left");
    assert_eq!(backends("fpvs2"), 0, "no vhost-device-vsock left");
    let _ = h.c.ctr(&["container", "rm", "fpvs2"]);
    h.set("");
}

/// Following the namespace: one step that fails (the routes' sync, injected) does not stop the
/// others of the same round (an address change still reaches the guest), and once it works
/// again the next change brings the routes in line too.
#[test]
fn a_failing_follow_step_does_not_stop_the_others_or_later_syncs() {
    let (h, cni) = Harness::with_pod("fpfollowon");
    let before = cni.pod.snapshot();
    let id = "fpfollowon";
    h.set("");
    assert!(h.run(id, Some(&cni)).status.success());
    let run = h.c.run_dir().join(id);
    h.set("follow:routes fail\n");
    cni.pod.ip(&["addr", "add", "10.88.0.77/24", "dev", "eth0"]);
    cni.pod.ip(&["route", "add", "10.125.0.0/16", "via", "10.88.0.254", "dev", "eth0"]);
    wait_until(Duration::from_secs(30), "the address reached the guest though the routes failed", || {
        tests::guest::sh(&run, "ip -4 addr show eth0").contains("inet 10.88.0.77/24")
    });
    assert!(!tests::guest::sh(&run, "ip route").contains("10.125.0.0/16"), "the injected failure held the route back");
    assert!(h.c.log_lines("a step failed; the others go on") > 0, "the failure was logged");
    h.set("");
    cni.pod.ip(&["addr", "add", "10.88.0.78/24", "dev", "eth0"]);
    wait_until(Duration::from_secs(30), "the next change synced the routes as well", || {
        let g = tests::guest::sh(&run, "ip -4 addr show eth0; ip route");
        g.contains("inet 10.88.0.78/24") && g.contains("10.125.0.0/16 via 10.88.0.254 dev eth0")
    });
    cni.pod.ip(&["route", "del", "10.125.0.0/16"]);
    cni.pod.ip(&["addr", "del", "10.88.0.77/24", "dev", "eth0"]);
    cni.pod.ip(&["addr", "del", "10.88.0.78/24", "dev", "eth0"]);
    h.c.remove_sandbox(id);
    assert!(h.nothing_left(id, Some((&cni, &before)), true), "something is left");
}

/// Rate limits: every step of a NIC's shaping (an IFB made, the redirect to it, each HTB),
/// under `tcfilter` (both HTBs on egress) and the `macvtap` model (what the VM receives through
/// an IFB), failed (undone, the start refused) and killed (cleaned by `delete`).
#[test]
fn every_shaping_step_failed_or_killed_leaves_nothing() {
    let (h, cni) = Harness::with_pod("fpshape");
    let before = cni.pod.snapshot();
    let limited = |model: &str| {
        kata_conf(&h.c.run_dir())
            .replacen(
                "[hypervisor.qemu]\n",
                "[hypervisor.qemu]\nrx_rate_limiter_max_rate = 8000000\ntx_rate_limiter_max_rate = 6000000\n",
                1,
            )
            .replacen("[runtime]\n", &format!("[runtime]\ninternetworking_model = \"{model}\"\n"), 1)
    };
    let cases = [
        ("tcfilter", "shaping:rx:htb"),
        ("tcfilter", "shaping:tx:htb"),
        ("macvtap", "shaping:rx:ifb"),
        ("macvtap", "shaping:rx:redirect"),
        ("macvtap", "shaping:rx:htb"),
        ("macvtap", "shaping:tx:htb"),
    ];
    let mut covered = 0;
    for (n, (model, step)) in cases.iter().enumerate() {
        std::fs::write(h.c.dir.0.join("configuration.toml"), limited(model)).unwrap();
        for action in ["fail", "kill"] {
            let id = format!("fpsh{n}{}", &action[..1]);
            h.set(&format!("{step} {action}\n"));
            let out = h.run(&id, Some(&cni));
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{model} {step} {action}: ctr run succeeded");
            if action == "fail" {
                assert!(err.contains(&format!("failure injected at step {step}")), "{model} {step}: {err}");
                assert!(h.nothing_left(&id, Some((&cni, &before)), true), "{model} {step} fail: something is left");
            } else {
                wait_until(Duration::from_secs(60), &format!("{model} {step} kill: cleaned by delete"), || {
                    h.nothing_left(&id, Some((&cni, &before)), true)
                });
            }
            let _ = h.c.ctr(&["container", "rm", &id]);
            covered += 1;
        }
    }
    h.set("");
    // The same limits without a fault: the sandbox starts with its HTBs, and goes without them.
    std::fs::write(h.c.dir.0.join("configuration.toml"), limited("tcfilter")).unwrap();
    assert!(h.run("fpshok", Some(&cni)).status.success(), "a limited sandbox starts");
    let classes = cni.pod.tc(&["class", "show", "dev", "eth0"]);
    assert!(classes.contains("rate 6Mbit"), "the link's HTB: {classes}");
    h.c.remove_sandbox("fpshok");
    assert!(h.nothing_left("fpshok", Some((&cni, &before)), true), "after the limited sandbox: something is left");
    h.report("shaping", covered, cases.len());
}
