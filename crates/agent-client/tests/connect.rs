//! The hybrid vsock connect against a stand-in backend (a unix socket speaking the `CONNECT`
//! handshake) whose guest answers late, as a loaded guest does. `vhost-device-vsock` 0.3.0
//! writes the guest's `OK` with `write_all(..).unwrap()`: a client that gave up on the
//! connection by then makes that write fail and the backend's worker thread panic, after which
//! no connection of that VM is ever answered. So the client keeps a connection whose `CONNECT` is
//! pending until the guest answers it (OK, or a reset) or the whole connect time is up. The real
//! backend and guests are tested through containerd (`crates/shim/tests`).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::time::Duration;

use agent_client::{AgentAddr, AgentClient};

#[tokio::test]
async fn a_late_answer_finds_the_connection_still_waiting_for_it() {
    let dir = std::env::temp_dir().join(format!("agent-client-connect-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("vsock.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let backend = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut line = String::new();
        BufReader::new(s.try_clone().unwrap()).read_line(&mut line).unwrap();
        assert_eq!(line, "CONNECT 1024\n");
        // The guest answers after 7 s (longer than any per-attempt limit would have waited).
        std::thread::sleep(Duration::from_secs(7));
        let answered = s.write_all(b"OK 1024\n").is_ok();
        listener.set_nonblocking(true).unwrap();
        let another = listener.accept().is_ok();
        std::thread::sleep(Duration::from_millis(300));
        (answered, another)
    });
    let addr: AgentAddr = format!("hvsock://{}:1024", path.display()).parse().unwrap();
    let connected = AgentClient::connect(&addr, Duration::from_secs(20)).await;
    assert!(connected.is_ok(), "{:?}", connected.err());
    let (answered, another) = backend.join().unwrap();
    assert!(answered, "the client had closed the connection before the guest's answer");
    assert!(!another, "the client gave up on a pending connection and opened another");
    let _ = std::fs::remove_dir_all(&dir);
}
