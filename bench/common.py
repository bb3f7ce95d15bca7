"""What the benchmarks share: paths, ports, the GCS health check, a head's
`ray start` command and env, a worker node, and finding Ray's processes."""
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request

import grpc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_BIN = os.path.join(ROOT, ".venv", "bin")
PY = os.path.join(VENV_BIN, "python")
RAYHEAD = os.path.join(ROOT, "target", "release", "rayhead")
TESTS_PY = os.path.join(ROOT, "tests", "py")
PASSWORD = "bench-secret"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class GcsHealth:
    """grpc.health.v1.Health/Check on one channel that reconnects every few
    milliseconds: cheaper and more exact than a new channel per check."""

    def __init__(self, port):
        self.ch = grpc.insecure_channel(
            f"127.0.0.1:{port}",
            options=[("grpc.initial_reconnect_backoff_ms", 5), ("grpc.min_reconnect_backoff_ms", 5),
                     ("grpc.max_reconnect_backoff_ms", 10)])
        self.check = self.ch.unary_unary("/grpc.health.v1.Health/Check",
                                         request_serializer=lambda x: x, response_deserializer=lambda x: x)

    def __call__(self):
        try:
            return self.check(b"", timeout=0.05) == b"\x08\x01"
        except grpc.RpcError:
            return False


def serving(port):
    """One check on a channel of its own; True when SERVING."""
    h = GcsHealth(port)
    try:
        return h()
    finally:
        h.ch.close()


def wait_serving(port, limit):
    deadline = time.time() + limit
    while time.time() < deadline:
        if serving(port):
            return time.time()
        time.sleep(0.002)
    raise SystemExit(f"GCS on {port} not SERVING within {limit}s")


def procs_with(marker, comm):
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip() != comm:
                    continue
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    out.append(int(pid))
        except OSError:
            pass
    return out


def head_cmd(tmp, name, gcs_port):
    p = [free_port() for _ in range(4)]
    return (f"ray start --head --block --port={gcs_port} --num-cpus=0 --node-ip-address=127.0.0.1 "
            f"--temp-dir={tmp}/{name} --dashboard-host=127.0.0.1 --dashboard-port={p[0]} "
            f"--dashboard-agent-listen-port={p[1]} --ray-client-server-port={p[2]} "
            f"--metrics-export-port={p[3]} --disable-usage-stats --redis-password=$REDIS_PASSWORD")


def manifest_env():
    """The head's and the worker's literal env from the shipped manifest."""
    out = subprocess.run([PY, os.path.join(TESTS_PY, "validate_manifests.py"), "--env",
                          os.path.join(ROOT, "config", "ray-cluster.rayhead.yaml")],
                         check=True, capture_output=True, text=True).stdout
    v = json.loads(out)
    return v["head"], v["workers"][0]


def env_for(redis_port, namespace):
    """A head's env (also given to its worker and drivers here): the shipped
    manifest's head container env, and what KubeRay sets."""
    env = dict(os.environ, **manifest_env()[0])
    env.update({
        "PATH": VENV_BIN + ":" + env.get("PATH", ""),
        "RAY_REDIS_ADDRESS": f"127.0.0.1:{redis_port}",
        "REDIS_PASSWORD": PASSWORD,
        "RAY_external_storage_namespace": namespace,
        "RAY_DISABLE_USAGE_STATS": "1",
    })
    return env


def start_worker(tmp, name, gcs_port, env):
    env = dict(env, RAY_gcs_rpc_server_reconnect_timeout_s="600")
    return subprocess.Popen(
        [os.path.join(VENV_BIN, "ray"), "start", "--block", f"--address=127.0.0.1:{gcs_port}",
         "--num-cpus=1", "--node-ip-address=127.0.0.1", f"--temp-dir={tmp}/{name}",
         f"--dashboard-agent-listen-port={free_port()}", f"--metrics-export-port={free_port()}",
         "--disable-usage-stats"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def stop_head(head, redis, tmp):
    """A benchmark's teardown: SIGTERM to the head's and Redis's groups, the
    head given 60 s before SIGKILL, then whatever still names `tmp`."""
    for p in (head, redis):
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    try:
        head.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)
    subprocess.run(["pkill", "-9", "-f", tmp])
    redis.kill()
    redis.wait()


def http_ok(url, timeout=0.5):
    """Whether `url` answers 200 within `timeout` s."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status == 200
    except Exception:
        return False


def wait_for(what, cond, limit, every=0.01):
    """The time at which `cond()` first holds; a RuntimeError after `limit` s."""
    deadline = time.time() + limit
    while time.time() < deadline:
        if cond():
            return time.time()
        time.sleep(every)
    raise RuntimeError(f"timed out waiting for {what}")
