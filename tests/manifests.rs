//! The shipped Kubernetes manifests and the Dockerfile, checked against
//! KubeRay's RayCluster CRD (vendored in `tests/data/kuberay/`, checked with a
//! real JSON-schema validator from the project's venv) and against rayhead's
//! own defaults.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rayhead::config::keys;
use serde_json::Value;

use crate::ray_util::venv_bin;
use crate::util::{carrier_stage, root, Dir};

fn crd() -> PathBuf {
    root().join("tests/data/kuberay/ray.io_rayclusters.yaml")
}

/// The validator loads a 1 MB schema; a hung one is cut off.
const VALIDATE_LIMIT: Duration = Duration::from_secs(120);

const MANIFESTS: &[&str] = &[
    "config/ray-cluster.rayhead.yaml",
    "config/ray-service.rayhead.yaml",
    INIT_MANIFEST,
];

/// The variant for an unchanged Ray image: rayhead comes from an init
/// container.
const INIT_MANIFEST: &str = "config/ray-cluster.rayhead-init.yaml";

/// Whether a head's facts are the init-container variant's.
fn installed_by_init(h: &Value) -> bool {
    !h["init"].as_array().unwrap().is_empty()
}

/// Runs the validator; returns its exit code and report.
fn validate(files: &[PathBuf]) -> (i32, Value) {
    let dir = Dir::new("validate");
    let out = dir
        .command(venv_bin().join("python"))
        .arg_path(&root().join("tests/py/validate_manifests.py"))
        .arg_path(&crd())
        .args(files)
        .run(VALIDATE_LIMIT);
    let report = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("no report ({e}):\n{}", out.dump()));
    (out.code.unwrap_or(-1), report)
}

fn default_of(name: &str) -> &'static str {
    keys::find(name).and_then(|k| k.default).expect(name)
}

#[test]
fn shipped_manifests_validate_and_match_rayhead() {
    let files: Vec<PathBuf> = MANIFESTS.iter().map(|m| root().join(m)).collect();
    let (code, report) = validate(&files);
    assert_eq!(code, 0, "{report:#}");
    let probe_port: u64 = default_of("probe.listen")
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let grace = humantime::parse_duration(default_of("init.stop-grace")).unwrap();
    let mut kinds = Vec::new();
    for f in &files {
        for item in report[f.to_str().unwrap()].as_array().unwrap() {
            kinds.push(item[0].as_str().unwrap().to_string());
            assert_eq!(item[2], serde_json::json!([]), "{item:#}");
            let h = &item[3];
            if installed_by_init(h) {
                assert_init_install(h);
            } else {
                assert_eq!(h["command"], serde_json::json!(["rayhead", "run"]), "{h:#}");
            }
            assert_eq!(
                h["annotation"], "true",
                "KubeRay would replace the command: {h:#}"
            );
            assert_eq!(h["readiness"]["path"], "/readyz");
            assert_eq!(h["readiness"]["port"], probe_port);
            // Liveness is the exec probe over the socket, which no pod
            // sharing the HTTP port can crowd out; it runs the very binary
            // that the container runs.
            assert_eq!(h["liveness"]["path"], Value::Null, "{h:#}");
            assert_eq!(
                h["liveness"]["exec"],
                serde_json::json!([h["command"][0], "probe", "live"]),
                "{h:#}"
            );
            assert!(
                h["grace"].as_u64().unwrap() > grace.as_secs(),
                "terminationGracePeriodSeconds must exceed init.stop-grace: {h:#}"
            );
            assert_eq!(h["message_policy"], "FallbackToLogsOnError");
            assert!(h["redis"].is_string(), "GCS fault tolerance is on: {h:#}");
            assert!(h["image"].as_str().unwrap().ends_with(":2.60.0"), "{h:#}");
            // The head and every worker carry Ray's client check interval at
            // rayhead's default: workers are not rayhead's children, and
            // `kubectl exec` drivers take the container's env, not rayhead's.
            let var = "RAY_grpc_client_check_connection_status_interval_milliseconds";
            let ms = humantime::parse_duration(default_of("ray.client-check-interval"))
                .unwrap()
                .as_millis()
                .to_string();
            assert_eq!(h["head"][var], ms.as_str(), "{h:#}");
            let workers = h["workers"].as_array().unwrap();
            assert!(!workers.is_empty(), "{h:#}");
            for w in workers {
                assert_eq!(w[var], ms.as_str(), "{h:#}");
            }
        }
    }
    kinds.sort();
    assert_eq!(kinds, vec!["RayCluster", "RayCluster", "RayService"]);
}

/// KubeRay 1.7's RocksDB backend: the manifest validates against the CRD
/// (whose commit has `backend` and `storage`), names the backend and a
/// volume, and leaves to the operator what it insists on doing itself:
/// the PVC, its mount at /data/gcs and the two RAY_gcs_storage variables
/// (a RAY_gcs_storage set by hand is rejected). Its head is otherwise the
/// plain manifest's: the same probes, command and grace.
#[test]
fn the_rocksdb_manifest_validates_and_leaves_the_volume_to_kuberay() {
    let rocks = root().join(ROCKSDB_MANIFEST);
    let plain = root().join(MANIFESTS[0]);
    let (code, report) = validate(&[rocks.clone(), plain.clone()]);
    assert_eq!(code, 0, "{report:#}");
    let facts = |p: &PathBuf| {
        let items = report[p.to_str().unwrap()].as_array().unwrap().clone();
        assert_eq!(items.len(), 1, "{items:?}");
        assert_eq!(items[0][2], serde_json::json!([]), "{items:?}");
        items[0][3].clone()
    };
    let (h, p) = (facts(&rocks), facts(&plain));
    assert_eq!(h["backend"], "rocksdb", "{h:#}");
    assert!(h["storage"]["size"].is_string(), "{h:#}");
    assert_eq!(h["redis"], Value::Null, "{h:#}");
    for var in [
        "RAY_gcs_storage",
        "RAY_gcs_storage_path",
        "RAY_REDIS_ADDRESS",
    ] {
        assert_eq!(
            h["head"][var],
            Value::Null,
            "{var} is KubeRay's to set: {h:#}"
        );
    }
    assert!(h["mounts"].get("gcs-storage").is_none(), "{h:#}");
    assert!(h["volumes"].get("gcs-storage").is_none(), "{h:#}");
    for same in [
        "command",
        "annotation",
        "readiness",
        "liveness",
        "grace",
        "message_policy",
        "image",
        "workers",
    ] {
        assert_eq!(h[same], p[same], "{same} differs from the plain manifest");
    }
    // A backend the CRD does not know is refused: the check has teeth.
    let text = std::fs::read_to_string(&rocks).unwrap();
    let dir = Dir::new("rocksdb-manifest");
    let broken = dir.write(
        "etcd.yaml",
        &text.replace("backend: rocksdb", "backend: etcd"),
    );
    let (code, report) = validate(&[broken]);
    assert_eq!(code, 1, "{report:#}");
    assert!(report.to_string().contains("etcd"), "{report:#}");
}

const ROCKSDB_MANIFEST: &str = "config/ray-cluster.rayhead-rocksdb.yaml";

/// The init container copies rayhead into an emptyDir that the head
/// mounts, and the head runs that copy: `rayhead install` writes the very
/// path, seen through each container's mount, that the command runs.
fn assert_init_install(h: &Value) {
    let init = &h["init"][0];
    let cmd = init["command"].as_array().unwrap();
    assert_eq!(cmd.len(), 3, "{h:#}");
    assert_eq!(cmd[1], "install", "{h:#}");
    let copy = Path::new(cmd[2].as_str().unwrap());
    let run = Path::new(h["command"][0].as_str().unwrap());
    assert_eq!(h["command"][1], "run", "{h:#}");
    assert_eq!(run.file_name(), Some(std::ffi::OsStr::new("rayhead")));
    let (volume, _) = init["mounts"]
        .as_object()
        .unwrap()
        .iter()
        .find(|(_, path)| copy.parent() == Some(Path::new(path.as_str().unwrap())))
        .unwrap_or_else(|| panic!("the install's target is on no mount: {h:#}"));
    assert_eq!(
        h["volumes"][volume],
        serde_json::json!(["emptyDir"]),
        "{h:#}"
    );
    assert_eq!(
        Path::new(h["mounts"][volume].as_str().unwrap()).join(copy.file_name().unwrap()),
        run,
        "the head runs what the init container copied: {h:#}"
    );
}

/// The init variant is the plain RayCluster and nothing else but the
/// install: same probes, grace, env, Redis, annotation, other volumes.
#[test]
fn the_init_variant_is_the_plain_manifest_plus_the_install() {
    let files: Vec<PathBuf> = [MANIFESTS[0], INIT_MANIFEST]
        .iter()
        .map(|m| root().join(m))
        .collect();
    let (code, report) = validate(&files);
    assert_eq!(code, 0, "{report:#}");
    let facts = |f: &PathBuf| report[f.to_str().unwrap()][0][3].clone();
    let (mut plain, mut init) = (facts(&files[0]), facts(&files[1]));
    assert!(installed_by_init(&init) && !installed_by_init(&plain));
    let bin = init["init"][0]["mounts"]
        .as_object()
        .unwrap()
        .keys()
        .next()
        .unwrap()
        .clone();
    for h in [&mut plain, &mut init] {
        let o = h.as_object_mut().unwrap();
        // The exec liveness probe runs the container's own binary (checked
        // against the command by the test above), so its path differs too.
        for k in ["command", "image", "init", "liveness"] {
            o.remove(k);
        }
        o["mounts"].as_object_mut().unwrap().remove(&bin);
        o["volumes"].as_object_mut().unwrap().remove(&bin);
    }
    assert_eq!(plain, init);
}

/// The manifest's ray-example ConfigMap carries the guide's scripts as
/// `examples/` has them (what the tests run), less their comment header.
#[test]
fn the_manifests_samples_are_the_examples() {
    for m in [MANIFESTS[0], INIT_MANIFEST] {
        let text = std::fs::read_to_string(root().join(m)).unwrap();
        for script in ["detached_actor.py", "increment_counter.py"] {
            let key = format!("  {script}: |");
            let start = text
                .find(&key)
                .unwrap_or_else(|| panic!("{m} has no {script}"));
            let block: Vec<&str> = text[start + key.len()..]
                .lines()
                .skip(1)
                .take_while(|l| l.is_empty() || l.starts_with("    "))
                .map(|l| l.strip_prefix("    ").unwrap_or(""))
                .collect();
            let example = std::fs::read_to_string(root().join("examples").join(script)).unwrap();
            let code: Vec<&str> = example.lines().skip_while(|l| l.starts_with('#')).collect();
            assert_eq!(
                block.join("\n").trim(),
                code.join("\n").trim(),
                "{m}: {script}"
            );
        }
    }
}

/// The test of the test: a manifest with wrong types must fail.
#[test]
fn a_broken_manifest_fails_the_validator() {
    let dir = Dir::new("broken-manifest");
    let text = std::fs::read_to_string(root().join(MANIFESTS[0])).unwrap();
    let broken = text
        .replace("num-cpus: \"0\"", "num-cpus: [0]")
        .replace("redisAddress: \"redis:6379\"", "redisAddress: 6379");
    assert_ne!(broken, text);
    let path = dir.write("broken.yaml", &broken);
    let (code, report) = validate(std::slice::from_ref(&path));
    assert_eq!(code, 1, "{report:#}");
    let errs = report[path.to_str().unwrap()][0][2].to_string();
    assert!(errs.contains("rayStartParams"), "{errs}");
    assert!(errs.contains("redisAddress"), "{errs}");
}

/// The value after `prefix` on the Dockerfile line that starts with it.
fn line_value<'a>(text: &'a str, prefix: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no line starting with {prefix:?}"))
        .trim()
}

#[test]
fn dockerfile_facts_match_the_manifests_and_readme() {
    let docker = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let setup = std::fs::read_to_string(root().join("scripts/setup.sh")).unwrap();
    let files: Vec<PathBuf> = MANIFESTS.iter().map(|m| root().join(m)).collect();
    let (_, report) = validate(&files);
    let heads: Vec<&Value> = files
        .iter()
        .flat_map(|f| report[f.to_str().unwrap()].as_array().unwrap())
        .map(|item| &item[3])
        .collect();
    assert_eq!(heads.len(), MANIFESTS.len());

    // The image the Dockerfile builds on is the one the manifests run, and
    // the Ray version the tests install.
    let base = line_value(&docker, "ARG RAY_IMAGE=");
    let ray_version = line_value(&setup, "RAY_VERSION=");
    assert_eq!(base, format!("rayproject/ray:{ray_version}"));
    assert!(docker.lines().any(|l| l.trim() == "FROM ${RAY_IMAGE}"));
    // The head runs the image this Dockerfile builds, tagged with the Ray
    // version it is built on; the init variant runs the Ray image as it is,
    // with the carrier image (the Dockerfile's FROM scratch stage, tagged
    // with rayhead's version) in its init container.
    let entrypoint: Value =
        serde_json::from_str(line_value(&docker, "ENTRYPOINT ")).expect("ENTRYPOINT is JSON");
    for h in &heads {
        if installed_by_init(h) {
            assert_eq!(h["image"], base, "{h:#}");
            assert_eq!(
                h["init"][0]["image"],
                format!("rayhead-carrier:{}", env!("CARGO_PKG_VERSION")),
                "{h:#}"
            );
            let carrier = carrier_stage();
            let carrier_path = carrier
                .iter()
                .find_map(|l| l.strip_prefix("COPY --from=build /rayhead "))
                .expect("the carrier stage copies the built binary");
            assert_eq!(h["init"][0]["command"][0], carrier_path, "{h:#}");
        } else {
            assert_eq!(h["image"], format!("rayhead:{ray_version}"), "{h:#}");
            // The entrypoint is the manifests' command.
            assert_eq!(h["command"], entrypoint, "{h:#}");
        }
    }
    // Both images run as a non-root user: the carrier as 65532 (the init
    // container needs no privilege to write into an emptyDir), the Ray image
    // as the image's own `ray`.
    let users: Vec<&str> = docker
        .lines()
        .filter_map(|l| l.strip_prefix("USER "))
        .collect();
    assert_eq!(users, ["65532:65532", "ray"], "keep both images non-root");
    assert!(carrier_stage().contains(&"USER 65532:65532"));
    // The image builds the binaries `make dist` builds, with the same pinned
    // tools, for the same targets (which tests/dist.rs checks).
    let make = std::fs::read_to_string(root().join("Makefile")).unwrap();
    for var in ["ZIGLANG", "CARGO_ZIGBUILD"] {
        let value = line_value(&make, &format!("{var} = "));
        assert!(
            docker.contains(value),
            "the Dockerfile does not use {var} = {value}"
        );
    }
    for target in line_value(&make, "DIST_TARGETS = ").split_whitespace() {
        assert!(
            docker.contains(&format!("={target} ")) && docker.contains(&format!(" {target}")),
            "the Dockerfile does not build {target}"
        );
    }

    let probe_port = default_of("probe.listen").rsplit(':').next().unwrap();
    assert!(
        readme.contains(&format!("port {probe_port}")),
        "the README names the probe port {probe_port}"
    );
    assert!(readme.contains("ray.io/overwrite-container-cmd: \"true\""));
    assert!(readme.contains(&format!("ENTRYPOINT {entrypoint}").replace(',', ", ")));
}
