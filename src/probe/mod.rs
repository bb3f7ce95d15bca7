//! The probe server: `/readyz`, `/livez`, `/status` and `/metrics` over
//! HTTP/1, for Kubernetes' httpGet probes and for Prometheus.
//!
//! It takes its listener and its shutdown signal as arguments (tests bind
//! port 0), and answers from the supervisor's state snapshot without any
//! I/O. A slow or garbage client is bounded: headers must arrive within
//! [`HEADER_TIMEOUT`] and fit in [`MAX_HEADER_BYTES`], a connection lives at
//! most [`CONNECTION_LIFETIME`], at most [`MAX_CONNECTIONS`] are served at
//! once, and at most [`MAX_PER_PEER`] per TCP peer. The same routes are
//! served on a Unix socket for `rayhead probe`, which no flood can reach.

pub mod client;
mod metrics;
pub mod routes;
pub mod socket;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{watch, Semaphore};
use tokio::time::{sleep, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::state::Snapshot;
use socket::SocketPlace;

pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
pub const MAX_CONNECTIONS: usize = 128;

/// Where the probes are served.
pub enum Listener {
    /// `probe.listen`: the kubelet's httpGet probes and Prometheus.
    Tcp(TcpListener),
    /// `probe.socket`: `rayhead probe`'s exec probes. No network peer can
    /// reach it, so no flood can crowd them out.
    Unix(UnixListener),
}

/// The most connections one TCP peer may hold at once: a flood from one pod
/// can never take the slots that the kubelet and Prometheus need.
pub const MAX_PER_PEER: usize = 8;

/// Serves until `shutdown`, then lets open connections finish briefly.
pub async fn serve(
    listener: Listener,
    state: watch::Receiver<Snapshot>,
    stall_after: Duration,
    shutdown: CancellationToken,
) {
    let tracker = TaskTracker::new();
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let peers = Peers::default();
    loop {
        let accepted = tokio::select! {
            a = accept(&listener, &peers) => a,
            _ = shutdown.cancelled() => break,
        };
        let (io, peer) = match accepted {
            Ok(Some(a)) => a,
            // One peer over its share: closed at once.
            Ok(None) => continue,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "probe server cannot accept");
                sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            // Full: close at once rather than queue.
            drop(io);
            continue;
        };
        let state = state.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            match io {
                Io::Tcp(s) => connection(s, state, stall_after, shutdown).await,
                Io::Unix(s) => connection(s, state, stall_after, shutdown).await,
            }
            drop(permit);
            drop(peer);
        });
    }
    tracker.close();
    tracker.wait().await;
}

enum Io {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// Open connections per TCP peer address.
#[derive(Clone, Default)]
struct Peers(Arc<Mutex<HashMap<IpAddr, usize>>>);

/// One peer's hold on a connection; released when dropped.
struct PeerSlot {
    peers: Peers,
    ip: IpAddr,
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut map = self.peers.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

impl Peers {
    fn take(&self, ip: IpAddr) -> Option<PeerSlot> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= MAX_PER_PEER {
            return None;
        }
        *n += 1;
        Some(PeerSlot {
            peers: self.clone(),
            ip,
        })
    }
}

/// The next connection, or `None` when its TCP peer has its share already.
async fn accept(
    listener: &Listener,
    peers: &Peers,
) -> std::io::Result<Option<(Io, Option<PeerSlot>)>> {
    match listener {
        Listener::Tcp(l) => {
            let (s, addr) = l.accept().await?;
            let Some(slot) = peers.take(addr.ip()) else {
                return Ok(None);
            };
            let _ = s.set_nodelay(true);
            Ok(Some((Io::Tcp(s), Some(slot))))
        }
        Listener::Unix(l) => {
            let (s, _) = l.accept().await?;
            Ok(Some((Io::Unix(s), None)))
        }
    }
}

/// Serves one connection, bounded in time.
async fn connection<S>(
    stream: S,
    state: watch::Receiver<Snapshot>,
    stall_after: Duration,
    shutdown: CancellationToken,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let reply = {
            let snap = state.borrow();
            let target = req
                .uri()
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_string();
            routes::route(
                req.method().as_str(),
                &target,
                &snap,
                Instant::now(),
                stall_after,
            )
        };
        let head = req.method() == hyper::Method::HEAD;
        async move { Ok::<_, Infallible>(respond(reply, head)) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_HEADER_BYTES);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = sleep(CONNECTION_LIFETIME) => {}
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(1), conn).await;
        }
    }
}

/// Binds `probe.socket`: rayhead's own directory is made (or checked)
/// first; a stale socket of this user's (a rayhead that died) is replaced;
/// one that answers belongs to another rayhead, and anything else in the
/// way (a file, a symlink, another user's socket) is left alone: both are
/// errors that name the path.
pub fn bind_socket(place: &SocketPlace) -> std::io::Result<(UnixListener, socket::Bound)> {
    let uid = nix::unistd::geteuid().as_raw();
    if let Some(dir) = &place.own_dir {
        socket::make_own_dir(dir, uid)?;
    }
    // A local connect is answered or refused at once: no need to await.
    socket::clear_stale(&place.path, uid, || {
        std::os::unix::net::UnixStream::connect(&place.path).is_ok()
    })?;
    let listener = UnixListener::bind(&place.path)?;
    let bound = socket::Bound::record(&place.path)?;
    Ok((listener, bound))
}

fn respond(reply: routes::Reply, head: bool) -> Response<Full<Bytes>> {
    let len = reply.body.len();
    let body = if head {
        Full::new(Bytes::new())
    } else {
        Full::new(Bytes::from(reply.body))
    };
    let mut resp = Response::new(body);
    *resp.status_mut() =
        StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(reply.content_type));
    h.insert(CONTENT_LENGTH, HeaderValue::from(len));
    if let Some(allow) = reply.allow {
        h.insert(ALLOW, HeaderValue::from_static(allow));
    }
    resp
}

#[cfg(test)]
mod tests;
