//! `kata-runtime kata-network` against a running sandbox: a real shim under Debian's containerd,
//! its QEMU (TCG) VM and guest agent, an operator's TAP in the pod's namespace.

use std::path::{Path, PathBuf};

use serde_json::Value;
use tests::cli::{assert_refused, KataRuntime, Out};
use tests::containerd::{wait_until, Containerd};
use tests::CniPod;

/// The command as an operator runs it, with the sandbox shim's configuration.
struct Cli {
    k: KataRuntime,
    scratch: PathBuf,
}

impl Cli {
    fn new(c: &Containerd) -> Self {
        let conf = c.dir.0.join("configuration.toml");
        Self { k: KataRuntime { bin: tests::cli::kata_runtime_bin(), conf }, scratch: c.dir.0.clone() }
    }

    fn run(&self, args: &[&str], stdin: Option<&str>) -> Out {
        self.k.run(args, stdin)
    }

    fn ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        self.k.ok(args, stdin)
    }

    /// `kata-network <cmd> <sandbox> <file>` with the document in a file.
    fn doc(&self, cmd: &str, sandbox: &str, json: &str) -> Out {
        let f = self.scratch.join("doc.json");
        std::fs::write(&f, json).unwrap();
        self.run(&["kata-network", cmd, sandbox, f.to_str().unwrap()], None)
    }
}

const IFACE: &str = r#"{"device":"tap-test","name":"eth-test","IPAddresses":[{"address":"172.16.0.3","mask":"16"}],"hwAddr":"02:42:20:6f:a3:69","mtu":1500}"#;

fn with(base: &str, f: impl FnOnce(&mut Value)) -> String {
    let mut v: Value = serde_json::from_str(base).unwrap();
    f(&mut v);
    v.to_string()
}

/// The operator's scenario shares one sandbox: its parts, and what each phase compares with.
struct Operated<'a> {
    c: &'a Containerd,
    cli: &'a Cli,
    cni: &'a CniPod,
    id: &'a str,
    qemu: u32,
    /// QEMU's TAP fds with the pod's NICs only.
    base_fds: usize,
    /// The namespace with the operator's TAP, before any command.
    before: Value,
    /// The guest's routes before any command (IPv6 link-local ones left out).
    routes_before: Vec<Value>,
}

impl Operated<'_> {
    fn tun_fds(&self) -> usize {
        tests::vm::fds_pointing_at(self.qemu, "/dev/net/tun")
    }

    /// The guest's routes, but for IPv6 link-local ones, which appear when the kernel gets to them.
    fn routes(&self) -> Vec<Value> {
        let v: Vec<Value> =
            serde_json::from_str(&self.cli.ok(&["kata-network", "list-routes", self.id], None)).unwrap();
        v.into_iter().filter(|r| !r["dest"].as_str().unwrap_or_default().starts_with("fe80:")).collect()
    }

    /// The namespace is as before (the TAP's carrier drops a moment after QEMU lets go of its queue).
    fn settled(&self, what: &str) {
        wait_until(std::time::Duration::from_secs(5), what, || self.cni.pod.snapshot() == self.before);
    }
}

#[test]
fn operator_plugs_a_tap_manages_routes_and_unplugs_it() {
    let c = tests::containerd::start_containerd("knet", Path::new(env!("CARGO_BIN_EXE_containerd-shim-kata-v2")));
    let cli = Cli::new(&c);
    let cni = CniPod::new();
    let id = "sbnet0123456789";
    let as_cni_left_it = cni.pod.snapshot();
    c.run_ok(id, &cni.pod.path());
    let qemu = tests::containerd::qemu_pid_in(&c.run_dir().join(id)).expect("the sandbox's QEMU");
    let base_fds = tests::vm::fds_pointing_at(qemu, "/dev/net/tun");

    // The operator's TAP, with the host's side of the new network on it.
    cni.pod.ip(&["tuntap", "add", "dev", "tap-test", "mode", "tap"]);
    // IPv4 only, as on many OVS ports: otherwise the kernel adds IPv6 link-local addresses and
    // routes the first time the TAP gets a carrier, whoever attaches to it.
    cni.pod.exec(&["sysctl", "-q", "-w", "net.ipv6.conf.tap-test.disable_ipv6=1"]);
    cni.pod.ip(&["addr", "add", "172.16.0.1/16", "dev", "tap-test"]);
    cni.pod.ip(&["link", "set", "tap-test", "up"]);
    // A link that is not a TAP.
    cni.pod.ip(&["link", "add", "br-x", "type", "bridge"]);
    let before = cni.pod.snapshot();
    assert_eq!(cli.ok(&["kata-network", "list-ifaces", id], None), "null");
    let mut o = Operated { c: &c, cli: &cli, cni: &cni, id, qemu, base_fds, before, routes_before: Vec::new() };
    o.routes_before = o.routes();

    bad_input_changes_nothing(&o);
    add_iface_reaches_the_vm(&o);
    routes_in_the_guests_table(&o);
    a_made_tap_and_del_iface(&o);

    // The sandbox goes; the namespace is as the operator and CNI left it.
    c.remove_sandbox(id);
    cni.pod.ip(&["link", "del", "tap-test"]);
    cni.pod.ip(&["link", "del", "br-x"]);
    assert_eq!(cni.pod.snapshot(), as_cni_left_it);
    assert_refused(cli.run(&["kata-network", "list-ifaces", id], None), "no such sandbox");
}

/// Bad input: refused with the field named, and nothing changes anywhere.
fn bad_input_changes_nothing(o: &Operated) {
    let vhu = o.cli.scratch.join("vhost-user2");
    let _vhu = std::os::unix::net::UnixListener::bind(&vhu).unwrap();
    let mut bad: Vec<(String, &str)> = vec![
        (with(IFACE, |v| v["name"] = "eth-test-too-long".into()), "name"),
        (with(IFACE, |v| v["device"] = "tap-test-too-long".into()), "device"),
        (with(IFACE, |v| v["device"] = "tap;reboot".into()), "device"),
        (with(IFACE, |v| v["name"] = "eth$(reboot)".into()), "name"),
        (with(IFACE, |v| v["mtu"] = 45.into()), "mtu: 45"),
        (with(IFACE, |v| v["mtu"] = 9601.into()), "mtu: 9601"),
        (with(IFACE, |v| v["hwAddr"] = "02:42:20:6f:a3".into()), "hwAddr"),
        (with(IFACE, |v| v["hwAddr"] = "01:00:5e:00:00:01".into()), "hwAddr"),
        (
            with(IFACE, |v| {
                v["IPAddresses"].as_array_mut().unwrap().push(serde_json::json!({"address":"172.16.0.4","mask":"16"}))
            }),
            "IPAddresses",
        ),
        (with(IFACE, |v| v["colour"] = "red".into()), "unknown field `colour`"),
        (with(IFACE, |v| v["vhostUserSocket"] = "/run/nowhere/vhost-user1".into()), "vhostUserSocket"),
        (with(IFACE, |v| v["device"] = "eth0".into()), "device: eth0 is already plugged"),
        (with(IFACE, |v| v["device"] = "br-x".into()), "device: br-x exists and is a bridge, not a TAP"),
        (with(IFACE, |v| v["name"] = "eth0".into()), "name: eth0 is already in the sandbox"),
        (with(IFACE, |v| v["hwAddr"] = tests::POD_MAC.into()), "hwAddr"),
        ("{not json".to_owned(), "key must be a string"),
        // Addresses must be usable unicast host addresses; numbers and MAC octets digits only.
        (with(IFACE, |v| v["IPAddresses"][0]["address"] = "224.0.0.9".into()), "224.0.0.9 is multicast"),
        (with(IFACE, |v| v["IPAddresses"][0]["address"] = "0.0.0.0".into()), "0.0.0.0 is unspecified"),
        (with(IFACE, |v| v["IPAddresses"][0]["address"] = "127.0.0.9".into()), "127.0.0.9 is loopback"),
        (with(IFACE, |v| v["IPAddresses"][0]["address"] = "255.255.255.255".into()), "limited broadcast"),
        (with(IFACE, |v| v["IPAddresses"][0]["mask"] = "+16".into()), "IPAddresses[0].mask"),
        (with(IFACE, |v| v["IPAddresses"][0]["mask"] = "0".into()), "IPAddresses[0].mask"),
        (with(IFACE, |v| v["hwAddr"] = "+2:42:20:6f:a3:69".into()), "hwAddr"),
        // A vhost-user socket in a directory every user can write to (the scratch dir is in /tmp).
        (
            with(IFACE, |v| v["vhostUserSocket"] = vhu.to_str().unwrap().into()),
            "vhostUserSocket: refused: /tmp: writable",
        ),
    ];
    for (doc, want) in bad.drain(..) {
        assert_refused(o.cli.doc("add-iface", o.id, &doc), want);
    }
    assert_refused(o.cli.doc("add-iface", "nosuchsandbox", IFACE), "no such sandbox");
    assert_refused(o.cli.doc("add-iface", "../../etc", IFACE), "an id holds only");
    // An ambiguous prefix (a second sandbox's directory beside ours).
    std::fs::create_dir_all(o.c.run_dir().join("sbnet-other")).unwrap();
    std::fs::write(o.c.run_dir().join("sbnet-other/mgmt.sock"), "").unwrap();
    assert_refused(o.cli.doc("add-iface", "sbnet", IFACE), "ambiguous");
    std::fs::remove_dir_all(o.c.run_dir().join("sbnet-other")).unwrap();
    // Valid to the document, refused later (Linux's minimum MTU is 68): by the host when the
    // runtime makes the TAP, which is removed again; by the guest after the hotplug, which is
    // undone.
    let low_mtu = with(IFACE, |v| {
        v["mtu"] = 46.into();
        v["device"] = "tap-new".into();
    });
    assert_refused(o.cli.doc("add-iface", o.id, &low_mtu), "mtu: the new TAP tap-new refused MTU 46");
    // Our agent names the field; kata's passes on the kernel's error.
    let guest_says = match tests::guest::Agent::under_test() {
        tests::guest::Agent::Ours => "the VM refused: mtu",
        tests::guest::Agent::Kata => "the VM refused: ",
    };
    assert_refused(o.cli.doc("add-iface", o.id, &with(IFACE, |v| v["mtu"] = 46.into())), guest_says);
    for (route, want) in [
        (r#"{"dest":"default","device":"eth0"}"#, "gateway"),
        (r#"{"dest":"10.0.0.0/33","device":"eth0"}"#, "dest"),
        (r#"{"dest":"10.0.0.0/+8","device":"eth0"}"#, "dest"),
        (r#"{"dest":"fd00::/64","gateway":"10.88.0.1","device":"eth0"}"#, "not of the same family"),
        (r#"{"dest":"default","gateway":"224.0.0.1","device":"eth0"}"#, "gateway: 224.0.0.1 is multicast"),
    ] {
        assert_refused(o.cli.doc("add-route", o.id, route), want);
    }
    assert_refused(o.cli.doc("add-route", o.id, r#"{"dest":"10.1.0.0/16","device":"nosuchdev"}"#), "nosuchdev");
    assert_refused(o.cli.doc("del-route", o.id, r#"{"dest":"10.123.0.0/16"}"#), "no route");
    assert_eq!(o.tun_fds(), o.base_fds, "QEMU holds no new TAP fd");
    o.settled("refused commands leave the host as it was");
    assert_eq!(o.cli.ok(&["kata-network", "list-ifaces", o.id], None), "null");
    assert_eq!(o.routes(), o.routes_before, "the guest's routes are unchanged");
}

/// add-iface from standard input, by id prefix: the manual's document; the host reaches the VM
/// over the operator's TAP.
fn add_iface_reaches_the_vm(o: &Operated) {
    let out = o.cli.ok(&["kata-network", "add-iface", "sbnet01", "-"], Some(IFACE));
    let v: Value = serde_json::from_str(&out).unwrap();
    let pci = v["pciAddr"].as_str().unwrap().to_owned();
    assert!(pci.len() == 7 && pci.contains(".0/"), "pciAddr {pci}");
    assert_eq!(
        out,
        format!(
            r#"{{"device":"tap-test","name":"eth-test","IPAddresses":[{{"Family":2,"Address":"172.16.0.3","Mask":"16"}}],"mtu":1500,"hwAddr":"02:42:20:6f:a3:69","pciAddr":"{pci}"}}"#
        )
    );
    assert!(o.tun_fds() > o.base_fds, "QEMU holds the TAP's queue");
    // The host reaches the VM's new address over the operator's TAP.
    o.cni.pod.exec(&["ping", "-c", "3", "-i", "0.3", "-W", "5", "172.16.0.3"]);
    assert_eq!(
        o.cli.ok(&["kata-network", "list-ifaces", o.id], None),
        r#"[{"name":"eth-test","mac":"02:42:20:6f:a3:69","ip":["172.16.0.3/16"],"mtu":1500}]"#
    );
    let routes = o.cli.ok(&["kata-network", "list-routes", o.id], None);
    assert!(routes.contains(r#"{"dest":"172.16.0.0/16","gateway":"","device":"eth-test"}"#), "{routes}");
    // The same name again, and the same TAP under another name.
    assert_refused(o.cli.doc("add-iface", o.id, IFACE), "name: eth-test is already in the sandbox");
    let again = with(IFACE, |v| {
        v["name"] = "eth-other".into();
        v["hwAddr"] = "02:42:20:6f:a3:70".into();
    });
    assert_refused(o.cli.doc("add-iface", o.id, &again), "device: tap-test is already plugged");
}

/// Routes: the manual's examples, in the guest's own table and seen by the container.
fn routes_in_the_guests_table(o: &Operated) {
    let r = r#"{"dest":"177.17.0.0/24","gateway":"172.16.0.1","device":"eth-test"}"#;
    assert_eq!(o.cli.ok(&["kata-network", "add-route", o.id, "-"], Some(r)), format!("[{r}]"));
    let lo = r#"{"dest":"177.17.0.5","device":"lo"}"#;
    assert_eq!(
        o.cli.ok(&["kata-network", "add-route", o.id, "-"], Some(lo)),
        r#"[{"dest":"177.17.0.5/32","gateway":"","device":"lo"}]"#
    );
    let routes = o.cli.ok(&["kata-network", "list-routes", o.id], None);
    assert!(routes.contains(r), "{routes}");
    assert!(routes.contains(r#"{"dest":"177.17.0.5/32","gateway":"","device":"lo"}"#), "{routes}");
    // In the guest's own table, beside the pod's routes (kata's agent replaces all routes at
    // each change: the shim sends them all).
    let guest = tests::guest::sh(&o.c.run_dir().join(o.id), "ip route");
    for want in ["177.17.0.0/24 via 172.16.0.1 dev eth-test", "default via 10.88.0.1 dev eth0", "10.99.0.0/16 via"] {
        assert!(guest.contains(want), "{want}: {guest}");
    }
    // The sandbox's container, a workload in the VM, sees the new interface and the route.
    let out = o.c.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "see-new-nic",
        o.id,
        "sh",
        "-c",
        "ip -o -4 addr show eth-test; ip route",
    ]);
    let seen = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    for want in ["inet 172.16.0.3/16", "177.17.0.0/24 via 172.16.0.1 dev eth-test"] {
        assert!(seen.contains(want), "the container does not see {want:?}: {seen}");
    }
    // del-route matches on the fields given: dest alone.
    assert_eq!(
        o.cli.ok(&["kata-network", "del-route", o.id, "-"], Some(r#"{"dest":"177.17.0.0/24"}"#)),
        format!("[{r}]")
    );
    let del_lo = r#"{"dest":"177.17.0.5","device":"lo"}"#;
    if tests::guest::Agent::under_test() == tests::guest::Agent::Kata {
        // kata's agent never deletes a route on lo: refused before anything is sent.
        assert_refused(o.cli.doc("del-route", o.id, del_lo), "lacks deleting routes on lo");
        assert!(o.cli.ok(&["kata-network", "list-routes", o.id], None).contains("177.17.0.5/32"));
    } else {
        assert_eq!(
            o.cli.ok(&["kata-network", "del-route", o.id, "-"], Some(del_lo)),
            r#"[{"dest":"177.17.0.5/32","gateway":"","device":"lo"}]"#
        );
        assert!(!o.cli.ok(&["kata-network", "list-routes", o.id], None).contains("177.17.0.5"));
    }
    let routes = o.cli.ok(&["kata-network", "list-routes", o.id], None);
    assert!(!routes.contains("177.17.0.0/24"), "{routes}");
    assert!(routes.contains(r#"{"dest":"default","gateway":"10.88.0.1","device":"eth0"}"#), "{routes}");
}

/// A TAP that did not exist is made, and removed again by del-iface; del-iface of the
/// operator's counts only the name and leaves the TAP.
fn a_made_tap_and_del_iface(o: &Operated) {
    let made = r#"{"device":"tap-made","name":"eth-made","hwAddr":"02:42:20:6f:a3:71","mtu":1400,"queues":2}"#;
    let out = o.cli.ok(&["kata-network", "add-iface", o.id, "-"], Some(made));
    assert!(out.contains(r#""IPAddresses":null"#), "{out}");
    assert!(tests::try_run(&["ip", "-n", &o.cni.pod.name, "link", "show", "tap-made"]));
    let listed = o.cli.ok(&["kata-network", "list-ifaces", o.id], None);
    assert!(listed.ends_with(r#"{"name":"eth-made","mac":"02:42:20:6f:a3:71","ip":null,"mtu":1400}]"#), "{listed}");
    assert_eq!(o.cli.ok(&["kata-network", "del-iface", o.id, "-"], Some(made)), "null");
    assert!(!tests::try_run(&["ip", "-n", &o.cni.pod.name, "link", "show", "tap-made"]), "the runtime's TAP is gone");

    // del-iface: only the name counts; the operator's TAP stays.
    let (out, err, code) = o.cli.run(&["kata-network", "del-iface", o.id, "-"], Some(r#"{"name":"eth-test"}"#));
    assert_eq!((out.as_str(), err.as_str(), code), ("null", "", 0));
    assert_eq!(o.cli.ok(&["kata-network", "list-ifaces", o.id], None), "null");
    let routes = o.cli.ok(&["kata-network", "list-routes", o.id], None);
    assert!(!routes.contains("eth-test"), "the guest no longer has the NIC: {routes}");
    wait_until(std::time::Duration::from_secs(5), "QEMU closed the TAP", || o.tun_fds() == o.base_fds);
    o.settled("the operator's TAP is there, as it was");
    // Removing it again fails: the interface's JSON on stdout, the error on stderr.
    let (out, err, code) = o.cli.doc("del-iface", o.id, IFACE);
    assert_ne!(code, 0);
    assert_eq!(
        out,
        r#"{"device":"tap-test","name":"eth-test","IPAddresses":[{"Family":2,"Address":"172.16.0.3","Mask":"16"}],"mtu":1500,"hwAddr":"02:42:20:6f:a3:69"}"#
    );
    assert!(err.contains("no interface eth-test"), "{err}");
}
