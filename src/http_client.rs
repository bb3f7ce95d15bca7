//! The one HTTP/1 client: a `GET` over a socket already connected and its
//! answer, parsed by `httparse` (the parser hyper's server uses).
//!
//! rayhead only ever asks loopback servers small questions (the exec probe
//! asks rayhead's own probe server, the daemon health checks ask Ray's
//! dashboard), so it is one HTTP/1.0 request per connection, no TLS, no
//! pool, with bounds a slow or broken server cannot get past: timeouts on
//! every blocking read and write, an answer cut at [`MAX_RESPONSE`], and a
//! `Content-Length` of any size read without an overflow.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
pub const IO_TIMEOUT: Duration = Duration::from_secs(3);
/// Enough for the probe server's `/status`; a larger answer is cut.
pub const MAX_RESPONSE: u64 = 1 << 20;
/// More header lines than any server rayhead asks sends.
const MAX_HEADERS: usize = 64;

/// An answer: its status code and its body (lossy UTF-8).
pub type Answer = (u16, String);

/// Timeouts a stream can take: TCP and Unix sockets alike.
pub trait Timeouts: Read + Write {
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

fn request(host: &str, path: &str, user_agent: &str) -> String {
    format!("GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: {user_agent}\r\n\r\n")
}

/// Connects to `hostport` (`host:port`) within [`CONNECT_TIMEOUT`] and
/// `GET`s `path`, blocking.
pub fn get_tcp(hostport: &str, path: &str, user_agent: &str) -> Result<Answer, String> {
    let addr = hostport
        .to_socket_addrs()
        .map_err(|e| format!("{hostport:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("{hostport:?}: no address"))?;
    let s = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).map_err(|e| e.to_string())?;
    get(s, hostport, path, user_agent)
}

/// `GET path` over `s`, blocking, each read and write within
/// [`IO_TIMEOUT`].
pub fn get(
    mut s: impl Timeouts,
    host: &str,
    path: &str,
    user_agent: &str,
) -> Result<Answer, String> {
    s.set_timeouts(IO_TIMEOUT).map_err(|e| e.to_string())?;
    s.write_all(request(host, path, user_agent).as_bytes())
        .map_err(|e| e.to_string())?;
    let raw = read_answer(&mut s.take(MAX_RESPONSE))?;
    parse_answer(&raw)
}

/// Connects to `host:port` and `GET`s `path`, without a body: the status
/// code alone, read as soon as the answer's head is in; `Ok(None)` when
/// what came back is not HTTP. No timeout of its own: the caller bounds
/// the whole exchange.
pub async fn status_async(
    host: &str,
    port: u16,
    path: &str,
    user_agent: &str,
) -> Result<Option<u16>, String> {
    let mut s = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("{host}:{port}: {e}"))?;
    status_on(&mut s, host, path, user_agent).await
}

async fn status_on(
    s: &mut (impl AsyncRead + AsyncWrite + Unpin),
    host: &str,
    path: &str,
    user_agent: &str,
) -> Result<Option<u16>, String> {
    s.write_all(request(host, path, user_agent).as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut r = s.take(MAX_RESPONSE);
    let mut raw = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        if let Some(head) = parse_head(&raw) {
            return Ok(head.ok().map(|(code, _, _)| code));
        }
        match r.read(&mut buf).await {
            Ok(0) => return Ok(None),
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// The head of an answer once it is all in: `Some(Ok((code, head length,
/// Content-Length)))`, `Some(Err)` when it is not HTTP, `None` while more
/// is needed.
#[allow(clippy::type_complexity)]
fn parse_head(raw: &[u8]) -> Option<Result<(u16, usize, Option<usize>), String>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut answer = httparse::Response::new(&mut headers);
    let parsed = httparse::ParserConfig::default()
        .allow_spaces_after_header_name_in_responses(true)
        .allow_obsolete_multiline_headers_in_responses(true)
        .ignore_invalid_headers_in_responses(true)
        .parse_response(&mut answer, raw);
    match parsed {
        Ok(httparse::Status::Partial) => None,
        Err(e) => Some(Err(format!("the answer is not HTTP: {e}"))),
        Ok(httparse::Status::Complete(end)) => {
            let length = answer
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok())
                .and_then(|v| v.trim().parse::<usize>().ok());
            Some(
                answer
                    .code
                    .map(|code| (code, end, length))
                    .ok_or_else(|| "the answer has no status line".to_string()),
            )
        }
    }
}

/// The status code and body of an HTTP answer, whatever bytes it holds.
pub fn parse_answer(raw: &[u8]) -> Result<Answer, String> {
    match parse_head(raw) {
        None => Err("the answer has no header end".into()),
        Some(Err(e)) => Err(e),
        Some(Ok((code, end, _))) => Ok((code, String::from_utf8_lossy(&raw[end..]).into_owned())),
    }
}

/// Reads an answer: up to the end of its body when it has a
/// Content-Length (a server may keep the connection open even for
/// HTTP/1.0, as the Ray dashboard's aiohttp does), else to EOF.
pub fn read_answer(r: &mut impl Read) -> Result<Vec<u8>, String> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        if let Some(Ok((_, end, Some(n)))) = parse_head(&raw) {
            // A Content-Length near usize::MAX must not overflow.
            if raw.len() >= end.saturating_add(n) {
                raw.truncate(end + n);
                return Ok(raw);
            }
        }
        match r.read(&mut buf) {
            Ok(0) => return Ok(raw),
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_is_parsed_whatever_its_case_and_endings() {
        assert_eq!(
            parse_answer(
                b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\n\r\nnot ready"
            ),
            Ok((503, "not ready".to_string()))
        );
        assert_eq!(
            parse_answer(b"HTTP/1.0 200 OK\r\n\r\n"),
            Ok((200, String::new()))
        );
        assert!(parse_answer(b"HTTP/1.0 200 OK\r\n").is_err());
        assert!(parse_answer(b"garbage\r\n\r\n").is_err());
        assert!(parse_answer(b"").is_err());
        let mut r: &[u8] = b"HTTP/1.0 200 OK\r\nCONTENT-LENGTH: 3\r\n\r\nabcdef";
        assert_eq!(
            read_answer(&mut r).unwrap(),
            b"HTTP/1.0 200 OK\r\nCONTENT-LENGTH: 3\r\n\r\nabc"
        );
        let mut huge: &[u8] = b"HTTP/1.0 200 OK\r\nContent-Length: 18446744073709551615\r\n\r\nab";
        assert!(read_answer(&mut huge).unwrap().ends_with(b"ab"));
    }

    /// The status is read from the head alone: a server that keeps the
    /// connection open and never ends its body is not waited for.
    #[tokio::test]
    async fn a_status_needs_only_the_head() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut c, _) = listener.accept().await.unwrap();
            let mut req = [0u8; 1024];
            let _ = c.read(&mut req).await;
            c.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 1000\r\n\r\nx")
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
        });
        let got = tokio::time::timeout(
            Duration::from_secs(5),
            status_async("127.0.0.1", port, "/api/version", "rayhead"),
        )
        .await
        .expect("no wait for the body");
        assert_eq!(got, Ok(Some(404)));
        server.abort();
    }
}
