# A driver that stays connected across GCS restarts, as a user's long-lived
# driver on the head pod would. After READY, each line on stdin asks for one
# GCS-dependent round: the named actor looked up, one method call, and an
# internal-KV read. It prints "CALL <counter> <seconds>" per round, or
# "FAILED <why>" and exits 1 when a round cannot finish within 60 s.
# Usage: driver.py ADDRESS [MARKER]   (MARKER only names the test's dir)
import sys
import time

import ray
from ray.experimental import internal_kv

ray.init(address=sys.argv[1], namespace="default_namespace", logging_level="ERROR")
internal_kv._internal_kv_put(b"rayhead-e2e", b"kept")
print("READY", flush=True)
for _ in sys.stdin:
    t = time.time()
    while True:
        try:
            counter = ray.get_actor("counter_actor")
            value = ray.get(counter.increment.remote(), timeout=30)
            kept = internal_kv._internal_kv_get(b"rayhead-e2e")
            if kept != b"kept":
                raise RuntimeError(f"internal KV lost: {kept!r}")
            break
        except Exception as e:  # the GCS may still be coming back
            if time.time() - t > 60:
                print("FAILED", repr(e), flush=True)
                sys.exit(1)
            time.sleep(0.01)
    print("CALL", value, f"{time.time() - t:.3f}", flush=True)
