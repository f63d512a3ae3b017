//! containerd-shim-kata-v2: the process containerd starts for `io.containerd.kata.v2`.

fn main() {
    // Answered before containerd-shim's bootstrap, which wants containerd's environment for them.
    match std::env::args().nth(1).as_deref() {
        Some("-v" | "-version" | "--version") => {
            print!("{}", shim::shim_process::version_text());
            return;
        }
        Some("-info") => {
            // containerd writes the runtime's options on stdin; nothing in them changes the answer.
            let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new());
            let _ = std::io::Write::write_all(&mut std::io::stdout(), &shim::shim_process::runtime_info());
            return;
        }
        _ => {}
    }
    // `start` is ours for every containerd (1.6 to 2.3+: see `shim::bootstrap`).
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if containerd_shim::parse(&args).is_ok_and(|f| f.action == "start") {
        if let Err(e) = shim::spawn::start(&args) {
            eprintln!("{}: {e}", shim::shim_process::RUNTIME_ID);
            std::process::exit(1);
        }
        return;
    }
    // A shim per pod: its workers are fixed, not the host's CPU count (a 64-core node runs
    // dozens of shims; one sandbox's QMP, agent and IO keep two busy at most), and its blocking
    // threads (FIFO opens, namespace work) are bounded too.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(shim::shim_process::WORKER_THREADS)
        .max_blocking_threads(shim::shim_process::MAX_BLOCKING_THREADS)
        .enable_all()
        .build()
        .expect("the async runtime");
    rt.block_on(containerd_shim::asynchronous::run::<shim::shim_process::KataShim>(
        shim::shim_process::RUNTIME_ID,
        None,
    ));
    // Once containerd let the shim go, nothing it started may keep it alive: a blocking thread
    // still waiting (say, a FIFO's open whose other end never came) is not waited for.
    rt.shutdown_background();
}
