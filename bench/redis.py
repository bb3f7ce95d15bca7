#!/usr/bin/env python3
"""Redis benchmark: rayhead's probe round trip, and cleanup throughput against
Ray's own cleanup (ray._private.gcs_utils.cleanup_redis_storage, which the
KubeRay cleanup Job runs), side by side on the same real redis-server.

  - probe: `rayhead redis-check --pings 10000`: median and p99 of PING over
    the kept, authenticated connection (what the supervising probe sends);
  - cleanup: 100,000 keys in the target namespace (plus 100,000 in another that
    must survive), deleted by each tool in turn; keys per second and the ratio.
Figures only. Usage: .venv/bin/python bench/redis.py  (after cargo build --release)
"""
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
from common import PASSWORD, RAYHEAD, free_port  # noqa: E402

KEYS = 100_000


def cli(port, *args):
    return subprocess.run(["redis-cli", "-p", str(port), *args], env=dict(os.environ, REDISCLI_AUTH=PASSWORD),
                          capture_output=True, text=True).stdout.strip()


def fill(port, ns):
    cli(port, "DEBUG", "POPULATE", str(KEYS), f"RAY{ns}@NODE")


def main():
    tmp = tempfile.mkdtemp(prefix="rayhead-bench-redis-")
    port = free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--requirepass", PASSWORD,
                              "--appendonly", "no", "--save", "", "--dir", tmp, "--enable-debug-command", "yes"],
                             stdout=subprocess.DEVNULL)
    env = dict(os.environ, RAY_REDIS_ADDRESS=f"127.0.0.1:{port}", REDIS_PASSWORD=PASSWORD, RAYHEAD_LOG="warn")
    try:
        while cli(port, "PING") != "PONG":
            time.sleep(0.05)
        out = subprocess.run([RAYHEAD, "redis-check", "--json", "--pings", "10000"], env=env,
                             capture_output=True, text=True)
        f = json.loads(out.stdout)
        fill(port, "other")
        results = {}
        for tool in ("rayhead", "python"):
            fill(port, "target")
            t = time.perf_counter()
            if tool == "rayhead":
                subprocess.run([RAYHEAD, "redis-cleanup"], env=dict(env, RAY_external_storage_namespace="target"),
                               check=True, capture_output=True)
            else:
                code = ("from ray._private.gcs_utils import cleanup_redis_storage as c; "
                        f"c('127.0.0.1', {port}, '{PASSWORD}', False, 'target')")
                subprocess.run([os.path.join(ROOT, ".venv", "bin", "python"), "-c", code], check=True,
                               capture_output=True)
            took = time.perf_counter() - t
            left = int(cli(port, "DBSIZE"))
            if left != KEYS:
                raise SystemExit(f"{tool}: {left} keys left, expected the other namespace's {KEYS}")
            results[tool] = took
    finally:
        redis.kill()
    print(f"\nprobe PING over the kept connection (10,000): p50 {f['ping_p50_seconds'] * 1e3:.3f} ms, "
          f"p99 {f['ping_p99_seconds'] * 1e3:.3f} ms")
    print(f"\ncleanup of {KEYS:,} keys (another {KEYS:,} kept), whole command including start-up:")
    for tool, took in results.items():
        name = {"rayhead": "rayhead redis-cleanup", "python": "ray cleanup_redis_storage"}[tool]
        print(f"  {name:<28} {took:.3f} s   {KEYS / took:,.0f} keys/s")
    print(f"  ratio: rayhead is {results['python'] / results['rayhead']:.1f}x the Python original's throughput")


if __name__ == "__main__":
    main()
