# The guide's examples/increment_counter.py as it is (it prints the new
# value), then the alive nodes' ids, one line each, for the tests to compare.
import os
import runpy

import ray

runpy.run_path(os.path.join(os.path.dirname(__file__), "..", "..", "examples", "increment_counter.py"))
for node in ray.nodes():
    if node["Alive"]:
        print("node", node["NodeID"], "head" if node.get("Resources", {}).get("node:__internal_head__") else "worker")
