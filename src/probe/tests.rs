use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;
use crate::state::{ChildStatus, GcsHealth, Phase, Snapshot, State};

const STALL: Duration = Duration::from_secs(30);

struct Server {
    addr: std::net::SocketAddr,
    state: State,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

async fn start(redis: bool) -> Server {
    serving(Snapshot::ray_head(
        "127.0.0.1:6379".into(),
        redis.then(|| "redis://redis:6379".to_string()),
    ))
    .await
}

/// A server on a port-0 listener, answering from `snap`.
async fn serving(snap: Snapshot) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = State::new(snap);
    let stop = CancellationToken::new();
    let task = tokio::spawn(serve(
        Listener::Tcp(listener),
        state.subscribe(),
        STALL,
        stop.clone(),
    ));
    Server {
        addr,
        state,
        stop,
        task,
    }
}

impl Server {
    async fn raw(&self, request: &[u8]) -> String {
        self.raw_within(request, Duration::from_secs(10)).await
    }

    /// The whole reply to `request`: the server must end the connection
    /// (close or reset it) within `limit`. A reply cut short by a timeout
    /// is a failure, never an empty reply.
    async fn raw_within(&self, request: &[u8], limit: Duration) -> String {
        let mut s = TcpStream::connect(self.addr).await.unwrap();
        s.write_all(request).await.unwrap();
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        let ended = tokio::time::timeout(limit, async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) => return,
                    Ok(n) => out.extend_from_slice(&buf[..n]),
                    // A server that closes with unread input resets.
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
                    Err(e) => panic!("reading the reply: {e}"),
                }
            }
        })
        .await;
        let text = String::from_utf8_lossy(&out).into_owned();
        assert!(
            ended.is_ok(),
            "the server did not end the connection within {limit:?}; got {text:?}"
        );
        text
    }

    async fn req(&self, method: &str, path: &str) -> (u16, String) {
        let text = self
            .raw(
                format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await;
        let code = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = text.split_once("\r\n\r\n").map_or("", |b| b.1).to_string();
        (code, body)
    }

    fn running(&self) {
        self.state
            .set_child("raylet", Some(10), ChildStatus::Running, None, true);
        self.state
            .set_child("gcs_server", Some(11), ChildStatus::Running, None, true);
        self.state
            .set_child("dashboard", Some(12), ChildStatus::Running, None, false);
        self.state
            .set_gcs_health(GcsHealth::Serving, Some(Duration::from_millis(2)));
        self.state.update(|s| {
            if let Some(r) = &mut s.redis {
                r.up = Some(true);
                r.ping_seconds = Some(0.001);
            }
        });
        self.state.set_phase(Phase::Running, "test");
    }

    async fn stop(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }
}

#[tokio::test]
async fn readyz_follows_the_state() {
    let s = start(true).await;
    let (code, body) = s.req("GET", "/readyz").await;
    assert_eq!(code, 503);
    assert!(body.contains("phase is starting"), "{body}");
    assert!(body.contains("not probed yet"), "{body}");

    s.running();
    assert_eq!(s.req("GET", "/readyz").await, (200, "ok\n".into()));

    // Lost: 503 on the very next request.
    s.state.set_gcs_health(GcsHealth::Unreachable, None);
    s.state.set_phase(Phase::Recovering, "GCS lost");
    let (code, body) = s.req("GET", "/readyz").await;
    assert_eq!(code, 503);
    assert!(
        body.contains("phase is recovering") && body.contains("unreachable"),
        "{body}"
    );
    s.running();

    // Redis down.
    s.state.update(|st| {
        let r = st.redis.as_mut().unwrap();
        r.up = Some(false);
        r.last_error = Some("connection refused".into());
    });
    let (code, body) = s.req("GET", "/readyz").await;
    assert_eq!(code, 503);
    assert_eq!(
        body,
        "Redis at redis://redis:6379 is down: connection refused\n"
    );

    let (code, body) = s.req("GET", "/readyz?verbose").await;
    assert_eq!(code, 503);
    assert!(
        body.contains("[+] phase ok") && body.contains("[-] redis failed"),
        "{body}"
    );
    s.stop().await;
}

/// Readiness needs every process the supervisor marked required running,
/// and no other.
#[tokio::test]
async fn readyz_needs_the_required_processes_only() {
    let s = start(true).await;
    s.running();
    s.state.set_child(
        "dashboard",
        None,
        ChildStatus::Exited,
        Some("exited with code 1".into()),
        false,
    );
    assert_eq!(
        s.req("GET", "/readyz").await.0,
        200,
        "the dashboard is not required"
    );
    s.state.set_child(
        "raylet",
        None,
        ChildStatus::Exited,
        Some("was killed by SIGKILL".into()),
        true,
    );
    let (code, body) = s.req("GET", "/readyz").await;
    assert_eq!((code, body.as_str()), (503, "raylet is exited\n"));
    s.state
        .set_child("raylet", Some(13), ChildStatus::Restarting, None, true);
    let (code, body) = s.req("GET", "/readyz?verbose").await;
    assert_eq!(code, 503);
    assert!(
        body.contains("[-] raylet failed: raylet is restarting"),
        "{body}"
    );
    s.stop().await;
}

/// A required daemon failing its checks costs readiness only after its
/// threshold, with the reason; /status and /metrics show its health.
#[tokio::test]
async fn readiness_follows_daemon_health_past_its_threshold() {
    let s = start(true).await;
    s.running();
    let fail = |ago: Duration| {
        s.state.update(|st| {
            let d = st.daemons.get_mut("raylet").unwrap();
            d.healthy = Some(false);
            d.health = Some("stopped (SIGSTOP, or a debugger)".into());
            d.unhealthy_at = Some(Instant::now() - ago);
            d.unready_after = Duration::from_secs(10);
        })
    };
    fail(Duration::from_secs(3));
    assert_eq!(s.req("GET", "/readyz").await.0, 200, "within the threshold");
    fail(Duration::from_secs(12));
    let (code, body) = s.req("GET", "/readyz").await;
    assert_eq!(code, 503);
    assert!(
        body.starts_with("raylet has failed its health checks for 12.")
            && body.contains("stopped (SIGSTOP"),
        "{body}"
    );
    let (_, v) = s.req("GET", "/status").await;
    let v: serde_json::Value = serde_json::from_str(&v).unwrap();
    assert_eq!(v["daemons"]["raylet"]["healthy"], false, "{v:#}");
    assert_eq!(v["ready"], false);
    let (_, m) = s.req("GET", "/metrics").await;
    assert!(
        m.contains("rayhead_daemon_healthy{daemon=\"raylet\"} 0"),
        "{m}"
    );
    s.stop().await;
}

/// A plain command: ready while it runs and no stop is under way; no GCS
/// or Redis anywhere.
#[tokio::test]
async fn a_plain_command_is_ready_while_it_runs() {
    let s = serving(Snapshot::command()).await;
    assert_eq!(s.req("GET", "/readyz").await.0, 503);
    s.state
        .set_child("command", Some(5), ChildStatus::Running, None, true);
    s.state.set_phase(Phase::Running, "the command runs");
    assert_eq!(s.req("GET", "/readyz").await, (200, "ok\n".into()));
    let (_, body) = s.req("GET", "/status").await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["supervising"], "command");
    assert!(v["gcs"].is_null() && v["redis"].is_null(), "{v:#}");
    let (_, metrics) = s.req("GET", "/metrics").await;
    assert!(!metrics.contains("rayhead_gcs_up"), "{metrics}");
    assert!(
        metrics.contains("rayhead_daemon_up{daemon=\"command\"} 1"),
        "{metrics}"
    );
    s.state.set_phase(Phase::Stopping, "received SIGTERM");
    assert_eq!(s.req("GET", "/readyz").await.0, 503);
    assert_eq!(s.req("GET", "/livez").await.0, 200);
    s.stop().await;
}

#[tokio::test]
async fn livez_ignores_the_gcs_but_not_an_exit() {
    let s = start(false).await;
    s.state.set_gcs_health(GcsHealth::Unreachable, None);
    s.state.set_phase(Phase::Recovering, "GCS lost");
    assert_eq!(
        s.req("GET", "/livez").await.0,
        200,
        "a GCS outage is rayhead's to fix"
    );
    s.state.update(|st| st.heartbeat -= Duration::from_secs(31));
    let (code, body) = s.req("GET", "/livez").await;
    assert_eq!(code, 503);
    assert!(body.contains("heartbeat"), "{body}");
    s.state.beat(0);
    s.state
        .set_phase(Phase::Exiting, "GCS not recovered in time");
    let (code, body) = s.req("GET", "/livez").await;
    assert_eq!(code, 503);
    assert!(body.contains("GCS not recovered in time"), "{body}");
    s.stop().await;
}

#[tokio::test]
async fn status_is_json_without_secrets() {
    let s = start(true).await;
    s.running();
    let (code, body) = s.req("GET", "/status").await;
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["phase"], "running");
    assert_eq!(v["ready"], true);
    assert_eq!(v["daemons"]["raylet"]["pid"], 10);
    assert_eq!(v["gcs"]["health"], "serving");
    assert_eq!(v["redis"]["address"], "redis://redis:6379");
    assert!(v["uptime_seconds"].is_number());
    assert!(v["started_at"].as_str().unwrap().ends_with('Z'));
    s.stop().await;
}

#[tokio::test]
async fn metrics_cover_the_state() {
    let s = start(true).await;
    s.running();
    s.state.update(|st| {
        st.gcs.as_mut().unwrap().restarts = 2;
        st.recoveries = vec![0.08, 0.3];
    });
    let (code, body) = s.req("GET", "/metrics").await;
    assert_eq!(code, 200);
    for want in [
        "rayhead_gcs_up 1",
        "rayhead_gcs_restarts_total 2",
        "rayhead_gcs_recovery_seconds_count 2",
        "rayhead_gcs_health_check_seconds 0.002",
        "rayhead_redis_up 1",
        "rayhead_redis_ping_seconds 0.001",
        "rayhead_phase{phase=\"running\"} 1",
        "rayhead_phase{phase=\"recovering\"} 0",
        "rayhead_daemon_up{daemon=\"raylet\"} 1",
        "rayhead_build_info{version=",
    ] {
        assert!(body.contains(want), "missing {want}:\n{body}");
    }
    assert!(
        !body.contains("rayhead_daemon_restarts_total"),
        "no restarts yet:\n{body}"
    );
    // Down, and a daemon restarted twice: the zeroes and the counts.
    s.state.update(|st| {
        st.redis.as_mut().unwrap().up = Some(false);
        st.daemons.get_mut("dashboard").unwrap().restarts = 2;
    });
    s.state.set_gcs_health(GcsHealth::NotServing, None);
    let (_, body) = s.req("GET", "/metrics").await;
    for want in [
        "rayhead_gcs_up 0",
        "rayhead_redis_up 0",
        "rayhead_daemon_restarts_total{daemon=\"dashboard\"} 2",
    ] {
        assert!(body.contains(want), "missing {want}:\n{body}");
    }
    assert!(
        !body.contains("rayhead_daemon_restarts_total{daemon=\"raylet\"}"),
        "{body}"
    );
    s.stop().await;
}

#[tokio::test]
async fn head_404_and_405() {
    let s = start(false).await;
    let text = s
        .raw(b"HEAD /livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("content-length: 3"), "{text}");
    assert!(text.ends_with("\r\n\r\n"), "HEAD has no body: {text:?}");
    assert_eq!(s.req("GET", "/nope").await.0, 404);
    // Only the four paths: a near miss is not the metrics.
    for near in ["/metricsx", "/metrics/", "/readyz/x", "/"] {
        let (code, body) = s.req("GET", near).await;
        assert_eq!(code, 404, "{near}: {body}");
        assert!(
            body.contains("/readyz, /livez, /status, /metrics"),
            "{body}"
        );
    }
    let text = s
        .raw(b"POST /readyz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .await;
    assert!(text.starts_with("HTTP/1.1 405"), "{text}");
    assert!(text.contains("allow: GET, HEAD"), "{text}");
    s.stop().await;
}

#[tokio::test]
async fn garbage_slow_and_oversized_clients_do_not_hurt() {
    let s = start(false).await;
    // Rejected at once, not by the header timeout: the reply (a 400, or
    // nothing where the close resets) ends well before it.
    let text = s
        .raw_within(b"\x00\x01garbage garbage\r\n\r\n", HEADER_TIMEOUT / 2)
        .await;
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 400"),
        "{text:?}"
    );

    let big = format!(
        "GET /livez HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let text = s.raw_within(big.as_bytes(), HEADER_TIMEOUT / 2).await;
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 431"),
        "{text:?}"
    );

    // A client that sends half a request and waits is cut off after the
    // header timeout, while others are answered meanwhile.
    let mut slow = TcpStream::connect(s.addr).await.unwrap();
    slow.write_all(b"GET /livez HTTP/1.1\r\nHo").await.unwrap();
    assert_eq!(s.req("GET", "/livez").await.0, 200);
    let mut buf = Vec::new();
    let read = tokio::time::timeout(HEADER_TIMEOUT * 3, slow.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the slow client was never cut off");
    assert_eq!(s.req("GET", "/livez").await.0, 200);
    s.stop().await;
}

mod socket_place {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::path::Path;

    use super::super::socket::*;
    use super::super::{bind_socket, client};
    use crate::config::SocketSetting;

    fn me() -> u32 {
        nix::unistd::geteuid().as_raw()
    }

    fn at(path: &Path) -> SocketPlace {
        SocketPlace::resolve(&SocketSetting::At(path.into()), None, me()).unwrap()
    }

    fn chown(path: &Path, uid: u32) {
        std::os::unix::fs::lchown(path, Some(uid), Some(uid)).unwrap();
    }

    #[test]
    fn auto_is_in_rayheads_own_directory() {
        let auto = SocketSetting::Auto { port: 8099 };
        let p = SocketPlace::resolve(&auto, Some("/run/user/1000".into()), 1000).unwrap();
        assert_eq!(p.path, Path::new("/run/user/1000/rayhead/probe-8099.sock"));
        assert_eq!(
            p.own_dir.as_deref(),
            Some(Path::new("/run/user/1000/rayhead"))
        );
        for xdg in [None, Some("".into()), Some("relative/dir".into())] {
            let p = SocketPlace::resolve(&auto, xdg, 1000).unwrap();
            assert_eq!(p.path, Path::new("/tmp/rayhead-1000/probe-8099.sock"));
        }
        assert_eq!(SocketPlace::resolve(&SocketSetting::Off, None, 0), None);
        assert_eq!(at(Path::new("/x.sock")).own_dir, None);
    }

    /// The directory is made 0700 whatever the umask, and a second
    /// rayhead (or `rayhead probe`) accepts it.
    #[test]
    fn the_own_directory_is_made_0700() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("rayhead");
        make_own_dir(&dir, me()).unwrap();
        let meta = std::fs::metadata(&dir).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o700);
        make_own_dir(&dir, me()).unwrap();
        check_own_dir(&dir, me()).unwrap();
    }

    /// Another user's directory, one of ours open to others, and a
    /// symlink to one of ours are each refused with a reason; the socket
    /// is not served there, and `rayhead probe` believes nothing there.
    #[test]
    fn a_directory_others_could_fill_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let theirs = tmp.path().join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o700)).unwrap();
        let open = tmp.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let link = tmp.path().join("link");
        let ours = tmp.path().join("ours");
        make_own_dir(&ours, me()).unwrap();
        std::os::unix::fs::symlink(&ours, &link).unwrap();
        let cases: Vec<(&Path, &str)> = if me() == 0 {
            chown(&theirs, 65534);
            vec![
                (&theirs, "owned by uid 65534"),
                (&open, "mode 0777"),
                (&link, "not a directory"),
            ]
        } else {
            vec![(&open, "mode 0777"), (&link, "not a directory")]
        };
        for (dir, why) in cases {
            let e = make_own_dir(dir, me()).unwrap_err().to_string();
            assert!(
                e.contains(why) && e.contains(&*dir.to_string_lossy()),
                "{e}"
            );
            let place = SocketPlace {
                path: dir.join("probe-1.sock"),
                own_dir: Some(dir.to_path_buf()),
            };
            let e = bind_socket(&place).unwrap_err().to_string();
            assert!(e.contains(why), "{e}");
            let (ok, text) = client::query_socket(&place, "/livez").expect("fails closed");
            assert!(!ok && text.contains(why), "{text}");
        }
        // Nothing was served in the open one.
        assert!(!open.join("probe-1.sock").exists());
    }

    /// A mis-set probe.socket naming a file, or a symlink planted at the
    /// path: neither is deleted, and the error names the path and why.
    #[tokio::test]
    async fn a_squatted_path_is_not_deleted() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("precious.txt");
        std::fs::write(&file, "data").unwrap();
        let e = bind_socket(&at(&file)).unwrap_err().to_string();
        assert!(
            e.contains("a file is in the way") && e.contains("precious.txt"),
            "{e}"
        );
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "data");
        let link = tmp.path().join("link.sock");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        let e = bind_socket(&at(&link)).unwrap_err().to_string();
        assert!(e.contains("a symlink"), "{e}");
        assert!(std::fs::symlink_metadata(&link).is_ok());
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "data");
    }

    /// A stale socket of ours is replaced; a live one is another
    /// rayhead's; another user's socket is never replaced.
    #[tokio::test]
    async fn only_a_stale_socket_of_ours_is_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("probe.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let (live, bound) = bind_socket(&at(&path)).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        let e = bind_socket(&at(&path)).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse, "{e}");
        drop(live);
        if me() == 0 {
            chown(&path, 65534);
            let e = bind_socket(&at(&path)).unwrap_err().to_string();
            assert!(e.contains("owned by uid 65534"), "{e}");
            assert!(path.exists());
            chown(&path, 0);
        }
        // The exit removes the socket bound, but not a file or another
        // user's socket put there since.
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, "not a socket").unwrap();
        let bound_again = bound;
        bound_again.remove();
        assert!(path.exists(), "a file was removed");
        std::fs::remove_file(&path).unwrap();
        let (_l, bound) = bind_socket(&at(&path)).unwrap();
        if me() == 0 {
            chown(&path, 65534);
            let (dev, ino) = {
                let m = std::fs::metadata(&path).unwrap();
                (m.dev(), m.ino())
            };
            assert!(dev > 0 && ino > 0);
            // Same inode, another owner: not ours any more.
            let probe_bound = Bound::record(&path);
            assert!(probe_bound.is_ok());
            bound.remove();
            assert!(path.exists(), "another user's socket was removed");
            chown(&path, 0);
            probe_bound.unwrap().remove();
            assert!(!path.exists());
            return;
        }
        bound.remove();
        assert!(!path.exists());
    }

    /// Nothing serves the socket: the caller falls back to probe.listen.
    #[test]
    fn an_unserved_socket_falls_back() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(client::query_socket(&at(&tmp.path().join("none.sock")), "/livez").is_none());
        let auto = SocketPlace {
            path: tmp.path().join("missing/probe-1.sock"),
            own_dir: Some(tmp.path().join("missing")),
        };
        assert!(client::query_socket(&auto, "/livez").is_none());
    }
}
