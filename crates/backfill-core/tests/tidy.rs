//! Tidy checks on the shape of the workspace: dependencies point one way, and `core` stays
//! pure (no async runtime, database driver, HTTP client, clock or randomness).

use std::path::Path;

fn manifest(krate: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(krate)
        .join("Cargo.toml");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn dependencies(krate: &str) -> Vec<String> {
    let text = manifest(krate);
    let mut deps = Vec::new();
    let mut in_deps = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_deps = line == "[dependencies]";
            continue;
        }
        if in_deps && let Some((name, _)) = line.split_once(['=', '.']) {
            deps.push(name.trim().to_owned());
        }
    }
    deps
}

#[test]
fn core_has_no_io_dependencies() {
    let banned = [
        "tokio", "sqlx", "reqwest", "axum", "rand", "governor", "tracing",
    ];
    for dep in dependencies("backfill-core") {
        assert!(
            !banned.contains(&dep.as_str()),
            "backfill-core must stay pure but depends on {dep}"
        );
    }
}

#[test]
fn dependencies_point_one_way() {
    let allowed: [(&str, &[&str]); 4] = [
        ("backfill-core", &[]),
        ("backfill-store", &["backfill-core"]),
        ("backfill-connectors", &["backfill-core"]),
        (
            "backfill-engine",
            &["backfill-core", "backfill-store", "backfill-connectors"],
        ),
    ];
    for (krate, ok) in allowed {
        for dep in dependencies(krate)
            .iter()
            .filter(|d| d.starts_with("backfill-"))
        {
            assert!(
                ok.contains(&dep.as_str()),
                "{krate} must not depend on {dep}"
            );
        }
    }
}
