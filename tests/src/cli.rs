//! `kata-runtime` as an operator runs it, for tests and benchmarks of the operator commands.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// The `kata-runtime` binary of this build: beside the test or bench binary's `deps` directory
/// (`cargo test --workspace` and `make bench` build it; `cargo build -p kata-runtime` does alone).
pub fn kata_runtime_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).expect("target/<profile>/deps/<test>");
    let bin = profile_dir.join("kata-runtime");
    assert!(bin.is_file(), "{} is missing: build it with `cargo build -p kata-runtime` (same profile)", bin.display());
    bin
}

/// stdout (trimmed), stderr (trimmed), exit code.
pub type Out = (String, String, i32);

/// The command, pointed at a shim configuration (`KATA_CONF_FILE`) so it finds the sandboxes.
#[derive(Debug, Clone)]
pub struct KataRuntime {
    pub bin: PathBuf,
    pub conf: PathBuf,
}

impl KataRuntime {
    pub fn run(&self, args: &[&str], stdin: Option<&str>) -> Out {
        let mut child = Command::new(&self.bin)
            .args(args)
            .env("KATA_CONF_FILE", &self.conf)
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        if let Some(text) = stdin {
            child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        }
        let out = child.wait_with_output().unwrap();
        let s = |b: &[u8]| String::from_utf8_lossy(b).trim().to_owned();
        (s(&out.stdout), s(&out.stderr), out.status.code().unwrap_or(-1))
    }

    /// Run and require success; returns stdout.
    pub fn ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let (out, err, code) = self.run(args, stdin);
        assert_eq!(code, 0, "{args:?}: {err}");
        out
    }
}

/// A failure as the contract says: `null`, one line on stderr that contains `want`, non-zero.
pub fn assert_refused((out, err, code): Out, want: &str) {
    assert_eq!(out, "null", "stdout of a failure (stderr: {err})");
    assert_ne!(code, 0, "{err}");
    assert_eq!(err.lines().count(), 1, "one-line error: {err:?}");
    assert!(err.contains(want), "error {err:?} should mention {want:?}");
}
