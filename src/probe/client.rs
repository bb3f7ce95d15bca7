//! `rayhead probe ready|live|status`: the exec-probe client.
//!
//! The kubelet runs it every few seconds, so it is a plain blocking HTTP/1.0
//! exchange over one loopback socket ([`http_client::get`]): no async
//! runtime, no TLS, no pool.

use std::net::SocketAddr;
use std::os::unix::net::UnixStream;

use super::socket::{self, SocketPlace};
use crate::http_client;

const USER_AGENT: &str = "rayhead-probe";

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

/// Queries `path` over the exec probe's Unix socket; `None` when nothing
/// serves it (the caller asks probe.listen instead). Fails closed: a
/// directory of rayhead's own that another user could have filled, or a
/// server running as another user (not root), gives a failed probe that
/// says why, never its answer.
pub fn query_socket(place: &SocketPlace, path: &str) -> Option<(bool, String)> {
    let uid = nix::unistd::geteuid().as_raw();
    let url = format!("unix:{}:{path}", place.path.display());
    if let Some(dir) = &place.own_dir {
        match socket::check_own_dir(dir, uid) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => return Some(verdict(&url, Err(e.to_string()))),
        }
    }
    let stream = UnixStream::connect(&place.path).ok()?;
    let answer = socket::check_peer(&stream, &place.path, uid)
        .map_err(|e| e.to_string())
        .and_then(|()| http_client::get(stream, "localhost", path, USER_AGENT));
    Some(verdict(&url, answer))
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
    http_client::get_tcp(hostport, path, USER_AGENT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http_client::read_answer;
    use std::io::{Read, Write};
    use std::time::Duration;

    #[test]
    fn an_answer_ends_at_its_content_length_or_at_eof() {
        let kept_open = b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nokTRAILING".to_vec();
        let got = read_answer(&mut kept_open.as_slice()).unwrap();
        assert!(
            got.ends_with(b"\r\n\r\nok"),
            "{:?}",
            String::from_utf8_lossy(&got)
        );
        let no_length = b"HTTP/1.0 200 OK\r\n\r\nall of it".to_vec();
        assert_eq!(read_answer(&mut no_length.as_slice()).unwrap(), no_length);
        // A server that keeps the socket open after its body: no wait for
        // the read timeout.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut c, _) = listener.accept().unwrap();
            let mut req = [0u8; 1024];
            let _ = c.read(&mut req);
            c.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello")
                .unwrap();
            std::thread::sleep(Duration::from_secs(5));
        });
        let t = std::time::Instant::now();
        let (ok, body) = query(&format!("http://{addr}"), "/x");
        assert!(ok && body == "hello", "{body}");
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        drop(server);
    }

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
