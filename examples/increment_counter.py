# The KubeRay GCS fault tolerance guide's increment_counter.py, unchanged:
# increments the detached counter and prints its new value.
# ray.init() takes the cluster's address from RAY_ADDRESS.
import ray

ray.init(namespace="default_namespace")
counter = ray.get_actor("counter_actor")
print(ray.get(counter.increment.remote()))
