//! What only kata's own agent (`initrd-kata.img`, built by `make guest-image` from the agent
//! `KATA_AGENT=<path>` names) shows, through real containerd: it lacks openEuler's IPVS
//! extension, and it serves no virtio-serial port. The rest of the end-to-end suite runs against
//! it with `KATA_NET_TEST_GUEST=kata`. Ignored in the plain run (no kata agent is in this
//! repository); `make test` with `KATA_AGENT` runs it, and says it did not run without.

use std::path::Path;

use tests::cli::{assert_refused, kata_runtime_bin, KataRuntime};
use tests::containerd::{kata_conf, qemu_running_in, Containerd};
use tests::guest::Agent;
use tests::{CniPod, POD_IP};

fn kata_agent_conf(c: &Containerd) -> String {
    kata_conf(&c.run_dir()).replace(Agent::under_test().initrd(), Agent::Kata.initrd())
}

#[test]
#[ignore = "needs kata's agent: `KATA_AGENT=<path> make test` runs it"]
fn kata_ipvs_against_kata_agent_says_the_agent_lacks_it_and_changes_nothing() {
    let c = tests::containerd::start_containerd("kagent", Path::new(env!("CARGO_BIN_EXE_containerd-shim-kata-v2")));
    std::fs::write(c.dir.0.join("configuration.toml"), kata_agent_conf(&c)).unwrap();
    let cni = CniPod::new();
    let before = cni.pod.snapshot();
    c.run_ok("sbk", &cni.pod.path());
    let run = c.run_dir().join("sbk");
    let k = KataRuntime { bin: kata_runtime_bin(), conf: c.dir.0.join("configuration.toml") };
    // The guest kernel adds eth0's IPv6 link-local route on its own once the link-local address
    // is up (not before the sandbox's container started, at times): let it settle first.
    tests::containerd::wait_until(std::time::Duration::from_secs(30), "the guest's fe80::/64 route", || {
        k.ok(&["kata-network", "list-routes", "sbk"], None).contains("fe80::/64")
    });
    let routes = k.ok(&["kata-network", "list-routes", "sbk"], None);
    let guest_before = tests::guest::sh(&run, "cat /proc/version; ls /proc/net/ip_vs 2>&1; ip route");
    assert!(guest_before.contains("Linux version"), "the debug console answers: {guest_before}");

    let lacks = "the sandbox's agent lacks IPVS support";
    let params = "--add-service --tcp-service 172.17.0.7:80 --scheduler rr";
    assert_refused(k.run(&["kata-ipvs", "ipvsadm", "--parameters", params, "sbk"], None), lacks);
    let rules = "-A -t 10.10.11.12:100 -s rr\n-a -t 10.10.11.12:100 -r 172.16.0.1:80 -m\n";
    assert_refused(k.run(&["kata-ipvs", "ipvsadm", "--restore", "-", "sbk"], Some(rules)), lacks);
    let cleanup = ["kata-ipvs", "cleanup", "--parameters", "--orig-dst 10.88.0.5 --protonum tcp", "sbk"];
    assert_refused(k.run(&cleanup, None), lacks);

    // Nothing changed: the guest (no IPVS table appeared, same routes), the shim's view, the pod.
    assert_eq!(tests::guest::sh(&run, "cat /proc/version; ls /proc/net/ip_vs 2>&1; ip route"), guest_before);
    assert_eq!(k.ok(&["kata-network", "list-routes", "sbk"], None), routes);
    tests::run(&["ip", "netns", "exec", &cni.peer.name, "ping", "-c", "2", "-i", "0.3", "-W", "5", POD_IP]);
    c.remove_sandbox("sbk");
    assert_eq!(cni.pod.snapshot(), before);

    // virtio-serial, which kata's agent does not serve: the start fails once dial_timeout has
    // passed, saying what it waited for, and leaves nothing.
    let serial =
        kata_agent_conf(&c).replace("[agent.kata]", "agent_channel = \"serial\"\n[agent.kata]\ndial_timeout = 15");
    std::fs::write(c.dir.0.join("configuration.toml"), serial).unwrap();
    let out = c.run("sbk2", &cni.pod.path(), &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a serial channel to kata's agent cannot work");
    assert!(err.contains("did not answer on unix://") && err.contains("within 15 s"), "{err}");
    let _ = c.ctr(&["container", "rm", "sbk2"]);
    assert!(!qemu_running_in(&c.run_dir()));
    assert!(!c.run_dir().join("sbk2").exists());
    assert_eq!(cni.pod.snapshot(), before);
}
