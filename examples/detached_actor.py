# The KubeRay GCS fault tolerance guide's detached_actor.py, unchanged: a
# detached actor named counter_actor, which lives on after this driver exits.
# ray.init() takes the cluster's address from RAY_ADDRESS.
import ray

@ray.remote(num_cpus=1)
class Counter:
    def __init__(self):
        self.value = 0

    def increment(self):
        self.value += 1
        return self.value

ray.init(namespace="default_namespace")
Counter.options(name="counter_actor", lifetime="detached").remote()
