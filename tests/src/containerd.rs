//! A private containerd for tests and benchmarks: its own root, state and socket, CRI disabled,
//! the shim found through PATH, a local OCI image imported.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::vm::{guest_image, Scratch};

pub const IMAGE: &str = "localhost/kata-net-pause:latest";

/// containerd, stopped (and its snapshot mounts removed) on drop.
#[derive(Debug)]
pub struct Containerd {
    child: Child,
    pub dir: Scratch,
    shim_dir: PathBuf,
    env: Vec<(String, PathBuf)>,
}

/// The environment variable naming a directory with another containerd's `containerd` and `ctr`
/// (Debian's 2.1, unpacked by `scripts/install-deps.sh`): the tests then run on it, with its
/// configuration version 3. Unset: the system's containerd (1.6) from `PATH`.
pub const CONTAINERD_BIN_ENV: &str = "KATA_NET_TEST_CONTAINERD_BIN";

/// `containerd` or `ctr` of the containerd under test.
pub fn bin(name: &str) -> PathBuf {
    match std::env::var_os(CONTAINERD_BIN_ENV) {
        Some(dir) => {
            let p = Path::new(&dir).join(name);
            assert!(p.is_file(), "{CONTAINERD_BIN_ENV}={}: no {name} there (install-deps unpacks it)", p.display());
            p
        }
        None => PathBuf::from(name),
    }
}

/// The containerd under test is 2.x: configuration version 3, CRI plugins of their new names.
pub fn is_v2() -> bool {
    std::env::var_os(CONTAINERD_BIN_ENV).is_some()
}

/// containerd's own part of its configuration (root, state, sockets) for the scratch dir `d`,
/// with `disabled` plugins as well as NRI (its socket is machine-wide).
pub fn config_head(d: &str, disabled: &[&str]) -> String {
    let mut off: Vec<&str> = disabled.to_vec();
    let version = match is_v2() {
        true => {
            off.push("io.containerd.nri.v1.nri");
            3
        }
        false => 2,
    };
    let off: Vec<String> = off.iter().map(|p| format!("{p:?}")).collect();
    format!(
        "version = {version}\nroot = \"{d}/root\"\nstate = \"{d}/state\"\ndisabled_plugins = [{}]\n\
         [grpc]\n  address = \"{d}/containerd.sock\"\n[ttrpc]\n  address = \"{d}/containerd.sock.ttrpc\"\n",
        off.join(", ")
    )
}

impl Containerd {
    /// Start containerd with `kata_conf` as the shim's configuration (`KATA_CONF_FILE`).
    pub fn start(tag: &str, kata_conf: &str, shim_bin: &Path) -> Self {
        Self::start_with_env(tag, kata_conf, shim_bin, &[])
    }

    /// [`Containerd::start`], with more environment for containerd and so its shims.
    pub fn start_with_env(tag: &str, kata_conf: &str, shim_bin: &Path, env: &[(&str, &Path)]) -> Self {
        let dir = Scratch::new(tag);
        let d = dir.0.display().to_string();
        let cri = ["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.runtime", "io.containerd.cri.v1.images"];
        let cri = if is_v2() { &cri[..] } else { &cri[..1] };
        std::fs::write(dir.0.join("containerd.toml"), config_head(&d, cri)).unwrap();
        std::fs::write(dir.0.join("configuration.toml"), kata_conf).unwrap();
        let shim_dir = shim_bin.parent().unwrap().to_owned();
        let env: Vec<(String, PathBuf)> = env.iter().map(|(k, v)| (k.to_string(), v.to_path_buf())).collect();
        let child = spawn_containerd(&dir.0, &shim_dir, &env);
        let c = Self { child, dir, shim_dir, env };
        let start = Instant::now();
        while !c.sock().exists() {
            assert!(start.elapsed() < Duration::from_secs(20), "containerd did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        let image = c.dir.0.join("image.tar");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/build-test-image.sh");
        let out = Command::new(script).arg(&image).arg(IMAGE).output().unwrap();
        assert!(out.status.success(), "build image: {}", String::from_utf8_lossy(&out.stderr));
        let out = c.ctr(&["images", "import", image.to_str().unwrap()]);
        assert!(out.status.success(), "import: {}", String::from_utf8_lossy(&out.stderr));
        c
    }

    /// Kill containerd (SIGKILL, as a crash or an OOM kill would) and start it again on the same
    /// root, state and sockets; its shims live on and are found again.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(self.sock());
        self.child = spawn_containerd(&self.dir.0, &self.shim_dir, &self.env);
        let start = Instant::now();
        while !self.sock().exists() || !self.ctr(&["version"]).status.success() {
            assert!(start.elapsed() < Duration::from_secs(20), "containerd did not start again");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Wait (up to `limit`) for a line of containerd's log that holds every one of `parts`
    /// (the shim's `delete` subcommand's stderr reaches it as "cleanup warnings").
    pub fn wait_for_log(&self, limit: Duration, parts: &[&str]) {
        let log = self.dir.0.join("containerd.log");
        wait_until(limit, &format!("containerd's log: {parts:?}"), || {
            std::fs::read_to_string(&log).unwrap_or_default().lines().any(|l| parts.iter().all(|p| l.contains(p)))
        });
    }

    /// How many lines of containerd's log (the shims' logs are in it) hold `part`.
    pub fn log_lines(&self, part: &str) -> usize {
        let log = std::fs::read_to_string(self.dir.0.join("containerd.log")).unwrap_or_default();
        log.lines().filter(|l| l.contains(part)).count()
    }

    pub fn sock(&self) -> PathBuf {
        self.dir.0.join("containerd.sock")
    }

    pub fn run_dir(&self) -> PathBuf {
        self.dir.0.join("run")
    }

    /// `ctr` against this containerd; a call that hangs is ended after 3 minutes (and fails).
    pub fn ctr(&self, args: &[&str]) -> Output {
        Command::new("timeout").arg("180").arg(bin("ctr")).arg("-a").arg(self.sock()).args(args).output().unwrap()
    }

    /// `ctr run -d` of the sandbox in `netns`.
    pub fn run(&self, id: &str, netns: &str, extra: &[&str]) -> Output {
        let ns = format!("network:{netns}");
        let mut args = vec!["run", "-d", "--runtime", "io.containerd.kata.v2", "--with-ns", &ns];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[IMAGE, id]);
        self.ctr(&args)
    }

    /// `ctr run --rm` of container `id` in `netns`, in the foreground: `cmd` runs in the VM, and
    /// ctr returns its output and exit code.
    pub fn run_fg(&self, id: &str, netns: &str, extra: &[&str], cmd: &[&str]) -> Output {
        let ns = format!("network:{netns}");
        let mut args = vec!["run", "--rm", "--runtime", "io.containerd.kata.v2", "--with-ns", &ns];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[IMAGE, id]);
        args.extend_from_slice(cmd);
        self.ctr(&args)
    }

    pub fn task_status(&self, id: &str) -> String {
        let out = String::from_utf8_lossy(&self.ctr(&["task", "ls"]).stdout).into_owned();
        out.lines()
            .find(|l| l.starts_with(id))
            .map(|l| l.split_whitespace().last().unwrap_or("").to_owned())
            .unwrap_or_default()
    }
}

/// containerd on the configuration in `dir`, its log appended to `dir/containerd.log`.
fn spawn_containerd(dir: &Path, shim_dir: &Path, env: &[(String, PathBuf)]) -> Child {
    let path = format!("{}:{}", shim_dir.display(), std::env::var("PATH").unwrap_or_default());
    let mut cmd = Command::new(bin("containerd"));
    // The fd limit of a login shell or a systemd service without LimitNOFILE (1024). As a hard
    // limit too: containerd (Go) raises its soft limit to the hard one and its children
    // inherit that, so only then does every test's shim run StartVM under 1024.
    // SAFETY: setrlimit is async-signal-safe and the closure allocates nothing.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, 1024, 1024)
                .map_err(std::io::Error::from)
        });
    }
    cmd.arg("--config")
        .arg(dir.join("containerd.toml"))
        .env("PATH", path)
        .env("KATA_CONF_FILE", dir.join("configuration.toml"))
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::null())
        .stderr(std::fs::OpenOptions::new().create(true).append(true).open(dir.join("containerd.log")).unwrap())
        .spawn()
        .expect("start containerd")
}

/// SIGKILL process `pid`; when it is a shim, remove the socket it served on (a SIGKILLed shim
/// cannot, and with containerd gone no `delete` will): a failed test leaves none in
/// /run/containerd/s/.
pub fn kill_leaving_no_socket(pid: i32) {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let args: Vec<String> = cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
    let socket = args
        .iter()
        .position(|a| a == "-socket")
        .and_then(|i| args.get(i + 1)?.strip_prefix("unix://").map(PathBuf::from));
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    if let Some(s) = socket {
        let _ = std::fs::remove_file(s);
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
        // Shims and VMs outlive containerd by design; a failed test must not leave them running.
        let needle = self.dir.0.display().to_string();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<i32>().ok()) else { continue };
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            if pid as u32 != std::process::id() && String::from_utf8_lossy(&cmdline).contains(&needle) {
                kill_leaving_no_socket(pid);
            }
        }
        // Snapshot mounts left under our root.
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let root = self.dir.0.display().to_string();
        for m in mounts.lines().rev().filter_map(|l| l.split_whitespace().nth(1)).filter(|m| m.starts_with(&root)) {
            let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// The shim's configuration for tests: the guest image with the agent under test
/// ([`crate::guest::Agent::under_test`]), the agent channel by default (hybrid vsock here), the
/// debug console on for [`crate::guest::sh`]. `[hypervisor.qemu]` is first, `[runtime]` last, so
/// a test can insert keys of either before `[agent.kata]` or `[runtime]`.
pub fn kata_conf(run_dir: &Path) -> String {
    let img = guest_image();
    let initrd = img.join(crate::guest::Agent::under_test().initrd());
    assert!(
        initrd.is_file(),
        "{} missing: kata's agent is not in this repository; build the image with \
         `KATA_AGENT=<path to a kata-agent binary> make guest-image`",
        initrd.display()
    );
    format!(
        "[hypervisor.qemu]\npath = \"/usr/bin/qemu-system-x86_64\"\nkernel = \"{}\"\ninitrd = \"{}\"\n\
         [agent.kata]\ndebug_console_enabled = true\n[runtime]\nrun_dir = \"{}\"\n",
        img.join("vmlinuz").display(),
        initrd.display(),
        run_dir.display()
    )
}

/// The pid of a QEMU whose command line names `dir` (a sandbox's run directory or a parent).
pub fn qemu_pid_in(dir: &Path) -> Option<u32> {
    let needle = dir.display().to_string();
    std::fs::read_dir("/proc").unwrap().flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let c = std::fs::read(e.path().join("cmdline")).ok()?;
        let c = String::from_utf8_lossy(&c);
        // Debian's QEMU, or another build (the vhost-user test's QEMU 10).
        let argv0 = c.split('\0').next().unwrap_or_default();
        let is_qemu = Path::new(argv0).file_name().is_some_and(|n| n.to_string_lossy().starts_with("qemu-system"));
        (is_qemu && c.contains(&needle)).then_some(pid)
    })
}

/// How many processes have a command line that names `dir` and whose argv (NUL-separated)
/// `pick` accepts.
fn processes_with(dir: &Path, pick: impl Fn(&[u8]) -> bool) -> usize {
    let needle = dir.display().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            let c = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            pick(&c) && String::from_utf8_lossy(&c).contains(&needle)
        })
        .count()
}

/// How many processes of `program` have a command line that names `dir`.
pub fn processes_naming(dir: &Path, program: &str) -> usize {
    processes_with(dir, |c| c.starts_with(program.as_bytes()))
}

/// How many virtiofsd processes (either kind: the program's file name is `virtiofsd`) have a
/// command line that names `dir`.
pub fn virtiofsds_in(dir: &Path) -> usize {
    processes_with(dir, |c| {
        let argv0 = c.split(|b| *b == 0).next().unwrap_or_default();
        Path::new(&*String::from_utf8_lossy(argv0)).file_name() == Some("virtiofsd".as_ref())
    })
}

pub fn qemu_running_in(dir: &Path) -> bool {
    qemu_pid_in(dir).is_some()
}

pub fn wait_until(limit: Duration, what: &str, f: impl Fn() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// containerd with the shim's configuration pointing at the guest image and a run directory in
/// containerd's own scratch directory.
pub fn start_containerd(tag: &str, shim_bin: &Path) -> Containerd {
    crate::require_root_and_tools(&["containerd", "ctr", "qemu-system-x86_64", "ip", "tc", "ping"]);
    let c = Containerd::start(tag, "", shim_bin);
    std::fs::write(c.dir.0.join("configuration.toml"), kata_conf(&c.run_dir())).unwrap();
    c
}

impl Containerd {
    /// [`Containerd::run`], which must succeed.
    pub fn run_ok(&self, id: &str, netns: &str) {
        let out = self.run(id, netns, &[]);
        assert!(out.status.success(), "ctr run {id}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// The socket file the shim of sandbox `id` serves on (its `-socket` argument).
    pub fn shim_socket(&self, id: &str) -> Option<PathBuf> {
        let pid = self.shim_pid(id)?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let args: Vec<String> = cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        let i = args.iter().position(|a| a == "-socket")?;
        args.get(i + 1)?.strip_prefix("unix://").map(PathBuf::from)
    }

    /// Stop sandbox `id` (SIGKILL), and remove its task and container: what an operator does.
    pub fn remove_sandbox(&self, id: &str) {
        let socket = self.shim_socket(id).expect("the sandbox's shim and its socket");
        assert!(socket.exists(), "{} is there while the shim runs", socket.display());
        let out = self.ctr(&["task", "kill", "-s", "SIGKILL", id]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        wait_until(Duration::from_secs(20), "task stopped", || self.task_status(id) == "STOPPED");
        assert!(self.ctr(&["task", "rm", id]).status.success());
        assert!(self.ctr(&["container", "rm", id]).status.success());
        // The shim exits once containerd let it go (Shutdown after the delete); nothing it ran
        // (a FIFO's open waiting for its other end) may keep it alive.
        wait_until(Duration::from_secs(10), &format!("the shim of {id} exited"), || self.shim_pid(id).is_none());
        assert!(!socket.exists(), "the exited shim left its socket {}", socket.display());
        // Nothing of the sandbox's left: no hybrid vsock backend, no run directory (sockets).
        let run = self.run_dir().join(id);
        assert_eq!(processes_naming(&run, "vhost-device-vsock"), 0, "a vsock backend of {id} is left");
        assert!(!run.exists(), "{} is left", run.display());
    }

    /// Follow containerd's event stream (as kubelet's CRI plugin does), do `action`, and give the
    /// first TaskExit of task `id` that comes within 60 s.
    pub fn task_exit_after(&self, id: &str, action: impl FnOnce()) -> Option<String> {
        use std::io::{BufRead, BufReader};
        let mut events = Command::new("timeout")
            .arg("60")
            .arg(bin("ctr"))
            .arg("-a")
            .arg(self.sock())
            .arg("events")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(500));
        action();
        let exit = BufReader::new(events.stdout.take().unwrap())
            .lines()
            .map_while(Result::ok)
            .find(|l| l.contains("/tasks/exit") && l.contains(id));
        let _ = events.kill();
        let _ = events.wait();
        exit
    }

    /// SIGKILL the shim of sandbox `id` (containerd then runs its `delete`).
    pub fn kill_shim(&self, id: &str) {
        let pids = crate::run(&["pgrep", "-f", &format!("containerd-shim-kata-v2 .*-id {id} ")]);
        for pid in pids.split_whitespace() {
            crate::run(&["kill", "-9", pid]);
        }
    }

    /// The pid of the shim serving sandbox `id`.
    pub fn shim_pid(&self, id: &str) -> Option<u32> {
        let _ = &self.shim_dir;
        let out = Command::new("pgrep").args(["-f", &format!("containerd-shim-kata-v2 .*-id {id} ")]).output().ok()?;
        String::from_utf8_lossy(&out.stdout).split_whitespace().next()?.parse().ok()
    }
}
