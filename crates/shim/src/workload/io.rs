//! A process's standard IO between containerd's FIFOs and the agent's stream calls: stdin
//! (WriteStdin, then CloseStdin at its end), stdout and stderr (ReadStdout/ReadStderr until the
//! agent says the stream ended). With a terminal there is one output stream (stdout) and stdin
//! is never closed (the terminal stays the process's). FIFOs are opened in blocking threads:
//! opening a FIFO waits for its other end, which containerd opened before asking. The stdin
//! FIFO's writer (ctr's copy of its own stdin) may have come and gone before the shim opens it:
//! once the process exits, that open is ended by opening the other end for a moment.
//!
//! An output FIFO is opened read-write, which on Linux never waits and leaves the shim holding a
//! reader of its own, as containerd's runc shim keeps one: when containerd's reader goes (a
//! containerd restart, a `ctr run -d` that exited), the output is kept in the FIFO, not lost to
//! EPIPE, and the reader that comes next (the restarted containerd, `ctr task attach`) gets the
//! rest and then the exit. The FIFO holds 64 KiB; a write that finds no room for [`STALL`]
//! gives the FIFO up (the rest is read and dropped), so a process whose output nobody reads any
//! more still runs to its end and its exit is reported.

use std::path::PathBuf;

use agent_client::AgentClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

/// The FIFOs containerd gave for a process (empty: none).
#[derive(Debug, Clone, Default)]
pub struct Stdio {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

impl Stdio {
    /// The process's standard IO as containerd names it: FIFO paths. containerd's log URIs
    /// (`binary://`, `file://`, as `ctr run --log-uri` gives them) are refused, naming the stream.
    pub fn of_fifos(stdin: &str, stdout: &str, stderr: &str, terminal: bool) -> crate::Result<Stdio> {
        for (name, p) in [("stdin", stdin), ("stdout", stdout), ("stderr", stderr)] {
            if let Some((scheme, _)) = p.split_once("://") {
                return Err(crate::Error::Spec(format!(
                    "process {name}: {scheme}:// log URIs are not supported by this runtime (its output goes to containerd's FIFOs)"
                )));
            }
        }
        Ok(Stdio { stdin: stdin.into(), stdout: stdout.into(), stderr: stderr.into(), terminal })
    }
}

/// How much one read asks the agent for.
const CHUNK: u32 = 32 * 1024;

/// How long a write to a full output FIFO may wait for a reader to make room.
pub const STALL: std::time::Duration = std::time::Duration::from_secs(30);

/// The output copies of a process; done when the agent ended both streams.
#[derive(Debug)]
pub struct Copies {
    outputs: Vec<JoinHandle<()>>,
    stdin: Option<JoinHandle<()>>,
    /// The stdin FIFO (empty: none).
    stdin_path: String,
}

impl Copies {
    /// Wait until the output is complete: the agent ended both streams (the process and every
    /// process it passed its output to closed it, or the process's terminal went). Only then
    /// is the process waited for: kata's agent drops what a process wrote, unread, once
    /// WaitProcess reaped it (kata's runtime waits in the same order).
    pub async fn outputs_done(&mut self) {
        futures_join(std::mem::take(&mut self.outputs)).await;
    }

    /// The process is gone: stop copying its stdin, and end an open of its FIFO still waiting
    /// for a writer (its blocking thread would wait for ever, and keep the shim from exiting).
    pub fn finish(self) {
        if let Some(s) = self.stdin {
            s.abort();
        }
        if !self.stdin_path.is_empty() {
            use std::os::unix::fs::OpenOptionsExt;
            // Succeeds only while a reader is there (ENXIO otherwise); closed at once, so that
            // reader sees the end.
            let _ = std::fs::OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK).open(&self.stdin_path);
        }
    }
}

/// Write all of `data`, failing when the FIFO took nothing for `stall`.
async fn write_within(
    f: &mut tokio::net::unix::pipe::Sender,
    data: &[u8],
    stall: std::time::Duration,
) -> std::io::Result<()> {
    let mut at = 0;
    while at < data.len() {
        match tokio::time::timeout(stall, f.write(&data[at..])).await {
            Ok(Ok(n)) => at += n,
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(std::io::Error::other(format!("no reader made room within {stall:?}"))),
        }
    }
    Ok(())
}

async fn futures_join(handles: Vec<JoinHandle<()>>) {
    for h in handles {
        let _ = h.await;
    }
}

/// Open the stdin FIFO for reading in a blocking thread (the open waits for its writer).
async fn open_stdin(path: PathBuf) -> std::io::Result<tokio::fs::File> {
    let f = tokio::task::spawn_blocking(move || std::fs::OpenOptions::new().read(true).open(path))
        .await
        .map_err(std::io::Error::other)??;
    Ok(tokio::fs::File::from_std(f))
}

/// Start copying process `exec_id` of container `cid` (the agent's names) between `stdio` and the
/// agent.
pub fn start(agent: &AgentClient, cid: &str, exec_id: &str, stdio: &Stdio, log: &slog::Logger) -> Copies {
    let streams: &[bool] = if stdio.terminal { &[false] } else { &[false, true] };
    let outputs = streams
        .iter()
        .map(|&stderr| {
            let path = if stderr { &stdio.stderr } else { &stdio.stdout };
            let (agent, cid, eid, path, log) =
                (agent.clone(), cid.to_owned(), exec_id.to_owned(), path.clone(), log.clone());
            tokio::spawn(async move { copy_output(&agent, &cid, &eid, stderr, &path, &log).await })
        })
        .collect();
    let (agent, cid, eid) = (agent.clone(), cid.to_owned(), exec_id.to_owned());
    let stdin = match (stdio.stdin.is_empty(), stdio.terminal) {
        // No stdin: the process reads the end at once, as from /dev/null.
        (true, false) => Some(tokio::spawn(async move {
            let _ = agent.close_stdin(&cid, &eid).await;
        })),
        (true, true) => None,
        (false, terminal) => {
            let path = PathBuf::from(&stdio.stdin);
            Some(tokio::spawn(async move { copy_stdin(&agent, &cid, &eid, path, terminal).await }))
        }
    };
    Copies { outputs, stdin, stdin_path: stdio.stdin.clone() }
}

/// One output stream of the process (stdout, or `stderr`) from the agent to the FIFO at `path`.
async fn copy_output(agent: &AgentClient, cid: &str, eid: &str, stderr: bool, path: &str, log: &slog::Logger) {
    // No FIFO: the output is read and dropped, so the process never blocks on a full pipe.
    let mut out = match path.is_empty() {
        true => None,
        false => match tokio::net::unix::pipe::OpenOptions::new().read_write(true).open_sender(path) {
            Ok(f) => Some(f),
            Err(e) => {
                slog::warn!(log, "cannot open the output FIFO"; "path" => path, "error" => %e);
                None
            }
        },
    };
    // The stream ends at the second error in a row: kata's agent 3.2 ends a pending read with
    // "eof" when the process's stdin is closed (CloseStdin wakes its terminal-exit notifier for
    // every stream), and the next read goes on; a stream that really ended fails again at once.
    let mut failed = false;
    loop {
        match agent.read_stream(cid, eid, stderr, CHUNK).await {
            Ok(data) => {
                failed = false;
                if let Some(f) = out.as_mut() {
                    if let Err(e) = write_within(f, &data, STALL).await {
                        slog::warn!(log, "the output FIFO is given up: the rest of this stream is dropped";
                            "path" => path, "error" => %e);
                        out = None;
                    }
                }
            }
            Err(_) if !failed => failed = true,
            Err(_) => break,
        }
    }
}

/// The stdin FIFO at `path` to the process, until it ends; then the process's stdin is closed
/// (a terminal's is not: its end is the terminal's).
async fn copy_stdin(agent: &AgentClient, cid: &str, eid: &str, path: PathBuf, terminal: bool) {
    let Ok(mut f) = open_stdin(path).await else { return };
    let mut buf = vec![0u8; CHUNK as usize];
    loop {
        match f.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let mut at = 0;
                while at < n {
                    match agent.write_stdin(cid, eid, &buf[at..n]).await {
                        Ok(0) | Err(_) => return,
                        Ok(w) => at += w as usize,
                    }
                }
            }
        }
    }
    if !terminal {
        let _ = agent.close_stdin(cid, eid).await;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    /// A FIFO opened as the output copy opens it: no reader needed, what fits is kept for the
    /// next reader, and a write that finds no room within the stall gives up instead of waiting.
    #[tokio::test]
    async fn an_output_fifo_keeps_what_fits_for_the_next_reader_and_a_full_one_is_given_up() {
        let dir = tests::vm::Scratch::new("fifo-stall");
        let path = dir.0.join("out");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let mut f = tokio::net::unix::pipe::OpenOptions::new().read_write(true).open_sender(&path).unwrap();
        super::write_within(&mut f, b"kept\n", Duration::from_millis(200)).await.expect("fits");
        let mut r = tokio::net::unix::pipe::OpenOptions::new().open_receiver(&path).unwrap();
        let mut got = [0u8; 5];
        tokio::io::AsyncReadExt::read_exact(&mut r, &mut got).await.unwrap();
        assert_eq!(&got, b"kept\n");
        drop(r);
        let big = vec![b'x'; 1 << 20];
        let e = super::write_within(&mut f, &big, Duration::from_millis(200)).await.expect_err("nobody makes room");
        assert!(e.to_string().contains("no reader made room"), "{e}");
    }

    #[test]
    fn fifos_are_taken_and_log_uris_refused_naming_the_stream() {
        let s = super::Stdio::of_fifos("/f/in", "/f/out", "", true).unwrap();
        assert_eq!((s.stdin.as_str(), s.stdout.as_str(), s.stderr.as_str(), s.terminal), ("/f/in", "/f/out", "", true));
        let e = super::Stdio::of_fifos("", "binary:///usr/bin/logger", "", false).unwrap_err().to_string();
        assert!(e.contains("process stdout: binary:// log URIs are not supported"), "{e}");
        let e = super::Stdio::of_fifos("", "", "file:///var/log/x", false).unwrap_err().to_string();
        assert!(e.contains("process stderr: file://"), "{e}");
    }
}
