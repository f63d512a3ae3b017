//! kata's debug console, for tests and debugging: with `agent.debug_console` and
//! `agent.debug_console_vport=<port>` on the kernel command line, a shell for each connection to
//! that vsock port (no terminal; kata's agent gives one, which a test need not rely on).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nix::sys::socket::{accept, bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, VsockAddr};

/// The port to serve the console on, if the kernel command line asks for one.
pub fn port_from_cmdline(cmdline: &str) -> Option<u32> {
    let words: Vec<&str> = cmdline.split_whitespace().collect();
    if !words.contains(&"agent.debug_console") {
        return None;
    }
    words.iter().find_map(|w| w.strip_prefix("agent.debug_console_vport=")).and_then(|p| p.parse().ok())
}

/// Serve the console on `port` in a thread of its own.
pub fn serve(port: u32) -> anyhow::Result<()> {
    let s = socket(AddressFamily::Vsock, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    bind(s.as_raw_fd(), &VsockAddr::new(libc::VMADDR_CID_ANY, port))?;
    listen(&s, Backlog::new(4)?)?;
    std::thread::spawn(move || loop {
        let Ok(fd) = accept(s.as_raw_fd()) else { continue };
        // SAFETY: accept returned a new descriptor that nothing else owns.
        let conn = unsafe { OwnedFd::from_raw_fd(fd) };
        let io = || conn.try_clone().map(std::process::Stdio::from);
        let spawned = (|| std::process::Command::new("/bin/sh").stdin(io()?).stdout(io()?).stderr(io()?).spawn())();
        match spawned {
            // Reaped by a thread of its own so that no zombie stays.
            Ok(mut child) => drop(std::thread::spawn(move || child.wait())),
            Err(e) => eprintln!("guest-agent: debug console: {e}"),
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn port_only_with_both_words() {
        let p = super::port_from_cmdline;
        assert_eq!(p("console=ttyS0 agent.debug_console agent.debug_console_vport=1026 quiet"), Some(1026));
        assert_eq!(p("agent.debug_console_vport=1026"), None);
        assert_eq!(p("agent.debug_console"), None);
    }
}
