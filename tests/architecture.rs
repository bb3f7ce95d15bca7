//! ARCHITECTURE.md kept true of the tree: every source path it names
//! exists, and every module directly under `src/` is named in it.

use std::collections::BTreeSet;

use crate::util::root;

fn document() -> String {
    std::fs::read_to_string(root().join("ARCHITECTURE.md")).expect("ARCHITECTURE.md at the root")
}

/// Every path in backticks that starts with `src/` or `tests/`, without its
/// trailing `/`. Inline code only: a fenced block's lines are skipped, so a
/// path named there would go unchecked (the document names them inline).
fn source_paths(doc: &str) -> BTreeSet<String> {
    let mut fenced = false;
    let mut paths = BTreeSet::new();
    for line in doc.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        // Between the odd and even backticks of a line.
        for span in line.split('`').skip(1).step_by(2) {
            let looks_like_a_path = (span.starts_with("src/") || span.starts_with("tests/"))
                && !span.contains(char::is_whitespace);
            if looks_like_a_path {
                paths.insert(span.trim_end_matches('/').to_string());
            }
        }
    }
    paths
}

/// Modules that `src/lib.rs` declares under `#[cfg(test)]`: test-only, so
/// the document need not name them.
fn test_only_modules() -> BTreeSet<String> {
    let lib = std::fs::read_to_string(root().join("src/lib.rs")).unwrap();
    let mut out = BTreeSet::new();
    let mut cfg_test = false;
    for line in lib.lines().map(str::trim) {
        if line == "#[cfg(test)]" {
            cfg_test = true;
            continue;
        }
        if cfg_test {
            if let Some(name) = line
                .strip_prefix("mod ")
                .or_else(|| line.strip_prefix("pub mod "))
                .and_then(|m| m.strip_suffix(';'))
            {
                out.insert(format!("{name}.rs"));
                out.insert(name.to_string());
            }
        }
        cfg_test = false;
    }
    out
}

#[test]
fn every_source_path_it_names_exists() {
    let doc = document();
    let paths = source_paths(&doc);
    assert!(
        paths.len() > 10,
        "ARCHITECTURE.md names few source paths: {paths:?}"
    );
    let missing: Vec<_> = paths.iter().filter(|p| !root().join(p).exists()).collect();
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md names paths that do not exist: {missing:?}"
    );
}

#[test]
fn every_module_under_src_is_named() {
    let doc = document();
    let named = source_paths(&doc);
    let skip = test_only_modules();
    let mut unnamed = Vec::new();
    for entry in std::fs::read_dir(root().join("src")).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        let is_dir = entry.file_type().unwrap().is_dir();
        if !is_dir && !name.ends_with(".rs") {
            continue;
        }
        if name == "main.rs" || name == "lib.rs" || skip.contains(&name) {
            continue;
        }
        let path = format!("src/{name}");
        if !named.contains(&path) {
            unnamed.push(if is_dir { format!("{path}/") } else { path });
        }
    }
    unnamed.sort();
    assert!(
        unnamed.is_empty(),
        "ARCHITECTURE.md does not name these modules (add each to its floor): {unnamed:?}"
    );
}

#[test]
fn the_scanner_finds_inline_paths_only() {
    let doc = "a `src/ray/` and `src/exit.rs`, `rayhead run`, `src/a b`\n\
               ```\n`src/in_a_fence.rs`\n```\n`tests/tests.rs`";
    let found: Vec<_> = source_paths(doc).into_iter().collect();
    assert_eq!(found, ["src/exit.rs", "src/ray", "tests/tests.rs"]);
}
