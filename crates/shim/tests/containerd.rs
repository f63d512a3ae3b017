//! The shim under real containerd (Debian's 1.6), with its own root, state and socket:
//! `ctr run --runtime io.containerd.kata.v2 --with-ns network:<netns>` on a CNI-like namespace.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tests::vm::{guest_image, Scratch};
use tests::{require_root_and_tools, CniPod, POD_IP};

const IMAGE: &str = "localhost/kata-net-pause:latest";

struct Containerd {
    child: Child,
    dir: Scratch,
}

impl Containerd {
    /// Start containerd with `kata_conf` as the shim's configuration (`KATA_CONF_FILE`).
    fn start(tag: &str, kata_conf: &str) -> Self {
        let dir = Scratch::new(tag);
        let d = dir.0.display().to_string();
        std::fs::write(
            dir.0.join("containerd.toml"),
            format!(
                "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = \"{d}/containerd.sock\"\n[ttrpc]\n  address = \"{d}/containerd.sock.ttrpc\"\n"
            ),
        )
        .unwrap();
        std::fs::write(dir.0.join("configuration.toml"), kata_conf).unwrap();
        let shim_dir = Path::new(env!("CARGO_BIN_EXE_containerd-shim-kata-v2")).parent().unwrap().to_owned();
        let path = format!("{}:{}", shim_dir.display(), std::env::var("PATH").unwrap_or_default());
        let child = Command::new("containerd")
            .arg("--config")
            .arg(dir.0.join("containerd.toml"))
            .env("PATH", path)
            .env("KATA_CONF_FILE", dir.0.join("configuration.toml"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.0.join("containerd.log")).unwrap())
            .spawn()
            .expect("start containerd");
        let c = Self { child, dir };
        let start = Instant::now();
        while !c.sock().exists() {
            assert!(start.elapsed() < Duration::from_secs(20), "containerd did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        let image = c.dir.0.join("image.tar");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/build-test-image.sh");
        let out = Command::new(script).arg(&image).arg(IMAGE).output().unwrap();
        assert!(out.status.success(), "build image: {}", String::from_utf8_lossy(&out.stderr));
        let out = c.ctr(&["images", "import", image.to_str().unwrap()]);
        assert!(out.status.success(), "import: {}", String::from_utf8_lossy(&out.stderr));
        c
    }

    fn sock(&self) -> PathBuf {
        self.dir.0.join("containerd.sock")
    }

    fn run_dir(&self) -> PathBuf {
        self.dir.0.join("run")
    }

    fn ctr(&self, args: &[&str]) -> Output {
        Command::new("ctr").arg("-a").arg(self.sock()).args(args).output().unwrap()
    }

    /// `ctr run -d` of the sandbox in `netns`.
    fn run(&self, id: &str, netns: &str, extra: &[&str]) -> Output {
        let ns = format!("network:{netns}");
        let mut args = vec!["run", "-d", "--runtime", "io.containerd.kata.v2", "--with-ns", &ns];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[IMAGE, id]);
        self.ctr(&args)
    }

    fn task_status(&self, id: &str) -> String {
        let out = String::from_utf8_lossy(&self.ctr(&["task", "ls"]).stdout).into_owned();
        out.lines()
            .find(|l| l.starts_with(id))
            .map(|l| l.split_whitespace().last().unwrap_or("").to_owned())
            .unwrap_or_default()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
        // Snapshot mounts left under our root.
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let root = self.dir.0.display().to_string();
        for m in mounts.lines().rev().filter_map(|l| l.split_whitespace().nth(1)).filter(|m| m.starts_with(&root)) {
            let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

fn kata_conf(run_dir: &Path) -> String {
    let img = guest_image();
    format!(
        "[hypervisor.qemu]\npath = \"/usr/bin/qemu-system-x86_64\"\nkernel = \"{}\"\ninitrd = \"{}\"\n[runtime]\nrun_dir = \"{}\"\n",
        img.join("vmlinuz").display(),
        img.join("initrd.img").display(),
        run_dir.display()
    )
}

fn qemu_running_in(dir: &Path) -> bool {
    let needle = dir.display().to_string();
    std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        std::fs::read(e.path().join("cmdline"))
            .map(|c| {
                let c = String::from_utf8_lossy(&c);
                c.starts_with("/usr/bin/qemu-system") && c.contains(&needle)
            })
            .unwrap_or(false)
    })
}

fn wait_until(limit: Duration, what: &str, f: impl Fn() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn start_containerd(tag: &str) -> Containerd {
    require_root_and_tools(&["containerd", "ctr", "qemu-system-x86_64", "ip", "tc", "ping"]);
    // The run directory must be known before the config is written: it lives in the scratch dir.
    let probe = Scratch::new(&format!("{tag}-conf"));
    let run = probe.0.join("run");
    let c = Containerd::start(tag, &kata_conf(&run));
    // Point the configuration at the containerd's own scratch directory instead.
    std::fs::write(c.dir.0.join("configuration.toml"), kata_conf(&c.run_dir())).unwrap();
    c
}

#[test]
fn ctr_run_gives_the_vm_the_pod_network_and_teardown_leaves_nothing() {
    let c = start_containerd("ctr");
    let cni = CniPod::new();
    let before = cni.pod.snapshot();
    let dns = "io.katacontainers.sandbox_dns=nameserver 10.96.0.10,search svc.cluster.local";
    let out = c.run("sb1", &cni.pod.path(), &["--annotation", dns]);
    assert!(out.status.success(), "ctr run: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(c.task_status("sb1"), "RUNNING");

    // The VM has the pod's address, routes, neighbour and DNS; the peer reaches it.
    tests::run(&["ip", "netns", "exec", &cni.peer.name, "ping", "-c", "3", "-i", "0.3", "-W", "5", POD_IP]);
    let console = std::fs::read_to_string(c.run_dir().join("sb1/console.log")).unwrap();
    for want in [
        "guest-agent: interface eth0 02:00:0a:58:00:05 mtu 1450 addresses 10.88.0.5/24,fd00:88::5/64",
        "guest-agent: route default via 10.88.0.1 dev eth0",
        "guest-agent: route 10.99.0.0/16 via 10.88.0.254 dev eth0",
        "guest-agent: route 10.77.0.0/16 dev eth0",
        "guest-agent: neighbour 10.88.0.9 lladdr 02:00:0a:58:00:09 dev eth0",
        r#"dns ["nameserver 10.96.0.10", "search svc.cluster.local"]"#,
    ] {
        assert!(console.contains(want), "missing {want:?} in the guest console:\n{console}");
    }

    let out = c.ctr(&["task", "kill", "-s", "SIGKILL", "sb1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_until(Duration::from_secs(20), "task stopped", || c.task_status("sb1") == "STOPPED");
    assert!(c.ctr(&["task", "rm", "sb1"]).status.success());
    assert!(c.ctr(&["container", "rm", "sb1"]).status.success());
    assert!(!qemu_running_in(&c.run_dir()), "QEMU left behind");
    assert_eq!(cni.pod.snapshot(), before, "TAP, qdiscs and filters are gone; the namespace is as CNI left it");
    assert!(!c.run_dir().join("sb1").exists());
}

#[test]
fn a_killed_shim_is_cleaned_up_by_the_delete_subcommand() {
    let c = start_containerd("crash");
    let cni = CniPod::new();
    let before = cni.pod.snapshot();
    let out = c.run("sb2", &cni.pod.path(), &[]);
    assert!(out.status.success(), "ctr run: {}", String::from_utf8_lossy(&out.stderr));
    assert!(qemu_running_in(&c.run_dir()));
    let pids = tests::run(&["pgrep", "-f", "containerd-shim-kata-v2 .*-id sb2 "]);
    for pid in pids.split_whitespace() {
        tests::run(&["kill", "-9", pid]);
    }
    // containerd notices the dead shim and runs `containerd-shim-kata-v2 ... delete` in the bundle.
    wait_until(Duration::from_secs(30), "QEMU and devices removed after the shim died", || {
        !qemu_running_in(&c.run_dir()) && cni.pod.snapshot() == before
    });
    let _ = c.ctr(&["container", "rm", "sb2"]);
    assert_eq!(cni.pod.snapshot(), before);
}

#[test]
fn bad_configuration_and_unsupported_links_fail_clearly_and_leave_nothing() {
    let c = start_containerd("bad");
    let cni = CniPod::new();
    // A link the runtime cannot attach: a bridge with an address.
    cni.pod.ip(&["link", "add", "br0", "type", "bridge"]);
    cni.pod.ip(&["addr", "add", "192.168.50.1/24", "dev", "br0"]);
    let before = cni.pod.snapshot();
    let out = c.run("sb3", &cni.pod.path(), &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("link br0 has kind \"bridge\""), "{err}");
    assert_eq!(cni.pod.snapshot(), before);
    assert!(!qemu_running_in(&c.run_dir()));
    let _ = c.ctr(&["container", "rm", "sb3"]);

    // An unknown key in the configuration.
    std::fs::write(c.dir.0.join("configuration.toml"), format!("{}bogus_key = 1\n", kata_conf(&c.run_dir()))).unwrap();
    cni.pod.ip(&["link", "del", "br0"]);
    let before = cni.pod.snapshot();
    let out = c.run("sb4", &cni.pod.path(), &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown field `bogus_key`"), "{err}");
    assert_eq!(cni.pod.snapshot(), before);
    let _ = c.ctr(&["container", "rm", "sb4"]);
}
