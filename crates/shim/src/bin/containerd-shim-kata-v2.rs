//! containerd-shim-kata-v2: the process containerd starts for `io.containerd.kata.v2`.

#[tokio::main]
async fn main() {
    containerd_shim::asynchronous::run::<shim::task::KataShim>(shim::task::RUNTIME_ID, None).await;
}
