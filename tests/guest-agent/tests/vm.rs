//! The guest image in a real VM (QEMU; TCG on this machine): the agent answers a health check
//! and ListInterfaces over the virtio-serial port and over hybrid vsock (vhost-device-vsock
//! behind QEMU's vhost-user-vsock-pci). Prints the boot-to-agent-ready time.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tests::vm::{guest_image, wait_agent_ready, Scratch};

use agent_client::{AgentAddr, AgentClient};
use tests::require_root_and_tools;

/// A process killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// QEMU with the guest image; `serial`: with the agent's virtio-serial port.
fn qemu(dir: &Path, serial: bool, extra: &[String]) -> Proc {
    let img = guest_image();
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-machine", "q35,accel=tcg", "-cpu", "max", "-m", "512", "-smp", "1", "-nodefaults", "-display", "none"])
        .args(["-no-reboot", "-kernel"])
        .arg(img.join("vmlinuz"))
        .arg("-initrd")
        .arg(img.join("initrd.img"))
        .args(["-append", "console=ttyS0 panic=-1 quiet"])
        .arg("-serial")
        .arg(format!("file:{}", dir.join("console.log").display()))
        .args(extra)
        .stdin(Stdio::null());
    if serial {
        cmd.args(["-device", "virtio-serial-pci,id=vser0"])
            .arg("-chardev")
            .arg(format!("socket,id=agent,path={},server=on,wait=off", dir.join("agent.sock").display()))
            .args(["-device", "virtserialport,chardev=agent,name=agent.channel.0"]);
    }
    Proc(cmd.spawn().expect("start qemu-system-x86_64"))
}

/// Wait for the agent's "ready" line on the console, or fail if QEMU exits first.
fn wait_ready(dir: &Path, vm: &mut Proc, limit: Duration) {
    if let Ok(Some(st)) = vm.0.try_wait() {
        panic!("QEMU exited ({st}) before the agent was ready");
    }
    wait_agent_ready(dir, limit);
}

async fn health_and_list(addr: &AgentAddr) {
    let c = AgentClient::connect(addr, Duration::from_secs(10)).await.unwrap();
    assert!(c.check().await.unwrap(), "agent serving");
    let ifs = c.list_interfaces().await.unwrap();
    // No NIC in this VM: the agent lists none (lo is never listed).
    assert!(ifs.is_empty(), "{ifs:?}");
    let (_, v) = c.version().await.unwrap();
    assert!(!v.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_in_the_vm_answers_over_virtio_serial() {
    require_root_and_tools(&["qemu-system-x86_64"]);
    let dir = Scratch::new("serial");
    let start = Instant::now();
    let mut vm = qemu(&dir.0, true, &[]);
    wait_ready(&dir.0, &mut vm, Duration::from_secs(120));
    let addr: AgentAddr = format!("unix://{}", dir.0.join("agent.sock").display()).parse().unwrap();
    health_and_list(&addr).await;
    println!("boot to agent ready (virtio-serial, TCG): {:.2} s", start.elapsed().as_secs_f64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_in_the_vm_answers_over_hybrid_vsock() {
    require_root_and_tools(&["qemu-system-x86_64", "vhost-device-vsock"]);
    let dir = Scratch::new("hvsock");
    let backend = dir.0.join("vhost-vsock.sock");
    let uds = dir.0.join("vm.vsock");
    let _vsock = Proc(
        Command::new("vhost-device-vsock")
            .arg("--vm")
            .arg(format!("guest-cid=3,socket={},uds-path={}", backend.display(), uds.display()))
            .stdin(Stdio::null())
            .spawn()
            .expect("start vhost-device-vsock"),
    );
    let t = Instant::now();
    while !backend.exists() {
        assert!(t.elapsed() < Duration::from_secs(10), "vhost-device-vsock did not create its socket");
        std::thread::sleep(Duration::from_millis(20));
    }
    let extra: Vec<String> = [
        "-object",
        "memory-backend-memfd,id=mem0,size=512M,share=on",
        "-numa",
        "node,memdev=mem0",
        "-chardev",
        &format!("socket,id=vsk,path={}", backend.display()),
        "-device",
        "vhost-user-vsock-pci,chardev=vsk",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let start = Instant::now();
    // No virtio-serial port: the agent serves vsock alone.
    let _vm = qemu(&dir.0, false, &extra);
    // Connect as soon as /init starts the agent, before it listens: the backend resets the
    // connection or closes it before the handshake; the client retries within its deadline.
    let t = Instant::now();
    while !std::fs::read_to_string(dir.0.join("console.log")).unwrap_or_default().contains("guest: starting agent") {
        assert!(t.elapsed() < Duration::from_secs(120), "the guest did not reach /init");
        std::thread::sleep(Duration::from_millis(20));
    }
    let addr: AgentAddr = format!("hvsock://{}:1024", uds.display()).parse().unwrap();
    let c = AgentClient::connect(&addr, Duration::from_secs(120)).await.unwrap();
    assert!(c.check().await.unwrap(), "agent serving");
    let log = std::fs::read_to_string(dir.0.join("console.log")).unwrap();
    assert!(log.contains("--vsock 1024"), "the guest saw a vsock device: {log}");
    health_and_list(&addr).await;
    println!("boot to agent ready (hybrid vsock, TCG): {:.2} s", start.elapsed().as_secs_f64());
}
