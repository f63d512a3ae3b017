//! Logs whose size a guest cannot grow without bound: what a child process writes to a pipe is
//! copied into a file that, past [`CAP`] bytes, is moved to `<file>.1` (the one before it goes)
//! and started again. At most twice the cap per log, the newest output always kept.

use std::path::{Path, PathBuf};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

/// A log's size before it is rotated.
pub const CAP: u64 = 1 << 20;

/// Copy `from` into `path` until it ends, keeping at most `cap` bytes in `path` and the `cap`
/// before them in `<path>.1`. A write error ends the copy (the log is a help, never a reason to
/// stall the writer: the pipe is read to its end regardless).
pub async fn copy_capped(mut from: impl AsyncRead + Unpin, path: PathBuf, cap: u64) {
    let mut out = tokio::fs::File::create(&path).await.ok();
    let (mut written, mut buf) = (0u64, vec![0u8; 16 * 1024]);
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut rest = &buf[..n];
        while !rest.is_empty() {
            if written >= cap {
                if let Some(mut f) = out.take() {
                    let _ = f.flush().await;
                }
                let _ = tokio::fs::rename(&path, rotated(&path)).await;
                out = tokio::fs::File::create(&path).await.ok();
                written = 0;
            }
            let take = rest.len().min((cap - written) as usize);
            if let Some(f) = out.as_mut() {
                // Flushed at once: tokio's file writes in the background, and a reader (a test, an
                // operator) must see what the guest wrote.
                if f.write_all(&rest[..take]).await.is_err() || f.flush().await.is_err() {
                    out = None;
                }
            }
            written += take as u64;
            rest = &rest[take..];
        }
    }
}

/// `<path>.1`.
pub fn rotated(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".1");
    PathBuf::from(p)
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn the_log_never_grows_past_twice_its_cap_and_keeps_the_newest() {
        let dir = std::env::temp_dir().join(format!("caplog-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("console.log");
        let (mut w, r) = tokio::io::duplex(4096);
        let copy = tokio::spawn(super::copy_capped(r, path.clone(), 1000));
        for i in 0..500u32 {
            tokio::io::AsyncWriteExt::write_all(&mut w, format!("line {i:05}\n").as_bytes()).await.unwrap();
        }
        drop(w);
        copy.await.unwrap();
        let now = std::fs::read_to_string(&path).unwrap();
        let before = std::fs::read_to_string(super::rotated(&path)).unwrap();
        assert!(now.len() <= 1000 && before.len() <= 1000, "{} {}", now.len(), before.len());
        assert!(now.ends_with("line 00499\n"), "the newest output is kept: {now}");
        assert!(before.len() + now.len() > 1000, "the one before is kept too");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
