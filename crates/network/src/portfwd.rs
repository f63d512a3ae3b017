//! The pod namespace's half of `kubectl port-forward`: containerd's CRI dials
//! `localhost:<port>` inside the pod's namespace, where nothing listens (the container is in the
//! VM). One nftables table of the runtime's, [`TABLE`], redirects every TCP connection made to
//! the namespace's loopback to the shim's forwarder, which reads the port asked for
//! (`SO_ORIGINAL_DST`) and carries the bytes to the guest. Only locally made connections to
//! loopback match: the pod's traffic from its peers never meets the table (tc redirects it before
//! netfilter sees it).
//!
//! The table is written by Debian's `nft` (package nftables) at [`NFT`]: one transaction, all
//! or nothing; removing it is one more, and a removal of a table that is not there succeeds.

use std::os::fd::AsFd;
use std::path::Path;
use std::process::Stdio;

use tokio::io::AsyncWriteExt;

use crate::error::{Error, Result};
use crate::netns::NetNs;

/// The runtime's table in a pod's namespace (family `inet`: both loopbacks).
pub const TABLE: &str = "kata_portfwd";
/// Where `nft` is, root's own (Debian's path; never looked up in `PATH`).
pub const NFT: &str = "/usr/sbin/nft";

/// Where the forwarder listens in the namespace: `127.0.0.1:<v4>` and, when the namespace has
/// IPv6, `[::1]:<v6>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listeners {
    pub v4: u16,
    pub v6: Option<u16>,
}

/// The table's text: a NAT output chain redirecting loopback TCP to the listeners.
fn ruleset(to: Listeners) -> String {
    let mut rules = format!("    oifname \"lo\" ip daddr 127.0.0.0/8 meta l4proto tcp redirect to :{}\n", to.v4);
    if let Some(v6) = to.v6 {
        rules.push_str(&format!("    oifname \"lo\" ip6 daddr ::1 meta l4proto tcp redirect to :{v6}\n"));
    }
    // Declared, flushed and filled in one transaction: a table left by a crash is replaced whole.
    format!(
        "table inet {TABLE} {{}}\nflush table inet {TABLE}\ntable inet {TABLE} {{\n  chain output {{\n    type nat hook \
         output priority -100; policy accept;\n{rules}  }}\n}}\n"
    )
}

/// Redirect loopback TCP in `ns` to `to` (replacing a table of ours already there).
pub async fn install(ns: &NetNs, to: Listeners) -> Result<()> {
    let out = in_netns(ns, &["-f", "-"], Some(&ruleset(to))).await?;
    let listed = listed(ns).await?;
    let ours = listed.contains(&format!("redirect to :{}", to.v4));
    check(ns, out, ours, "add the port-forward table")
}

/// Remove the table from `ns`; a namespace without it is fine.
pub async fn remove(ns: &NetNs) -> Result<()> {
    let script = format!("table inet {TABLE} {{}}\ndelete table inet {TABLE}\n");
    let out = in_netns(ns, &["-f", "-"], Some(&script)).await?;
    let gone = !listed(ns).await?.contains(&format!("table inet {TABLE} "));
    check(ns, out, gone, "remove the port-forward table")
}

/// The namespace's ruleset as `nft list ruleset` prints it.
async fn listed(ns: &NetNs) -> Result<String> {
    Ok(in_netns(ns, &["list", "ruleset"], None).await?.stdout)
}

/// What `nft` printed, and its exit status when this process could read it.
struct NftOutput {
    status: Option<std::process::ExitStatus>,
    stdout: String,
    stderr: String,
}

/// A change done: `nft` did not fail (where its status is known) and the ruleset shows it
/// (`shows`). The ruleset is the judge: a shim's reaper may take `nft`'s exit status first.
fn check(ns: &NetNs, out: NftOutput, shows: bool, op: &'static str) -> Result<()> {
    let failed = out.status.is_some_and(|s| !s.success()) || !out.stderr.trim().is_empty();
    match (failed, shows) {
        (false, true) => Ok(()),
        _ => Err(Error::Io {
            op,
            dev: format!("in {}", ns.path().display()),
            source: std::io::Error::other(format!(
                "{NFT} failed ({}): {}",
                out.status.map_or("status unknown".to_owned(), |s| s.to_string()),
                match out.stderr.trim() {
                    "" => "the ruleset does not show the change",
                    e => e,
                }
            )),
        }),
    }
}

/// Run `nft args` inside `ns` (entered between fork and exec), `input` on its stdin.
async fn in_netns(ns: &NetNs, args: &[&str], input: Option<&str>) -> Result<NftOutput> {
    use tokio::io::AsyncReadExt;
    let io = |op: &'static str| move |source| Error::Io { op, dev: NFT.to_owned(), source };
    if !Path::new(NFT).exists() {
        return Err(Error::Io {
            op: "run",
            dev: NFT.to_owned(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "not installed (Debian package nftables): kubectl port-forward needs it",
            ),
        });
    }
    let file =
        std::fs::File::open(ns.path()).map_err(|source| Error::NetnsOpen { path: ns.path().to_owned(), source })?;
    let mut cmd = tokio::process::Command::new(NFT);
    cmd.args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    // SAFETY: between fork and exec only setns(2) runs, on a descriptor opened before the fork.
    unsafe {
        cmd.pre_exec(move || {
            nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
        });
    }
    let mut child = cmd.spawn().map_err(io("run"))?;
    let (mut stdin, stdout, stderr) = (child.stdin.take(), child.stdout.take(), child.stderr.take());
    if let (Some(s), Some(text)) = (stdin.as_mut(), input) {
        s.write_all(text.as_bytes()).await.map_err(io("write to"))?;
    }
    drop(stdin);
    // Both pipes are read to their end (nft has exited then), before the status is asked for.
    let (mut out, mut err) = (String::new(), String::new());
    let read_out = async {
        match stdout {
            Some(mut p) => p.read_to_string(&mut out).await.map(drop),
            None => Ok(()),
        }
    };
    let read_err = async {
        match stderr {
            Some(mut p) => p.read_to_string(&mut err).await.map(drop),
            None => Ok(()),
        }
    };
    tokio::try_join!(read_out, read_err).map_err(io("read from"))?;
    let (stdout, stderr) = (out, err);
    let status = match child.wait().await {
        Ok(s) => Some(s),
        // Reaped by someone else (a shim's SIGCHLD reaper): the ruleset tells.
        Err(e) if e.raw_os_error() == Some(libc::ECHILD) => None,
        Err(e) => return Err(io("wait for")(e)),
    };
    Ok(NftOutput { status, stdout, stderr })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ruleset_redirects_only_loopback_tcp() {
        let r = ruleset(Listeners { v4: 40001, v6: Some(40002) });
        assert!(r.starts_with("table inet kata_portfwd {}\nflush table inet kata_portfwd\n"), "{r}");
        assert!(r.contains("type nat hook output priority -100"), "{r}");
        assert!(r.contains("oifname \"lo\" ip daddr 127.0.0.0/8 meta l4proto tcp redirect to :40001"), "{r}");
        assert!(r.contains("oifname \"lo\" ip6 daddr ::1 meta l4proto tcp redirect to :40002"), "{r}");
        let r = ruleset(Listeners { v4: 40001, v6: None });
        assert!(!r.contains("ip6"), "{r}");
    }
}
