//! The hybrid vsock connect against a stand-in backend (a unix socket speaking the `CONNECT`
//! handshake): one that swallows the first request, as `vhost-device-vsock` does with a request
//! that reaches the guest before its vsock driver is up. The real backend and guests are tested
//! through containerd (`crates/shim/tests`).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::time::Duration;

use agent_client::{AgentAddr, AgentClient};

#[tokio::test]
async fn a_handshake_never_answered_is_given_up_and_a_new_connection_gets_through() {
    let dir = std::env::temp_dir().join(format!("agent-client-connect-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("vsock.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let backend = std::thread::spawn(move || {
        let mut held = Vec::new();
        for n in 0..2 {
            let (mut s, _) = listener.accept().unwrap();
            let mut line = String::new();
            BufReader::new(s.try_clone().unwrap()).read_line(&mut line).unwrap();
            assert_eq!(line, "CONNECT 1024\n");
            if n == 1 {
                s.write_all(b"OK 1024\n").unwrap();
            }
            // The first request is swallowed: no answer, the connection kept open.
            held.push(s);
        }
        std::thread::sleep(Duration::from_secs(1));
        held.len()
    });
    let addr: AgentAddr = format!("hvsock://{}:1024", path.display()).parse().unwrap();
    // Without a limit per attempt, the first connection would hold the whole 20 s and fail.
    let connected = AgentClient::connect(&addr, Duration::from_secs(20)).await;
    assert!(connected.is_ok(), "{:?}", connected.err());
    assert_eq!(backend.join().unwrap(), 2, "two connections: the swallowed one and the answered one");
    let _ = std::fs::remove_dir_all(&dir);
}
