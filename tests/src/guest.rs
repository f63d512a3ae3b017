//! The guest as a test sees it, whichever agent runs there: kata's debug console (a shell on vsock
//! port 1026, `[agent.kata] debug_console_enabled`), reached through the sandbox's hybrid vsock
//! socket. Kata's agent and ours both serve it; what a test reads comes from the guest's own
//! `ip` and files, not from either agent's account of itself.
//!
//! `KATA_NET_TEST_GUEST=kata` points the tests' configuration at the image with kata's agent
//! (`initrd-kata.img`, built only when `make guest-image` is given `KATA_AGENT`); unset or
//! `ours`, at our test agent's.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// Which agent the tests' guest image runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Agent {
    Ours,
    Kata,
}

impl Agent {
    /// From `KATA_NET_TEST_GUEST` (`ours`, the default, or `kata`); anything else fails loudly.
    pub fn under_test() -> Self {
        match std::env::var("KATA_NET_TEST_GUEST").as_deref() {
            Err(_) | Ok("") | Ok("ours") => Agent::Ours,
            Ok("kata") => Agent::Kata,
            Ok(other) => panic!("KATA_NET_TEST_GUEST={other:?}: use `ours` or `kata`"),
        }
    }

    /// Whether `make guest-image` built this agent's image (kata's needs `KATA_AGENT`).
    pub fn built(self) -> bool {
        crate::vm::guest_image().join(self.initrd()).is_file()
    }

    /// The initramfs file in the guest image directory.
    pub fn initrd(self) -> &'static str {
        match self {
            Agent::Ours => "initrd.img",
            Agent::Kata => "initrd-kata.img",
        }
    }
}

/// Run `script` in the guest of the sandbox whose run directory is `run_dir` (hybrid vsock) and
/// return what it printed (stdout and stderr, `\r` removed). Retries the connection for 30 s.
pub fn sh(run_dir: &Path, script: &str) -> String {
    let uds = run_dir.join("vsock.sock");
    let start = Instant::now();
    loop {
        match try_sh(&uds, script) {
            Ok(out) => return out,
            Err(e) if start.elapsed() < Duration::from_secs(30) => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("debug console of {}: {e}", uds.display()),
        }
    }
}

fn try_sh(uds: &Path, script: &str) -> std::io::Result<String> {
    let mut s = UnixStream::connect(uds)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.write_all(b"CONNECT 1026\n")?;
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while line.len() < 64 {
        s.read_exact(&mut b)?;
        if b[0] == b'\n' {
            break;
        }
        line.push(b[0]);
    }
    if !line.starts_with(b"OK ") {
        return Err(std::io::Error::other(format!("handshake: {:?}", String::from_utf8_lossy(&line))));
    }
    // The markers are computed by the shell, so a terminal's echo of this line never matches.
    s.write_all(format!("echo KN$((40+1)); {script}; echo KN$((40+2)); exit\n").as_bytes())?;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&out).contains("KN42") {
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Err(std::io::Error::other(format!("closed: {:?}", String::from_utf8_lossy(&out))));
        }
        out.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&out).replace('\r', "");
    let body = text.split("KN41\n").nth(1).unwrap_or_default();
    Ok(body.split("KN42").next().unwrap_or_default().to_owned())
}
