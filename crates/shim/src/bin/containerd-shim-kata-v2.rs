//! containerd-shim-kata-v2: the process containerd starts for `io.containerd.kata.v2`.

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("the async runtime");
    rt.block_on(containerd_shim::asynchronous::run::<shim::shim_process::KataShim>(
        shim::shim_process::RUNTIME_ID,
        None,
    ));
    // Once containerd let the shim go, nothing it started may keep it alive: a blocking thread
    // still waiting (say, a FIFO's open whose other end never came) is not waited for.
    rt.shutdown_background();
}
