//! Helpers shared by the integration tests: a temp workspace, running the binary, creating
//! SQLite fixtures and reading tables back row by row.

#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use sqlx::{Row, SqlitePool};

/// Path of the binary under test (built by cargo for integration tests).
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_backfill"))
}

/// A temporary folder holding a test's databases, specs and state store.
pub struct Workspace {
    pub dir: tempfile::TempDir,
}

/// What one invocation of the binary did.
#[derive(Debug)]
pub struct Ran {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    fn from(output: Output) -> Ran {
        Ran {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Parses stdout as JSON (for `--json` runs).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }
}

impl Workspace {
    pub fn new() -> Workspace {
        Workspace {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The state store URL of this workspace.
    pub fn state(&self) -> String {
        format!("sqlite://{}", self.path("state.db").display())
    }

    /// A `Command` for the binary, in this workspace, with this workspace's state store.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin());
        cmd.current_dir(self.dir.path())
            .env("BACKFILL_STATE", self.state())
            .env_remove("RUST_LOG")
            .args(args);
        cmd
    }

    /// Runs the binary to completion.
    pub fn run(&self, args: &[&str]) -> Ran {
        Ran::from(self.command(args).output().expect("run backfill"))
    }

    /// Writes a file (e.g. a spec) into the workspace; returns its path as a string.
    pub fn write(&self, name: &str, text: &str) -> String {
        let path = self.path(name);
        std::fs::write(&path, text).expect("write file");
        path.display().to_string()
    }
}

/// Opens (creating if needed) a SQLite database file.
pub async fn sqlite(path: &Path) -> SqlitePool {
    backfill_testkit::servers::sqlite(path).await
}

/// Runs each `;`-free statement in order.
pub async fn exec(pool: &SqlitePool, statements: &[&str]) {
    for sql in statements {
        sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
            .execute(pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

/// Every row of `sql` as text cells (NULL as `None`), in the query's order: for row-by-row
/// comparison of targets.
pub async fn rows(pool: &SqlitePool, sql: &str) -> Vec<Vec<Option<String>>> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_all(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    rows.iter()
        .map(|r| {
            (0..r.len())
                .map(|i| {
                    use sqlx::ValueRef;
                    let raw = r.try_get_raw(i).expect("cell");
                    if raw.is_null() {
                        None
                    } else if let Ok(v) = r.try_get::<i64, _>(i) {
                        Some(format!("i:{v}"))
                    } else if let Ok(v) = r.try_get::<f64, _>(i) {
                        Some(format!("f:{v:?}"))
                    } else if let Ok(v) = r.try_get::<String, _>(i) {
                        Some(format!("t:{v}"))
                    } else {
                        let v: Vec<u8> = r.try_get(i).expect("blob");
                        Some(format!("b:{v:?}"))
                    }
                })
                .collect()
        })
        .collect()
}

/// Creates `events` in a new source database at `path` with `n` rows spread over `days` days
/// from 2026-01-01, RFC 3339 text timestamps, NULLs and unicode.
pub async fn make_source(path: &Path, n: i64, days: i64) -> SqlitePool {
    let pool = sqlite(path).await;
    exec(
        &pool,
        &["CREATE TABLE events (id INTEGER PRIMARY KEY, user_id INTEGER, amount REAL, ts TEXT NOT NULL, note TEXT)"],
    )
    .await;
    sqlx::query(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1) \
         INSERT INTO events SELECT i, (i * 7919) % 1000, ((i * 37) % 100000) / 100.0, \
           strftime('%Y-%m-%dT%H:%M:%SZ', 1767225600 + (i - 1) * (?2 * 86400) / ?1, 'unixepoch'), \
           CASE WHEN i % 7 = 0 THEN NULL WHEN i % 5 = 0 THEN 'Ünïcödé ✓ ' || i ELSE 'Note ' || i END \
         FROM n",
    )
    .bind(n)
    .bind(days)
    .execute(&pool)
    .await
    .expect("fill source");
    exec(&pool, &["CREATE INDEX events_ts ON events (ts)"]).await;
    pool
}

/// Creates the empty target table `events_copy` at `path`.
pub async fn make_target(path: &Path) -> SqlitePool {
    let pool = sqlite(path).await;
    exec(
        &pool,
        &["CREATE TABLE events_copy (id INTEGER PRIMARY KEY, user_id INTEGER, amount_cents INTEGER, ts TEXT NOT NULL, note TEXT)"],
    )
    .await;
    pool
}

/// A spec copying `events` into `events_copy` (amount → cents, note lower-cased) by day.
pub fn copy_spec(source: &str, target: &str, days: i64, extra_limits: &str) -> String {
    let end = chrono::NaiveDate::from_ymd_opt(2026, 1, 1).unwrap() + chrono::Days::new(days as u64);
    format!(
        r#"name = "copy_events"
reason = "integration test"

[source]
url = "sqlite://{source}"
query = "SELECT id, user_id, CAST(round(amount * 100) AS INTEGER) AS amount_cents, ts, lower(note) AS note FROM events WHERE ts >= :start AND ts < :end"
time_column = "ts"

[target]
url = "sqlite://{target}"
table = "events_copy"
key = ["id"]

[scope]
start = "2026-01-01T00:00:00Z"
end = "{end}T00:00:00Z"
partition = "1d"

[limits]
concurrency = 4
batch_rows = 1000
{extra_limits}
"#
    )
}

/// In `ws`: a 3-day source of `rows` rows (`source.db`), an empty target (`target.db`) and
/// `spec.toml` copying one to the other ([`copy_spec`]), its `batch_rows = 1000` replaced by
/// `limits`.
pub async fn copy_workspace(ws: &Workspace, rows: i64, limits: &str) {
    make_source(&ws.path("source.db"), rows, 3)
        .await
        .close()
        .await;
    make_target(&ws.path("target.db")).await.close().await;
    let spec = copy_spec(
        &ws.path("source.db").display().to_string(),
        &ws.path("target.db").display().to_string(),
        3,
        "",
    )
    .replace("batch_rows = 1000", limits);
    ws.write("spec.toml", &spec);
}

/// The reference target computed in Rust from the source rows, independent of the SQL
/// transform: `(id, user_id, amount_cents, ts, note)` with cents rounded half away from zero
/// and ASCII lower-casing (SQLite's `lower`).
pub async fn reference(source: &SqlitePool) -> Vec<Vec<Option<String>>> {
    let rows = sqlx::query("SELECT id, user_id, amount, ts, note FROM events ORDER BY id")
        .fetch_all(source)
        .await
        .expect("read source");
    rows.iter()
        .map(|r| {
            let id: i64 = r.get(0);
            let user: Option<i64> = r.get(1);
            let amount: Option<f64> = r.get(2);
            let ts: String = r.get(3);
            let note: Option<String> = r.get(4);
            vec![
                Some(format!("i:{id}")),
                user.map(|u| format!("i:{u}")),
                amount.map(|a| format!("i:{}", (a * 100.0).round() as i64)),
                Some(format!("t:{ts}")),
                note.map(|n| format!("t:{}", n.to_ascii_lowercase())),
            ]
        })
        .collect()
}

/// The target table as rows, ordered by id.
pub async fn target_rows(target: &SqlitePool) -> Vec<Vec<Option<String>>> {
    rows(
        target,
        "SELECT id, user_id, amount_cents, ts, note FROM events_copy ORDER BY id",
    )
    .await
}

/// `copy_spec` in `replace` mode: every day of `events_copy` (by `ts`) is deleted and written
/// again from the source, in one transaction per partition.
pub fn replace_spec(source: &str, target: &str, days: i64, extra_limits: &str) -> String {
    let spec = copy_spec(source, target, days, extra_limits);
    let with_mode = spec.replacen(
        "key = [\"id\"]\n",
        "key = [\"id\"]\nmode = \"replace\"\nwindow_column = \"ts\"\n",
        1,
    );
    assert_ne!(
        spec, with_mode,
        "copy_spec changed: cannot set replace mode"
    );
    with_mode
}

/// `backfill runs --json` in `ws`: every run (newest first).
pub fn runs_json(ws: &Workspace) -> Vec<serde_json::Value> {
    let ran = ws.run(&["runs", "--json", "--limit", "1000"]);
    assert_eq!(ran.code, 0, "backfill runs failed: {ran:?}");
    ran.json()
        .as_array()
        .cloned()
        .expect("runs --json is an array")
}

/// `backfill audit RUN --json` in `ws`: the run's audit events in order.
pub fn audit_events(ws: &Workspace, run_id: &str) -> Vec<serde_json::Value> {
    let ran = ws.run(&["audit", run_id, "--json"]);
    assert_eq!(ran.code, 0, "backfill audit {run_id} failed: {ran:?}");
    ran.json()
        .as_array()
        .cloned()
        .expect("audit --json is an array")
}

/// Asserts that `actual` and `expected` (rows whose first cell is the key, as read by `rows`)
/// are the same; on failure names the missing, unexpected, duplicated and wrong keys instead
/// of printing every row.
pub fn assert_same_rows(
    actual: &[Vec<Option<String>>],
    expected: &[Vec<Option<String>>],
    what: &str,
) {
    use std::collections::BTreeMap;
    if actual == expected {
        return;
    }
    type Cell = Option<String>;
    type Indexed<'a> = (BTreeMap<&'a Cell, &'a Vec<Cell>>, Vec<&'a Cell>);
    fn index(rows: &[Vec<Cell>]) -> Indexed<'_> {
        let mut map = BTreeMap::new();
        let mut duplicated = Vec::new();
        for row in rows {
            if map.insert(&row[0], row).is_some() {
                duplicated.push(&row[0]);
            }
        }
        (map, duplicated)
    }
    let (got, dup_got) = index(actual);
    let (want, _) = index(expected);
    let missing: Vec<_> = want.keys().filter(|k| !got.contains_key(*k)).collect();
    let unexpected: Vec<_> = got.keys().filter(|k| !want.contains_key(*k)).collect();
    let wrong: Vec<_> = want
        .iter()
        .filter_map(|(k, w)| got.get(k).filter(|g| **g != *w).map(|g| (g, w)))
        .collect();
    panic!(
        "{what}: {} rows, {} expected\n  {} missing, e.g. {:?}\n  {} unexpected, e.g. {:?}\n  \
         {} duplicated, e.g. {:?}\n  {} wrong, e.g. (got, want) {:?}",
        actual.len(),
        expected.len(),
        missing.len(),
        &missing[..missing.len().min(5)],
        unexpected.len(),
        &unexpected[..unexpected.len().min(5)],
        dup_got.len(),
        &dup_got[..dup_got.len().min(5)],
        wrong.len(),
        &wrong[..wrong.len().min(3)],
    );
}

/// True once a session of the `backfill` binary on `pool`'s PostgreSQL server waits on a
/// lock (running a statement that contains `statement`, when given), polled every 10 ms;
/// false after `within`.
pub async fn backfill_waits_on_a_lock(
    pool: &sqlx::PgPool,
    statement: Option<&str>,
    within: Duration,
) -> bool {
    let started = std::time::Instant::now();
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
             AND application_name = 'backfill' AND query LIKE $1",
        )
        .bind(statement.map_or_else(|| "%".to_owned(), |s| format!("%{s}%")))
        .fetch_one(pool)
        .await
        .expect("pg_stat_activity");
        if waiting > 0 {
            return true;
        }
        if started.elapsed() > within {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
