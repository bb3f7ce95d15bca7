#!/usr/bin/env python3
"""GCS recovery on Redis against RocksDB, as the GCS's state grows.

Two Ray heads run side by side on loopback, each supervised by
`target/release/rayhead run` with the shipped manifest's head env:
  (A) Redis: a real redis-server (password, AOF) on a free port;
  (B) RocksDB: RAY_gcs_storage=rocksdb, RAY_gcs_storage_path=<tmp dir>.
Each head has 1 CPU, a detached named actor and one connected driver. Cells, in
this order and cumulative on the same heads: 0 internal-KV entries, then the KV
filled (keys of 16 bytes, values of 100 bytes, through the GCS client, in
batches) to each further --kv size, then --pgs detached placement groups
(one {"CPU": 0.001} bundle each, created and ready) on top of the largest KV.
In every cell, --kills times, A then B (interleaved), gcs_server is SIGKILLed
and the benchmark records, from the kill:
  exec      rayhead's `daemon_started` event (the new gcs_server spawned);
  main      gcs_server's first log line (its main() runs);
  load      gcs_server's "Loading job table data." (storage opened/connected);
  loaded    its last "Finished loading ... table data" (the GCS tables read);
  listening "GcsServer server started, listening on port";
  serving   grpc.health.v1 Check answers SERVING (polled every ~5 ms);
  recovered rayhead's `gcs_recovered` event;
  driver    the connected driver's next GCS-dependent round done (an
            internal-KV read and ray.get_actor, retried until both succeed).
The log marks come from <temp-dir>/session_latest/logs/gcs_server.out (ms
resolution). For RocksDB the database's size on disk (`du`) is recorded per
cell, and for Redis the AOF's.

Prints a Markdown section for BENCHMARKS.md; raw samples go to
bench/storage.csv. Ray processes are stopped without `ray stop` (rayhead's
stop command is `true`; then its TERM/KILL of its descendants), and anything
left with this run's marker in its environment is SIGKILLed by pid.
Usage: .venv/bin/python bench/storage.py [--kills 3] [--kv 0,50000,200000] [--pgs 500]
"""
import argparse
import asyncio
import csv
import datetime
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (PASSWORD, PY, RAYHEAD, ROOT, VENV_BIN, GcsHealth, free_port,  # noqa: E402
                    http_ok, manifest_env, procs_with, wait_for)

LIMIT = 120.0
MARKER_VAR = "RAYHEAD_BENCH_STORAGE_RUN"
ACTOR = "bench_storage_actor"
KEY = b"bench-storage-key"
KV_NS = b"bench"


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# ---- helpers run as subprocesses (drivers of the measured heads) ----

def sub_setup(addr):
    import ray
    from ray.experimental import internal_kv

    @ray.remote(num_cpus=0)
    class Holder:
        def ping(self):
            return 1

    ray.init(address=addr, namespace="bench", logging_level="ERROR")
    h = Holder.options(name=ACTOR, lifetime="detached").remote()
    ray.get(h.ping.remote(), timeout=120)
    internal_kv._internal_kv_put(KEY, b"kept")


def sub_driver(addr):
    """Stays connected; each stdin line asks for one round, printed as
    ROUND <end, Unix seconds> <tries>."""
    import ray
    from ray.experimental import internal_kv
    ray.init(address=addr, namespace="bench", logging_level="ERROR")
    ray.get_actor(ACTOR)
    internal_kv._internal_kv_get(KEY)
    print("READY", flush=True)
    for _ in sys.stdin:
        t, tries = time.time(), 0
        while True:
            tries += 1
            try:
                if internal_kv._internal_kv_get(KEY) != b"kept":
                    raise RuntimeError("internal KV lost")
                ray.get_actor(ACTOR)
                break
            except Exception as e:
                if time.time() - t > 60:
                    print("FAILED", repr(e), flush=True)
                    sys.exit(1)
                time.sleep(0.01)
        print("ROUND", f"{time.time():.6f}", tries, flush=True)


def sub_fill(addr, start, end):
    from ray._raylet import GcsClient
    gcs = GcsClient(address=addr)
    value = b"v" * 100

    async def run():
        batch = 2000
        for i in range(start, end, batch):
            futs = [gcs.async_internal_kv_put(b"bench-kv-%07d" % j, value, True, KV_NS, 60)
                    for j in range(i, min(i + batch, end))]
            await asyncio.gather(*[asyncio.wrap_future(f) if not asyncio.isfuture(f) else f
                                   for f in futs])
    asyncio.run(run())
    got = gcs.internal_kv_keys(b"bench-kv-", KV_NS)
    print(len(got))


def sub_pgs(addr, n):
    import ray
    from ray.util.placement_group import placement_group
    ray.init(address=addr, namespace="bench", logging_level="ERROR")
    pgs = [placement_group([{"CPU": 0.001}], strategy="PACK", lifetime="detached",
                           name=f"bench-pg-{i}") for i in range(n)]
    for pg in pgs:
        if not pg.wait(120):
            raise SystemExit("a placement group was not ready within 120 s")
    print(len(pgs))


# ---- the benchmark ----





def du(path):
    out = subprocess.run(["du", "-sb", path], capture_output=True, text=True).stdout
    return int(out.split()[0]) if out else None


GCS_LINE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def gcs_marks(text):
    """Times (Unix seconds, ms resolution) of the start-up marks in one
    gcs_server run's log lines."""
    marks = {}
    for line in text.splitlines():
        m = GCS_LINE.match(line)
        if not m:
            continue
        t = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        if "Ray cluster metadata" in line and "main" not in marks:
            marks["main"] = t
        elif "Loading job table data" in line and "load" not in marks:
            marks["load"] = t
        elif "Finished loading" in line and "listening" not in marks:
            marks["loaded"] = t
        elif "listening on port" in line and "listening" not in marks:
            marks["listening"] = t
    return marks


class Head:
    def __init__(self, backend, tmp):
        self.backend, self.tmp, self.procs, self.head = backend, tmp, [], None

    def start(self, head_env, run_marker):
        backend, tmp = self.backend, self.tmp
        self.gcs_port, self.probe_port = free_port(), free_port()
        self.addr = f"127.0.0.1:{self.gcs_port}"
        # Short: Ray's socket paths under it must fit in 107 bytes.
        self.temp_dir = os.path.join(tmp, "ray")
        env = dict(os.environ)
        for k in list(env):
            if k.startswith(("RAY_", "RAYHEAD_")) or k in ("REDIS_PASSWORD", "KUBERAY_GEN_RAY_START_CMD"):
                del env[k]
        env.update(head_env)
        env.update({"PATH": VENV_BIN + ":" + env.get("PATH", ""), "RAY_DISABLE_USAGE_STATS": "1",
                    MARKER_VAR: run_marker})
        cmd = (f"ray start --head --block --port={self.gcs_port} --num-cpus=1 "
               f"--node-ip-address=127.0.0.1 --temp-dir={self.temp_dir} --dashboard-host=127.0.0.1 "
               f"--dashboard-port={free_port()} --dashboard-agent-listen-port={free_port()} "
               f"--ray-client-server-port={free_port()} --metrics-export-port={free_port()} "
               f"--disable-usage-stats")
        if backend == "redis":
            self.redis_dir = os.path.join(tmp, "redis")
            os.makedirs(self.redis_dir)
            redis_port = free_port()
            self.spawn(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
                        "--requirepass", PASSWORD, "--appendonly", "yes", "--save", "",
                        "--dir", self.redis_dir], env, os.path.join(tmp, "redis.log"))
            env.update({"RAY_REDIS_ADDRESS": f"127.0.0.1:{redis_port}", "REDIS_PASSWORD": PASSWORD,
                        "RAY_external_storage_namespace": "bench-storage"})
            cmd += " --redis-password=$REDIS_PASSWORD"
            time.sleep(0.5)
        else:
            self.db = os.path.join(tmp, "rocksdb-gcs")
            os.makedirs(self.db)
            env.update({"RAY_gcs_storage": "rocksdb", "RAY_gcs_storage_path": self.db})
        self.env = env
        self.log = os.path.join(tmp, f"{backend}-rayhead.log")
        self.head = self.spawn([RAYHEAD, "--log-format", "json", "run"],
                               dict(env, KUBERAY_GEN_RAY_START_CMD=cmd,
                                    RAYHEAD_PROBE_LISTEN=f"127.0.0.1:{self.probe_port}",
                                    RAYHEAD_PROBE_SOCKET=os.path.join(tmp, f"{backend}-probe.sock"),
                                    RAYHEAD_INIT_STOP_COMMAND="true",
                                    RAYHEAD_INIT_STOP_GRACE="5s"),
                               self.log)
        self.wait_ready()
        self.helper(["--setup", self.addr])
        self.driver = subprocess.Popen([PY, __file__, "--driver", self.addr], env=env,
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       stderr=open(os.path.join(tmp, f"{backend}-driver.err"), "a"),
                                       text=True, start_new_session=True)
        self.procs.append(self.driver)
        line = self.driver.stdout.readline()
        if not line.startswith("READY"):
            raise RuntimeError(f"({backend}) the driver failed: {line!r}")
        self.health = GcsHealth(self.gcs_port)

    def spawn(self, argv, env, out):
        p = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=open(out, "a"),
                             stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(p)
        return p

    def helper(self, args, timeout=900):
        r = subprocess.run([PY, __file__] + args, env=self.env, capture_output=True, text=True,
                           timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError(f"({self.backend}) {args[0]} failed: {r.stderr[-2000:]}")
        return r.stdout.strip()

    def wait_ready(self):
        def ready():
            if self.head.poll() is not None:
                raise RuntimeError(f"({self.backend}) rayhead exited {self.head.returncode}; see {self.log}")
            return http_ok(f"http://127.0.0.1:{self.probe_port}/readyz")
        wait_for(f"({self.backend}) /readyz", ready, 180, 0.05)

    def status(self):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.probe_port}/status", timeout=2) as r:
            return json.load(r)

    def events(self, name, since):
        out = []
        for line in open(self.log):
            if f'"{name}"' not in line:
                continue
            try:
                e = json.loads(line)
            except ValueError:
                continue
            t = datetime.datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")).timestamp()
            if t >= since:
                out.append((t, e))
        return out

    def size(self):
        return du(self.db) if self.backend == "rocksdb" else du(self.redis_dir)

    def gcs_log(self):
        return os.path.join(self.temp_dir, "session_latest", "logs", "gcs_server.out")

    def kill(self):
        """One SIGKILL of gcs_server; returns {measure: seconds from the kill}."""
        self.wait_ready()
        time.sleep(3)  # past rayhead's gcs.stable-after (2 s) since the last recovery
        pids = procs_with(self.temp_dir, "gcs_server")
        if len(pids) != 1:
            raise RuntimeError(f"({self.backend}) expected one gcs_server, found {pids}")
        path = self.gcs_log()
        offset = os.path.getsize(path)
        t0 = time.time()
        os.kill(pids[0], signal.SIGKILL)
        self.driver.stdin.write("go\n")
        self.driver.stdin.flush()

        def gone():
            try:
                with open(f"/proc/{pids[0]}/stat") as f:
                    return f.read().rsplit(")", 1)[1].split()[0] in "ZX"
            except OSError:
                return True
        wait_for("the old gcs_server to die", gone, 5, 0.001)
        t_serving = wait_for(f"({self.backend}) SERVING", self.health, LIMIT, 0.005)
        line = self.driver.stdout.readline()
        if not line.startswith("ROUND"):
            raise RuntimeError(f"({self.backend}) driver round failed: {line!r}")
        t_driver = float(line.split()[1])
        wait_for("rayhead's gcs_recovered", lambda: self.events("gcs_recovered", t0), 30, 0.05)
        with open(path, errors="replace") as f:
            f.seek(offset)
            marks = gcs_marks(f.read())
        row = {k: v - t0 for k, v in marks.items()}
        started = self.events("daemon_started", t0)
        recovered = self.events("gcs_recovered", t0)
        row["exec"] = started[0][0] - t0 if started else None
        row["serving"] = t_serving - t0
        row["driver"] = t_driver - t0
        row["recovered"] = recovered[0][0] - t0
        row["rayhead_seconds"] = recovered[0][1].get("fields", recovered[0][1]).get("seconds")
        return row

    def stop(self):
        try:
            if self.head:
                os.killpg(self.head.pid, signal.SIGTERM)
                self.head.wait(20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        for p in self.procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()


def sweep(run_marker, tmp):
    """SIGKILLs, by pid, every process left with this run's marker in its
    environment, or its working directory in `tmp` (redis-server overwrites
    its environment with its title): workers and agents that outlived their
    head."""
    needle = f"{MARKER_VAR}={run_marker}".encode()
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                mine = needle in f.read().split(b"\0")
            mine = mine or os.readlink(f"/proc/{pid}/cwd").startswith(tmp + "/")
            if mine:
                os.kill(int(pid), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            pass


COLS = ["exec", "main", "load", "loaded", "listening", "serving", "recovered", "driver"]
NAMES = {"redis": "Redis", "rocksdb": "RocksDB"}
SUB = {"redis": "a", "rocksdb": "b"}


def med(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return "-"
    return f"{statistics.median(xs) * 1000:.0f} ({min(xs) * 1000:.0f}-{max(xs) * 1000:.0f})"


def human(n):
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def report(rows, cells, sizes, kills, fills):
    print(f"Milliseconds from the SIGKILL of gcs_server, median (min-max) of {kills} kills per cell; "
          "Redis (A) and RocksDB (B) heads side by side, killed A, B, A, B, ... "
          "Cells are cumulative on the same two heads.\n")
    print("| cell | backend | exec | main | load | loaded | listening | SERVING | rayhead recovered | driver round | on disk |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for cell in cells:
        for b in ("redis", "rocksdb"):
            rs = [r for r in rows if r["cell"] == cell and r["backend"] == b]
            disk = human(sizes.get((cell, b)))
            disk = f"{disk} (AOF)" if b == "redis" else disk
            print(f"| {cell} | {NAMES[b]} | " + " | ".join(med([r.get(c) for r in rs]) for c in COLS)
                  + f" | {disk} |")
    print("\nPhases (median ms): exec -> main is the new process's start-up, main -> load opening "
          "(RocksDB) or connecting to (Redis) the storage, load -> loaded reading the GCS tables, "
          "loaded -> listening the managers' start, listening -> SERVING the health check seen "
          "(the poll is every 5 ms):\n")
    print("| cell | backend | kill->exec | start-up | storage open | tables load | to listening | to SERVING | SERVING->driver |")
    print("|---|---|---|---|---|---|---|---|---|")
    pairs = [("exec", None), ("main", "exec"), ("load", "main"), ("loaded", "load"),
             ("listening", "loaded"), ("serving", "listening"), ("driver", "serving")]
    for cell in cells:
        for b in ("redis", "rocksdb"):
            rs = [r for r in rows if r["cell"] == cell and r["backend"] == b]
            out = []
            for hi, lo in pairs:
                xs = [r[hi] - (r[lo] if lo else 0) for r in rs
                      if r.get(hi) is not None and (lo is None or r.get(lo) is not None)]
                out.append(f"{statistics.median(xs) * 1000:.0f}" if xs else "-")
            print(f"| {cell} | {NAMES[b]} | " + " | ".join(out) + " |")
    print("\nRocksDB / Redis, kill by kill (kill i of A against kill i of B), median (min-max):\n")
    print("| cell | SERVING | driver round | tables load |")
    print("|---|---|---|---|")
    for cell in cells:
        a = [r for r in rows if r["cell"] == cell and r["backend"] == "redis"]
        b = [r for r in rows if r["cell"] == cell and r["backend"] == "rocksdb"]

        def ratio(f):
            xs = []
            for ra, rb in zip(a, b):
                va, vb = f(ra), f(rb)
                if va and vb:
                    xs.append(vb / va)
            return f"{statistics.median(xs):.2f}x ({min(xs):.2f}-{max(xs):.2f})" if xs else "-"
        load = lambda r: (r["loaded"] - r["load"]) if r.get("loaded") and r.get("load") else None
        print(f"| {cell} | {ratio(lambda r: r['serving'])} | {ratio(lambda r: r['driver'])} | {ratio(load)} |")
    print("\nFilling (through the GCS client, 2,000 puts in flight): " + "; ".join(
        f"{NAMES[b]} {lo:,} to {hi:,} entries in {t:.1f} s" for (b, lo, hi), t in fills.items()) + ".")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kills", type=int, default=3)
    ap.add_argument("--kv", default="0,50000,200000")
    ap.add_argument("--pgs", type=int, default=500)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "storage.csv"))
    ap.add_argument("--driver")
    ap.add_argument("--setup")
    ap.add_argument("--fill", nargs=3)
    ap.add_argument("--make-pgs", nargs=2)
    args = ap.parse_args()
    if args.driver:
        return sub_driver(args.driver)
    if args.setup:
        return sub_setup(args.setup)
    if args.fill:
        return sub_fill(args.fill[0], int(args.fill[1]), int(args.fill[2]))
    if args.make_pgs:
        return sub_pgs(args.make_pgs[0], int(args.make_pgs[1]))

    if not os.path.exists(RAYHEAD):
        raise SystemExit("build first: cargo build --release")
    kvs = [int(x) for x in args.kv.split(",")]
    head_env = manifest_env()[0]
    tmp = tempfile.mkdtemp(prefix="rhbs-")
    # SIGTERM and SIGHUP end the run through the cleanup below too.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda n, _: sys.exit(f"stopped by signal {n}"))
    run_marker = os.path.basename(tmp)
    heads, rows, sizes, fills, cells = {}, [], {}, {}, []
    t_start = time.time()
    try:
        for b in ("redis", "rocksdb"):
            log(f"starting the {b} head")
            os.makedirs(os.path.join(tmp, SUB[b]))
            heads[b] = Head(b, os.path.join(tmp, SUB[b]))
            heads[b].start(head_env, run_marker)
        have = 0
        plan = [(f"{n // 1000}k KV" if n >= 1000 else f"{n} KV", n, 0) for n in kvs]
        if args.pgs:
            last = plan[-1][0] if plan else "0 KV"
            plan.append((f"{last} + {args.pgs} PGs", kvs[-1] if kvs else 0, args.pgs))
        for cell, n, pgs in plan:
            if n > have:
                for b, h in heads.items():
                    t = time.time()
                    got = h.helper(["--fill", h.addr, str(have), str(n)])
                    fills[(b, have, n)] = time.time() - t
                    log(f"  ({b}) KV filled to {got} in {time.time() - t:.1f} s")
                have = n
            if pgs:
                for b, h in heads.items():
                    t = time.time()
                    h.helper(["--make-pgs", h.addr, str(pgs)])
                    log(f"  ({b}) {pgs} placement groups ready in {time.time() - t:.1f} s")
            time.sleep(2)  # let RocksDB's and Redis's writes settle
            for b, h in heads.items():
                sizes[(cell, b)] = h.size()
            cells.append(cell)
            for k in range(1, args.kills + 1):
                for b, h in heads.items():
                    r = h.kill()
                    r.update(cell=cell, backend=b, kill=k)
                    rows.append(r)
                    log(f"  {cell} ({b}) #{k}: " + ", ".join(
                        f"{c} {r[c] * 1000:.0f}" for c in COLS if r.get(c) is not None) + " ms")
        status = {b: h.status() for b, h in heads.items()}
        log("rayhead /status gcs.restarts: " + ", ".join(
            f"{b} {s['gcs']['restarts']}" for b, s in status.items()))
    finally:
        for h in heads.values():
            h.stop()
        sweep(run_marker, tmp)
        shutil.rmtree(tmp, ignore_errors=True)
    with open(args.out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["cell", "backend", "kill", "measure", "seconds"])
        for r in rows:
            for c in COLS + ["rayhead_seconds"]:
                if r.get(c) is not None:
                    w.writerow([r["cell"], r["backend"], r["kill"], c, f"{r[c]:.4f}"])
        for (cell, b), n in sizes.items():
            w.writerow([cell, b, "", "disk_bytes", n])
    report(rows, cells, sizes, args.kills, fills)
    log(f"total {time.time() - t_start:.0f} s")


if __name__ == "__main__":
    main()
