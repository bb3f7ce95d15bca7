# Deploys a one-replica Ray Serve app behind the head node's proxy on
# 127.0.0.1:PORT, route /hello, answering "hello". The controller and the app
# are detached: they outlive this driver, as with `serve deploy`.
# Usage: serve_app.py ADDRESS PORT
import sys

import ray
from ray import serve

ray.init(address=sys.argv[1], namespace="serve", logging_level="ERROR")
serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": int(sys.argv[2])})


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0})
class Hello:
    def __call__(self, request):
        return "hello"


serve.run(Hello.bind(), name="hello", route_prefix="/hello")
print("DEPLOYED", flush=True)
