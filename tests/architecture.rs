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

/// The floors table: each top-level module (`sys`, `exit`, `ray`...) and its
/// floor, from the rows `| floor | modules | what it owns |`.
fn floors(doc: &str) -> std::collections::BTreeMap<String, u32> {
    let mut out = std::collections::BTreeMap::new();
    for line in doc.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let Some(floor) = cells.get(1).and_then(|c| c.parse::<u32>().ok()) else {
            continue;
        };
        for span in cells[2].split('`').skip(1).step_by(2) {
            if let Some(module) = span.strip_prefix("src/") {
                let name = module.trim_end_matches('/').trim_end_matches(".rs");
                out.insert(name.to_string(), floor);
            }
        }
    }
    out
}

/// The top-level modules that a file's code (not its comments, not its
/// test module) names as `crate::<module>`.
fn crate_imports(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let code = line.trim_start();
        // The unit tests at the end of a file may reach anywhere.
        if code == "#[cfg(test)]"
            && lines
                .peek()
                .is_some_and(|l| l.trim_start().starts_with("mod "))
        {
            break;
        }
        if code.starts_with("//") {
            continue;
        }
        for (at, _) in code.match_indices("crate::") {
            let name: String = code[at + 7..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

/// Every `.rs` file under `dir`, but test-only ones (`tests.rs`, a
/// `tests/` folder, `test_support.rs`).
fn source_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            if name != "tests" {
                source_files(&path, out);
            }
        } else if name.ends_with(".rs") && name != "tests.rs" && name != "test_support.rs" {
            out.push(path);
        }
    }
}

/// The floors are the code's: a module's code names only modules on
/// floors below its own (its own module aside), so the table cannot drift
/// from the imports.
#[test]
fn dependencies_point_down_the_floors() {
    let floors = floors(&document());
    assert!(
        floors.len() > 10,
        "the floors table was not read: {floors:?}"
    );
    let src = root().join("src");
    let mut files = Vec::new();
    source_files(&src, &mut files);
    let mut up = Vec::new();
    for file in files {
        let rel = file.strip_prefix(&src).unwrap();
        let module = rel
            .iter()
            .next()
            .unwrap()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        let Some(&own) = floors.get(&module) else {
            continue; // main, lib, test-only modules
        };
        let text = std::fs::read_to_string(&file).unwrap();
        for used in crate_imports(&text) {
            match floors.get(&used) {
                Some(&floor) if used != module && floor >= own => up.push(format!(
                    "src/{} (floor {own}) uses crate::{used} (floor {floor})",
                    rel.display()
                )),
                _ => {}
            }
        }
    }
    assert!(
        up.is_empty(),
        "arrows that do not point down:\n{}",
        up.join("\n")
    );
}

#[test]
fn the_import_reader_skips_comments_and_the_test_module() {
    let text = "use crate::exit::Exit;\n// crate::ray is only named here\nfn f() { crate::time::after(); }\n#[cfg(test)]\nmod tests {\n    use crate::dev;\n}\n";
    let found: Vec<_> = crate_imports(text).into_iter().collect();
    assert_eq!(found, ["exit", "time"]);
}
