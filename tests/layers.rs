//! The crate's layers run one way (issue 19): a module may use the ones below it, never one
//! above. This test reads `src/` and fails naming the file and the reference that goes up, so a
//! new import that ties the layers into a circle is caught in the suite, not in a review.
//!
//! The order, lowest first (CONTRIBUTING.md, "How the code is organised"):
//! `error`/`types`/`redact` → `transport` → `auth` → `config` → `rest` → `mutex` (lease
//! operations) → `locker` → coordination layers → `cli` (the binary, which sees only the
//! library's public API).

use std::path::{Path, PathBuf};

/// Each top-level module of the library and its layer (higher uses lower).
const LAYERS: &[(&str, u8)] = &[
    ("error", 0),
    ("types", 0),
    ("redact", 0),
    ("scrub", 0),
    ("telemetry", 0),
    ("transport", 1),
    ("auth", 2),
    ("config", 3),
    ("rest", 4),
    ("mutex", 5),
    ("locker", 6),
    ("election", 7),
    ("semaphore", 7),
];

fn layer(module: &str) -> Option<u8> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|(_, l)| *l)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src/ is readable") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The modules named as `crate::<module>` in the code of `text` (comments skipped: a doc link to
/// a higher layer is a pointer for readers, not a dependency).
fn crate_references(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let code = line.trim_start();
        if code.starts_with("//") {
            continue;
        }
        let code = code.split(" //").next().unwrap_or(code);
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let after = &rest[at + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.push((n + 1, name));
            }
            rest = after;
        }
    }
    found
}

#[test]
fn no_module_uses_one_above_it() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    let mut upward = Vec::new();
    let mut unknown = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&root).expect("under src/");
        let top = rel.components().next().expect("a path").as_os_str().to_string_lossy();
        let top = top.trim_end_matches(".rs");
        if matches!(top, "lib" | "main" | "cli") {
            // The crate root re-exports every layer; the CLI is the binary, on top.
            continue;
        }
        let Some(own) = layer(top) else {
            unknown.push(rel.display().to_string());
            continue;
        };
        let text = std::fs::read_to_string(file).expect("a readable source file");
        for (line, module) in crate_references(&text) {
            match layer(&module) {
                Some(used) if used > own => upward.push(format!(
                    "{}:{line} ({top}, layer {own}) uses crate::{module} (layer {used})",
                    rel.display()
                )),
                Some(_) => {}
                None => unknown.push(format!("{}:{line}: crate::{module}", rel.display())),
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "modules without a layer (add them to LAYERS in tests/layers.rs and to CONTRIBUTING.md):\n{}",
        unknown.join("\n")
    );
    assert!(
        upward.is_empty(),
        "imports that go up a layer (move the shared item down instead):\n{}",
        upward.join("\n")
    );
}

#[test]
fn the_checker_sees_an_upward_use() {
    // The test above proves nothing if it cannot see a reference: it must find these.
    let text = "use crate::rest::BlobClient;\n    let x = crate::locker::Locker::new(m);\n// crate::cli in a comment\n";
    let found: Vec<String> = crate_references(text).into_iter().map(|(_, m)| m).collect();
    assert_eq!(found, ["rest", "locker"]);
}
