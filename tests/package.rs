//! What a user or a legal review reads before the code: the licence texts the manifest names,
//! and a changelog that knows the version being built. (`scripts/check-package` checks the
//! packaged crate itself.)

use std::path::Path;

fn read(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn both_licence_texts_are_there_as_the_manifest_says() {
    assert_eq!(env!("CARGO_PKG_LICENSE"), "MIT OR Apache-2.0");
    let mit = read("LICENSE-MIT");
    assert!(mit.starts_with("MIT License\n"), "LICENSE-MIT is not the MIT licence");
    assert!(mit.contains("Permission is hereby granted, free of charge, to any person obtaining a copy"));
    assert!(mit.contains("THE SOFTWARE IS PROVIDED \"AS IS\", WITHOUT WARRANTY OF ANY KIND"));
    let apache = read("LICENSE-APACHE");
    assert!(apache.contains("Apache License\n                        Version 2.0, January 2004"));
    assert!(apache.contains("END OF TERMS AND CONDITIONS"));
    assert!(apache.contains("APPENDIX: How to apply the Apache License to your work."));
    let readme = read("README.md");
    for needle in [
        "LICENSE-APACHE",
        "LICENSE-MIT",
        "Unless you explicitly state otherwise, any contribution",
    ] {
        assert!(readme.contains(needle), "README.md does not mention {needle:?}");
    }
}

#[test]
fn the_changelog_has_a_section_for_this_version_under_unreleased() {
    let changelog = read("CHANGELOG.md");
    let headings: Vec<&str> = changelog.lines().filter(|l| l.starts_with("## ")).collect();
    assert_eq!(
        headings.first(),
        Some(&"## [Unreleased]"),
        "Keep a Changelog: [Unreleased] comes first"
    );
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        headings
            .iter()
            .any(|h| *h == format!("## [{version}]") || h.starts_with(&format!("## [{version}] - "))),
        "CHANGELOG.md has no section for version {version} (from Cargo.toml): add one when bumping it"
    );
    // Each released section says what changed, with Keep a Changelog's kinds of change.
    let kinds = [
        "### Added",
        "### Changed",
        "### Deprecated",
        "### Removed",
        "### Fixed",
        "### Security",
    ];
    for line in changelog.lines().filter(|l| l.starts_with("### ")) {
        assert!(
            kinds.contains(&line),
            "unknown kind of change {line:?}; use one of {kinds:?}"
        );
    }
}
