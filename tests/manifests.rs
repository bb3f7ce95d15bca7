//! The shipped Kubernetes manifests and the Dockerfile, checked against
//! KubeRay's RayCluster CRD (`../shared/kuberay/ray.io_rayclusters.yaml`,
//! with a real JSON-schema validator from the project's venv) and against
//! rayhead's own defaults.

use std::path::{Path, PathBuf};
use std::process::Command;

use rayhead::config::keys;
use serde_json::Value;

use crate::ray_util::venv_bin;
use crate::util::Dir;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn crd() -> PathBuf {
    let p = root().join("../shared/kuberay/ray.io_rayclusters.yaml");
    assert!(
        p.exists(),
        "{} is missing: the CRD comes with shared/",
        p.display()
    );
    p
}

const MANIFESTS: &[&str] = &[
    "config/ray-cluster.rayhead.yaml",
    "config/ray-service.rayhead.yaml",
];

/// Runs the validator; returns its exit code and report.
fn validate(files: &[PathBuf]) -> (i32, Value) {
    let out = Command::new(venv_bin().join("python"))
        .arg(root().join("tests/py/validate_manifests.py"))
        .arg(crd())
        .args(files)
        .output()
        .expect("python");
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no report ({e}):\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), report)
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
            assert_eq!(h["command"], serde_json::json!(["rayhead", "run"]), "{h:#}");
            assert_eq!(
                h["annotation"], "true",
                "KubeRay would replace the command: {h:#}"
            );
            assert_eq!(h["readiness"]["path"], "/readyz");
            assert_eq!(h["liveness"]["path"], "/livez");
            assert_eq!(h["readiness"]["port"], probe_port);
            assert_eq!(h["liveness"]["port"], probe_port);
            assert!(
                h["grace"].as_u64().unwrap() > grace.as_secs(),
                "terminationGracePeriodSeconds must exceed init.stop-grace: {h:#}"
            );
            assert_eq!(h["message_policy"], "FallbackToLogsOnError");
            assert!(h["redis"].is_string(), "GCS fault tolerance is on: {h:#}");
            assert!(h["image"].as_str().unwrap().ends_with(":2.60.0"), "{h:#}");
        }
    }
    kinds.sort();
    assert_eq!(kinds, vec!["RayCluster", "RayService"]);
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

#[test]
fn dockerfile_facts_match_the_manifests_and_readme() {
    let docker = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    assert!(
        docker.contains("ARG RAY_IMAGE=rayproject/ray:2.60.0"),
        "the base is an ARG"
    );
    assert!(docker.contains("FROM ${RAY_IMAGE}"));
    assert!(docker.contains("ENTRYPOINT [\"rayhead\", \"run\"]"));
    assert!(
        docker.contains("USER ray"),
        "keep the image's non-root user"
    );
    assert!(docker.contains("glibc"), "the linking comment");
    for f in MANIFESTS {
        let m = std::fs::read_to_string(root().join(f)).unwrap();
        assert!(
            m.contains("command: [\"rayhead\", \"run\"]") || m.contains("- rayhead\n"),
            "{f}"
        );
    }
    assert!(readme.contains("ray.io/overwrite-container-cmd"));
    assert!(readme.contains("8099"));
    assert!(readme.contains("ENTRYPOINT"));
}
