# A driver that stays connected across GCS restarts, as a user's long-lived
# driver on the head pod would. After READY, each line on stdin asks for one
# GCS-dependent round: the named actor looked up, one method call, and an
# internal-KV read. It prints "CALL <counter> <seconds> <end, Unix seconds>"
# and the last try's phases per round, or "FAILED <why>" and exits 1 when a round cannot finish within
# 60 s. It runs one round before READY: a warm-up, or with --now the round
# the benchmark times for a fresh driver after a head restart.
# Usage: driver.py ADDRESS [MARKER] [--now]   (MARKER only names a test's dir)
import sys
import time

import ray
from ray.experimental import internal_kv


def one_round():
    t = time.time()
    tries = 0
    while True:
        tries += 1
        try:
            t1 = time.time()
            counter = ray.get_actor("counter_actor")
            t2 = time.time()
            value = ray.get(counter.increment.remote(), timeout=30)
            t3 = time.time()
            kept = internal_kv._internal_kv_get(b"rayhead-e2e")
            if kept != b"kept":
                raise RuntimeError(f"internal KV lost: {kept!r}")
            break
        except Exception as e:  # the GCS may still be coming back
            if time.time() - t > 60:
                print("FAILED", repr(e), flush=True)
                sys.exit(1)
            time.sleep(0.01)
    end = time.time()
    print("CALL", value, f"{end - t:.3f}", f"{end:.6f}",
          f"tries={tries},actor={t2 - t1:.3f},call={t3 - t2:.3f},kv={end - t3:.3f}", flush=True)


ray.init(address=sys.argv[1], namespace="default_namespace", logging_level="ERROR")
if "--now" not in sys.argv:
    internal_kv._internal_kv_put(b"rayhead-e2e", b"kept")
# A warm-up round (or, with --now, the one measured): a long-lived driver
# holds its actor handle already, so later rounds time the GCS path only.
one_round()
print("READY", flush=True)
for _ in sys.stdin:
    one_round()
