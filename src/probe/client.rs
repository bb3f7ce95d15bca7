//! `rayhead probe ready|live|status`: the exec-probe client.
//!
//! The kubelet runs it every few seconds, so it is a plain blocking HTTP/1.0
//! exchange over one loopback socket: no async runtime, no TLS, no pool.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const IO_TIMEOUT: Duration = Duration::from_secs(3);
/// Enough for `/status`; a larger answer is cut.
const MAX_RESPONSE: u64 = 1 << 20;

/// The base URL for the server listening on `listen`: a wildcard address is
/// reached through loopback.
pub fn base_url(listen: SocketAddr) -> String {
    let host = match listen {
        SocketAddr::V4(a) if a.ip().is_unspecified() => format!("127.0.0.1:{}", a.port()),
        SocketAddr::V6(a) if a.ip().is_unspecified() => format!("[::1]:{}", a.port()),
        a => a.to_string(),
    };
    format!("http://{host}")
}

/// Queries `base` + `path`. Returns whether the answer was 200, and the text
/// to print: the body, or why nothing answered.
pub fn query(base: &str, path: &str) -> (bool, String) {
    let url = format!("{}{path}", base.trim_end_matches('/'));
    verdict(&url, fetch_tcp(base, path))
}

/// Queries `path` over the Unix socket `socket`.
pub fn query_socket(socket: &Path, path: &str) -> (bool, String) {
    let url = format!("unix:{}:{path}", socket.display());
    let answer = UnixStream::connect(socket)
        .map_err(|e| e.to_string())
        .and_then(|s| exchange(s, "localhost", path));
    verdict(&url, answer)
}

/// Whether something serves `socket` now.
pub fn socket_answers(socket: &Path) -> bool {
    UnixStream::connect(socket).is_ok()
}

fn verdict(url: &str, answer: Result<(u16, String), String>) -> (bool, String) {
    match answer {
        Ok((200, body)) => (true, body),
        Ok((code, body)) => (false, format!("{url} answered {code}\n{body}")),
        Err(e) => (false, format!("cannot query rayhead at {url}: {e}")),
    }
}

fn fetch_tcp(base: &str, path: &str) -> Result<(u16, String), String> {
    let hostport = base
        .strip_prefix("http://")
        .ok_or_else(|| format!("{base:?}: expected an http:// URL"))?
        .trim_end_matches('/');
    let addr = hostport
        .to_socket_addrs()
        .map_err(|e| format!("{hostport:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("{hostport:?}: no address"))?;
    let s = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(IO_TIMEOUT))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(IO_TIMEOUT))
        .map_err(|e| e.to_string())?;
    exchange(s, hostport, path)
}

/// Timeouts a stream can take: TCP and Unix sockets alike.
trait Timeouts: Read + Write {
    fn set_timeouts(&self, t: Duration) -> std::io::Result<()>;
}

impl Timeouts for TcpStream {
    fn set_timeouts(&self, t: Duration) -> std::io::Result<()> {
        self.set_read_timeout(Some(t))?;
        self.set_write_timeout(Some(t))
    }
}

impl Timeouts for UnixStream {
    fn set_timeouts(&self, t: Duration) -> std::io::Result<()> {
        self.set_read_timeout(Some(t))?;
        self.set_write_timeout(Some(t))
    }
}

/// One HTTP/1.0 request and its answer.
fn exchange(mut s: impl Timeouts, host: &str, path: &str) -> Result<(u16, String), String> {
    s.set_timeouts(IO_TIMEOUT).map_err(|e| e.to_string())?;
    let req = format!("GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: rayhead-probe\r\n\r\n");
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    s.take(MAX_RESPONSE)
        .read_to_end(&mut raw)
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or("the answer has no header end")?;
    let code = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or("the answer has no status line")?;
    Ok((code, body.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_go_through_loopback() {
        assert_eq!(
            base_url("0.0.0.0:8099".parse().unwrap()),
            "http://127.0.0.1:8099"
        );
        assert_eq!(base_url("[::]:1".parse().unwrap()), "http://[::1]:1");
        assert_eq!(base_url("10.0.0.1:2".parse().unwrap()), "http://10.0.0.1:2");
    }

    #[test]
    fn nothing_listening_is_a_clear_failure() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let (ok, msg) = query(&format!("http://127.0.0.1:{port}"), "/readyz");
        assert!(!ok);
        assert!(
            msg.contains("cannot query rayhead") && msg.contains("refused"),
            "{msg}"
        );
        let (ok, msg) = query("ftp://x", "/readyz");
        assert!(!ok && msg.contains("http://"), "{msg}");
    }
}
