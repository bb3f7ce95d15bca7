# What the GCS knows of the guide's counter_actor, from the state API:
# "<state> <death cause>" per record, or "none"; then, indented, the
# actor's node and every node the GCS knows, for a failure to show.
import ray
from ray.util.state import list_actors

ray.init(namespace="default_namespace")
found = list_actors(detail=True, filters=[("name", "=", "counter_actor")])
for a in found:
    cause = ((a.death_cause or {}).get("actor_died_error_context") or {}).get("error_message", "")
    print(a.state, cause.splitlines()[0] if cause else "")
if not found:
    print("none")
for a in found:
    print("  on node", (a.node_id or "?")[:12])
for n in ray.nodes():
    state = "ALIVE" if n["Alive"] else "DEAD"
    print("  node", n["NodeID"][:12], state, f'{n["NodeManagerAddress"]}:{n["NodeManagerPort"]}')
