//! `mode = "shadow"` and `backfill promote` through the real binary, on SQLite, PostgreSQL and
//! MySQL/MariaDB (their renames differ): a shadow run leaves the live table untouched; promote
//! swaps the shadow in with its rows and indexes; a live write in the scope since seeding
//! refuses promote until `--force`, which the audit trail records; swapping back restores the
//! original; `seed_outside_scope` copies the live rows outside the scope; a run killed with
//! SIGKILL resumes into the same shadow.

use std::process::Stdio;
use std::time::{Duration, Instant};

use backfill_testkit::servers::{Db, System};

use crate::support::{Workspace, audit_events, runs_json};

/// Rows per day and days of the fixture: ids `1..=300`, day `d` (from 0) holding ids
/// `30d+1 ..= 30d+30`.
const PER_DAY: i64 = 30;
const DAYS: i64 = 10;

/// The fixture's rows as SQL tuples `(id, amount_cents, ts, note)`; `amount(i)` per id.
fn tuples(system: System, amount: impl Fn(i64) -> i64) -> String {
    (1..=PER_DAY * DAYS)
        .map(|i| {
            let day = (i - 1) / PER_DAY + 1;
            let minute = (i - 1) % PER_DAY;
            let ts = match system {
                System::Sqlite => format!("2026-01-{day:02}T00:{minute:02}:00Z"),
                _ => format!("2026-01-{day:02} 00:{minute:02}:00"),
            };
            format!("({i}, {}, '{ts}', 'note {i}')", amount(i))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn create(system: System, table: &str) -> String {
    let ts = match system {
        System::Sqlite => "TEXT",
        System::Postgres => "timestamptz",
        System::MySql => "DATETIME(6)",
    };
    format!(
        "CREATE TABLE {table} (id BIGINT PRIMARY KEY, amount_cents BIGINT NOT NULL, \
         ts {ts} NOT NULL, note VARCHAR(100))"
    )
}

/// Source `src` (amount = 100 × id) and live target `dst` (the same rows with amount 0, and
/// an index on `ts`); `None` when the server is not there.
pub(crate) async fn fixture(system: System, ws: &Workspace) -> Option<(Db, Db)> {
    let source = Db::open(system, ws.dir.path(), "bf_shadow", "src").await?;
    let target = Db::open(system, ws.dir.path(), "bf_shadow", "dst").await?;
    let src = source.table("src");
    source.exec(&create(system, &src)).await;
    source
        .exec(&format!(
            "INSERT INTO {src} VALUES {}",
            tuples(system, |i| i * 100)
        ))
        .await;
    let dst = target.table("dst");
    target.exec(&create(system, &dst)).await;
    target
        .exec(&format!(
            "INSERT INTO {dst} VALUES {}",
            tuples(system, |_| 0)
        ))
        .await;
    target
        .exec(&format!("CREATE INDEX dst_ts ON {dst} (ts)"))
        .await;
    Some((source, target))
}

/// A shadow spec over days 3 to 6 (ids 61..=180), with `extra` lines in `[target]` and
/// `limits` lines.
pub(crate) fn spec(source: &Db, target: &Db, extra: &str, limits: &str) -> String {
    let src = source.table("src");
    format!(
        r#"name = "shadow_test"
reason = "integration test"

[source]
url = "{}"
query = "SELECT id, amount_cents, ts, note FROM {src} WHERE ts >= :start AND ts < :end"
time_column = "ts"

[target]
url = "{}"
table = "{}"
key = ["id"]
mode = "shadow"
{extra}

[scope]
start = "2026-01-03T00:00:00Z"
end = "2026-01-07T00:00:00Z"
partition = "1d"

[limits]
concurrency = 1
batch_rows = 10
{limits}
"#,
        source.url(),
        target.url(),
        target.table("dst"),
    )
}

/// `SELECT count(*), sum(amount_cents)` of `table` in `db`; `None` when it does not exist.
pub(crate) async fn count_sum(db: &Db, table: &str) -> Option<(i64, i64)> {
    let int = match db.system() {
        System::MySql => "SIGNED",
        _ => "BIGINT",
    };
    let sql = format!(
        "SELECT CAST(count(*) AS {int}), CAST(COALESCE(sum(amount_cents), 0) AS {int}) FROM {}",
        db.table(table)
    );
    let row: Result<(i64, i64), sqlx::Error> = match db {
        Db::Sqlite(pool, _) => {
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .fetch_one(pool)
                .await
        }
        Db::Postgres(s) => {
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .fetch_one(s.pool())
                .await
        }
        Db::MySql(d) => {
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .fetch_one(d.pool())
                .await
        }
    };
    row.ok()
}

/// How many indexes `table` has (the primary key's included where the catalog lists it).
async fn indexes(db: &Db, table: &str) -> i64 {
    let qualified = db.table(table);
    let (schema, name) = qualified.split_once('.').unwrap_or(("", &qualified));
    let sql = match db.system() {
        System::Sqlite => format!(
            "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND tbl_name = '{name}'"
        ),
        System::Postgres => format!(
            "SELECT count(*) FROM pg_indexes WHERE schemaname = '{schema}' AND tablename = '{name}'"
        ),
        System::MySql => format!(
            "SELECT CAST(count(DISTINCT index_name) AS SIGNED) FROM information_schema.statistics \
             WHERE table_schema = '{schema}' AND table_name = '{name}'"
        ),
    };
    let n: Result<(i64,), sqlx::Error> = match db {
        Db::Sqlite(pool, _) => {
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .fetch_one(pool)
                .await
        }
        Db::Postgres(s) => {
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .fetch_one(s.pool())
                .await
        }
        Db::MySql(d) => {
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .fetch_one(d.pool())
                .await
        }
    };
    n.expect("count indexes").0
}

/// The shadow and old table names of run `run_id` (the run id's last 8 hex digits).
fn names(run_id: &str) -> (String, String) {
    let hex: String = run_id.chars().filter(char::is_ascii_hexdigit).collect();
    let short = &hex[hex.len() - 8..];
    (format!("dst__bf_{short}"), format!("dst__bf_old_{short}"))
}

/// Sum of the source's amounts over ids `from..=to`.
pub(crate) fn amounts(from: i64, to: i64) -> i64 {
    (from..=to).map(|i| i * 100).sum()
}

pub(crate) fn only_run_id(ws: &Workspace) -> String {
    let runs = runs_json(ws);
    assert_eq!(runs.len(), 1, "{runs:?}");
    runs[0]["run_id"].as_str().expect("run_id").to_owned()
}

async fn shadow_run_promote_and_swap_back(system: System) {
    let ws = Workspace::new();
    let Some((source, target)) = fixture(system, &ws).await else {
        return;
    };
    let path = ws.write(
        "spec.toml",
        &spec(&source, &target, "seed_outside_scope = true", ""),
    );
    let ran = ws.run(&["run", &path]);
    assert_eq!(ran.code, 0, "{ran:?}");
    let run_id = only_run_id(&ws);
    let (shadow, old) = names(&run_id);

    // The live table is untouched; the shadow holds the scope from the source and, seeded,
    // the live rows outside it.
    assert_eq!(count_sum(&target, "dst").await, Some((300, 0)));
    let in_scope = amounts(61, 180);
    assert_eq!(count_sum(&target, &shadow).await, Some((300, in_scope)));
    let live_indexes = indexes(&target, "dst").await;
    assert_eq!(indexes(&target, &shadow).await, live_indexes);

    // A live write in the scope since seeding refuses promote (exit 2), changing nothing.
    let dst = target.table("dst");
    target
        .exec(&format!(
            "UPDATE {dst} SET note = 'live write' WHERE id = 70"
        ))
        .await;
    let refused = ws.run(&["promote", &run_id]);
    assert_eq!(refused.code, 2, "{refused:?}");
    assert!(
        refused
            .stderr
            .contains("changed since the shadow was seeded"),
        "{refused:?}"
    );
    assert!(refused.stderr.contains("--force"), "{refused:?}");
    assert_eq!(count_sum(&target, "dst").await, Some((300, 0)));

    // --force promotes: the shadow's rows and indexes are live, the old table is kept.
    let forced = ws.run(&["promote", &run_id, "--force", "--json"]);
    assert_eq!(forced.code, 0, "{forced:?}");
    let json = forced.json();
    assert_eq!(json["forced"], true, "{json}");
    assert!(json["lock_ms"].as_f64().is_some(), "{json}");
    assert_eq!(count_sum(&target, "dst").await, Some((300, in_scope)));
    assert_eq!(indexes(&target, "dst").await, live_indexes);
    assert_eq!(count_sum(&target, &old).await, Some((300, 0)));
    assert_eq!(count_sum(&target, &shadow).await, None);
    let events = audit_events(&ws, &run_id);
    let promoted: Vec<_> = events
        .iter()
        .filter(|e| e["action"] == "run.promoted")
        .collect();
    assert_eq!(promoted.len(), 1, "{events:#?}");
    assert_eq!(promoted[0]["detail"]["forced"], true, "{promoted:?}");
    let again = ws.run(&["promote", &run_id]);
    assert_eq!(again.code, 2, "{again:?}");
    assert!(again.stderr.contains("already promoted"), "{again:?}");

    // Swapping back restores the original live table, live write included.
    let back = ws.run(&["rollback", &run_id]);
    assert_eq!(back.code, 0, "{back:?}");
    assert_eq!(count_sum(&target, "dst").await, Some((300, 0)));
    assert_eq!(count_sum(&target, &shadow).await, Some((300, in_scope)));
    assert_eq!(count_sum(&target, &old).await, None);

    // Cleanup drops the table that is not live.
    let cleaned = ws.run(&["cleanup", &run_id]);
    assert_eq!(cleaned.code, 0, "{cleaned:?}");
    assert_eq!(count_sum(&target, &shadow).await, None);
    assert_eq!(count_sum(&target, "dst").await, Some((300, 0)));
    let actions: Vec<String> = audit_events(&ws, &run_id)
        .iter()
        .filter_map(|e| e["action"].as_str().map(str::to_owned))
        .filter(|a| a.contains("shadow") || a.contains("promoted"))
        .collect();
    assert_eq!(
        actions,
        [
            "shadow.seeded",
            "run.promoted",
            "run.unpromoted",
            "shadow.cleaned"
        ]
    );
    let verify = ws.run(&["audit", "--verify"]);
    assert_eq!(verify.code, 0, "{verify:?}");
    source.drop_now().await;
    target.drop_now().await;
}

#[tokio::test]
async fn shadow_promote_sqlite() {
    shadow_run_promote_and_swap_back(System::Sqlite).await;
}

#[tokio::test]
async fn shadow_promote_postgres() {
    shadow_run_promote_and_swap_back(System::Postgres).await;
}

#[tokio::test]
async fn shadow_promote_mysql() {
    shadow_run_promote_and_swap_back(System::MySql).await;
}

/// Without `seed_outside_scope` the promoted table holds the scope only, and an unchanged
/// live table promotes without `--force` (`forced: false`).
async fn unseeded_shadow_holds_the_scope_only(system: System) {
    let ws = Workspace::new();
    let Some((source, target)) = fixture(system, &ws).await else {
        return;
    };
    let path = ws.write("spec.toml", &spec(&source, &target, "", ""));
    let ran = ws.run(&["run", &path]);
    assert_eq!(ran.code, 0, "{ran:?}");
    let run_id = only_run_id(&ws);
    let (shadow, _) = names(&run_id);
    assert_eq!(
        count_sum(&target, &shadow).await,
        Some((120, amounts(61, 180)))
    );
    // A live write outside the scope does not refuse (only the scope is fingerprinted).
    let dst = target.table("dst");
    target
        .exec(&format!(
            "UPDATE {dst} SET note = 'live write' WHERE id = 5"
        ))
        .await;
    let promoted = ws.run(&["promote", &run_id, "--json"]);
    assert_eq!(promoted.code, 0, "{promoted:?}");
    assert_eq!(promoted.json()["forced"], false);
    assert_eq!(
        count_sum(&target, "dst").await,
        Some((120, amounts(61, 180)))
    );
    source.drop_now().await;
    target.drop_now().await;
}

#[tokio::test]
async fn unseeded_shadow_sqlite() {
    unseeded_shadow_holds_the_scope_only(System::Sqlite).await;
}

#[tokio::test]
async fn unseeded_shadow_postgres() {
    unseeded_shadow_holds_the_scope_only(System::Postgres).await;
}

/// Promote refuses a run that has not succeeded, and a spec that is not a shadow write says
/// it has no shadow; seeding without a window column is refused while parsing.
#[tokio::test]
async fn promote_refusals() {
    let ws = Workspace::new();
    let Some((source, target)) = fixture(System::Sqlite, &ws).await else {
        return;
    };
    let bad = spec(&source, &target, "seed_outside_scope = true", "")
        .replace("time_column = \"ts\"\n", "");
    let bad_path = ws.write("bad.toml", &bad);
    let checked = ws.run(&["check", "--offline", &bad_path]);
    assert_eq!(checked.code, 2, "{checked:?}");
    assert!(
        checked.stderr.contains("target.seed_outside_scope"),
        "{checked:?}"
    );

    let upsert = spec(&source, &target, "", "").replace("mode = \"shadow\"\n", "");
    let path = ws.write("upsert.toml", &upsert);
    let ran = ws.run(&["run", &path]);
    assert_eq!(ran.code, 0, "{ran:?}");
    let run_id = only_run_id(&ws);
    let refused = ws.run(&["promote", &run_id]);
    assert_eq!(refused.code, 2, "{refused:?}");
    assert!(
        refused.stderr.contains("has no shadow table"),
        "{refused:?}"
    );

    let path = ws.write("shadow.toml", &spec(&source, &target, "", ""));
    let created = ws.run(&["run", &path, "--create-only"]);
    assert_eq!(created.code, 0, "{created:?}");
    let run_id = created.stdout.trim().to_owned();
    let refused = ws.run(&["promote", &run_id]);
    assert_eq!(refused.code, 2, "{refused:?}");
    assert!(
        refused.stderr.contains("only a run that succeeded"),
        "{refused:?}"
    );
}

/// A shadow run killed with SIGKILL mid-run resumes into the same shadow (seeded once), and
/// the live table is untouched throughout.
#[tokio::test]
async fn shadow_resume_after_sigkill_mid_run() {
    let ws = Workspace::new();
    let Some((source, target)) = fixture(System::Sqlite, &ws).await else {
        return;
    };
    let path = ws.write(
        "spec.toml",
        &spec(
            &source,
            &target,
            "seed_outside_scope = true",
            "rows_per_second = 40",
        ),
    );
    let mut child = ws
        .command(&["run", &path])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn backfill");
    let started = Instant::now();
    loop {
        let status = ws.run(&["status", "--json"]);
        let done = if status.code == 0 {
            status.json()["partitions"]["done"].as_u64().unwrap_or(0)
        } else {
            0
        };
        if done >= 1 || started.elapsed() > Duration::from_secs(60) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let exited = child.try_wait().expect("try_wait").is_some();
    let _ = child.kill();
    let _ = child.wait();
    assert!(!exited, "the run finished before the kill");
    assert_eq!(count_sum(&target, "dst").await, Some((300, 0)));

    let resumed = ws.run(&["run", &path]);
    assert_eq!(resumed.code, 0, "{resumed:?}");
    let run_id = only_run_id(&ws);
    let (shadow, _) = names(&run_id);
    assert_eq!(
        count_sum(&target, &shadow).await,
        Some((300, amounts(61, 180)))
    );
    assert_eq!(count_sum(&target, "dst").await, Some((300, 0)));
    let seeded = audit_events(&ws, &run_id)
        .iter()
        .filter(|e| e["action"] == "shadow.seeded")
        .count();
    assert_eq!(seeded, 1);
}

/// PostgreSQL: a `serial` column's sequence follows the promoted table, so dropping the old
/// table after a promote works and new rows still get numbers; an identity column continues
/// past the live table's last number.
#[tokio::test]
async fn serial_sequence_follows_the_promoted_table_postgres() {
    let ws = Workspace::new();
    let Some((source, target)) = fixture(System::Postgres, &ws).await else {
        return;
    };
    let dst = target.table("dst");
    target
        .exec(&format!(
            "ALTER TABLE {dst} ADD COLUMN serial_no bigserial; \
             ALTER TABLE {dst} ALTER COLUMN id ADD GENERATED BY DEFAULT AS IDENTITY; \
             SELECT setval(pg_get_serial_sequence('{dst}', 'id'), 300)"
        ))
        .await;
    let path = ws.write("spec.toml", &spec(&source, &target, "", ""));
    let ran = ws.run(&["run", &path]);
    assert_eq!(ran.code, 0, "{ran:?}");
    let run_id = only_run_id(&ws);
    let promoted = ws.run(&["promote", &run_id]);
    assert_eq!(promoted.code, 0, "{promoted:?}");
    let cleaned = ws.run(&["cleanup", &run_id]);
    assert_eq!(cleaned.code, 0, "{cleaned:?}");
    target
        .exec(&format!(
            "INSERT INTO {dst} (amount_cents, ts) VALUES (1, '2026-02-01 00:00:00')"
        ))
        .await;
    assert_eq!(count_sum(&target, "dst").await.map(|c| c.0), Some(121));
    // The identity continued past the live table's sequence (300), not from 1.
    target
        .exec(&format!("DELETE FROM {dst} WHERE id = 301"))
        .await;
    assert_eq!(count_sum(&target, "dst").await.map(|c| c.0), Some(120));
    source.drop_now().await;
    target.drop_now().await;
}

/// A shadow whose reconciliation mismatched is not promoted, even with `--force`: someone
/// edited the shadow after the run, `backfill validate` records the mismatch, and promote
/// refuses naming it; once the row is right again and validated, promote goes through.
#[tokio::test]
async fn a_mismatched_shadow_is_not_promoted() {
    let ws = Workspace::new();
    let Some((source, target)) = fixture(System::Sqlite, &ws).await else {
        return;
    };
    let path = ws.write("spec.toml", &spec(&source, &target, "", ""));
    let ran = ws.run(&["run", &path]);
    assert_eq!(ran.code, 0, "{ran:?}");
    let run_id = only_run_id(&ws);
    let (shadow, _) = names(&run_id);
    target
        .exec(&format!(
            "UPDATE {shadow} SET amount_cents = -1 WHERE id = 100"
        ))
        .await;
    let validated = ws.run(&["validate", &run_id]);
    assert_eq!(validated.code, 1, "{validated:?}");
    for args in [
        vec!["promote", &run_id],
        vec!["promote", &run_id, "--force"],
    ] {
        let refused = ws.run(&args);
        assert_ne!(refused.code, 0, "{refused:?}");
        assert!(
            refused.stderr.contains("reconciliation failed"),
            "{refused:?}"
        );
    }
    assert_eq!(
        count_sum(&target, &target.table("dst")).await,
        Some((PER_DAY * DAYS, 0)),
        "the live table is untouched"
    );
    target
        .exec(&format!(
            "UPDATE {shadow} SET amount_cents = 10000 WHERE id = 100"
        ))
        .await;
    let validated = ws.run(&["validate", &run_id]);
    assert_eq!(validated.code, 0, "{validated:?}");
    let shadow_state = || ws.run(&["status", &run_id, "--json"]).json()["shadow"]["state"].clone();
    assert_eq!(shadow_state(), "seeded");
    let promoted = ws.run(&["promote", &run_id]);
    assert_eq!(promoted.code, 0, "{promoted:?}");
    assert_eq!(shadow_state(), "promoted");
    let text = ws.run(&["status", &run_id]);
    assert!(
        text.stdout
            .contains(&format!("shadow:     {shadow} (promoted")),
        "{text:?}"
    );
}
