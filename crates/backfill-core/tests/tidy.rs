//! Tidy checks on the shape of the workspace, read from the parsed manifests of every crate
//! under `crates/` (every dependency table: `[dependencies]`, `[dev-dependencies]`,
//! `[build-dependencies]` and their `[target.'cfg(…)'.…]` forms, inline or dotted, renamed
//! or `workspace = true`):
//! - dependencies between our crates point one way (ARCHITECTURE.md): cli → engine →
//!   (store, connectors) → core;
//! - `backfill-testkit` is dev-only: a `[dev-dependencies]` entry anywhere, never a normal or
//!   build dependency;
//! - `core` stays pure: no async runtime, database driver, HTTP client, clock or randomness;
//! - every crate is known to these rules, and its folder name is its package name.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Which table a dependency was declared in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Normal,
    Dev,
    Build,
}

/// One dependency entry of a manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Dep {
    /// The package depended on (`package = "…"` when renamed, else the key).
    name: String,
    kind: Kind,
    /// The table it was found in, for messages (`[target.'cfg(unix)'.dependencies]`).
    table: String,
}

/// Every dependency of a parsed manifest, from all its dependency tables.
fn dependencies(manifest: &toml::Table) -> Vec<Dep> {
    let tables = [
        ("dependencies", Kind::Normal),
        ("dev-dependencies", Kind::Dev),
        ("dev_dependencies", Kind::Dev),
        ("build-dependencies", Kind::Build),
        ("build_dependencies", Kind::Build),
    ];
    let mut deps = Vec::new();
    let mut collect = |table: &toml::Table, prefix: &str| {
        for (key, kind) in tables {
            let Some(entries) = table.get(key).and_then(toml::Value::as_table) else {
                continue;
            };
            for (name, spec) in entries {
                let package = spec
                    .get("package")
                    .and_then(toml::Value::as_str)
                    .unwrap_or(name);
                deps.push(Dep {
                    name: package.to_owned(),
                    kind,
                    table: format!("[{prefix}{key}]"),
                });
            }
        }
    };
    collect(manifest, "");
    if let Some(targets) = manifest.get("target").and_then(toml::Value::as_table) {
        for (cfg, table) in targets {
            if let Some(table) = table.as_table() {
                collect(table, &format!("target.'{cfg}'."));
            }
        }
    }
    deps
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn parse(path: &Path) -> toml::Table {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.parse()
        .unwrap_or_else(|e| panic!("{} is not valid TOML: {e}", path.display()))
}

/// Every crate under `crates/`: folder name → parsed manifest.
fn crates() -> BTreeMap<String, toml::Table> {
    let dir = workspace_root().join("crates");
    let mut crates = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let manifest = path.join("Cargo.toml");
        if manifest.is_file() {
            let folder = path.file_name().unwrap().to_string_lossy().into_owned();
            crates.insert(folder, parse(&manifest));
        }
    }
    assert!(crates.len() >= 6, "found only {:?}", crates.keys());
    crates
}

/// The crates each crate may use as a normal (or build) dependency: ARCHITECTURE.md's
/// direction. Dev-dependencies may use the same, plus `backfill-testkit`.
const ALLOWED: [(&str, &[&str]); 6] = [
    ("backfill-core", &[]),
    ("backfill-store", &["backfill-core"]),
    ("backfill-connectors", &["backfill-core"]),
    (
        "backfill-engine",
        &["backfill-core", "backfill-store", "backfill-connectors"],
    ),
    (
        "backfill-cli",
        &[
            "backfill-core",
            "backfill-store",
            "backfill-connectors",
            "backfill-engine",
        ],
    ),
    ("backfill-testkit", &["backfill-core"]),
];

const TESTKIT: &str = "backfill-testkit";

#[test]
fn every_crate_is_known_and_named_after_its_folder() {
    for (folder, manifest) in crates() {
        let name = manifest
            .get("package")
            .and_then(|p| p.get("name"))
            .and_then(toml::Value::as_str);
        assert_eq!(name, Some(folder.as_str()), "crates/{folder}/Cargo.toml");
        assert!(
            ALLOWED.iter().any(|(krate, _)| *krate == folder),
            "crates/{folder} is not in tidy.rs's ALLOWED table: add it with the crates it may \
             depend on (see ARCHITECTURE.md)"
        );
    }
}

#[test]
fn dependencies_point_one_way() {
    let crates = crates();
    for (krate, ok) in ALLOWED {
        let manifest = crates
            .get(krate)
            .unwrap_or_else(|| panic!("crates/{krate} is gone: update tidy.rs's ALLOWED"));
        for dep in dependencies(manifest)
            .iter()
            .filter(|d| d.name.starts_with("backfill-"))
        {
            let allowed = ok.contains(&dep.name.as_str())
                || (dep.kind == Kind::Dev && dep.name == TESTKIT && krate != TESTKIT);
            assert!(
                allowed,
                "{krate} must not depend on {} ({} of crates/{krate}/Cargo.toml)",
                dep.name, dep.table
            );
        }
    }
}

#[test]
fn testkit_is_only_ever_a_dev_dependency() {
    for (krate, manifest) in crates() {
        for dep in dependencies(&manifest) {
            assert!(
                dep.name != TESTKIT || dep.kind == Kind::Dev,
                "{krate} takes {TESTKIT} in {}: it holds test helpers only, so it belongs in \
                 [dev-dependencies]",
                dep.table
            );
        }
    }
}

#[test]
fn core_has_no_io_dependencies() {
    let banned = [
        "tokio",
        "sqlx",
        "reqwest",
        "hyper",
        "axum",
        "rand",
        "getrandom",
        "governor",
        "tracing",
        "futures-util",
        "socket2",
    ];
    let crates = crates();
    for dep in dependencies(&crates["backfill-core"]) {
        assert!(
            dep.kind == Kind::Dev || !banned.contains(&dep.name.as_str()),
            "backfill-core must stay pure but depends on {} ({})",
            dep.name,
            dep.table
        );
    }
}

/// The reader finds entries the old line matcher missed: dotted tables, target-specific
/// tables, renamed packages, build dependencies.
#[test]
fn every_dependency_table_is_read() {
    let manifest: toml::Table = r#"
        [package]
        name = "x"

        [dependencies]
        serde.workspace = true
        tokio = { version = "1", features = ["rt"] }

        [dependencies.sqlx]
        workspace = true

        [target.'cfg(unix)'.dependencies]
        socket2.workspace = true

        [target.'cfg(unix)'.dev-dependencies]
        libc = "0.2"

        [dev-dependencies]
        kit = { package = "backfill-testkit", path = "../backfill-testkit" }

        [build-dependencies]
        cc = "1"
    "#
    .parse()
    .unwrap();
    let found: Vec<(String, Kind, String)> = dependencies(&manifest)
        .into_iter()
        .map(|d| (d.name, d.kind, d.table))
        .collect();
    let expected = [
        ("serde", Kind::Normal, "[dependencies]"),
        ("sqlx", Kind::Normal, "[dependencies]"),
        ("tokio", Kind::Normal, "[dependencies]"),
        ("backfill-testkit", Kind::Dev, "[dev-dependencies]"),
        ("cc", Kind::Build, "[build-dependencies]"),
        ("socket2", Kind::Normal, "[target.'cfg(unix)'.dependencies]"),
        ("libc", Kind::Dev, "[target.'cfg(unix)'.dev-dependencies]"),
    ];
    let expected: Vec<(String, Kind, String)> = expected
        .into_iter()
        .map(|(n, k, t)| (n.to_owned(), k, t.to_owned()))
        .collect();
    assert_eq!(found, expected);
}
