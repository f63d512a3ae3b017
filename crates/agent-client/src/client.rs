//! The async ttrpc client of the agent, over the three transports a VM offers.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, Instant};

use protobuf::MessageField;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use ttrpc::asynchronous::Client;

use crate::protocols::agent::{
    ARPNeighbors, AddARPNeighborsRequest, CloseStdinRequest, CreateContainerRequest, CreateSandboxRequest,
    ExecProcessRequest, GetMetricsRequest, GetOOMEventRequest, ListInterfacesRequest, ListRoutesRequest,
    ReadStreamRequest, RemoveContainerRequest, Routes, SignalProcessRequest, StartContainerRequest,
    StatsContainerRequest, StatsContainerResponse, TtyWinResizeRequest, UpdateIPVSRequest, UpdateInterfaceRequest,
    UpdateRoutesRequest, WaitProcessRequest, WriteStreamRequest,
};
use crate::protocols::agent_ttrpc::AgentServiceClient;
use crate::protocols::health::{health_check_response::ServingStatus, CheckRequest};
use crate::protocols::health_ttrpc::HealthClient;
use crate::protocols::types::{ARPNeighbor, Interface, Route};

/// Where the agent listens, by URL scheme:
/// `vsock://<cid>:<port>`, `hvsock://<unix path>:<port>` (hybrid vsock: a unix socket on which
/// `CONNECT <port>` is written first, as Firecracker, Cloud Hypervisor and vhost-device-vsock
/// expect), or `unix://<path>` (e.g. QEMU's virtio-serial port exposed as a unix socket).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentAddr {
    Vsock { cid: u32, port: u32 },
    HybridVsock { path: PathBuf, port: u32 },
    Unix { path: PathBuf },
}

impl FromStr for AgentAddr {
    type Err = Error;

    fn from_str(s: &str) -> std::result::Result<Self, Error> {
        let bad = |why: &str| Error::Address { addr: s.to_owned(), why: why.to_owned() };
        let port_of = |p: &str| p.parse::<u32>().map_err(|_| bad("the port must be a number"));
        if let Some(rest) = s.strip_prefix("vsock://") {
            let (cid, port) = rest.split_once(':').ok_or_else(|| bad("expected vsock://<cid>:<port>"))?;
            let cid = cid.parse().map_err(|_| bad("the CID must be a number"))?;
            Ok(AgentAddr::Vsock { cid, port: port_of(port)? })
        } else if let Some(rest) = s.strip_prefix("hvsock://") {
            let (path, port) = rest.rsplit_once(':').ok_or_else(|| bad("expected hvsock://<path>:<port>"))?;
            if !path.starts_with('/') {
                return Err(bad("the socket path must be absolute"));
            }
            Ok(AgentAddr::HybridVsock { path: path.into(), port: port_of(port)? })
        } else if let Some(path) = s.strip_prefix("unix://") {
            if !path.starts_with('/') {
                return Err(bad("the socket path must be absolute"));
            }
            Ok(AgentAddr::Unix { path: path.into() })
        } else {
            Err(bad("unknown scheme (expected vsock://, hvsock:// or unix://)"))
        }
    }
}

impl std::fmt::Display for AgentAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AgentAddr::Vsock { cid, port } => write!(f, "vsock://{cid}:{port}"),
            AgentAddr::HybridVsock { path, port } => write!(f, "hvsock://{}:{port}", path.display()),
            AgentAddr::Unix { path } => write!(f, "unix://{}", path.display()),
        }
    }
}

/// What can go wrong talking to the agent.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("bad agent address {addr:?}: {why}")]
    Address { addr: String, why: String },
    #[error("cannot connect to the agent at {addr}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("hybrid vsock handshake with {addr} failed: the backend answered {reply:?}")]
    Handshake { addr: String, reply: String },
    #[error("agent call {method} timed out after {timeout:?}")]
    Timeout { method: &'static str, timeout: Duration },
    #[error("agent call {method} failed")]
    Rpc {
        method: &'static str,
        #[source]
        source: ttrpc::Error,
    },
}

/// How often a transient connect failure is retried.
const RETRY_EVERY: Duration = Duration::from_millis(50);
/// How long one connect attempt (with the hybrid vsock handshake) may take.
const ATTEMPT_LIMIT: Duration = Duration::from_secs(5);

/// The I/O kind of a ttrpc connect error (ttrpc reports them as text; the kinds that matter for
/// retrying are recognised by their OS message).
fn io_kind_of(e: &ttrpc::Error) -> std::io::ErrorKind {
    let text = e.to_string();
    if text.contains("Connection refused") {
        std::io::ErrorKind::ConnectionRefused
    } else if text.contains("Connection reset") {
        std::io::ErrorKind::ConnectionReset
    } else if text.contains("No such file or directory") {
        std::io::ErrorKind::NotFound
    } else {
        std::io::ErrorKind::Other
    }
}

impl Error {
    /// A connect failure that a guest still booting explains: worth retrying.
    pub fn is_transient(&self) -> bool {
        use std::io::ErrorKind::*;
        match self {
            Error::Connect { source, .. } => {
                matches!(source.kind(), NotFound | ConnectionRefused | ConnectionReset | UnexpectedEof | BrokenPipe)
            }
            _ => false,
        }
    }

    /// The ttrpc status code the agent answered with, if it answered.
    pub fn code(&self) -> Option<ttrpc::Code> {
        match self {
            Error::Rpc { source: ttrpc::Error::RpcStatus(s), .. } => Some(s.code()),
            _ => None,
        }
    }

    /// The agent's own message, if it answered with a status.
    pub fn status_message(&self) -> Option<&str> {
        match self {
            Error::Rpc { source: ttrpc::Error::RpcStatus(s), .. } => Some(s.message()),
            _ => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// A connected agent client. Every call has a time limit.
#[derive(Clone)]
pub struct AgentClient {
    agent: AgentServiceClient,
    health: HealthClient,
    timeout: Duration,
}

impl std::fmt::Debug for AgentClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentClient").field("timeout", &self.timeout).finish_non_exhaustive()
    }
}

impl AgentClient {
    /// Connect; `timeout` bounds the connection and then each call. A transient failure (the
    /// socket not there yet, refused, reset, closed before the hybrid vsock handshake: the guest
    /// is not listening yet) is retried every 50 ms until the deadline; the last one is returned.
    pub async fn connect(addr: &AgentAddr, timeout: Duration) -> Result<Self> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            // One attempt over vsock or a unix socket gets at most ATTEMPT_LIMIT. A hybrid vsock
            // attempt is never given up while its CONNECT is pending: vhost-device-vsock 0.3.0
            // writes the guest's late `OK` to a connection the client closed with
            // `write_all(..).unwrap()`, its worker thread panics, and no connection of the VM is
            // answered again (seen under load: "did not answer within 90 s"). The guest answers
            // every request once its vsock driver is up (OK, or a reset when nobody listens),
            // which the caller waits for first (`Vm::wait_virtio_ready`).
            let limit = match addr {
                AgentAddr::HybridVsock { .. } => left,
                _ => left.min(ATTEMPT_LIMIT),
            };
            let attempt = match tokio::time::timeout(limit, Self::connect_once(addr)).await {
                Ok(r) => r,
                Err(_) if limit < left => continue,
                Err(_) => Err(Error::Connect {
                    addr: addr.to_string(),
                    source: std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"),
                }),
            };
            match attempt {
                Ok(client) => {
                    return Ok(Self {
                        agent: AgentServiceClient::new(client.clone()),
                        health: HealthClient::new(client),
                        timeout,
                    })
                }
                Err(e) if e.is_transient() && Instant::now() + RETRY_EVERY < deadline => {
                    tokio::time::sleep(RETRY_EVERY).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn connect_once(addr: &AgentAddr) -> Result<Client> {
        let conn_err = |source: std::io::Error| Error::Connect { addr: addr.to_string(), source };
        match addr {
            AgentAddr::Vsock { .. } | AgentAddr::Unix { .. } => Client::connect(&addr.to_string())
                .await
                .map_err(|e| conn_err(std::io::Error::new(io_kind_of(&e), e.to_string()))),
            AgentAddr::HybridVsock { path, port } => {
                let s = hybrid_vsock_connect(path, *port).await.map_err(|e| match e {
                    Handshake::Io(source) => conn_err(source),
                    Handshake::Refused(reply) => Error::Handshake { addr: addr.to_string(), reply },
                })?;
                Ok(Client::new(ttrpc::asynchronous::transport::Socket::from(s)))
            }
        }
    }

    /// Each later call gets `t` of its own (the connect's own deadline says nothing about them).
    pub fn with_call_timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    fn ctx(&self) -> ttrpc::context::Context {
        ttrpc::context::with_timeout(self.timeout.as_nanos().min(i64::MAX as u128) as i64)
    }

    async fn call<T>(
        &self,
        method: &'static str,
        fut: impl std::future::Future<Output = ttrpc::Result<T>>,
    ) -> Result<T> {
        match tokio::time::timeout(self.timeout, fut).await {
            Err(_) => Err(Error::Timeout { method, timeout: self.timeout }),
            Ok(Err(source)) => Err(Error::Rpc { method, source }),
            Ok(Ok(v)) => Ok(v),
        }
    }

    /// `grpc.Health/Check`: is the agent serving?
    pub async fn check(&self) -> Result<bool> {
        let r = self.call("Check", self.health.check(self.ctx(), &CheckRequest::new())).await?;
        Ok(r.status.enum_value() == Ok(ServingStatus::SERVING))
    }

    /// `grpc.Health/Version`: (grpc version, agent version).
    pub async fn version(&self) -> Result<(String, String)> {
        let r = self.call("Version", self.health.version(self.ctx(), &CheckRequest::new())).await?;
        Ok((r.grpc_version, r.agent_version))
    }

    pub async fn create_sandbox(&self, req: &CreateSandboxRequest) -> Result<()> {
        self.call("CreateSandbox", self.agent.create_sandbox(self.ctx(), req)).await.map(|_| ())
    }

    /// `UpdateInterface`, retried while the guest says the NIC is not there yet, until `wait`
    /// has passed: NOT_FOUND, or kata's agent's INTERNAL "Link not found" (it looks the NIC up by
    /// MAC at once, without waiting for a hotplugged device to appear).
    pub async fn update_interface(&self, iface: &Interface, wait: Duration) -> Result<Interface> {
        let req = UpdateInterfaceRequest { interface: MessageField::some(iface.clone()), ..Default::default() };
        let start = Instant::now();
        let not_yet = |e: &Error| {
            e.code() == Some(ttrpc::Code::NOT_FOUND)
                || (e.code() == Some(ttrpc::Code::INTERNAL)
                    && e.status_message().is_some_and(|m| m.contains("Link not found")))
        };
        loop {
            match self.call("UpdateInterface", self.agent.update_interface(self.ctx(), &req)).await {
                Err(e) if not_yet(&e) && start.elapsed() < wait => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                other => return other,
            }
        }
    }

    /// `UpdateRoutes`: replace the routes of the named devices, or (with `increment`) add them,
    /// a `dest` starting with `-` deleting that route. Returns the guest's routes after.
    pub async fn update_routes(&self, routes: Vec<Route>, increment: bool) -> Result<Vec<Route>> {
        let req = UpdateRoutesRequest {
            routes: MessageField::some(Routes { Routes: routes, ..Default::default() }),
            increment,
            ..Default::default()
        };
        Ok(self.call("UpdateRoutes", self.agent.update_routes(self.ctx(), &req)).await?.Routes)
    }

    pub async fn list_interfaces(&self) -> Result<Vec<Interface>> {
        let req = ListInterfacesRequest::new();
        Ok(self.call("ListInterfaces", self.agent.list_interfaces(self.ctx(), &req)).await?.Interfaces)
    }

    pub async fn list_routes(&self) -> Result<Vec<Route>> {
        let req = ListRoutesRequest::new();
        Ok(self.call("ListRoutes", self.agent.list_routes(self.ctx(), &req)).await?.Routes)
    }

    pub async fn add_arp_neighbors(&self, neighbors: Vec<ARPNeighbor>) -> Result<()> {
        let req = AddARPNeighborsRequest {
            neighbors: MessageField::some(ARPNeighbors { ARPNeighbors: neighbors, ..Default::default() }),
            ..Default::default()
        };
        self.call("AddARPNeighbors", self.agent.add_arp_neighbors(self.ctx(), &req)).await.map(|_| ())
    }

    /// `GetMetrics`: the guest's metrics, Prometheus' text format.
    pub async fn get_metrics(&self) -> Result<String> {
        let req = GetMetricsRequest::default();
        Ok(self.call("GetMetrics", self.agent.get_metrics(self.ctx(), &req)).await?.metrics)
    }

    /// `UpdateIPVSRule`: the request string, the command's output back.
    pub async fn update_ipvs_rule(&self, req: &str) -> Result<String> {
        let req = UpdateIPVSRequest { IPVS_req: req.to_owned(), ..Default::default() };
        Ok(self.call("UpdateIPVSRule", self.agent.update_ipvs_rule(self.ctx(), &req)).await?.IPVS_res)
    }
}

/// The calls on containers and their processes. A process is named by its container and exec
/// id; a container's init process has the container's id as exec id (as kata's runtime names
/// it). The calls that wait for the process (its exit, its output) have no time limit.
impl AgentClient {
    pub async fn create_container(&self, req: &CreateContainerRequest) -> Result<()> {
        self.call("CreateContainer", self.agent.create_container(self.ctx(), req)).await.map(|_| ())
    }

    pub async fn start_container(&self, container_id: &str) -> Result<()> {
        let req = StartContainerRequest { container_id: container_id.into(), ..Default::default() };
        self.call("StartContainer", self.agent.start_container(self.ctx(), &req)).await.map(|_| ())
    }

    /// `RemoveContainer`: its processes killed (within `timeout` seconds), its mounts gone.
    pub async fn remove_container(&self, container_id: &str, timeout: u32) -> Result<()> {
        let req = RemoveContainerRequest { container_id: container_id.into(), timeout, ..Default::default() };
        self.call("RemoveContainer", self.agent.remove_container(self.ctx(), &req)).await.map(|_| ())
    }

    pub async fn exec_process(&self, req: &ExecProcessRequest) -> Result<()> {
        self.call("ExecProcess", self.agent.exec_process(self.ctx(), req)).await.map(|_| ())
    }

    /// `SignalProcess`; an empty `exec_id` signals every process of the container.
    pub async fn signal_process(&self, container_id: &str, exec_id: &str, signal: u32) -> Result<()> {
        let req = SignalProcessRequest {
            container_id: container_id.into(),
            exec_id: exec_id.into(),
            signal,
            ..Default::default()
        };
        self.call("SignalProcess", self.agent.signal_process(self.ctx(), &req)).await.map(|_| ())
    }

    /// `WaitProcess`: the process's wait status once it exited (no time limit).
    pub async fn wait_process(&self, container_id: &str, exec_id: &str) -> Result<i32> {
        let req =
            WaitProcessRequest { container_id: container_id.into(), exec_id: exec_id.into(), ..Default::default() };
        let r = self.agent.wait_process(ttrpc::context::Context::default(), &req).await;
        Ok(r.map_err(|source| Error::Rpc { method: "WaitProcess", source })?.status)
    }

    /// `GetOOMEvent`: the next container of the sandbox that had a process killed by the OOM
    /// killer (waits for one, with no time limit; the agent keeps them until asked).
    pub async fn get_oom_event(&self) -> Result<String> {
        let r = self.agent.get_oom_event(ttrpc::context::Context::default(), &GetOOMEventRequest::default()).await;
        Ok(r.map_err(|source| Error::Rpc { method: "GetOOMEvent", source })?.container_id)
    }

    /// `StatsContainer`: the container's cgroup counters in the guest.
    pub async fn stats_container(&self, container_id: &str) -> Result<StatsContainerResponse> {
        let req = StatsContainerRequest { container_id: container_id.into(), ..Default::default() };
        self.call("StatsContainer", self.agent.stats_container(self.ctx(), &req)).await
    }

    /// `WriteStdin`: how many bytes the process's stdin took.
    pub async fn write_stdin(&self, container_id: &str, exec_id: &str, data: &[u8]) -> Result<u32> {
        let req = WriteStreamRequest {
            container_id: container_id.into(),
            exec_id: exec_id.into(),
            data: data.to_vec(),
            ..Default::default()
        };
        Ok(self.call("WriteStdin", self.agent.write_stdin(self.ctx(), &req)).await?.len)
    }

    /// `ReadStdout` (or `ReadStderr`): up to `len` bytes, when there are some (no time limit). The
    /// end of the stream is an error (the agents say EOF that way).
    pub async fn read_stream(&self, container_id: &str, exec_id: &str, stderr: bool, len: u32) -> Result<Vec<u8>> {
        let req =
            ReadStreamRequest { container_id: container_id.into(), exec_id: exec_id.into(), len, ..Default::default() };
        let ctx = ttrpc::context::Context::default();
        let (method, r) = match stderr {
            false => ("ReadStdout", self.agent.read_stdout(ctx, &req).await),
            true => ("ReadStderr", self.agent.read_stderr(ctx, &req).await),
        };
        Ok(r.map_err(|source| Error::Rpc { method, source })?.data)
    }

    pub async fn close_stdin(&self, container_id: &str, exec_id: &str) -> Result<()> {
        let req =
            CloseStdinRequest { container_id: container_id.into(), exec_id: exec_id.into(), ..Default::default() };
        self.call("CloseStdin", self.agent.close_stdin(self.ctx(), &req)).await.map(|_| ())
    }

    pub async fn tty_win_resize(&self, container_id: &str, exec_id: &str, row: u32, column: u32) -> Result<()> {
        let req = TtyWinResizeRequest {
            container_id: container_id.into(),
            exec_id: exec_id.into(),
            row,
            column,
            ..Default::default()
        };
        self.call("TtyWinResize", self.agent.tty_win_resize(self.ctx(), &req)).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_and_print() {
        for s in ["vsock://3:1024", "hvsock:///run/vc/vm/x/kata.hvsock:1024", "unix:///run/vc/agent.sock"] {
            assert_eq!(s.parse::<AgentAddr>().unwrap().to_string(), s);
        }
        assert_eq!(
            "hvsock:///a:b/c.sock:7".parse::<AgentAddr>().unwrap(),
            AgentAddr::HybridVsock { path: "/a:b/c.sock".into(), port: 7 }
        );
        for bad in
            ["vsock://3", "vsock://x:1", "hvsock://rel.sock:1", "unix://rel", "tcp://1.2.3.4:5", "hvsock:///a.sock:p"]
        {
            assert!(matches!(bad.parse::<AgentAddr>(), Err(Error::Address { .. })), "{bad}");
        }
    }
}

/// How a hybrid vsock connection failed.
#[derive(Debug)]
pub enum Handshake {
    Io(std::io::Error),
    /// The backend's reply was not `OK <port>`: nothing listens on the guest's port.
    Refused(String),
}

impl std::fmt::Display for Handshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Io(e) => write!(f, "{e}"),
            Self::Refused(reply) => write!(f, "the vsock backend answered {reply:?}, not \"OK <port>\""),
        }
    }
}

/// A stream to the guest's vsock `port` through the hybrid vsock backend's socket `path`: the
/// backend is told `CONNECT <port>` and answers `OK <port>`. The reply is read byte by byte, so
/// nothing after it is taken from the stream.
pub async fn hybrid_vsock_connect(
    path: &std::path::Path,
    port: u32,
) -> std::result::Result<tokio::net::UnixStream, Handshake> {
    let mut s = tokio::net::UnixStream::connect(path).await.map_err(Handshake::Io)?;
    s.write_all(format!("CONNECT {port}\n").as_bytes()).await.map_err(Handshake::Io)?;
    let mut reply = Vec::with_capacity(32);
    loop {
        let b = s.read_u8().await.map_err(Handshake::Io)?;
        if b == b'\n' || reply.len() >= 64 {
            break;
        }
        reply.push(b);
    }
    let reply = String::from_utf8_lossy(&reply).into_owned();
    match reply.starts_with("OK ") {
        true => Ok(s),
        false => Err(Handshake::Refused(reply)),
    }
}
