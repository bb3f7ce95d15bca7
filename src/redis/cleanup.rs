//! `rayhead redis-cleanup`: a drop-in for KubeRay's cleanup Job, which runs
//! Ray's `cleanup_redis_storage` (SCAN MATCH `RAY<ns>@*`, then DEL). This one
//! escapes the namespace's glob characters, UNLINKs in batches (DEL where
//! UNLINK is forbidden), and never touches another namespace's keys. A
//! failed SCAN step (PING, then SCAN: a dropped connection, say) is retried
//! with back-off until the deadline; a failed UNLINK or DEL is not: the run
//! ends with an error that says how many keys were deleted, and a rerun
//! finishes the job.

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use tokio::time::{sleep, Instant};

use super::Redis;

/// Keys per SCAN step and per UNLINK.
const BATCH: usize = 1000;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Keys found (and, unless a dry run, deleted).
    pub keys: u64,
    pub deleted: u64,
    /// UNLINK was refused, so DEL was used.
    pub used_del: bool,
}

/// Escapes Redis glob characters (`* ? [ ] \`), so the pattern matches the
/// namespace literally.
fn escape_glob(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The namespace, checked: cleaning "every namespace" by accident must be
/// impossible.
pub fn check_namespace(ns: Option<&str>) -> Result<&str, String> {
    match ns {
        None => Err("no namespace: set RAY_external_storage_namespace (redis.namespace); rayhead refuses to clean every namespace".into()),
        Some(n) if n.trim().is_empty() => Err("the namespace is empty: rayhead refuses to clean every namespace".into()),
        Some(n) if n.contains('@') => Err(format!("the namespace {n:?} contains '@', which Ray does not allow")),
        Some(n) => Ok(n),
    }
}

/// A key as a listing shows it, one a line and unambiguous: its UTF-8 as it
/// is, a backslash doubled, a control byte or a byte that is not UTF-8 as
/// `\xNN` (a key is bytes, and Ray's keys hold binary ids).
pub fn show_key(key: &[u8]) -> String {
    let mut out = String::with_capacity(key.len());
    for chunk in key.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                c if c.is_ascii_control() => out.push_str(&format!("\\x{:02x}", c as u8)),
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// Deletes (or, with `dry_run`, lists through `each`) every `RAY<ns>@*` key.
/// Keys are bytes: one that is not UTF-8 is found, counted and deleted like
/// any other (decoding them as text made one such key fail every run).
pub async fn cleanup(
    redis: &Redis,
    ns: &str,
    dry_run: bool,
    deadline: Instant,
    mut each: impl FnMut(&[u8]),
) -> Result<Report, String> {
    let pattern = format!("RAY{}@*", escape_glob(ns));
    let prefix = format!("RAY{ns}@").into_bytes();
    let mut report = Report::default();
    let mut cursor: u64 = 0;
    let mut attempt: u32 = 0;
    loop {
        let step = scan_step(redis, cursor, &pattern, &prefix);
        let (next, keys, mut conn) = match tokio::time::timeout_at(deadline, step).await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                attempt += 1;
                let pause = BACKOFF.delay(attempt);
                if deadline.saturating_duration_since(Instant::now()) <= pause {
                    return Err(format!("{e} (after {} deleted)", report.deleted));
                }
                tracing::warn!(error = %e, attempt, "Redis cleanup step failed; retrying");
                sleep(pause).await;
                continue;
            }
            Err(_) => return Err(format!("deadline reached after {} deleted", report.deleted)),
        };
        attempt = 0;
        report.keys += keys.len() as u64;
        if dry_run {
            keys.iter().for_each(|k| each(k));
        } else if !keys.is_empty() {
            delete(&mut conn, &keys, &mut report).await?;
        }
        cursor = next;
        if cursor == 0 {
            return Ok(report);
        }
    }
}

/// One SCAN step from `cursor`, after a PING: the part of a run that is
/// safe to retry, since it changes nothing. Returns the next cursor, this
/// namespace's keys, and the connection to delete them on.
async fn scan_step(
    redis: &Redis,
    cursor: u64,
    pattern: &str,
    prefix: &[u8],
) -> Result<(u64, Vec<Vec<u8>>, MultiplexedConnection), String> {
    redis.ping().await.map_err(|e| e.to_string())?;
    let mut conn = redis.kept().ok_or("no connection")?;
    let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
        .arg(cursor)
        .arg("MATCH")
        .arg(pattern)
        .arg("COUNT")
        .arg(BATCH)
        .query_async(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    // Belt and braces: only this namespace's keys, ever.
    let keys: Vec<Vec<u8>> = keys.into_iter().filter(|k| k.starts_with(prefix)).collect();
    Ok((next, keys, conn))
}

/// Deletes one batch with UNLINK, or with DEL from the first refusal on (a
/// managed Redis may rename or forbid UNLINK). Not retried: the error says
/// how many keys went, and a rerun finishes the job.
async fn delete(
    conn: &mut MultiplexedConnection,
    keys: &[Vec<u8>],
    report: &mut Report,
) -> Result<(), String> {
    let cmd_name = if report.used_del { "DEL" } else { "UNLINK" };
    let mut cmd = redis::cmd(cmd_name);
    cmd.arg(keys);
    match cmd.query_async::<u64>(conn).await {
        Ok(n) => report.deleted += n,
        Err(e) if !report.used_del && e.kind() != redis::ErrorKind::Io => {
            tracing::info!(error = %e, "UNLINK refused; using DEL");
            report.used_del = true;
            let mut del = redis::cmd("DEL");
            del.arg(keys);
            report.deleted += del
                .query_async::<u64>(conn)
                .await
                .map_err(|e| format!("DEL failed: {e} (after {} deleted)", report.deleted))?;
        }
        Err(e) => {
            return Err(format!(
                "{cmd_name} failed: {e} (after {} deleted)",
                report.deleted
            ))
        }
    }
    Ok(())
}

/// Between retries through a dropped connection.
const BACKOFF: crate::backoff::Backoff =
    crate::backoff::Backoff::new(Duration::from_millis(250), Duration::from_secs(2));

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_every_glob_character() {
        assert_eq!(escape_glob("a*b?c[d]e\\f"), "a\\*b\\?c\\[d\\]e\\\\f");
        assert_eq!(escape_glob("uid-123"), "uid-123");
    }

    #[test]
    fn shows_any_key() {
        assert_eq!(show_key(b"RAYns@NODE"), "RAYns@NODE");
        assert_eq!(
            show_key(b"RAYns@\xff\x00\xe2\x82"),
            "RAYns@\\xff\\x00\\xe2\\x82"
        );
        assert_eq!(show_key(b"a\\b\nc"), "a\\\\b\\x0ac");
        assert_eq!(show_key("RAYé@".as_bytes()), "RAYé@");
    }

    #[test]
    fn refuses_a_missing_or_empty_namespace() {
        assert!(check_namespace(None).unwrap_err().contains("refuses"));
        assert!(check_namespace(Some(" ")).unwrap_err().contains("empty"));
        assert!(check_namespace(Some("a@b")).is_err());
        assert_eq!(check_namespace(Some("ns")).unwrap(), "ns");
    }
}
