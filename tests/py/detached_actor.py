# The KubeRay guide's detached actor: it lives on after its driver exits.
import sys
import ray

ray.init(address=sys.argv[1], namespace="default_namespace")


@ray.remote(num_cpus=1)
class Counter:
    def __init__(self):
        self.value = 0

    def increment(self):
        self.value += 1
        return self.value


Counter.options(name="counter_actor", lifetime="detached").remote()
