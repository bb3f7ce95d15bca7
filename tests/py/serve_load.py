# A steady stream of HTTP requests to a Ray Serve route, one at a time, each
# on a new connection, every INTERVAL seconds, until stdin closes or SIGTERM.
# Writes one CSV row per request to OUT: start (Unix seconds), latency
# (seconds), ok (1/0), and the status or error. On stop it prints a JSON
# summary: sent, failed, p50/p99/max latency, first and last start.
# Used by the end-to-end tests and by `make bench`.
# Usage: serve_load.py URL OUT [INTERVAL]
import csv
import http.client
import json
import signal
import sys
import threading
import time
import urllib.parse

url = urllib.parse.urlsplit(sys.argv[1])
interval = float(sys.argv[3]) if len(sys.argv) > 3 else 0.01
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()

rows = []
with open(sys.argv[2], "w", newline="") as f:
    out = csv.writer(f)
    out.writerow(["start", "latency", "ok", "status"])
    while not stop.is_set():
        t = time.time()
        try:
            conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
            conn.request("GET", url.path or "/")
            r = conn.getresponse()
            body = r.read()
            conn.close()
            ok, status = r.status == 200 and body == b"hello", str(r.status)
        except Exception as e:
            ok, status = False, type(e).__name__
        took = time.time() - t
        rows.append((t, took, ok))
        out.writerow([f"{t:.6f}", f"{took:.6f}", int(ok), status])
        f.flush()
        stop.wait(interval)

lat = sorted(r[1] for r in rows)
pick = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] if lat else None
print(json.dumps({
    "sent": len(rows),
    "failed": sum(1 for r in rows if not r[2]),
    "p50": pick(0.50),
    "p99": pick(0.99),
    "max": lat[-1] if lat else None,
    "first": rows[0][0] if rows else None,
    "last": rows[-1][0] if rows else None,
}), flush=True)
