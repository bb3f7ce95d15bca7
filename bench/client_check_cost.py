#!/usr/bin/env python3
"""The steady-state cost of Ray's client check interval.

rayhead exports RAY_grpc_client_check_connection_status_interval_milliseconds
(100 ms by default; Ray's own default is 1000). Ray's GCS clients run that
check only while calls to the GCS are failing, so in steady state it should
cost nothing. This measures it: a head under rayhead plus a worker node, idle
(the detached counter created, nothing running), for each interval in turn,
interleaved, `--rounds` times; after a settling time it sums the CPU time
(utime + stime from /proc) of every Ray process of both nodes over
`--seconds`, and reports the CPU used as a percentage of one core.
Figures only. Usage: .venv/bin/python bench/client_check_cost.py
"""
import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import PASSWORD, RAYHEAD, ROOT, VENV_BIN, free_port  # noqa: E402

VAR = "RAY_grpc_client_check_connection_status_interval_milliseconds"
TICK = os.sysconf("SC_CLK_TCK")


def descendants(roots):
    children = {}
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(pid))
            except OSError:
                pass
    out, todo = [], list(roots)
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_ticks(pids):
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except OSError:
            pass
    return total


def measure(interval_ms, seconds, settle, tmp, redis_port, n):
    gcs = free_port()
    probe = free_port()
    env = dict(os.environ, PATH=VENV_BIN + ":" + os.environ.get("PATH", ""),
               RAY_REDIS_ADDRESS=f"127.0.0.1:{redis_port}", REDIS_PASSWORD=PASSWORD,
               RAY_external_storage_namespace=f"cost-{n}", RAY_DISABLE_USAGE_STATS="1",
               RAYHEAD_PROBE_LISTEN=f"127.0.0.1:{probe}",
               RAYHEAD_PROBE_SOCKET=os.path.join(tmp, f"probe-{n}.sock"))
    env[VAR] = str(interval_ms)
    head_dir = os.path.join(tmp, f"head-{n}")
    env["KUBERAY_GEN_RAY_START_CMD"] = (
        f"ray start --head --port={gcs} --num-cpus=0 --node-ip-address=127.0.0.1 "
        f"--temp-dir={head_dir} --dashboard-host=127.0.0.1 --dashboard-port={free_port()} "
        f"--dashboard-agent-listen-port={free_port()} --ray-client-server-port={free_port()} "
        f"--metrics-export-port={free_port()} --disable-usage-stats --redis-password=$REDIS_PASSWORD")
    head = subprocess.Popen([RAYHEAD, "run"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    worker = None
    try:
        deadline = time.time() + 180
        while subprocess.run([VENV_BIN + "/python", "-c",
                              "import urllib.request,sys;"
                              f"urllib.request.urlopen('http://127.0.0.1:{probe}/readyz',timeout=1)"],
                             capture_output=True).returncode != 0:
            if time.time() > deadline:
                raise SystemExit("the head did not become ready")
            time.sleep(1)
        worker = subprocess.Popen(
            [VENV_BIN + "/ray", "start", "--block", f"--address=127.0.0.1:{gcs}", "--num-cpus=1",
             "--node-ip-address=127.0.0.1", f"--temp-dir={tmp}/worker-{n}",
             f"--dashboard-agent-listen-port={free_port()}", f"--metrics-export-port={free_port()}",
             "--disable-usage-stats"],
            env=dict(env, RAY_gcs_rpc_server_reconnect_timeout_s="600"),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        subprocess.run([VENV_BIN + "/python", os.path.join(ROOT, "examples", "detached_actor.py")],
                       env=dict(env, RAY_ADDRESS=f"127.0.0.1:{gcs}"), check=True, capture_output=True,
                       timeout=180)
        time.sleep(settle)
        roots = [head.pid, worker.pid]
        t0, c0 = time.time(), cpu_ticks(descendants(roots))
        time.sleep(seconds)
        t1, c1 = time.time(), cpu_ticks(descendants(roots))
        return (c1 - c0) / TICK / (t1 - t0) * 100
    finally:
        for p in (worker, head):
            if p and p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                try:
                    p.wait(60)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
        subprocess.run(["pkill", "-9", "-f", tmp])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--settle", type=float, default=20)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="rayhead-cost-")
    redis_port = free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
                              "--requirepass", PASSWORD, "--save", "", "--dir", tmp],
                             stdout=subprocess.DEVNULL, start_new_session=True)
    results = {1000: [], 100: []}
    try:
        time.sleep(0.5)
        n = 0
        for _ in range(args.rounds):
            for ms in (1000, 100):
                n += 1
                pct = measure(ms, args.seconds, args.settle, tmp, redis_port, n)
                results[ms].append(pct)
                print(f"  {ms} ms: {pct:.2f} % of a core", file=sys.stderr, flush=True)
    finally:
        os.killpg(redis.pid, signal.SIGKILL)
    print(f"Idle head (under rayhead) plus a worker node, every Ray process's CPU over {args.seconds:.0f} s "
          f"after {args.settle:.0f} s of settling, {args.rounds} rounds interleaved:\n")
    print(f"| {VAR} | CPU, % of one core, per round | median |")
    print("|---|---|---|")
    for ms, xs in results.items():
        print(f"| {ms} | {', '.join(f'{x:.2f}' for x in xs)} | {statistics.median(xs):.2f} |")


if __name__ == "__main__":
    main()
