//! `UpdateIPVSRule`: `ipvsadm <args>`, `conntrack <args>` and `restore|<count>|<rules>`, each run
//! as an argument vector (never through a shell). At most 20,000 rules (services plus real
//! servers) in the guest; a restore is refused while rules exist.

use std::process::Stdio;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;
use ttrpc::Code;

use crate::netcfg::Status;

pub const MAX_RULES: usize = 20_000;

async fn output(mut cmd: Command, stdin: Option<&str>) -> Result<String, Status> {
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| (Code::INTERNAL, format!("cannot run the command: {e}")))?;
    if let (Some(text), Some(mut input)) = (stdin, child.stdin.take()) {
        input.write_all(text.as_bytes()).await.map_err(|e| (Code::INTERNAL, e.to_string()))?;
    }
    let out = child.wait_with_output().await.map_err(|e| (Code::INTERNAL, e.to_string()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        return Err((Code::INTERNAL, format!("{}: {err}", out.status)));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Services plus real servers in the guest's IPVS table: the lines of `/proc/net/ip_vs` after
/// its three header lines (no table yet when IPVS is not loaded). Read, not run: a process per
/// call would cost more than the rule it guards.
async fn rule_count() -> Result<usize, Status> {
    match tokio::fs::read_to_string("/proc/net/ip_vs").await {
        Ok(text) => Ok(text.lines().skip(3).filter(|l| !l.trim().is_empty()).count()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err((Code::INTERNAL, format!("reading /proc/net/ip_vs: {e}"))),
    }
}

fn adds_rule(args: &[&str]) -> bool {
    args.iter().any(|a| matches!(*a, "-A" | "--add-service" | "-a" | "--add-server"))
}

/// `conntrack <args>`: its output plus the summary it writes to stderr ("N flow entries have
/// been deleted."). Deleting nothing is not a failure for a cleanup, though conntrack exits 1.
async fn conntrack(args: &[&str]) -> Result<String, Status> {
    let out = Command::new("conntrack")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| (Code::INTERNAL, format!("cannot run the command: {e}")))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let summary = stderr.lines().find_map(|l| l.find("flow entries").map(|_| l.split("): ").last().unwrap_or(l)));
    let deleted_none = summary.is_some_and(|s| s.starts_with("0 "));
    if !out.status.success() && !deleted_none {
        return Err((Code::INTERNAL, format!("{}: {}", out.status, stderr.trim())));
    }
    Ok(format!("{stdout}{}", summary.unwrap_or("")))
}

pub async fn run(req: &str) -> Result<String, Status> {
    let bad = |why: &str| (Code::INVALID_ARGUMENT, format!("IPVS_req: {why}"));
    if let Some(rest) = req.strip_prefix("restore|") {
        let (count, rules) = rest.split_once('|').ok_or_else(|| bad("expected restore|<count>|<rules>"))?;
        let count: usize = count.parse().map_err(|_| bad("the rule count is not a number"))?;
        let lines = rules.lines().filter(|l| !l.trim().is_empty()).count();
        if lines != count {
            return Err(bad(&format!("the count says {count} rules, the file has {lines}")));
        }
        if count > MAX_RULES {
            return Err((Code::RESOURCE_EXHAUSTED, format!("{count} rules exceed the limit of {MAX_RULES}")));
        }
        let have = rule_count().await?;
        if have > 0 {
            return Err((Code::FAILED_PRECONDITION, format!("{have} rules exist: clear them before a restore")));
        }
        let mut cmd = Command::new("ipvsadm");
        cmd.arg("-R");
        return output(cmd, Some(rules)).await;
    }
    let mut words = req.split_whitespace();
    let program = words.next().ok_or_else(|| bad("empty"))?;
    let args: Vec<&str> = words.collect();
    match program {
        "ipvsadm" => {
            if adds_rule(&args) && rule_count().await? + 1 > MAX_RULES {
                return Err((Code::RESOURCE_EXHAUSTED, format!("the sandbox holds {MAX_RULES} rules already")));
            }
            let mut cmd = Command::new("ipvsadm");
            cmd.args(&args);
            output(cmd, None).await
        }
        "conntrack" => conntrack(&args).await,
        other => Err(bad(&format!("unknown command {other:?} (ipvsadm, conntrack or restore)"))),
    }
}
