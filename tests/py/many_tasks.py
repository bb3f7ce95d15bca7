# Grows the GCS's memory the way a busy cluster does: the GCS keeps every
# task's events in memory (about 4 KiB a task, up to
# RAY_task_events_max_num_task_in_gcs). Prints "READY" once connected, then
# for each line on stdin runs BATCH trivial tasks on the cluster's workers
# and prints "DONE <tasks so far>"; a task that cannot run prints
# "FAILED <why>" and exits 1. Stops when stdin closes.
# Usage: many_tasks.py ADDRESS BATCH [MARKER]   (MARKER only names a test's dir)
import sys

import ray

ray.init(address=sys.argv[1], logging_level="ERROR")
batch = int(sys.argv[2])


@ray.remote
def nothing(i):
    return i


done = 0
print("READY", flush=True)
for _ in sys.stdin:
    try:
        refs = [nothing.remote(i) for i in range(batch)]
        for start in range(0, len(refs), 1000):
            ray.get(refs[start:start + 1000], timeout=120)
    except Exception as e:
        print("FAILED", repr(e), flush=True)
        sys.exit(1)
    done += batch
    print("DONE", done, flush=True)
