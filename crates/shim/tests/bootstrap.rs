//! `start` as containerd 2.3 calls it: a protobuf `BootstrapParams` on stdin (the bytes written
//! here field by field from containerd's `api/runtime/bootstrap/v1/bootstrap.proto`, not by the
//! shim's own code), no `TTRPC_ADDRESS` in the environment, a `BootstrapResult` expected on
//! stdout. The real binary is run; the answer's socket is then served (a Task call on it), the
//! runtime options' `ConfigPath` chose the configuration, and a start that fails leaves no
//! process. No containerd 2.3 package is reachable here: containerd's side is this test (its
//! events socket a listener that is only connected to).

use std::io::{BufRead, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use containerd_shim_protos::protobuf::CodedOutputStream;
use tests::containerd::wait_until;
use tests::vm::Scratch;

/// A length-delimited message of the fields `f` writes.
fn message(f: impl FnOnce(&mut CodedOutputStream)) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut os = CodedOutputStream::vec(&mut out);
        f(&mut os);
        os.flush().unwrap();
    }
    out
}

/// `BootstrapParams` as containerd 2.3 encodes it, with kata's runtime options naming `config`.
fn bootstrap_params(id: &str, ns: &str, ttrpc: &Path, socket_dir: &Path, config: &Path) -> Vec<u8> {
    let options = message(|os| os.write_string(2, config.to_str().unwrap()).unwrap());
    let any = message(|os| {
        os.write_string(1, "runtimeoptions.v1.Options").unwrap();
        os.write_bytes(2, &options).unwrap();
    });
    let extension = message(|os| os.write_bytes(1, &any).unwrap());
    message(|os| {
        os.write_string(1, id).unwrap();
        os.write_string(2, ns).unwrap();
        os.write_int32(3, 0).unwrap();
        os.write_string(4, "v2.3.0").unwrap();
        os.write_string(5, ttrpc.to_str().unwrap()).unwrap();
        os.write_string(6, "/run/containerd/containerd.sock").unwrap();
        os.write_string(7, "/usr/bin/containerd").unwrap();
        os.write_bytes(8, &extension).unwrap();
        os.write_string(9, socket_dir.to_str().unwrap()).unwrap();
    })
}

/// `BootstrapResult`: (version, address, protocol), decoded field by field.
fn bootstrap_result(bytes: &[u8]) -> (i32, String, String) {
    let mut is = containerd_shim_protos::protobuf::CodedInputStream::from_bytes(bytes);
    let mut r = (0, String::new(), String::new());
    while let Some(tag) = is.read_raw_tag_or_eof().unwrap() {
        match tag >> 3 {
            1 => r.0 = is.read_int32().unwrap(),
            2 => r.1 = is.read_string().unwrap(),
            3 => r.2 = is.read_string().unwrap(),
            _ => panic!("unexpected field in {bytes:?}"),
        }
    }
    r
}

fn start(bundle: &Path, id: &str, ns: &str, stdin: &[u8]) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_containerd-shim-kata-v2"))
        .args(["-namespace", ns, "-id", id, "-address", "/run/containerd/containerd.sock"])
        .args(["-publish-binary", "/usr/bin/containerd", "start"])
        .current_dir(bundle)
        .env_remove("TTRPC_ADDRESS")
        .env_remove("KATA_CONF_FILE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

/// The processes whose command line names `needle`.
fn processes_naming(needle: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
        })
        .collect()
}

/// The bundle's `log` FIFO read into lines (containerd reads it so), and the bundle.
fn bundle_with_log(dir: &Path) -> (PathBuf, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let bundle = dir.join("bundle");
    std::fs::create_dir_all(&bundle).unwrap();
    nix::unistd::mkfifo(&bundle.join("log"), nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (path, sink) = (bundle.join("log"), lines.clone());
    std::thread::spawn(move || {
        let f = std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
        for l in std::io::BufReader::new(f).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(l);
        }
    });
    (bundle, lines)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_answers_containerd_2_3s_bootstrap_serves_and_takes_the_config_path() {
    tests::require_root_and_tools(&[]);
    let dir = Scratch::new("boot");
    let (bundle, log) = bundle_with_log(&dir.0);
    let events = UnixListener::bind(dir.0.join("ttrpc.sock")).unwrap();
    let sockets = dir.0.join("s");
    std::fs::create_dir_all(&sockets).unwrap();
    let config = dir.0.join("configuration.toml");
    std::fs::write(&config, format!("[runtime]\nrun_dir = \"{}\"\n", dir.0.join("run").display())).unwrap();

    let params = bootstrap_params("sb23", "knt23", &dir.0.join("ttrpc.sock"), &sockets, &config);
    let out = start(&bundle, "sb23", "knt23", &params);
    assert!(out.status.success(), "start: {out:?}");
    let (version, address, protocol) = bootstrap_result(&out.stdout);
    assert_eq!((version, protocol.as_str()), (2, "ttrpc"), "a BootstrapResult for the task API v2 over ttrpc");
    let sock = address.strip_prefix("unix://").expect("a unix address");
    assert_eq!(Path::new(sock).parent(), Some(sockets.as_path()), "the socket in the params' socket_dir: {address}");
    assert_eq!(std::fs::read_to_string(bundle.join("address")).unwrap(), address, "the bundle's address file");

    // The socket is served: a Task call answers with the serving shim's pid.
    let client = ttrpc::asynchronous::Client::connect(&address).await.expect("the shim's socket");
    let task = containerd_shim_protos::shim_async::TaskClient::new(client);
    let ctx = || ttrpc::context::with_timeout(Duration::from_secs(10).as_nanos() as i64);
    let req = containerd_shim_protos::api::ConnectRequest { id: "sb23".into(), ..Default::default() };
    let shim_pid = task.connect(ctx(), &req).await.expect("Connect").shim_pid;
    assert!(shim_pid > 0 && Path::new(&format!("/proc/{shim_pid}")).exists(), "the serving shim runs");
    // It read the configuration the runtime options named (not KATA_CONF_FILE, unset): its log
    // names that file, loaded, or refused for a kernel this machine may not have installed.
    let named = |l: &String| l.contains("configuration loaded") || l.contains("bad configuration");
    let loaded = || log.lock().unwrap().iter().any(|l| named(l) && l.contains(config.to_str().unwrap()));
    for _ in 0..100 {
        if loaded() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(loaded(), "the shim logs its configuration: {:#?}", log.lock().unwrap());
    assert_eq!(std::fs::read_to_string(bundle.join("kata-net-config-path")).unwrap(), config.to_str().unwrap());

    // Shutdown with no task: the shim goes, and its socket with it.
    let _ = task.shutdown(ctx(), &Default::default()).await;
    wait_until(Duration::from_secs(10), "the serving shim exits", || !Path::new(&format!("/proc/{shim_pid}")).exists());
    assert!(!Path::new(sock).exists(), "its socket is removed");
    drop(events);
}

#[test]
fn a_start_that_fails_leaves_no_process() {
    tests::require_root_and_tools(&[]);
    let dir = Scratch::new("bootfail");
    let _events = UnixListener::bind(dir.0.join("ttrpc.sock")).unwrap();
    let sockets = dir.0.join("s");
    std::fs::create_dir_all(&sockets).unwrap();
    let config = dir.0.join("configuration.toml");
    std::fs::write(&config, "").unwrap();
    let bundle = dir.0.join("bundle");
    std::fs::create_dir_all(&bundle).unwrap();

    // Params for another shim: refused before anything is spawned, naming both.
    let params = bootstrap_params("other", "knt23", &dir.0.join("ttrpc.sock"), &sockets, &config);
    let out = start(&bundle, "sb23", "knt23", &params);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("knt23/other") && err.contains("knt23/sb23"), "{out:?}");

    // No `log` FIFO in the bundle: the serving shim cannot start; start says so and kills it.
    let params = bootstrap_params("sb23", "knt23", &dir.0.join("ttrpc.sock"), &sockets, &config);
    let out = start(&bundle, "sb23", "knt23", &params);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("the serving shim exited at its start"), "{out:?}");
    assert!(!bundle.join("address").exists(), "no address file for a shim that does not serve");
    assert_eq!(processes_naming(sockets.to_str().unwrap()), Vec::<u32>::new(), "no shim left behind");
}
