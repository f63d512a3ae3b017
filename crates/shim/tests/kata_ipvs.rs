//! `kata-runtime kata-ipvs` against a running sandbox: rules land in the guest kernel's IPVS
//! table, the 20,000-rule limit holds as a whole, concurrent operators never make the count
//! drift, and cleanup deletes the guest's connection-tracking entries.

use std::path::Path;
use std::time::Duration;

use tests::cli::{assert_refused, KataRuntime, Out};
use tests::containerd::Containerd;
use tests::CniPod;

struct Cli {
    k: KataRuntime,
}

impl Cli {
    fn run(&self, args: &[&str], stdin: Option<&str>) -> Out {
        self.k.run(args, stdin)
    }

    fn ipvsadm(&self, id: &str, params: &str) -> Out {
        self.run(&["kata-ipvs", "ipvsadm", "--parameters", params, id], None)
    }

    fn ok(&self, id: &str, params: &str) -> String {
        self.k.ok(&["kata-ipvs", "ipvsadm", "--parameters", params, id], None)
    }

    fn restore(&self, id: &str, rules: &str) -> Out {
        self.run(&["kata-ipvs", "ipvsadm", "--restore", "-", id], Some(rules))
    }
}

/// Real servers listed by `--list` (lines starting with `->` that name an address).
fn servers(list: &str) -> usize {
    list.lines().filter(|l| l.trim_start().starts_with("-> ") && !l.contains("RemoteAddress")).count()
}

fn services(list: &str) -> usize {
    list.lines().filter(|l| l.starts_with("TCP ") || l.starts_with("UDP ")).count()
}

/// 5,000 services with 3 real servers each: 20,000 rules, in `ipvsadm --save` syntax.
fn rule_file(services: usize) -> String {
    let mut s = String::new();
    for i in 0..services {
        let vip = format!("10.{}.{}.{}:80", 100 + i / 62_500, (i / 250) % 250, 1 + i % 250);
        s.push_str(&format!("-A -t {vip} -s rr -p 3000\n"));
        for j in 0..3 {
            s.push_str(&format!("-a -t {vip} -r 172.16.{j}.{}:80 -m\n", 1 + i % 250));
        }
    }
    s
}

#[test]
fn ipvs_rules_in_the_vm_the_limit_and_concurrent_operators() {
    let c: Containerd =
        tests::containerd::start_containerd("kipvs", Path::new(env!("CARGO_BIN_EXE_containerd-shim-kata-v2")));
    let conf = c.dir.0.join("configuration.toml");
    let cli = Cli { k: KataRuntime { bin: tests::cli::kata_runtime_bin(), conf } };
    let cni = CniPod::new();
    let id = "sbipvs42";
    c.run_ok(id, &cni.pod.path());

    // The manual's commands, one by one.
    assert_eq!(services(&cli.ok(id, "--list")), 0);
    cli.ok(id, "--add-service --tcp-service 172.17.0.7:80 --scheduler rr --persistent 3000");
    cli.ok(id, "--edit-service --tcp-service 172.17.0.7:80 --scheduler rr --persistent 5000");
    cli.ok(id, "--add-server --tcp-service 172.17.0.7:80 --real-server 172.17.0.4:80 --weight 100");
    cli.ok(id, "--edit-server --tcp-service 172.17.0.7:80 --real-server 172.17.0.4:80 --weight 200");
    cli.ok(id, "--add-service --udp-service 172.17.0.8:53 --scheduler wlc");
    let list = cli.ok(id, "--list");
    assert!(list.contains("TCP  172.17.0.7:80 rr persistent 5000"), "{list}");
    assert!(
        list.lines().any(|l| l.contains("-> 172.17.0.4:80") && l.contains("Masq") && l.contains(" 200 ")),
        "a single add of a real server is NAT, with the edited weight:\n{list}"
    );
    assert!(list.contains("UDP  172.17.0.8:53 wlc"), "{list}");
    cli.ok(id, "--delete-server --tcp-service 172.17.0.7:80 --real-server 172.17.0.4:80");
    cli.ok(id, "--delete-service --tcp-service 172.17.0.7:80");
    cli.ok(id, "--delete-service --udp-service 172.17.0.8:53");
    cli.ok(id, "--set 100 100 200");
    assert_eq!(services(&cli.ok(id, "--list")), 0);

    // Refused before anything reaches the VM.
    for (params, why) in [
        ("--add-service --tcp-service 172.17.0.7:80 --scheduler nope", "--scheduler"),
        ("--add-service --fwmark-service 1", "not allowed"),
        ("--add-server --tcp-service 172.17.0.7:80 --real-server 172.17.0.4:80 --gatewaying", "not allowed"),
        ("--add-service --tcp-service 172.17.0.7:80; reboot", "unexpected argument \"reboot\""),
        ("--add-service --tcp-service 172.17.0.7:80;id", "--tcp-service"),
        ("--list $(reboot)", "unexpected argument"),
        ("--add-server --tcp-service 172.17.0.9:80 --real-server 172.17.0.4:80", "no service"),
        ("--start-daemon master", "not allowed"),
    ] {
        assert_refused(cli.ipvsadm(id, params), why);
    }
    assert_refused(
        cli.run(&["kata-ipvs", "cleanup", "--parameters", "--orig-dst 172.17.0.4 --protonum icmp", id], None),
        "--protonum",
    );
    assert_refused(cli.ipvsadm("nosuch", "--list"), "no such sandbox");

    // Two operators at once on the same sandbox: every rule lands once, the count stays exact.
    cli.ok(id, "--add-service --tcp-service 10.9.0.1:80 --scheduler rr");
    std::thread::scope(|s| {
        for op in 0..2 {
            let cli = &cli;
            s.spawn(move || {
                for n in 0..15 {
                    let p =
                        format!("--add-server --tcp-service 10.9.0.1:80 --real-server 10.9.{}.{}:80", 1 + op, 1 + n);
                    cli.ok(id, &p);
                }
            });
        }
        // And both try to add the same server: exactly one wins.
        let a = s.spawn(|| cli.ipvsadm(id, "--add-server --tcp-service 10.9.0.1:80 --real-server 10.9.9.9:80"));
        let b = s.spawn(|| cli.ipvsadm(id, "--add-server --tcp-service 10.9.0.1:80 --real-server 10.9.9.9:80"));
        let (a, b) = (a.join().unwrap(), b.join().unwrap());
        assert_eq!([a.2, b.2].iter().filter(|c| **c == 0).count(), 1, "{a:?} {b:?}");
    });
    assert_eq!(servers(&cli.ok(id, "--list")), 31);
    assert_refused(cli.restore(id, "-A -t 10.1.1.1:80 -s rr\n"), "holds 32 rules");

    // Restore: only into an empty table, at most 20,000 rules as a whole, in one request.
    cli.ok(id, "--clear");
    let full = rule_file(5000);
    let over = format!("{full}-A -t 10.200.0.1:80 -s rr\n");
    assert_refused(cli.restore(id, &over), "20001 rules would exceed the limit of 20000");
    assert_eq!(services(&cli.ok(id, "--list")), 0, "a refused restore loads nothing");
    let (out, err, code) = cli.restore(id, &full);
    assert_eq!(code, 0, "restore: {err} {out}");
    let list = cli.ok(id, "--list");
    assert_eq!((services(&list), servers(&list)), (5000, 15000));
    assert_refused(
        cli.ipvsadm(id, "--add-server --tcp-service 10.100.0.1:80 --real-server 172.16.7.7:80"),
        "20001 rules would exceed the limit",
    );
    assert_refused(cli.ipvsadm(id, "--add-service --tcp-service 10.250.0.1:80"), "20001 rules would exceed");
    assert_refused(cli.restore(id, "-A -t 10.1.1.1:80 -s rr\n"), "holds 20000 rules: clear them first");
    // Deleting one makes room for one.
    cli.ok(id, "--delete-server --tcp-service 10.100.0.1:80 --real-server 172.16.0.1:80");
    cli.ok(id, "--add-server --tcp-service 10.100.0.1:80 --real-server 172.16.7.7:80");
    cli.ok(id, "--clear");

    // Connection tracking: a connection from the peer to a virtual service makes an entry in
    // the guest; cleanup deletes it.
    // The virtual service is on the VM's own address, so IPVS sees the connection.
    cli.ok(id, "--add-service --tcp-service 10.88.0.5:80 --scheduler rr");
    cli.ok(id, "--add-server --tcp-service 10.88.0.5:80 --real-server 10.88.0.1:8080");
    let peer = cni.peer.netns();
    peer.run(|| {
        let _ = std::net::TcpStream::connect_timeout(&"10.88.0.5:80".parse().unwrap(), Duration::from_secs(2));
    })
    .unwrap();
    let cleanup = ["kata-ipvs", "cleanup", "--parameters", "--orig-dst 10.88.0.5 --protonum tcp", id];
    let (out, err, code) = cli.run(&cleanup, None);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("dst=10.88.0.5") && out.contains("dport=80") && out.contains("1 flow entries have been deleted"),
        "the deleted entry is listed: {out:?}"
    );
    let (out, err, code) = cli.run(&cleanup, None);
    assert_eq!((code, out.as_str()), (0, "0 flow entries have been deleted."), "nothing left to delete: {err}");

    c.remove_sandbox(id);
}
