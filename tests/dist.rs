//! The portable binary of `make dist` (cargo-zigbuild, glibc 2.17): its
//! glibc floor read from its dynamic symbols, and the end-to-end suite's
//! first scenario run with it. And the plain release build's floor, against
//! today's Ray images (Ubuntu 22.04, glibc 2.35).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::ray_util::{ray_lock, KillByMarker};
use crate::util::Dir;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The Makefile's value of `NAME = value`.
fn make_var(name: &str) -> String {
    let text = std::fs::read_to_string(root().join("Makefile")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} = ")))
        .unwrap_or_else(|| panic!("no {name} in the Makefile"))
        .trim()
        .to_string()
}

fn dist_bin() -> PathBuf {
    let p = root().join(make_var("DIST_BIN"));
    assert!(
        p.exists(),
        "{} is missing: run `make dist` (make test does)",
        p.display()
    );
    p
}

/// The highest `GLIBC_x.y` version among the binary's dynamic symbols.
fn max_glibc(bin: &Path) -> (u32, u32) {
    let out = Command::new("objdump")
        .arg("-T")
        .arg(bin)
        .output()
        .expect("objdump (binutils)");
    assert!(out.status.success(), "objdump -T {}", bin.display());
    let text = String::from_utf8_lossy(&out.stdout);
    let versions: Vec<(u32, u32)> = text
        .split("GLIBC_")
        .skip(1)
        .filter_map(|rest| {
            let v: String = rest
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.')
                .collect();
            let mut parts = v.split('.').map(|p| p.parse::<u32>().ok());
            Some((parts.next()??, parts.next().flatten().unwrap_or(0)))
        })
        .collect();
    assert!(
        !versions.is_empty(),
        "no GLIBC_ symbol versions in {}: is it dynamically linked?",
        bin.display()
    );
    versions.into_iter().max().unwrap()
}

#[test]
fn the_dist_binary_needs_glibc_2_17_at_most() {
    let target = make_var("DIST_TARGET");
    assert_eq!(
        target.rsplit_once('.').map(|(_, v)| v),
        Some("17"),
        "{target}"
    );
    let bin = dist_bin();
    let v = max_glibc(&bin);
    assert!(
        v <= (2, 17),
        "{} needs GLIBC_{}.{}",
        bin.display(),
        v.0,
        v.1
    );
}

#[test]
fn the_release_binary_needs_glibc_2_35_at_most() {
    // The binary under test is built like the release one, with this
    // machine's glibc; setup.sh builds target/release/rayhead.
    for bin in [
        crate::util::rayhead_bin(),
        root().join("target/release/rayhead"),
    ] {
        if !bin.exists() {
            continue;
        }
        let v = max_glibc(&bin);
        assert!(
            v <= (2, 35),
            "{} needs GLIBC_{}.{}",
            bin.display(),
            v.0,
            v.1
        );
    }
}

#[test]
fn e2e_the_dist_binary_runs_the_guide_scenario() {
    let _lock = ray_lock();
    let dir = Dir::new("e2e-dist").running(dist_bin());
    let _cleanup = KillByMarker(dir.path().display().to_string());
    crate::ray_e2e::guide_scenario(&dir);
}
