//! A busy node: pods churned through one containerd (CRI pods with an app container, and plain
//! `ctr run` sandboxes in test-owned namespaces), several at a time, while shims are SIGKILLed
//! or SIGTERMed and containerd itself is killed and started again at random moments, and the
//! operator's `kata-runtime kata-network` runs against the live sandboxes. Every run nothing hit
//! succeeds; afterwards nothing is left: no shim, QEMU, virtiofsd or vsock backend, no run
//! directory, bundle or state, no mount, no shim socket in /run/containerd/s/, no CNI namespace
//! or lease, every test namespace as it was, and containerd's fds back where they were. All of
//! it under a `nofile` limit of 1024.
//!
//! `KATA_NET_CHURN_PODS` (24), `KATA_NET_CHURN_AT_ONCE` (4), `KATA_NET_CHURN_FAULTS` (`on`;
//! `off`: a plain churn, for pods per minute), `KATA_NET_CHURN_SEED` (the clock's). `make bench`
//! runs the long form (100 pods) and the plain one at 1, 4 and 8 at a time.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, CreateContainerRequest, ExecSyncRequest, ImageSpec, LinuxPodSandboxConfig,
    ListPodSandboxRequest, PodSandboxConfig, PodSandboxMetadata, RemoveContainerRequest, RemovePodSandboxRequest,
    RunPodSandboxRequest, StartContainerRequest, StopContainerRequest, StopPodSandboxRequest,
};
use tests::cli::KataRuntime;
use tests::cri::{CriNode, IMAGE};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A small xorshift: the faults' moments and victims, reproducible from the printed seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// What the runs share with the fault thread.
#[derive(Default)]
struct Board {
    /// Live sandboxes: id -> the run's number.
    live: Mutex<HashMap<String, usize>>,
    /// Runs a fault hit (their shim killed or ended, or containerd restarted meanwhile).
    hit: Mutex<HashSet<usize>>,
    /// containerd restarts so far; a run that saw it change was hit.
    restarts: AtomicUsize,
    /// containerd is down: runs wait instead of failing.
    down: AtomicBool,
    /// Both shim faults have happened: the runs may stop once they reach their number.
    every_fault: AtomicBool,
}

impl Board {
    fn hit(&self, run: usize) -> bool {
        self.hit.lock().unwrap().contains(&run)
    }
}

/// containerd's address and what a run needs to reach it.
#[derive(Clone)]
struct Node {
    sock: PathBuf,
    dir: PathBuf,
    cli: KataRuntime,
}

impl Node {
    fn ctr(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new("timeout")
            .arg("120")
            .arg(tests::containerd::bin("ctr"))
            .arg("-a")
            .arg(&self.sock)
            .args(["-n", "default"])
            .args(args)
            .output()
            .unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }
}

fn pod_config(d: &Path, n: usize) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: format!("churn-{n}"),
            uid: format!("churn-uid-{n}"),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: format!("churn-{n}"),
        log_directory: format!("{}/logs/{n}", d.display()),
        linux: Some(LinuxPodSandboxConfig::default()),
        ..Default::default()
    }
}

async fn cri(sock: &Path) -> Result<RuntimeServiceClient<tonic::transport::Channel>, String> {
    let channel = tests::grpc::try_unix_channel(sock).await.map_err(|e| format!("connecting to containerd: {e}"))?;
    Ok(RuntimeServiceClient::new(channel))
}

/// The operator's commands against live sandbox `id`: its routes listed (`eth0`'s among them),
/// a route added in the VM and deleted again.
fn operator_commands(node: &Node, id: &str) -> Result<(), String> {
    let route = r#"{"dest":"10.123.0.0/16","device":"eth0"}"#;
    for (args, doc, want) in [
        (&["kata-network", "list-routes", id][..], None, "\"eth0\""),
        (&["kata-network", "add-route", id, "-"][..], Some(route), "10.123.0.0/16"),
        (&["kata-network", "del-route", id, "-"][..], Some(r#"{"dest":"10.123.0.0/16"}"#), "10.123.0.0/16"),
    ] {
        let (out, err, code) = node.cli.run(args, doc);
        if code != 0 || !out.contains(want) {
            return Err(format!("kata-runtime {args:?}: {code} {err} {out}"));
        }
    }
    Ok(())
}

/// A CRI pod: RunPodSandbox, an app container started, ExecSync in it, the operator's listing,
/// then everything stopped and removed.
async fn cri_pod(node: &Node, board: &Board, n: usize) -> Result<(), String> {
    let mut c = cri(&node.sock).await?;
    let pod = pod_config(&node.dir, n);
    let req = RunPodSandboxRequest { config: Some(pod.clone()), runtime_handler: "kata".into() };
    let id = c.run_pod_sandbox(req).await.map_err(|e| format!("RunPodSandbox: {e}"))?.into_inner().pod_sandbox_id;
    board.live.lock().unwrap().insert(id.clone(), n);
    let app = ContainerConfig {
        metadata: Some(ContainerMetadata { name: "app".into(), attempt: 0 }),
        image: Some(ImageSpec { image: IMAGE.into(), ..Default::default() }),
        log_path: "app.log".into(),
        ..Default::default()
    };
    let req = CreateContainerRequest { pod_sandbox_id: id.clone(), config: Some(app), sandbox_config: Some(pod) };
    let cid = c.create_container(req).await.map_err(|e| format!("CreateContainer: {e}"))?.into_inner().container_id;
    c.start_container(StartContainerRequest { container_id: cid.clone() })
        .await
        .map_err(|e| format!("StartContainer: {e}"))?;
    let cmd = ["sh", "-c", "echo churned"].iter().map(|s| s.to_string()).collect();
    let out = c
        .exec_sync(ExecSyncRequest { container_id: cid.clone(), cmd, timeout: 60 })
        .await
        .map_err(|e| format!("ExecSync: {e}"))?
        .into_inner();
    if out.exit_code != 0 || !String::from_utf8_lossy(&out.stdout).contains("churned") {
        return Err(format!("ExecSync gave {out:?}"));
    }
    operator_commands(node, &id)?;
    c.stop_container(StopContainerRequest { container_id: cid.clone(), timeout: 5 })
        .await
        .map_err(|e| format!("StopContainer: {e}"))?;
    c.remove_container(RemoveContainerRequest { container_id: cid })
        .await
        .map_err(|e| format!("RemoveContainer: {e}"))?;
    board.live.lock().unwrap().remove(&id);
    c.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: id.clone() })
        .await
        .map_err(|e| format!("StopPodSandbox: {e}"))?;
    c.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id })
        .await
        .map_err(|e| format!("RemovePodSandbox: {e}"))?;
    Ok(())
}

/// A `ctr run` sandbox in a test-owned namespace: started, listed by the operator, killed and
/// removed; the namespace is then exactly as it was.
fn ctr_pod(node: &Node, board: &Board, n: usize, cni: &tests::CniPod) -> Result<(), String> {
    let id = format!("churn-ctr-{n}");
    let conf = node.cli.conf.display().to_string();
    let ns = format!("network:{}", cni.pod.path());
    let run = ["run", "-d", "--runtime", "io.containerd.kata.v2", "--runtime-config-path", &conf, "--with-ns", &ns];
    let out = node.ctr(&[&run[..], &[IMAGE, &id]].concat());
    board.live.lock().unwrap().insert(id.clone(), n);
    if !out.status.success() {
        return Err(format!("ctr run: {}", String::from_utf8_lossy(&out.stderr)));
    }
    operator_commands(node, &id)?;
    let out = node.ctr(&["task", "kill", "-s", "SIGKILL", &id]);
    if !out.status.success() {
        return Err(format!("ctr task kill: {}", String::from_utf8_lossy(&out.stderr)));
    }
    let start = Instant::now();
    while !String::from_utf8_lossy(&node.ctr(&["task", "ls"]).stdout)
        .lines()
        .any(|l| l.starts_with(&id) && l.split_whitespace().last() == Some("STOPPED"))
    {
        if start.elapsed() > Duration::from_secs(60) {
            return Err("the task did not stop".into());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    board.live.lock().unwrap().remove(&id);
    for args in [&["task", "rm", &id][..], &["container", "rm", &id][..]] {
        let out = node.ctr(args);
        if !out.status.success() {
            return Err(format!("ctr {args:?}: {}", String::from_utf8_lossy(&out.stderr)));
        }
    }
    Ok(())
}

/// What a fault left of run `n`'s sandbox removed as an operator or kubelet would: retried until
/// containerd takes it (it may be restarting).
fn clean_up_after_fault(node: &Node, rt: &tokio::runtime::Runtime, n: usize, ctr: bool) {
    let start = Instant::now();
    loop {
        let done = match ctr {
            true => {
                let id = format!("churn-ctr-{n}");
                let _ = node.ctr(&["task", "kill", "-s", "SIGKILL", &id]);
                let _ = node.ctr(&["task", "rm", "-f", &id]);
                let _ = node.ctr(&["container", "rm", &id]);
                let out = node.ctr(&["container", "ls", "-q"]);
                out.status.success() && !String::from_utf8_lossy(&out.stdout).lines().any(|l| l == id)
            }
            false => rt.block_on(remove_pods(node, Some(&format!("churn-{n}")))),
        };
        if done {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(180), "run {n}'s sandbox could not be removed\n{}", node.log());
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Stop and remove the CRI pods (those named `name`, or all): whether containerd took it.
async fn remove_pods(node: &Node, name: Option<&str>) -> bool {
    let Ok(mut c) = cri(&node.sock).await else { return false };
    let Ok(list) = c.list_pod_sandbox(ListPodSandboxRequest::default()).await else { return false };
    for p in list.into_inner().items {
        if name.is_some_and(|n| p.metadata.as_ref().is_none_or(|m| m.name != n)) {
            continue;
        }
        let stop = c.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: p.id.clone() }).await;
        let remove = c.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: p.id.clone() }).await;
        if stop.is_err() || remove.is_err() {
            return false;
        }
    }
    true
}

/// The shim serving sandbox `id` under this node's containerd.
fn shim_of(dir: &Path, id: &str) -> Option<i32> {
    processes(dir)
        .into_iter()
        .find(|(_, c)| c.contains("containerd-shim-kata-v2") && c.contains(&format!(" -id {id} ")))
        .map(|(p, _)| p)
}

/// Every process whose command line names `dir` (containerd's too), with its command line.
fn processes(dir: &Path) -> Vec<(i32, String)> {
    let needle = dir.display().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.parse::<i32>().ok()?;
            let cmd = String::from_utf8_lossy(&std::fs::read(e.path().join("cmdline")).ok()?).replace('\0', " ");
            (pid as u32 != std::process::id() && cmd.contains(&needle)).then_some((pid, cmd))
        })
        .collect()
}

fn listing(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

fn mounts_under(dir: &Path) -> BTreeSet<String> {
    let root = dir.display().to_string();
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines().filter_map(|l| l.split(' ').nth(4)).filter(|m| m.starts_with(&root)).map(String::from).collect()
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

fn threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map(|d| d.count()).unwrap_or(0)
}

/// One run: a CRI pod (even numbers) or a `ctr run` sandbox (odd), and whether a fault hit it.
fn one_run(node: &Node, board: &Board, rt: &tokio::runtime::Runtime, n: usize) -> (bool, Result<(), String>) {
    while board.down.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(200));
    }
    let restarts = board.restarts.load(Ordering::SeqCst);
    let ctr = n % 2 == 1;
    let cni = ctr.then(tests::CniPod::new);
    let before = cni.as_ref().map(|c| c.pod.snapshot());
    let got = match &cni {
        Some(cni) => ctr_pod(node, board, n, cni),
        None => rt.block_on(cri_pod(node, board, n)),
    };
    board.live.lock().unwrap().retain(|_, r| *r != n);
    let hit = board.hit(n) || board.restarts.load(Ordering::SeqCst) != restarts;
    if hit || got.is_err() {
        clean_up_after_fault(node, rt, n, ctr);
    }
    if let (Some(cni), Some(before)) = (&cni, before) {
        // The sandbox's shim is gone once its task is; only then is the namespace settled.
        let id = format!("churn-ctr-{n}");
        tests::containerd::wait_until(Duration::from_secs(60), &format!("the shim of {id} exited"), || {
            shim_of(&node.dir, &id).is_none()
        });
        assert_eq!(cni.pod.snapshot(), before, "run {n}: the pod namespace is not as CNI left it");
    }
    (hit, got)
}

#[test]
fn pods_churned_with_shims_killed_and_containerd_restarted_leave_nothing_behind() {
    let pods = env_or("KATA_NET_CHURN_PODS", 24);
    let at_once = env_or("KATA_NET_CHURN_AT_ONCE", 4);
    let faults = std::env::var("KATA_NET_CHURN_FAULTS").map_or(true, |v| v != "off");
    let seed = std::env::var("KATA_NET_CHURN_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1
    });
    println!("churn: {pods} pods, {at_once} at a time, faults {faults}, seed {seed}");
    let shim_sockets = listing(Path::new("/run/containerd/s"));
    let mut n = CriNode::start("churn", Path::new(env!("CARGO_BIN_EXE_containerd-shim-kata-v2")));
    let conf = n.dir.0.join("configuration.toml");
    let image = n.dir.0.join("image.tar");
    let node = Node {
        sock: n.sock.clone(),
        dir: n.dir.0.clone(),
        cli: KataRuntime { bin: tests::cli::kata_runtime_bin(), conf: conf.clone() },
    };
    let out = node.ctr(&["images", "import", image.to_str().unwrap()]);
    assert!(out.status.success(), "import: {}", String::from_utf8_lossy(&out.stderr));
    let nofile = std::fs::read_to_string(format!("/proc/{}/limits", n.containerd_pid())).unwrap();
    assert!(nofile.lines().any(|l| l.starts_with("Max open files") && l.contains(" 1024 ")), "{nofile}");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let cni_netns = listing(Path::new("/run/netns"));
    let mounts = mounts_under(&n.dir.0);

    // One of each kind first: containerd's baseline is taken with what it opens on first use.
    for w in [0, 1] {
        let (_, got) = one_run(&node, &Board::default(), &rt, 1000 + w);
        got.unwrap_or_else(|e| panic!("warm-up run: {e}\n{}", node.log()));
    }
    let (base_fds, base_threads) = (fds(n.containerd_pid()), threads(n.containerd_pid()));

    let board = Arc::new(Board::default());
    board.every_fault.store(!faults, Ordering::SeqCst);
    let next = Arc::new(AtomicUsize::new(0));
    let results = Arc::new(Mutex::new(Vec::new()));
    let start = Instant::now();
    let workers: Vec<_> = (0..at_once)
        .map(|_| {
            let (node, board, next, results) = (node.clone(), board.clone(), next.clone(), results.clone());
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                loop {
                    // Past the number asked for, runs go on (up to three times it) until both
                    // shim faults have had a live sandbox to hit.
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= pods && (board.every_fault.load(Ordering::SeqCst) || i >= 3 * pods) {
                        return;
                    }
                    let t = Instant::now();
                    let (hit, got) = one_run(&node, &board, &rt, i);
                    results.lock().unwrap().push((i, hit, got, t.elapsed()));
                }
            })
        })
        .collect();

    // The faults: a shim SIGKILLed or SIGTERMed, or containerd killed and started again.
    // The faults in turn (a containerd restart at most every third one), at random moments, on
    // random live sandboxes.
    use nix::sys::signal::Signal;
    let mut rng = Rng(seed);
    let (mut killed, mut termed, mut restarts) = (0, 0, 0);
    let mut turn = 0usize;
    while faults && !workers.iter().all(|w| w.is_finished()) {
        std::thread::sleep(Duration::from_millis(2000 + rng.below(4000)));
        if turn % 3 == 2 {
            board.down.store(true, Ordering::SeqCst);
            board.restarts.fetch_add(1, Ordering::SeqCst);
            n.restart();
            board.down.store(false, Ordering::SeqCst);
            restarts += 1;
            turn += 1;
            continue;
        }
        let live: Vec<(String, usize)> = board.live.lock().unwrap().iter().map(|(k, v)| (k.clone(), *v)).collect();
        if live.is_empty() {
            continue;
        }
        let (id, run) = &live[rng.below(live.len() as u64) as usize];
        let Some(pid) = shim_of(&n.dir.0, id) else { continue };
        board.hit.lock().unwrap().insert(*run);
        let sig = if turn % 3 == 1 { Signal::SIGTERM } else { Signal::SIGKILL };
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
        turn += 1;
        match sig {
            Signal::SIGTERM => {
                termed += 1;
                // A shim ends by itself on SIGTERM, its sandbox shut down (what is left is
                // looked for at the end).
                tests::containerd::wait_until(Duration::from_secs(90), "a SIGTERMed shim ended", || {
                    !Path::new(&format!("/proc/{pid}")).exists()
                });
            }
            _ => killed += 1,
        }
        // (A containerd restart comes for certain after the runs.)
        board.every_fault.store(killed > 0 && termed > 0, Ordering::SeqCst);
    }
    for w in workers {
        w.join().expect("a run panicked");
    }
    let elapsed = start.elapsed();
    let results = std::mem::take(&mut *results.lock().unwrap());

    // The fault of the issue, for certain: containerd killed while a pod's shim is starting it.
    if faults {
        let shims = || processes(&n.dir.0).iter().filter(|(_, c)| c.contains("containerd-shim-kata-v2")).count();
        let before = shims();
        let (node2, board2) = (node.clone(), board.clone());
        let starting = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(cri_pod(&node2, &board2, 9000))
        });
        tests::containerd::wait_until(Duration::from_secs(60), "a new pod's shim runs", || shims() > before);
        n.restart();
        restarts += 1;
        let got = starting.join().expect("the pod's run");
        println!("churn: the pod whose start containerd's restart cut: {got:?}");
        clean_up_after_fault(&node, &rt, 9000, false);
    }

    // Whatever is left (a run a fault hit may have been half made) is removed as kubelet would.
    assert!(rt.block_on(remove_pods(&node, None)), "the CRI pods could not be removed\n{}", node.log());
    let left = || -> Vec<String> {
        let mut v = Vec::new();
        for (pid, cmd) in processes(&n.dir.0) {
            if pid as u32 != n.containerd_pid() && !cmd.starts_with("nsenter") {
                v.push(format!("process {pid}: {cmd}"));
            }
        }
        for (d, name) in [
            (n.dir.0.join("run"), "run directory"),
            (n.dir.0.join("state/io.containerd.runtime.v2.task/k8s.io"), "CRI bundle"),
            (n.dir.0.join("state/io.containerd.runtime.v2.task/default"), "ctr bundle"),
        ] {
            // The accelerator probe's answer is the host's, kept for every sandbox (hypervisor::accel).
            v.extend(listing(&d).into_iter().filter(|e| e != "accel-probe").map(|e| format!("{name} {e}")));
        }
        v.extend(mounts_under(&n.dir.0).difference(&mounts).map(|m| format!("mount {m}")));
        v.extend(listing(Path::new("/run/containerd/s")).difference(&shim_sockets).map(|s| format!("shim socket {s}")));
        v.extend(listing(Path::new("/run/netns")).difference(&cni_netns).map(|s| format!("netns {s}")));
        let leases =
            n.dir.0.join("ipam").read_dir().into_iter().flatten().flatten().flat_map(|net| listing(&net.path()));
        v.extend(leases.filter(|l| l.starts_with("10.")).map(|l| format!("CNI lease {l}")));
        v
    };
    let start_settle = Instant::now();
    while !left().is_empty() && start_settle.elapsed() < Duration::from_secs(90) {
        std::thread::sleep(Duration::from_millis(500));
    }
    let left = left();
    let (fds_now, threads_now) = (fds(n.containerd_pid()), threads(n.containerd_pid()));
    let ok = results.iter().filter(|(_, hit, got, _)| !hit && got.is_ok()).count();
    let hit = results.iter().filter(|(_, hit, _, _)| *hit).count();
    let failed: Vec<String> = results
        .iter()
        .filter(|(_, hit, got, _)| !hit && got.is_err())
        .map(|(i, _, got, _)| format!("run {i}: {got:?}"))
        .collect();
    let mut times: Vec<f64> =
        results.iter().filter(|(_, hit, _, _)| !hit).map(|(_, _, _, t)| t.as_secs_f64()).collect();
    times.sort_by(f64::total_cmp);
    println!(
        "churn: {} pods in {:.1} s = {:.1} pods per minute ({at_once} at a time); {ok} clean runs, {hit} hit by a fault \
         ({killed} shims SIGKILLed, {termed} SIGTERMed, {restarts} containerd restarts); run time median {:.1} s",
        results.len(),
        elapsed.as_secs_f64(),
        results.len() as f64 * 60.0 / elapsed.as_secs_f64(),
        times.get(times.len() / 2).copied().unwrap_or(0.0)
    );
    let log = node.log();
    let ended = |why: &str| log.lines().filter(|l| l.contains("the shim is ending") && l.contains(why)).count();
    println!(
        "churn: shims that ended by themselves: {} on SIGTERM, {} after containerd removed their bundle, {} idle; \
         {} live shims ended by containerd's cleanup (`delete`)",
        ended("SIGTERM"),
        ended("bundle was removed"),
        ended("idle: no container"),
        log.lines().filter(|l| l.contains("whose shim lives: it is ended first")).count()
    );
    for l in log.lines().filter(|l| l.contains("the shim is ending") || l.contains("whose shim lives")) {
        println!("churn: {}", l.chars().take(400).collect::<String>());
    }
    println!(
        "churn: left behind: {}; containerd fds {base_fds} -> {fds_now}, threads {base_threads} -> {threads_now}",
        if left.is_empty() { "nothing".to_owned() } else { left.join("; ") }
    );
    assert!(results.len() >= pods, "{} runs of {pods}", results.len());
    assert!(failed.is_empty(), "runs no fault hit failed: {failed:#?}\n{}", node.log());
    assert!(left.is_empty(), "left behind: {left:#?}");
    // (containerd's restart at the end is certain; the shim faults need a live sandbox.)
    if faults {
        assert!(
            killed > 0 && termed > 0,
            "not both shim faults happened in {} runs: {killed} SIGKILLs, {termed} SIGTERMs",
            results.len()
        );
    }
    // containerd's fds: a leak of one per pod would show here; a restarted containerd is new.
    assert!(fds_now <= base_fds + 4, "containerd's fds grew: {base_fds} -> {fds_now}");
    assert!(threads_now <= base_threads + 8, "containerd's threads grew: {base_threads} -> {threads_now}");
}

/// containerd's `delete` run in the bundle of a sandbox whose shim still lives (what containerd
/// does when it holds that shim for dead, e.g. after its own restart during the start) ends that
/// shim, which shuts its sandbox down: no shim, QEMU or run directory is left, and the pod's
/// namespace is as CNI left it. Also a shim ends by itself, its sandbox with it, on SIGTERM.
#[test]
fn a_live_shim_is_ended_by_containerds_delete_and_by_sigterm_leaving_nothing() {
    let shim = Path::new(env!("CARGO_BIN_EXE_containerd-shim-kata-v2"));
    let c = tests::containerd::start_containerd("livedel", shim);
    let cni = tests::CniPod::new();
    let before = cni.pod.snapshot();
    let address = c.sock().display().to_string();
    for (id, how) in [("livedel", "delete"), ("liveterm", "SIGTERM")] {
        c.run_ok(id, &cni.pod.path());
        let pid = c.shim_pid(id).expect("the sandbox's shim runs");
        let run = c.run_dir().join(id);
        assert!(run.exists() && tests::containerd::qemu_running_in(&run));
        match how {
            "delete" => {
                let bundle = c.dir.0.join("state/io.containerd.runtime.v2.task/default").join(id);
                let out = std::process::Command::new(shim)
                    .args(["-namespace", "default", "-address", &address, "-id", id, "delete"])
                    .current_dir(&bundle)
                    .env("TTRPC_ADDRESS", format!("{address}.ttrpc"))
                    .output()
                    .unwrap();
                let err = String::from_utf8_lossy(&out.stderr);
                assert!(out.status.success(), "delete: {err}");
                assert!(err.contains("whose shim lives: it is ended first"), "delete: {err}");
                // The delete returns once the shim is gone.
                assert!(!Path::new(&format!("/proc/{pid}")).exists(), "the shim outlived the delete: {err}");
            }
            _ => {
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM)
                    .unwrap();
                tests::containerd::wait_until(Duration::from_secs(60), "the SIGTERMed shim ended", || {
                    !Path::new(&format!("/proc/{pid}")).exists()
                });
            }
        }
        assert!(!tests::containerd::qemu_running_in(&c.run_dir()), "{how}: QEMU is left");
        assert!(!run.exists(), "{how}: the run directory is left");
        assert_eq!(cni.pod.snapshot(), before, "{how}: the pod namespace is not as CNI left it");
        // containerd finds the task ended; removing it is what an operator does next.
        tests::containerd::wait_until(Duration::from_secs(30), "containerd sees the task stopped", || {
            matches!(c.task_status(id).as_str(), "STOPPED" | "")
        });
        let _ = c.ctr(&["task", "rm", "-f", id]);
        assert!(c.ctr(&["container", "rm", id]).status.success());
    }
}
