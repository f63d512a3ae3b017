//! A node for CRI tests: containerd with its CRI plugin and Debian's CNI plugins (`bridge` +
//! `host-local`) inside a test-owned network namespace that plays the node's, the test image
//! imported; on drop, what its pods left is removed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::vm::Scratch;
use crate::TestNs;

/// The image of the pods' sandbox containers (and the app containers' too).
pub const IMAGE: &str = "localhost/kata-net-pause:latest";

/// containerd; on drop (a failed test too) it is stopped, and what its pods left is removed: every
/// process whose command line names the test's directory (shim, QEMU, vsock backend) and the CNI
/// namespaces that were not there before.
#[derive(Debug)]
struct Containerd(Child, PathBuf, Vec<String>);

fn cni_netns() -> Vec<String> {
    let out = std::process::Command::new("ip").args(["netns", "list"]).output().map(|o| o.stdout).unwrap_or_default();
    String::from_utf8_lossy(&out)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with("cni-"))
        .map(String::from)
        .collect()
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ =
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0.id() as i32), nix::sys::signal::Signal::SIGTERM);
        let _ = self.0.wait();
        let needle = self.1.display().to_string();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<i32>().ok()) else { continue };
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            if pid as u32 != std::process::id() && String::from_utf8_lossy(&cmd).contains(&needle) {
                crate::containerd::kill_leaving_no_socket(pid);
            }
        }
        for ns in cni_netns().into_iter().filter(|n| !self.2.contains(n)) {
            let _ = std::process::Command::new("ip").args(["netns", "del", &ns]).status();
        }
    }
}

fn unmount_under(dir: &Path) {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let root = dir.display().to_string();
    for m in mounts.lines().rev().filter_map(|l| l.split_whitespace().nth(1)).filter(|m| m.starts_with(&root)) {
        let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[derive(Debug)]
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        unmount_under(&self.0);
    }
}

/// A node for CRI tests: its network namespace, the scratch directory (and its unmount on drop),
/// containerd with the CRI plugin and CNI's bridge inside the namespace, the test image imported.
#[derive(Debug)]
pub struct CriNode {
    // Dropped in this order: containerd (and what its pods left), the mounts, the directory.
    containerd: Containerd,
    _unmount: Unmount,
    pub dir: Scratch,
    pub node: TestNs,
    pub sock: PathBuf,
    shim_dir: PathBuf,
}

/// containerd in the node's namespace on the configuration in `dir`, its log appended to
/// `dir/containerd.log`, under the fd limit of a systemd service without LimitNOFILE (1024, as
/// the hard limit too: containerd raises its soft limit to the hard one, and its shims inherit).
fn spawn(node: &TestNs, dir: &Path, shim_dir: &Path) -> Child {
    let mut cmd = Command::new("nsenter");
    // SAFETY: setrlimit is async-signal-safe and the closure allocates nothing.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, 1024, 1024)
                .map_err(std::io::Error::from)
        });
    }
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("containerd.log")).unwrap();
    cmd.arg(format!("--net={}", node.path()))
        .arg(crate::containerd::bin("containerd"))
        .arg("--config")
        .arg(dir.join("containerd.toml"))
        .env("PATH", format!("{}:{}", shim_dir.display(), std::env::var("PATH").unwrap_or_default()))
        .env_remove("KATA_CONF_FILE")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start containerd")
}

/// Wait until containerd answers on `sock`.
fn wait_serving(sock: &Path) {
    let start = Instant::now();
    let serving = || {
        sock.exists()
            && Command::new(crate::containerd::bin("ctr"))
                .arg("-a")
                .arg(sock)
                .arg("version")
                .output()
                .is_ok_and(|o| o.status.success())
    };
    while !serving() {
        assert!(start.elapsed() < Duration::from_secs(30), "containerd did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl CriNode {
    /// containerd runs `shim_bin`'s directory's shims.
    pub fn start(tag: &str, shim_bin: &Path) -> Self {
        crate::require_root_and_tools(&["containerd", "ctr", "nsenter", "qemu-system-x86_64", "ip", "ping"]);
        assert!(
            Path::new("/usr/lib/cni/bridge").is_file(),
            "containernetworking-plugins missing (install-deps installs it)"
        );
        let node = crate::TestNs::new("node");
        node.ip(&["link", "set", "lo", "up"]);
        let dir = Scratch::new(tag);
        let unmount = Unmount(dir.0.clone());
        let d = dir.0.display().to_string();
        std::fs::create_dir_all(dir.0.join("net.d")).unwrap();
        std::fs::write(
            dir.0.join("net.d/10-knt.conflist"),
            format!(
                r#"{{"cniVersion":"0.4.0","name":"knt-{pid}","plugins":[{{"type":"bridge","bridge":"kntbr0","isGateway":true,"ipMasq":false,
    "ipam":{{"type":"host-local","subnet":"10.222.0.0/24","routes":[{{"dst":"0.0.0.0/0"}}],"dataDir":"{d}/ipam"}}}}]}}"#,
                pid = std::process::id()
            ),
        )
        .unwrap();
        std::fs::write(dir.0.join("containerd.toml"), cri_config(&d)).unwrap();
        std::fs::write(dir.0.join("configuration.toml"), crate::containerd::kata_conf(&dir.0.join("run"))).unwrap();
        let shim_dir = shim_bin.parent().unwrap().to_owned();
        let containerd = Containerd(spawn(&node, &dir.0, &shim_dir), dir.0.clone(), cni_netns());
        let sock = dir.0.join("containerd.sock");
        wait_serving(&sock);
        let image = dir.0.join("image.tar");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/build-test-image.sh");
        assert!(Command::new(script).arg(&image).arg(IMAGE).status().unwrap().success());
        let out = Command::new(crate::containerd::bin("ctr"))
            .arg("-a")
            .arg(&sock)
            .args(["-n", "k8s.io", "images", "import"])
            .arg(&image)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        Self { containerd, _unmount: unmount, dir, node, sock, shim_dir }
    }

    /// Kill containerd (SIGKILL, as a crash or an OOM kill would) and start it again on the same
    /// root, state and sockets; its shims live on.
    pub fn restart(&mut self) {
        let _ = self.containerd.0.kill();
        let _ = self.containerd.0.wait();
        let _ = std::fs::remove_file(&self.sock);
        self.containerd.0 = spawn(&self.node, &self.dir.0, &self.shim_dir);
        wait_serving(&self.sock);
    }

    /// containerd's pid.
    pub fn containerd_pid(&self) -> u32 {
        self.containerd.0.id()
    }

    /// containerd's log (the shims' logs are in it).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("containerd.log")).unwrap_or_default()
    }
}

/// containerd's configuration with the CRI plugin for the scratch dir `d`: the kata handler as
/// kata-deploy configures a runtime class (the shim gets its configuration from containerd's
/// runtime options, `ConfigPath`: no KATA_CONF_FILE in this containerd's environment), CNI's
/// plugins from Debian; version 2 for containerd 1.x, 3 for 2.x.
fn cri_config(d: &str) -> String {
    let head = crate::containerd::config_head(d, &[]);
    // 1.x: one CRI plugin; 2.x: the runtime's and the images' plugins apart.
    let (runtime, images, image_key, bins) = match crate::containerd::is_v2() {
        false => (
            "io.containerd.grpc.v1.cri",
            String::new(),
            format!("  sandbox_image = \"{IMAGE}\"\n"),
            "bin_dir = \"/usr/lib/cni\"",
        ),
        true => (
            "io.containerd.cri.v1.runtime",
            format!("[plugins.\"io.containerd.cri.v1.images\".pinned_images]\n  sandbox = \"{IMAGE}\"\n"),
            String::new(),
            "bin_dirs = [\"/usr/lib/cni\"]",
        ),
    };
    format!(
        r#"{head}{images}[plugins."{runtime}"]
{image_key}  restrict_oom_score_adj = true
  [plugins."{runtime}".cni]
    {bins}
    conf_dir = "{d}/net.d"
  [plugins."{runtime}".containerd]
    default_runtime_name = "kata"
  [plugins."{runtime}".containerd.runtimes.kata]
    runtime_type = "io.containerd.kata.v2"
    [plugins."{runtime}".containerd.runtimes.kata.options]
      ConfigPath = "{d}/configuration.toml"
"#
    )
}
