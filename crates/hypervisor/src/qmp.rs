//! A small QMP client: greeting and capabilities, commands with ids, events routed apart from
//! replies, and fds passed with SCM_RIGHTS.
//!
//! Written by hand rather than on the `qapi` crate: qapi cannot attach fds to a command (QMP's
//! `getfd` needs SCM_RIGHTS on the very message), and the few commands the runtime sends do not
//! justify its 26,000 lines of generated types.

use std::collections::HashMap;
use std::io::IoSlice;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use serde_json::{json, Value};
use tokio::io::Interest;
use tokio::net::UnixStream;
use tokio::sync::{broadcast, oneshot};

use crate::error::{Error, Result};

type Reply = std::result::Result<Value, String>;

#[derive(Debug)]
struct Inner {
    stream: UnixStream,
    path: String,
    write: tokio::sync::Mutex<()>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Reply>>>,
    events: broadcast::Sender<Value>,
    next: AtomicU64,
    closed: AtomicBool,
}

/// A QMP connection. Cloning shares it.
#[derive(Debug, Clone)]
pub struct Qmp {
    inner: Arc<Inner>,
    timeout: Duration,
}

impl Qmp {
    /// Connect, read the greeting, negotiate capabilities.
    pub async fn connect(path: &Path, timeout: Duration) -> Result<Self> {
        let p = path.display().to_string();
        let stream = UnixStream::connect(path).await.map_err(|source| Error::QmpIo { path: p.clone(), source })?;
        let (events, _) = broadcast::channel(256);
        let inner = Arc::new(Inner {
            stream,
            path: p,
            write: tokio::sync::Mutex::new(()),
            pending: Mutex::new(HashMap::new()),
            events,
            next: AtomicU64::new(1),
            closed: AtomicBool::new(false),
        });
        tokio::spawn(read_loop(inner.clone()));
        let qmp = Self { inner, timeout };
        qmp.execute("qmp_capabilities", json!({})).await?;
        Ok(qmp)
    }

    /// Events from now on (DEVICE_DELETED, NIC_RX_FILTER_CHANGED, SHUTDOWN, ...).
    pub fn subscribe(&self) -> broadcast::Receiver<Value> {
        self.inner.events.subscribe()
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::SeqCst)
    }

    /// Run a command; its `return` value, or its error's `desc`.
    pub async fn execute(&self, command: &str, args: Value) -> Result<Value> {
        self.run(command, args, None).await
    }

    /// Run a command with `fd` attached (for `getfd`).
    pub(crate) async fn execute_with_fd(&self, command: &str, args: Value, fd: BorrowedFd<'_>) -> Result<Value> {
        self.run(command, args, Some(fd.as_raw_fd())).await
    }

    async fn run(&self, command: &str, args: Value, fd: Option<RawFd>) -> Result<Value> {
        let err = |desc: String| Error::Qmp { command: command.to_owned(), desc };
        if self.is_closed() {
            return Err(Error::Dead(format!("QMP connection {} closed", self.inner.path)));
        }
        let id = self.inner.next.fetch_add(1, Ordering::SeqCst);
        let (tx, rx) = oneshot::channel();
        self.inner.pending.lock().expect("pending lock").insert(id, tx);
        let mut line = serde_json::to_vec(&json!({"execute": command, "arguments": args, "id": id})).expect("json");
        line.push(b'\n');
        let sent = {
            let _g = self.inner.write.lock().await;
            send_all(&self.inner.stream, &line, fd).await
        };
        if let Err(source) = sent {
            self.inner.pending.lock().expect("pending lock").remove(&id);
            return Err(Error::QmpIo { path: self.inner.path.clone(), source });
        }
        match tokio::time::timeout(self.timeout, rx).await {
            Err(_) => {
                self.inner.pending.lock().expect("pending lock").remove(&id);
                Err(Error::Timeout(format!("QMP {command}")))
            }
            Ok(Err(_)) => Err(Error::Dead(format!("QMP connection {} closed", self.inner.path))),
            Ok(Ok(Err(desc))) => Err(err(desc)),
            Ok(Ok(Ok(v))) => Ok(v),
        }
    }

    /// Wait for an event named `name` whose `data` satisfies `matches`, up to `limit`.
    pub(crate) async fn wait_event(
        rx: &mut broadcast::Receiver<Value>,
        name: &str,
        limit: Duration,
        matches: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Err(_) => return Err(Error::Timeout(format!("QMP event {name}"))),
                Ok(Err(broadcast::error::RecvError::Lagged(_))) => continue,
                Ok(Err(broadcast::error::RecvError::Closed)) => return Err(Error::Dead("QMP closed".into())),
                Ok(Ok(ev)) if ev["event"] == name && matches(&ev["data"]) => return Ok(ev),
                Ok(Ok(_)) => continue,
            }
        }
    }
}

async fn send_all(stream: &UnixStream, bytes: &[u8], fd: Option<RawFd>) -> std::io::Result<()> {
    let mut off = 0;
    let mut fd = fd;
    while off < bytes.len() {
        stream.writable().await?;
        let res = stream.try_io(Interest::WRITABLE, || {
            let iov = [IoSlice::new(&bytes[off..])];
            let fds: Vec<RawFd> = fd.into_iter().collect();
            let cmsg = [ControlMessage::ScmRights(&fds)];
            let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsg };
            sendmsg::<()>(stream.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None).map_err(std::io::Error::from)
        });
        match res {
            Ok(n) => {
                off += n;
                fd = None;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

async fn read_loop(inner: Arc<Inner>) {
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    let mut chunk = [0u8; 8192];
    loop {
        if inner.stream.readable().await.is_err() {
            break;
        }
        match inner.stream.try_read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => break,
        }
        while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=nl).collect();
            let Ok(v) = serde_json::from_slice::<Value>(&line) else { continue };
            if v.get("event").is_some() {
                let _ = inner.events.send(v);
            } else if let Some(id) = v.get("id").and_then(Value::as_u64) {
                let reply = match v.get("return") {
                    Some(r) => Ok(r.clone()),
                    None => Err(v["error"]["desc"].as_str().unwrap_or("unknown QMP error").to_owned()),
                };
                if let Some(tx) = inner.pending.lock().expect("pending lock").remove(&id) {
                    let _ = tx.send(reply);
                }
            }
        }
    }
    inner.closed.store(true, Ordering::SeqCst);
    inner.pending.lock().expect("pending lock").clear();
}
