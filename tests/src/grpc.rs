//! A gRPC channel to a unix socket (containerd's API and its CRI), for the tests' clients.

use std::path::Path;

/// A tonic channel whose every connection goes to the unix socket at `sock`.
pub async fn unix_channel(sock: &Path) -> tonic::transport::Channel {
    try_unix_channel(sock).await.unwrap_or_else(|e| panic!("connect to {}: {e}", sock.display()))
}

/// [`unix_channel`], or why it could not connect (the server is down, say).
pub async fn try_unix_channel(sock: &Path) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let path = sock.to_owned();
    tonic::transport::Endpoint::try_from("http://[::]:50051")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let p = path.clone();
            async move { Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tokio::net::UnixStream::connect(p).await?)) }
        }))
        .await
}
