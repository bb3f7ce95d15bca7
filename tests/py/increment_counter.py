# The KubeRay guide's client: increments the detached counter and prints it,
# then the alive nodes' ids, one line each, for the test to compare.
import sys
import ray

ray.init(address=sys.argv[1], namespace="default_namespace")
counter = ray.get_actor("counter_actor")
print("counter", ray.get(counter.increment.remote()))
for node in ray.nodes():
    if node["Alive"]:
        print("node", node["NodeID"], "head" if node.get("Resources", {}).get("node:__internal_head__") else "worker")
