"""Validates rayhead's Kubernetes manifests against KubeRay's RayCluster CRD.

Usage: validate_manifests.py CRD.yaml MANIFEST.yaml...
       validate_manifests.py --env MANIFEST.yaml
Every RayCluster is checked against the CRD's v1 openAPIV3Schema with a real
JSON-schema validator; every RayService's spec.rayClusterConfig against the
schema of a RayCluster's spec (the RayService CRD is not shipped here). The
output is JSON: {"file": [[kind, name, [errors...], head facts], ...]}. Exit 0 when all
are valid, 1 otherwise.

With --env, it prints the literal `env` entries of the first RayCluster's head
container and of each worker group's first container, {"head": {...},
"workers": [{...}]}: the environment the kubelet would give them, which the
end-to-end tests hand to their own head and worker processes.
"""
import json
import sys

import jsonschema
import yaml


def v1_schema(crd_path):
    crd = yaml.safe_load(open(crd_path))
    for v in crd["spec"]["versions"]:
        if v["name"] == "v1":
            return v["schema"]["openAPIV3Schema"]
    raise SystemExit("no v1 schema in the CRD")


def errors(schema, doc):
    v = jsonschema.Draft7Validator(schema)
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in v.iter_errors(doc)]


def literal_env(container):
    """The container's `env` entries that carry a literal value."""
    return {e["name"]: e["value"] for e in container.get("env") or [] if "value" in e}


def first_container(template):
    return (template.get("spec", {}).get("containers") or [{}])[0]


def envs(spec):
    return {
        "head": literal_env(first_container(spec.get("headGroupSpec", {}).get("template", {}))),
        "workers": [literal_env(first_container(g.get("template", {})))
                    for g in spec.get("workerGroupSpecs") or []],
    }


def head_facts(spec):
    """What the test compares with rayhead's defaults."""
    tmpl = spec.get("headGroupSpec", {}).get("template", {})
    pod = tmpl.get("spec", {})
    c = (pod.get("containers") or [{}])[0]
    probe = lambda p: {"path": c.get(p, {}).get("httpGet", {}).get("path"),
                       "port": c.get(p, {}).get("httpGet", {}).get("port"),
                       "exec": c.get(p, {}).get("exec", {}).get("command")}
    return {
        "command": c.get("command"),
        "image": c.get("image"),
        "annotation": tmpl.get("metadata", {}).get("annotations", {}).get("ray.io/overwrite-container-cmd"),
        "readiness": probe("readinessProbe"),
        "liveness": probe("livenessProbe"),
        "grace": pod.get("terminationGracePeriodSeconds"),
        "message_policy": c.get("terminationMessagePolicy"),
        "redis": spec.get("gcsFaultToleranceOptions", {}).get("redisAddress"),
        "backend": spec.get("gcsFaultToleranceOptions", {}).get("backend"),
        "storage": spec.get("gcsFaultToleranceOptions", {}).get("storage"),
        "mounts": {m["name"]: m["mountPath"] for m in c.get("volumeMounts") or []},
        "volumes": {v["name"]: sorted(k for k in v if k != "name") for v in pod.get("volumes") or []},
        "init": [{"image": i.get("image"), "command": i.get("command"),
                  "mounts": {m["name"]: m["mountPath"] for m in i.get("volumeMounts") or []}}
                 for i in pod.get("initContainers") or []],
        **envs(spec),
    }


def main():
    if sys.argv[1] == "--env":
        for doc in yaml.safe_load_all(open(sys.argv[2])):
            if doc and doc.get("kind") == "RayCluster":
                print(json.dumps(envs(doc["spec"])))
                return
        raise SystemExit("no RayCluster in " + sys.argv[2])
    schema = v1_schema(sys.argv[1])
    report, bad = {}, False
    for path in sys.argv[2:]:
        found = []
        for doc in yaml.safe_load_all(open(path)):
            if not doc:
                continue
            kind, name = doc.get("kind"), doc.get("metadata", {}).get("name")
            if kind == "RayCluster":
                errs = errors(schema, doc)
            elif kind == "RayService":
                errs = errors(schema["properties"]["spec"], doc["spec"]["rayClusterConfig"])
            else:
                continue
            bad |= bool(errs)
            spec = doc["spec"] if kind == "RayCluster" else doc["spec"]["rayClusterConfig"]
            found.append([kind, name, errs, head_facts(spec)])
        report[path] = found
    print(json.dumps(report, indent=1))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
