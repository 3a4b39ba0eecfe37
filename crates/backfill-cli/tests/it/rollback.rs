//! `backfill rollback` and `backfill cleanup` through the real binary, on SQLite, PostgreSQL
//! and MySQL/MariaDB: the whole target's fingerprint before a run equals the one after the
//! run and its rollback (upsert with 10% changed and 10% new rows, replace, and upsert with
//! `propagate_deletes`); a row edited after the run is a conflict, kept unless `--force`;
//! `--dry-run` changes nothing.

use backfill_connectors::fingerprint::{Column, Db, Relation, Scan};
use backfill_core::fingerprint::Fingerprint;
use backfill_core::secret::SecretUrl;
use backfill_testkit::servers::{Db as TestDb, System};
use serde_json::Value as J;

use crate::support::Workspace;

const PER_DAY: i64 = 30;
const DAYS: i64 = 10;

fn ts(system: System, i: i64) -> String {
    let day = (i - 1) / PER_DAY + 1;
    let minute = (i - 1) % PER_DAY;
    match system {
        System::Sqlite => format!("2026-01-{day:02}T00:{minute:02}:00Z"),
        _ => format!("2026-01-{day:02} 00:{minute:02}:00"),
    }
}

fn tuples(system: System, ids: impl Iterator<Item = i64>) -> String {
    ids.map(|i| {
        let note = if i % 7 == 0 {
            "NULL".to_owned()
        } else {
            format!("'note {i} é'")
        };
        format!("({i}, {}, '{}', {note})", i * 100, ts(system, i))
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
        "CREATE TABLE {table} (id BIGINT PRIMARY KEY, amount_cents BIGINT, ts {ts} NOT NULL, \
         note VARCHAR(100))"
    )
}

/// Source with 300 rows; target with the same but ids 1..=30 changed, 31..=60 missing and
/// two extra rows (1001, 1002) in day 7.
async fn fixture(system: System, ws: &Workspace) -> Option<(TestDb, TestDb)> {
    fixture_across(system, system, ws).await
}

/// [`fixture`] with the source on `from` and the target on `system`.
async fn fixture_across(from: System, system: System, ws: &Workspace) -> Option<(TestDb, TestDb)> {
    let source = TestDb::open(from, ws.dir.path(), "bf_undo", "src").await?;
    let target = TestDb::open(system, ws.dir.path(), "bf_undo", "dst").await?;
    let src = source.table("src");
    source.exec(&create(from, &src)).await;
    source
        .exec(&format!(
            "INSERT INTO {src} VALUES {}",
            tuples(from, 1..=PER_DAY * DAYS)
        ))
        .await;
    let dst = target.table("dst");
    target.exec(&create(system, &dst)).await;
    target
        .exec(&format!(
            "INSERT INTO {dst} VALUES {}",
            tuples(
                system,
                (1..=PER_DAY * DAYS).filter(|i| !(31..=60).contains(i))
            )
        ))
        .await;
    target
        .exec(&format!(
            "UPDATE {dst} SET amount_cents = amount_cents + 1, note = 'old' WHERE id <= 30"
        ))
        .await;
    let (a, b) = match system {
        System::Sqlite => ("2026-01-07T12:00:00Z", "2026-01-07T13:00:00Z"),
        _ => ("2026-01-07 12:00:00", "2026-01-07 13:00:00"),
    };
    target
        .exec(&format!(
            "INSERT INTO {dst} VALUES (1001, 5, '{a}', 'stray'), (1002, 6, '{b}', NULL)"
        ))
        .await;
    Some((source, target))
}

fn spec(source: &TestDb, target: &TestDb, mode: &str) -> String {
    let src = source.table("src");
    format!(
        r#"name = "undo_test"
reason = "integration test"

[source]
url = "{}"
query = "SELECT id, amount_cents, ts, note FROM {src} WHERE ts >= :start AND ts < :end"
time_column = "ts"

[target]
url = "{}"
table = "{}"
key = ["id"]
undo = true
{mode}

[scope]
start = "2026-01-01T00:00:00Z"
end = "2026-01-11T00:00:00Z"
partition = "1d"
"#,
        source.url(),
        target.url(),
        target.table("dst"),
    )
}

/// The whole target table's fingerprint, pushed down.
async fn fingerprint(target: &TestDb) -> Fingerprint {
    fingerprint_of(target, &target.table("dst")).await
}

/// The fingerprint of `table` of `target`, pushed down.
async fn fingerprint_of(target: &TestDb, table: &str) -> Fingerprint {
    let table = table.replace(['"', '`'], "");
    let db = Db::open(&SecretUrl::new(target.url()), 1, true)
        .await
        .expect("open target");
    let columns: Vec<Column> = db
        .catalog(&table)
        .await
        .expect("catalog")
        .iter()
        .map(|c| c.column().expect("kind"))
        .collect();
    let scan = Scan {
        relation: Relation::Table(&table),
        columns: &columns,
        range: None,
    };
    let fp = match &db {
        Db::Sqlite(p) => backfill_connectors::fingerprint::sqlite::fingerprint(p, &scan).await,
        Db::Postgres(p) => backfill_connectors::fingerprint::postgres::fingerprint(p, &scan).await,
        Db::MySql(p) => backfill_connectors::fingerprint::mysql::fingerprint(p, &scan).await,
    }
    .expect("fingerprint");
    db.close().await;
    fp
}

/// Runs `backfill rollback ID --json` and checks it succeeded with no conflict.
fn rolled_back_without_conflicts(ws: &Workspace, id: &str) {
    let back = ws.run(&["rollback", id, "--json"]);
    assert_eq!(back.code, 0, "{back:?}");
    assert_eq!(back.json()["conflicts"], 0, "{back:?}");
}

fn run_id(ran: &crate::support::Ran) -> String {
    ran.json()["run_id"].as_str().unwrap_or_default().to_owned()
}

async fn run_then_rollback_restores_the_target(system: System, mode: &str, expect: [u64; 3]) {
    let ws = Workspace::new();
    let Some((source, target)) = fixture(system, &ws).await else {
        return;
    };
    let path = ws.write("spec.toml", &spec(&source, &target, mode));
    let before = fingerprint(&target).await;

    let ran = ws.run(&["run", &path, "--json"]);
    assert_eq!(ran.code, 0, "{ran:?}");
    let rows = &ran.json()["rows"];
    let [inserted, updated, deleted] = expect;
    assert_eq!(
        (&rows["inserted"], &rows["updated"], &rows["deleted"]),
        (&J::from(inserted), &J::from(updated), &J::from(deleted)),
        "{ran:?}"
    );
    let id = run_id(&ran);
    let after = fingerprint(&target).await;
    assert_ne!(after, before);
    // PostgreSQL logs only the rows the run inserts (31..=60) or changes (1..=30): the
    // upsert in its own statement, `replace` at each window's commit, which also logs the
    // two extra rows it deleted (1001, 1002). SQLite logs the same rows, by triggers inside
    // its statements, and MySQL by joins over temporary tables (the staged batch; the
    // window's rows before its delete and the keys written). `propagate_deletes` in `upsert`
    // logs every key written.
    let status = ws.run(&["status", &id, "--json"]);
    let undo_rows = status.json()["undo_rows"].as_u64();
    let replace = mode.contains("replace");
    let changed_only = !mode.contains("propagate_deletes");
    match (changed_only, replace) {
        (true, false) => assert_eq!(undo_rows, Some(60), "{status:?}"),
        (true, true) => assert_eq!(undo_rows, Some(62), "{status:?}"),
        _ => assert!(undo_rows >= Some(300), "{status:?}"),
    }

    // --dry-run reports and changes nothing.
    let dry = ws.run(&["rollback", &id, "--dry-run", "--json"]);
    assert_eq!(dry.code, 0, "{dry:?}");
    assert_eq!(dry.json()["conflicts"], 0, "{dry:?}");
    assert_eq!(fingerprint(&target).await, after);

    let back = ws.run(&["rollback", &id, "--json"]);
    assert_eq!(back.code, 0, "{back:?}");
    let json = back.json();
    // The keys the run added (31..=60) go again, whatever the mode counted as inserted.
    assert_eq!(json["deleted"], 30, "{json:#}");
    assert_eq!(json["conflicts"], 0, "{json:#}");
    assert_eq!(fingerprint(&target).await, before, "{back:?}");
    // Only partitions with undo rows are rolled back: days 1 and 2, and day 7's deletions.
    let last = match (changed_only, replace) {
        (true, false) => "[2/2]",
        (true, true) => "[3/3]",
        _ => "[10/10]",
    };
    assert!(
        back.stderr.contains(&format!("{last} partition")),
        "{back:?}"
    );

    // Again: nothing left to do, the target stays as it was.
    let again = ws.run(&["rollback", &id, "--json"]);
    assert_eq!(again.code, 0, "{again:?}");
    assert_eq!(fingerprint(&target).await, before);

    // Audited.
    let audit = ws.run(&["audit", &id]);
    assert!(audit.stdout.contains("rollback.started"), "{audit:?}");
    assert!(audit.stdout.contains("rollback.finished"), "{audit:?}");

    // cleanup drops the undo rows; a rollback is then refused (exit 2).
    let clean = ws.run(&["cleanup", &id, "--json"]);
    assert_eq!(clean.code, 0, "{clean:?}");
    assert!(
        clean.json()["undo_rows_dropped"].as_u64() > Some(0),
        "{clean:?}"
    );
    assert_eq!(ws.run(&["status", &id, "--json"]).json()["undo_rows"], 0);
    let refused = ws.run(&["rollback", &id]);
    assert_eq!(refused.code, 2, "{refused:?}");
    assert!(refused.stderr.contains("no undo data"), "{refused:?}");
    source.drop_now().await;
    target.drop_now().await;
}

async fn edited_rows_are_conflicts_unless_forced(system: System) {
    let ws = Workspace::new();
    let Some((source, target)) = fixture(system, &ws).await else {
        return;
    };
    let path = ws.write("spec.toml", &spec(&source, &target, ""));
    let before = fingerprint(&target).await;
    let ran = ws.run(&["run", &path, "--json"]);
    assert_eq!(ran.code, 0, "{ran:?}");
    let id = run_id(&ran);
    // A live writer edits two rows the run updated and one it inserted.
    let dst = target.table("dst");
    target
        .exec(&format!(
            "UPDATE {dst} SET note = 'live edit' WHERE id IN (5, 10, 40)"
        ))
        .await;
    let back = ws.run(&["rollback", &id, "--json"]);
    assert_eq!(back.code, 0, "{back:?}");
    let json = back.json();
    assert_eq!(json["conflicts"], 3, "{json:#}");
    let keys: Vec<&str> = json["conflict_keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|k| k["key"].as_str())
        .collect();
    // In key order within a partition (not text order: 5 before 10).
    assert_eq!(keys, ["id=5", "id=10", "id=40"], "{json:#}");
    assert_ne!(fingerprint(&target).await, before);
    let text = ws.run(&["rollback", &id, "--dry-run"]);
    assert!(text.stdout.contains("--force"), "{text:?}");

    // The live rows are kept.
    let forced = ws.run(&["rollback", &id, "--force", "--json"]);
    assert_eq!(forced.code, 0, "{forced:?}");
    assert_eq!(fingerprint(&target).await, before, "{forced:?}");
    source.drop_now().await;
    target.drop_now().await;
}

const UPSERT: [u64; 3] = [30, 30, 0];

/// SQLite's timestamps arrive as text, which PostgreSQL must cast: the upsert goes through its
/// staging table, and the undo log written in that statement restores the target all the same.
#[tokio::test]
async fn rollback_upsert_through_the_staging_table_postgres() {
    let ws = Workspace::new();
    let Some((source, target)) = fixture_across(System::Sqlite, System::Postgres, &ws).await else {
        return;
    };
    let path = ws.write("spec.toml", &spec(&source, &target, ""));
    let before = fingerprint(&target).await;
    let ran = ws.run(&["run", &path, "--json"]);
    assert_eq!(ran.code, 0, "{ran:?}");
    let rows = &ran.json()["rows"];
    assert_eq!(
        (&rows["inserted"], &rows["updated"]),
        (&J::from(30), &J::from(30))
    );
    let id = run_id(&ran);
    assert_ne!(fingerprint(&target).await, before);
    let status = ws.run(&["status", &id, "--json"]);
    assert_eq!(status.json()["undo_rows"], 60, "{status:?}");
    // A second run changes nothing, so logs nothing: its rollback has nothing to do.
    let idle = ws.run(&["run", &path, "--new", "--json"]);
    assert_eq!(idle.code, 0, "{idle:?}");
    assert_eq!(idle.json()["rows"]["unchanged"], 300, "{idle:?}");
    let idle_back = ws.run(&["rollback", &run_id(&idle), "--json"]);
    assert_eq!(idle_back.code, 0, "{idle_back:?}");
    assert_eq!(
        (&idle_back.json()["deleted"], &idle_back.json()["restored"]),
        (&J::from(0), &J::from(0)),
        "{idle_back:?}"
    );
    let back = ws.run(&["rollback", &id, "--json"]);
    assert_eq!(back.code, 0, "{back:?}");
    assert_eq!(back.json()["deleted"], 30, "{back:?}");
    assert_eq!(back.json()["restored"], 30, "{back:?}");
    assert_eq!(fingerprint(&target).await, before, "{back:?}");
    source.drop_now().await;
    target.drop_now().await;
}

#[tokio::test]
async fn rollback_upsert_sqlite() {
    run_then_rollback_restores_the_target(System::Sqlite, "", UPSERT).await;
}

/// The row path (no pushdown) logs through the same triggers as the in-SQLite copy.
#[tokio::test]
async fn rollback_upsert_sqlite_row_path() {
    run_then_rollback_restores_the_target(System::Sqlite, "pushdown = false", UPSERT).await;
}

#[tokio::test]
async fn rollback_upsert_postgres() {
    run_then_rollback_restores_the_target(System::Postgres, "", UPSERT).await;
}

#[tokio::test]
async fn rollback_upsert_mysql() {
    run_then_rollback_restores_the_target(System::MySql, "", UPSERT).await;
}

const REPLACE: &str = "mode = \"replace\"\nwindow_column = \"ts\"";

#[tokio::test]
async fn rollback_replace_sqlite() {
    run_then_rollback_restores_the_target(System::Sqlite, REPLACE, [300, 0, 272]).await;
}

#[tokio::test]
async fn rollback_replace_sqlite_row_path() {
    let mode = format!("{REPLACE}\npushdown = false");
    run_then_rollback_restores_the_target(System::Sqlite, &mode, [300, 0, 272]).await;
}

#[tokio::test]
async fn rollback_replace_postgres() {
    run_then_rollback_restores_the_target(System::Postgres, REPLACE, [300, 0, 272]).await;
}

#[tokio::test]
async fn rollback_replace_mysql() {
    run_then_rollback_restores_the_target(System::MySql, REPLACE, [300, 0, 272]).await;
}

/// MySQL's undo log under concurrent partitions: the after-digests of an `upsert` batch are
/// set by key (1,000 keys a statement), where the optimizer preferred a scan of the whole log
/// while it was small, and a `replace` marks its window's deletions by run and partition (a
/// scan); under `REPEATABLE READ` a scan locks every row it reads, the rows other
/// partitions' transactions were writing included, and partitions at once deadlocked on
/// each other in a third of their batches (the retries opened the circuit breaker and paused
/// the run). Eight partitions four at a time, the breaker off so that a deadlock shows as a
/// retry: no batch is retried, and the rollback restores the target.
#[tokio::test]
async fn concurrent_batches_log_without_deadlocks_mysql() {
    for mode in ["", REPLACE] {
        concurrent_batches_log_without_deadlocks(mode).await;
    }
}

async fn concurrent_batches_log_without_deadlocks(mode: &str) {
    const ROWS: i64 = 16_000;
    let ws = Workspace::new();
    let Some(source) = TestDb::open(System::MySql, ws.dir.path(), "bf_undo", "src").await else {
        return;
    };
    let Some(target) = TestDb::open(System::MySql, ws.dir.path(), "bf_undo", "dst").await else {
        return;
    };
    let (src, dst) = (source.table("src"), target.table("dst"));
    source.exec(&create(System::MySql, &src)).await;
    target.exec(&create(System::MySql, &dst)).await;
    // Eight days of 2,000 rows; the target lacks every tenth key and has every fifth changed.
    let row = |i: i64| {
        let minute = i % 2_000 * 43 / 60;
        format!(
            "({i}, {}, '2026-01-{:02} {:02}:{:02}:00', 'n{i}')",
            i * 3,
            i / 2_000 + 1,
            minute / 60,
            minute % 60
        )
    };
    for chunk in (0..ROWS).collect::<Vec<_>>().chunks(2_000) {
        let all: Vec<String> = chunk.iter().map(|&i| row(i)).collect();
        source
            .exec(&format!("INSERT INTO {src} VALUES {}", all.join(", ")))
            .await;
        let kept: Vec<String> = chunk
            .iter()
            .filter(|&&i| i % 10 != 1)
            .map(|&i| row(i))
            .collect();
        target
            .exec(&format!("INSERT INTO {dst} VALUES {}", kept.join(", ")))
            .await;
    }
    target
        .exec(&format!(
            "UPDATE {dst} SET amount_cents = amount_cents + 1 WHERE id % 5 = 2"
        ))
        .await;
    let before = fingerprint(&target).await;
    let text = spec(&source, &target, mode).replace("2026-01-11T00:00:00Z", "2026-01-09T00:00:00Z")
        + "[limits]\nconcurrency = 4\nbatch_rows = 1000\ncircuit_breaker = false\n\
           [validate]\nafter_partition = false\nat_end = false\n";
    let path = ws.write("spec.toml", &text);
    let ran = ws.run(&["run", &path, "--json"]);
    assert_eq!(ran.code, 0, "{ran:?}");
    let json = ran.json();
    assert_eq!(json["state"], "succeeded", "{ran:?}");
    if mode.is_empty() {
        assert_eq!(json["rows"]["inserted"], ROWS / 10, "{ran:?}");
    }
    let id = run_id(&ran);
    let status = ws.run(&["status", &id, "--json"]);
    assert_eq!(
        status.json()["retries_per_partition"],
        0.0,
        "{status:?}\n{}",
        ws.run(&["audit", &id]).stdout
    );
    rolled_back_without_conflicts(&ws, &id);
    assert_eq!(fingerprint(&target).await, before);
    source.drop_now().await;
    target.drop_now().await;
}

/// A target column whose name holds a dot (one the source does not write) is logged,
/// fingerprinted and restored like any other: names read from the catalog are quoted whole,
/// never split into a table and a column.
async fn a_column_named_with_a_dot_is_restored(system: System, mode: &str) {
    let ws = Workspace::new();
    let Some((source, target)) = fixture(system, &ws).await else {
        return;
    };
    let dst = target.table("dst");
    let column = if system == System::MySql {
        "`x.y`"
    } else {
        "\"x.y\""
    };
    target
        .exec(&format!(
            "ALTER TABLE {dst} ADD COLUMN {column} VARCHAR(20) DEFAULT 'new'"
        ))
        .await;
    target
        .exec(&format!(
            "UPDATE {dst} SET {column} = 'kept' WHERE id <= 45"
        ))
        .await;
    let path = ws.write("spec.toml", &spec(&source, &target, mode));
    let before = fingerprint(&target).await;
    let ran = ws.run(&["run", &path, "--json"]);
    assert_eq!(ran.code, 0, "{ran:?}");
    assert_ne!(fingerprint(&target).await, before);
    rolled_back_without_conflicts(&ws, &run_id(&ran));
    assert_eq!(fingerprint(&target).await, before);
    source.drop_now().await;
    target.drop_now().await;
}

#[tokio::test]
async fn a_column_named_with_a_dot_is_restored_upsert_sqlite() {
    a_column_named_with_a_dot_is_restored(System::Sqlite, "").await;
}

#[tokio::test]
async fn a_column_named_with_a_dot_is_restored_replace_sqlite() {
    a_column_named_with_a_dot_is_restored(System::Sqlite, REPLACE).await;
}

#[tokio::test]
async fn a_column_named_with_a_dot_is_restored_upsert_postgres() {
    a_column_named_with_a_dot_is_restored(System::Postgres, "").await;
}

#[tokio::test]
async fn a_column_named_with_a_dot_is_restored_replace_postgres() {
    a_column_named_with_a_dot_is_restored(System::Postgres, REPLACE).await;
}

#[tokio::test]
async fn a_column_named_with_a_dot_is_restored_upsert_mysql() {
    a_column_named_with_a_dot_is_restored(System::MySql, "").await;
}

/// The log is one table per target, kept across runs: a column added to the target after a
/// run made it is added to the log by the next run, which would otherwise fail on every
/// batch naming a column the log lacks, and whose rollback restores the new column too.
async fn a_column_added_after_a_logged_run_is_logged_by_the_next(system: System) {
    let ws = Workspace::new();
    let Some((source, target)) = fixture(system, &ws).await else {
        return;
    };
    let path = ws.write("spec.toml", &spec(&source, &target, ""));
    let first = ws.run(&["run", &path, "--json"]);
    assert_eq!(first.code, 0, "{first:?}");
    let dst = target.table("dst");
    target
        .exec(&format!(
            "ALTER TABLE {dst} ADD COLUMN added VARCHAR(20) DEFAULT 'new'"
        ))
        .await;
    target
        .exec(&format!(
            "UPDATE {dst} SET added = 'kept', amount_cents = 1 WHERE id <= 20"
        ))
        .await;
    let before = fingerprint(&target).await;
    let second = ws.run(&["run", &path, "--new", "--json"]);
    assert_eq!(second.code, 0, "{second:?}");
    assert_eq!(second.json()["rows"]["updated"], 20, "{second:?}");
    assert_ne!(fingerprint(&target).await, before);
    rolled_back_without_conflicts(&ws, &run_id(&second));
    assert_eq!(fingerprint(&target).await, before);
    source.drop_now().await;
    target.drop_now().await;
}

#[tokio::test]
async fn a_column_added_after_a_logged_run_is_logged_by_the_next_sqlite() {
    a_column_added_after_a_logged_run_is_logged_by_the_next(System::Sqlite).await;
}

#[tokio::test]
async fn a_column_added_after_a_logged_run_is_logged_by_the_next_postgres() {
    a_column_added_after_a_logged_run_is_logged_by_the_next(System::Postgres).await;
}

#[tokio::test]
async fn a_column_added_after_a_logged_run_is_logged_by_the_next_mysql() {
    a_column_added_after_a_logged_run_is_logged_by_the_next(System::MySql).await;
}

const PROPAGATE: &str = "propagate_deletes = true";

#[tokio::test]
async fn propagate_deletes_then_rollback_sqlite() {
    run_then_rollback_restores_the_target(System::Sqlite, PROPAGATE, [30, 30, 2]).await;
}

#[tokio::test]
async fn propagate_deletes_then_rollback_postgres() {
    run_then_rollback_restores_the_target(System::Postgres, PROPAGATE, [30, 30, 2]).await;
}

#[tokio::test]
async fn propagate_deletes_then_rollback_mysql() {
    run_then_rollback_restores_the_target(System::MySql, PROPAGATE, [30, 30, 2]).await;
}

/// MySQL logs only the rows an `upsert` changes, told by their bytes as well as by value: a
/// note whose only change is the case of its letters (equal under the column's
/// case-insensitive collation, yet rewritten) is logged and restored. A target with an
/// `UPDATE` or `INSERT` trigger, which changes rows whose values the write leaves as they
/// are (`ON DUPLICATE KEY UPDATE` fires both), has every existing row logged and each digest
/// read from the target, so its rollback undoes the trigger's changes too.
#[tokio::test]
async fn upsert_logs_changed_bytes_and_rows_a_trigger_touches_mysql() {
    let ws = Workspace::new();
    let Some((source, target)) = fixture(System::MySql, &ws).await else {
        return;
    };
    let dst = target.table("dst");
    // 61..=90 differ from the source in case only (26 of them; 63, 70, 77, 84 are NULL).
    target
        .exec(&format!(
            "UPDATE {dst} SET note = UPPER(note) WHERE id BETWEEN 61 AND 90"
        ))
        .await;
    let path = ws.write("spec.toml", &spec(&source, &target, ""));
    let before = fingerprint(&target).await;
    let ran = ws.run(&["run", &path, "--json"]);
    assert_eq!(ran.code, 0, "{ran:?}");
    assert_eq!(ran.json()["rows"]["updated"], 56, "{ran:?}");
    let id = run_id(&ran);
    let status = ws.run(&["status", &id, "--json"]);
    assert_eq!(status.json()["undo_rows"], 86, "{status:?}");
    rolled_back_without_conflicts(&ws, &id);
    assert_eq!(fingerprint(&target).await, before);
    source.drop_now().await;
    target.drop_now().await;

    // The insert trigger leaves the rollback's own inserts alone: they carry `touched = 5`.
    for trigger in [
        "BEFORE UPDATE ON {dst} FOR EACH ROW SET NEW.touched = OLD.touched + 1",
        "BEFORE INSERT ON {dst} FOR EACH ROW \
         SET NEW.note = IF(NEW.touched = 0, CONCAT(NEW.note, '!'), NEW.note)",
    ] {
        a_trigger_s_changes_are_rolled_back_mysql(trigger).await;
    }
}

async fn a_trigger_s_changes_are_rolled_back_mysql(trigger: &str) {
    let ws = Workspace::new();
    let Some((source, target)) = fixture(System::MySql, &ws).await else {
        return;
    };
    let dst = target.table("dst");
    let trigger = trigger.replace("{dst}", &dst);
    target
        .exec(&format!(
            "ALTER TABLE {dst} ADD COLUMN touched INT NOT NULL DEFAULT 0; \
             UPDATE {dst} SET touched = 5; CREATE TRIGGER {dst}_touch {trigger}"
        ))
        .await;
    // The trigger's changes are not the source's: no reconciliation.
    let text = spec(&source, &target, "") + "[validate]\nafter_partition = false\nat_end = false\n";
    let path = ws.write("spec.toml", &text);
    let before = fingerprint(&target).await;
    let ran = ws.run(&["run", &path, "--json"]);
    assert_eq!(ran.code, 0, "{ran:?}");
    let id = run_id(&ran);
    let status = ws.run(&["status", &id, "--json"]);
    // The 270 existing keys of the scope and the 30 new ones.
    assert_eq!(status.json()["undo_rows"], 300, "{status:?}");
    rolled_back_without_conflicts(&ws, &id);
    assert_eq!(fingerprint(&target).await, before);
    source.drop_now().await;
    target.drop_now().await;
}

/// MySQL keeps the stored key when an upsert's key differs from it in case only (equal
/// under the column's case-insensitive collation): the logged digest is of the row as
/// stored, so the rollback finds no false conflict and restores the old values; and the
/// log's key column keeps the target's collation (`utf8mb4_unicode_ci` here, not the
/// database's default), which a join of the log to the staged batch needs. Once with every
/// column in the batch (the digest logged with the before-image), once with a column the
/// source does not write (the digest read from the target after the write).
#[tokio::test]
async fn a_key_differing_in_case_is_logged_as_stored_mysql() {
    for extra in ["", ", extra VARCHAR(10) DEFAULT 'e'"] {
        let ws = Workspace::new();
        let Some(source) = TestDb::open(System::MySql, ws.dir.path(), "bf_undo", "src").await
        else {
            return;
        };
        let Some(target) = TestDb::open(System::MySql, ws.dir.path(), "bf_undo", "dst").await
        else {
            return;
        };
        let (src, dst) = (source.table("src"), target.table("dst"));
        source
            .exec(&format!(
                "CREATE TABLE {src} (code VARCHAR(10) PRIMARY KEY, v INT, ts DATETIME(6)); \
                 INSERT INTO {src} VALUES ('A', 2, '2026-01-01 01:00:00'), \
                 ('b', 5, '2026-01-01 02:00:00'), ('C', 3, '2026-01-01 03:00:00')"
            ))
            .await;
        target
            .exec(&format!(
                "CREATE TABLE {dst} (code VARCHAR(10) COLLATE utf8mb4_unicode_ci PRIMARY KEY, \
                 v INT, ts DATETIME(6){extra}); INSERT INTO {dst} (code, v, ts) VALUES \
                 ('a', 1, '2026-01-01 01:00:00'), ('b', 5, '2026-01-01 02:00:00')"
            ))
            .await;
        let text = format!(
            r#"name = "undo_case"
reason = "integration test"
[source]
url = "{}"
query = "SELECT code, v, ts FROM {src} WHERE ts >= :start AND ts < :end"
time_column = "ts"
[target]
url = "{}"
table = "{dst}"
key = ["code"]
[scope]
start = "2026-01-01T00:00:00Z"
end = "2026-01-02T00:00:00Z"
partition = "1d"
[validate]
# The stored key keeps its case ('a' for the source's 'A'): its text differs.
after_partition = false
at_end = false
"#,
            source.url(),
            target.url(),
        );
        let path = ws.write("spec.toml", &text);
        let before = fingerprint_of(&target, &dst).await;
        let ran = ws.run(&["run", &path, "--json"]);
        assert_eq!(ran.code, 0, "{extra}: {ran:?}");
        assert_eq!(ran.json()["rows"]["updated"], 1, "{extra}: {ran:?}");
        rolled_back_without_conflicts(&ws, &run_id(&ran));
        assert_eq!(fingerprint_of(&target, &dst).await, before, "{extra}");
        source.drop_now().await;
        target.drop_now().await;
    }
}

#[tokio::test]
async fn rollback_conflicts_sqlite() {
    edited_rows_are_conflicts_unless_forced(System::Sqlite).await;
}

#[tokio::test]
async fn rollback_conflicts_postgres() {
    edited_rows_are_conflicts_unless_forced(System::Postgres).await;
}

#[tokio::test]
async fn rollback_conflicts_mysql() {
    edited_rows_are_conflicts_unless_forced(System::MySql).await;
}

/// SIGKILL in the middle of a run, resume, then rollback: the target is as before the run
/// (the first before-image of each key survives the replayed batches).
#[tokio::test]
async fn rollback_after_sigkill_and_resume_restores_sqlite() {
    let ws = Workspace::new();
    let Some((source, target)) = fixture(System::Sqlite, &ws).await else {
        return;
    };
    let slow = "\n[limits]\nconcurrency = 1\nbatch_rows = 5\nrows_per_second = 300\n";
    let path = ws.write("spec.toml", &(spec(&source, &target, "") + slow));
    let before = fingerprint(&target).await;
    let mut child = ws
        .command(&["run", &path])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    std::thread::sleep(std::time::Duration::from_millis(500));
    let _ = child.kill();
    let _ = child.wait();
    let status = ws.run(&["status", "--json"]);
    let id = status.json()["run_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(!id.is_empty(), "{status:?}");
    let resumed = ws.run(&["resume", &id, "--json"]);
    assert_eq!(resumed.code, 0, "{resumed:?}");
    assert_eq!(resumed.json()["state"], "succeeded", "{resumed:?}");
    rolled_back_without_conflicts(&ws, &id);
    assert_eq!(
        fingerprint(&target).await,
        before,
        "the rollback restored the target"
    );
    source.drop_now().await;
    target.drop_now().await;
}

/// SIGKILL during a rollback, then rollback again: the target ends exactly as before the
/// run. Deterministic: a transaction of the test holds the rows of the last day locked, so
/// the rollback blocks on that partition (the ones before it restored and committed); it is
/// killed while blocked, the lock released, and the second rollback finishes the rest.
#[tokio::test]
async fn sigkill_during_rollback_then_rollback_again_postgres() {
    let ws = Workspace::new();
    let Some((source, target)) = fixture(System::Postgres, &ws).await else {
        return;
    };
    let TestDb::Postgres(schema) = &target else {
        panic!("a PostgreSQL fixture");
    };
    let path = ws.write("spec.toml", &spec(&source, &target, ""));
    let before = fingerprint(&target).await;
    let ran = ws.run(&["run", &path, "--json"]);
    assert_eq!(ran.code, 0, "{ran:?}");
    let run_id = ran.json()["run_id"].as_str().unwrap_or_default().to_owned();
    assert_ne!(
        fingerprint(&target).await,
        before,
        "the run changed the target"
    );

    let dst = target.table("dst");
    let mut lock = schema.pool().begin().await.expect("begin");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT id FROM {dst} WHERE id > {PER_DAY} AND id <= {} FOR UPDATE",
        2 * PER_DAY
    )))
    .fetch_all(&mut *lock)
    .await
    .expect("lock day 2 (the rows the run inserted: the last partition with undo rows)");
    let mut child = ws
        .command(&["rollback", &run_id])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn rollback");
    // Wait until the rollback waits on the lock: it started, and is stuck on that partition.
    let reached = crate::support::backfill_waits_on_a_lock(
        schema.pool(),
        None,
        std::time::Duration::from_secs(60),
    )
    .await;
    // While it holds the run, a second rollback and a cleanup are refused (the rollback
    // claims the run's lease, as `resume` does). Asserted once the lock is released, so a
    // failure cannot leave this test waiting on its own transaction.
    let second = ws.run(&["rollback", &run_id]);
    let cleanup = ws.run(&["cleanup", &run_id]);
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    lock.rollback().await.expect("release the lock");
    assert!(reached, "the rollback never reached the locked partition");
    for refused in [&second, &cleanup] {
        assert_eq!(refused.code, 2, "{refused:?}");
        assert!(
            refused.stderr.contains("held by another process"),
            "{refused:?}"
        );
    }

    let events: Vec<String> = crate::support::audit_events(&ws, &run_id)
        .iter()
        .filter_map(|e| e["action"].as_str().map(str::to_owned))
        .collect();
    assert!(events.iter().any(|a| a == "rollback.started"), "{events:?}");
    assert!(
        !events.iter().any(|a| a == "rollback.finished"),
        "{events:?}"
    );
    assert_ne!(fingerprint(&target).await, before, "killed half-way");

    let again = ws.run(&["rollback", &run_id, "--json"]);
    assert_eq!(again.code, 0, "{again:?}");
    assert_eq!(again.json()["conflicts"], 0, "{again:?}");
    assert_eq!(fingerprint(&target).await, before, "{again:?}");
    source.drop_now().await;
    target.drop_now().await;
}

/// `id, amount_cents, note` of every row of `table`, by id.
async fn rows_of<'c>(
    conn: impl sqlx::PgExecutor<'c>,
    table: &str,
) -> Vec<(i64, i64, Option<String>)> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT id, amount_cents, note FROM {table} ORDER BY id"
    )))
    .fetch_all(conn)
    .await
    .expect("rows")
}

/// Runs `backfill run SPEC --json` while `live` holds a lock the run will wait on (in a
/// statement containing `waits_in`, when given), commits `live` once the run waits, and
/// returns the run's id after checking that it waited and succeeded.
async fn run_beside_a_live_session(
    ws: &Workspace,
    path: &str,
    pool: &sqlx::PgPool,
    live: sqlx::Transaction<'static, sqlx::Postgres>,
    waits_in: Option<&str>,
) -> String {
    let child = ws
        .command(&["run", path, "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn run");
    let waited = crate::support::backfill_waits_on_a_lock(
        pool,
        waits_in,
        std::time::Duration::from_secs(30),
    )
    .await;
    live.commit().await.expect("commit the live session");
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .expect("join")
        .expect("wait");
    assert!(waited, "the run never waited on the live session's lock");
    assert_eq!(out.status.code(), Some(0));
    let ran: J = serde_json::from_slice(&out.stdout).expect("json");
    ran["run_id"].as_str().unwrap_or_default().to_owned()
}

/// A live writer inserts a key the run is about to insert, and commits while the run's upsert
/// waits on it: the upsert then updates a row its snapshot did not see, so it has no
/// before-image. The batch fails as transient and runs again (now seeing the row, logging it
/// as `updated`), and the rollback gives the live row back instead of deleting it.
#[tokio::test]
async fn a_key_inserted_by_a_live_writer_mid_batch_is_restored_not_deleted_postgres() {
    let ws = Workspace::new();
    let Some((source, target)) = fixture(System::Postgres, &ws).await else {
        return;
    };
    let TestDb::Postgres(schema) = &target else {
        panic!("a PostgreSQL fixture");
    };
    let dst = target.table("dst");
    let path = ws.write("spec.toml", &spec(&source, &target, ""));

    let mut live = schema.pool().begin().await.expect("begin");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {dst} VALUES (45, 1, '2026-01-02 00:14:00', 'live')"
    )))
    .execute(&mut *live)
    .await
    .expect("the live insert");
    // The target as the run finds it: the broken target plus the live row.
    let before = rows_of(&mut *live, &dst).await;
    let id = run_beside_a_live_session(&ws, &path, schema.pool(), live, None).await;
    assert_ne!(
        rows_of(schema.pool(), &dst).await,
        before,
        "the run changed the target"
    );
    rolled_back_without_conflicts(&ws, &id);
    let after = rows_of(schema.pool(), &dst).await;
    assert_eq!(
        after.iter().find(|r| r.0 == 45),
        Some(&(45, 1, Some("live".to_owned()))),
        "the live writer's row is restored, not deleted"
    );
    assert_eq!(after, before, "row by row as the run found it");
    source.drop_now().await;
    target.drop_now().await;
}

/// PostgreSQL `replace` logs a window at its commit, in one statement: a row another session
/// inserts into the window while the run rewrites it is not the run's, so the rollback keeps
/// it. The live session locks a row of day 1 and inserts a new key there; the run's delete of
/// day 1 waits on that lock, then the live session commits: its row is in the window when the
/// run commits, but not among the keys the run wrote.
#[tokio::test]
async fn a_row_inserted_into_a_window_during_a_replace_survives_the_rollback_postgres() {
    let ws = Workspace::new();
    let Some((source, target)) = fixture(System::Postgres, &ws).await else {
        return;
    };
    let TestDb::Postgres(schema) = &target else {
        panic!("a PostgreSQL fixture");
    };
    let dst = target.table("dst");
    // Reconciliation would rightly fail day 1 (the live row is not in the source).
    let mode = format!("{REPLACE}\n[validate]\nafter_partition = false\nat_end = false");
    let path = ws.write("spec.toml", &spec(&source, &target, &mode));

    let mut live = schema.pool().begin().await.expect("begin");
    for sql in [
        format!("SELECT id FROM {dst} WHERE id = 10 FOR UPDATE"),
        format!("INSERT INTO {dst} VALUES (5000, 1, '2026-01-01 00:59:00', 'live')"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut *live)
            .await
            .expect("the live session");
    }
    // The target as the run finds it: the broken target plus the live row.
    let before = rows_of(&mut *live, &dst).await;
    let id = run_beside_a_live_session(&ws, &path, schema.pool(), live, Some("DELETE")).await;
    let written = rows_of(schema.pool(), &dst).await;
    assert!(
        written.contains(&(5000, 1, Some("live".to_owned()))),
        "the run left the live row alone: {written:?}"
    );
    assert_ne!(written, before, "the run changed the target");

    rolled_back_without_conflicts(&ws, &id);
    let after = rows_of(schema.pool(), &dst).await;
    assert!(
        after.contains(&(5000, 1, Some("live".to_owned()))),
        "the live row survives the rollback: {after:?}"
    );
    assert_eq!(after, before, "row by row as the run found it");
    source.drop_now().await;
    target.drop_now().await;
}

/// PostgreSQL `replace` tells the rows it wrote in a window by their `xmin` when it logs them
/// at commit, but a row inserted under a savepoint (the second try that isolates rows the
/// target refuses) has a subtransaction's: those windows log the keys they write as well. The
/// target refuses source row 42 (day 2, whose 30 rows it lacks): the window's 29 others are
/// inserted under savepoints, and the rollback must remove them all again. MySQL records
/// each batch's keys in a temporary table, whose rows a rollback to a savepoint takes back
/// with the batch's.
#[tokio::test]
async fn rows_written_under_savepoints_are_rolled_back_postgres() {
    rows_written_under_savepoints_are_rolled_back(System::Postgres).await;
}

#[tokio::test]
async fn rows_written_under_savepoints_are_rolled_back_mysql() {
    rows_written_under_savepoints_are_rolled_back(System::MySql).await;
}

async fn rows_written_under_savepoints_are_rolled_back(system: System) {
    let ws = Workspace::new();
    let Some((source, target)) = fixture(system, &ws).await else {
        return;
    };
    let dst = target.table("dst");
    target
        .exec(&format!(
            "ALTER TABLE {dst} ADD CONSTRAINT no_4200 CHECK (amount_cents <> 4200)"
        ))
        .await;
    let mode = format!("{REPLACE}\n[validate]\nafter_partition = false\nat_end = false");
    let path = ws.write("spec.toml", &spec(&source, &target, &mode));
    let before = fingerprint(&target).await;

    let ran = ws.run(&["run", &path, "--json"]);
    assert_eq!(ran.code, 1, "one row refused: {ran:?}");
    let summary = ran.json();
    assert_eq!(
        summary["partitions"]["done_with_quarantine"], 1,
        "{summary:#}"
    );
    let id = run_id(&ran);
    if let TestDb::Postgres(schema) = &target {
        let written = rows_of(schema.pool(), &dst).await;
        assert!(
            written.iter().any(|r| r.0 == 41),
            "day 2 written: {written:?}"
        );
        assert!(
            !written.iter().any(|r| r.0 == 42),
            "row 42 refused: {written:?}"
        );
    }
    assert_ne!(fingerprint(&target).await, before);

    rolled_back_without_conflicts(&ws, &id);
    assert_eq!(
        fingerprint(&target).await,
        before,
        "the target as the run found it"
    );
    source.drop_now().await;
    target.drop_now().await;
}

/// PostgreSQL `replace` compares a window's rows by their binary image when it logs them at
/// commit: a `json` column (no `=` operator) neither breaks the log nor hides a change, and
/// the rollback brings its values back.
#[tokio::test]
async fn replace_undo_logs_a_table_with_a_json_column_postgres() {
    let ws = Workspace::new();
    let Some((source, target)) = fixture(System::Postgres, &ws).await else {
        return;
    };
    let TestDb::Postgres(schema) = &target else {
        panic!("a PostgreSQL fixture");
    };
    let dst = target.table("dst");
    // Only the target has `doc`: the rewrite leaves it NULL, and the rollback restores it.
    target
        .exec(&format!(
            "ALTER TABLE {dst} ADD COLUMN doc json; \
             UPDATE {dst} SET doc = json_build_object('id', id, 'tags', json_build_array(id % 3))"
        ))
        .await;
    /// `id, amount_cents, note, doc` of a row.
    type Row = (i64, Option<i64>, Option<String>, Option<String>);
    let rows = || async {
        let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT id, amount_cents, note, doc::text FROM {dst} ORDER BY id"
        )))
        .fetch_all(schema.pool())
        .await
        .expect("rows");
        rows
    };
    let before = rows().await;
    let path = ws.write("spec.toml", &spec(&source, &target, REPLACE));
    let ran = ws.run(&["run", &path, "--json"]);
    assert_eq!(ran.code, 0, "{ran:?}");
    let id = run_id(&ran);
    assert_ne!(rows().await, before, "the run rewrote the windows");
    rolled_back_without_conflicts(&ws, &id);
    assert_eq!(rows().await, before, "row by row, json included");
    source.drop_now().await;
    target.drop_now().await;
}

/// PostgreSQL logs the digest of a written row with its own row hash (`n…`); a log written
/// before, with the portable `md5` digest, still rolls back: each entry is compared in its
/// own format, so unchanged rows restore and an edited one is a conflict.
#[tokio::test]
async fn a_log_with_the_older_md5_digests_still_rolls_back_postgres() {
    let ws = Workspace::new();
    let Some((source, target)) = fixture(System::Postgres, &ws).await else {
        return;
    };
    let TestDb::Postgres(schema) = &target else {
        panic!("a PostgreSQL fixture");
    };
    let path = ws.write("spec.toml", &spec(&source, &target, ""));
    let before = fingerprint(&target).await;
    let ran = ws.run(&["run", &path, "--json"]);
    assert_eq!(ran.code, 0, "{ran:?}");
    let id = run_id(&ran);
    let dst = target.table("dst");
    let undo = target.table("dst__bf_undo");
    let formats: Vec<(bool, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT bf_undo_after LIKE 'n%', count(*) FROM {undo} GROUP BY 1"
    )))
    .fetch_all(schema.pool())
    .await
    .expect("digests");
    assert_eq!(formats, [(true, 60)], "native digests");

    // The log as the previous version wrote it: md5 of the length-prefixed canonical texts.
    let field = |x: &str| format!("coalesce('V' || octet_length({x})::text || ':' || {x}, 'N')");
    let legacy = [
        field("t.id::text"),
        field("t.amount_cents::text"),
        field("to_char(t.ts AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')"),
        field("t.note::text"),
    ]
    .join(" || ");
    target
        .exec(&format!(
            "UPDATE {undo} AS u SET bf_undo_after = \
             (SELECT md5({legacy}) FROM {dst} AS t WHERE t.id = u.id)"
        ))
        .await;
    edited_row_is_a_conflict_until_forced(&ws, &target, &id, &before).await;
    source.drop_now().await;
    target.drop_now().await;
}

/// Edits the row `id = 5` that run `id` wrote, then checks its rollback: the row is the one
/// conflict, and a forced rollback brings the whole target back to `before`.
async fn edited_row_is_a_conflict_until_forced(
    ws: &Workspace,
    target: &TestDb,
    id: &str,
    before: &Fingerprint,
) {
    let dst = target.table("dst");
    target
        .exec(&format!("UPDATE {dst} SET note = 'live edit' WHERE id = 5"))
        .await;
    let back = ws.run(&["rollback", id, "--json"]);
    assert_eq!(back.code, 0, "{back:?}");
    let json = back.json();
    assert_eq!(json["conflicts"], 1, "{json:#}");
    assert_eq!(json["conflict_keys"][0]["key"], "id=5", "{json:#}");
    let forced = ws.run(&["rollback", id, "--force", "--json"]);
    assert_eq!(forced.code, 0, "{forced:?}");
    assert_eq!(fingerprint(target).await, *before, "{forced:?}");
}

/// SQLite logs a run under a short tag (`#1`) with 16-byte blob digests; a log the previous
/// version wrote (the run's id in every row, `r` + 32 hex digits) still rolls back: its
/// run has no tag, so it is read under its id, and each entry is compared in its own
/// format, so unchanged rows restore and an edited one is a conflict.
#[tokio::test]
async fn a_log_in_the_previous_format_still_rolls_back_sqlite() {
    let ws = Workspace::new();
    let Some((source, target)) = fixture(System::Sqlite, &ws).await else {
        return;
    };
    let TestDb::Sqlite(pool, _) = &target else {
        panic!("a SQLite fixture");
    };
    let path = ws.write("spec.toml", &spec(&source, &target, ""));
    let before = fingerprint(&target).await;
    let ran = ws.run(&["run", &path, "--json"]);
    assert_eq!(ran.code, 0, "{ran:?}");
    let id = run_id(&ran);
    let logged: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT bf_undo_run, typeof(bf_undo_after), count(*) FROM dst__bf_undo GROUP BY 1, 2",
    )
    .fetch_all(pool)
    .await
    .expect("log");
    assert_eq!(logged, [("#1".to_owned(), "blob".to_owned(), 60)]);
    let tags: Vec<(String, String)> = sqlx::query_as("SELECT run, tag FROM dst__bf_undo_runs")
        .fetch_all(pool)
        .await
        .expect("tags");
    assert_eq!(tags, [(id.clone(), "#1".to_owned())]);

    // The log as the previous version wrote it.
    let mut conn = pool.acquire().await.expect("connection");
    backfill_connectors::fingerprint::sqlite::register(&mut conn)
        .await
        .expect("functions");
    sqlx::query(
        "UPDATE dst__bf_undo AS u SET bf_undo_run = ?1, bf_undo_after = (SELECT \
         backfill_undo_digest(t.id, t.amount_cents, t.ts, t.note) FROM dst AS t \
         WHERE t.id = u.id)",
    )
    .bind(&id)
    .execute(&mut *conn)
    .await
    .expect("previous format");
    sqlx::query("DELETE FROM dst__bf_undo_runs")
        .execute(&mut *conn)
        .await
        .expect("no tags");
    drop(conn);
    let status = ws.run(&["status", &id, "--json"]);
    assert_eq!(status.json()["undo_rows"], 60, "{status:?}");
    edited_row_is_a_conflict_until_forced(&ws, &target, &id, &before).await;
    source.drop_now().await;
    target.drop_now().await;
}

/// A `replace` whose key has no unique index cannot log at commit: the run says so (the log
/// then takes every row of each window, several times slower) and names the way out, and
/// the rollback still restores the target.
#[tokio::test]
async fn replace_undo_without_a_unique_key_is_warned_about_postgres() {
    let ws = Workspace::new();
    let Some((source, target)) = fixture(System::Postgres, &ws).await else {
        return;
    };
    let dst = target.table("dst");
    target
        .exec(&format!("ALTER TABLE {dst} DROP CONSTRAINT dst_pkey"))
        .await;
    let text = spec(&source, &target, REPLACE).replace("undo = true\n", "");
    let path = ws.write("spec.toml", &text);
    let before = fingerprint(&target).await;
    let ran = ws.run(&["run", &path, "--json"]);
    assert_eq!(ran.code, 0, "{ran:?}");
    assert_eq!(
        ran.stderr
            .matches("the key has no unique index over NOT NULL columns")
            .count(),
        1,
        "{ran:?}"
    );
    assert!(ran.stderr.contains("undo = false"), "{ran:?}");
    rolled_back_without_conflicts(&ws, &run_id(&ran));
    assert_eq!(fingerprint(&target).await, before);
    source.drop_now().await;
    target.drop_now().await;
}

/// On PostgreSQL the undo log is on without being asked: a spec with no `undo` line logs the
/// 60 rows its `upsert` inserts or changes and can be rolled back. The digests are the
/// target's own row hash with `timestamptz` printed in UTC by the expression itself (not by
/// the session's zone: sqlx opens every session in UTC today, but the log pins no zone,
/// which would also change how a batch's text values are read): what the run logged is what
/// the test's own session computes, and the rollback finds no conflict.
#[tokio::test]
async fn undo_is_on_by_default_on_postgres_with_digests_in_utc() {
    let ws = Workspace::new();
    let Some((source, target)) = fixture(System::Postgres, &ws).await else {
        return;
    };
    let text = spec(&source, &target, "").replace("undo = true\n", "");
    assert!(!text.contains("undo ="), "{text}");
    let path = ws.write("spec.toml", &text);
    let before = fingerprint(&target).await;
    let ran = ws.run(&["run", &path, "--json"]);
    assert_eq!(ran.code, 0, "{ran:?}");
    let id = run_id(&ran);
    let status = ws.run(&["status", &id, "--json"]);
    assert_eq!(status.json()["undo_rows"], 60, "{status:?}");
    // What the log holds is what a session in UTC computes.
    let TestDb::Postgres(schema) = &target else {
        panic!("a PostgreSQL fixture");
    };
    let (dst, undo) = (target.table("dst"), target.table("dst__bf_undo"));
    let same: Vec<bool> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT u.bf_undo_after = 'n' || hashtextextended(ROW(t.id, t.amount_cents, \
         (t.ts AT TIME ZONE 'UTC'), t.note)::text, 0)::text \
         FROM {undo} AS u JOIN {dst} AS t ON t.id = u.id"
    )))
    .fetch_all(schema.pool())
    .await
    .expect("digests");
    assert_eq!(
        (same.len(), same.iter().all(|s| *s)),
        (60, true),
        "{same:?}"
    );
    rolled_back_without_conflicts(&ws, &id);
    assert_eq!(fingerprint(&target).await, before);
    source.drop_now().await;
    target.drop_now().await;
}

/// With the log on by default, a target role that may write rows but not create tables
/// cannot keep it: the failure names the undo table and both ways out.
#[tokio::test]
async fn a_role_without_create_is_told_how_to_keep_or_drop_the_undo_log_postgres() {
    let ws = Workspace::new();
    let Some((source, target)) = fixture(System::Postgres, &ws).await else {
        return;
    };
    let dst = target.table("dst");
    let schema = dst.split('.').next().unwrap_or_default().to_owned();
    let role = format!("bf_writer_{}", std::process::id());
    target
        .exec(&format!(
            "DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN; \
             GRANT USAGE ON SCHEMA {schema} TO {role}; \
             GRANT SELECT, INSERT, UPDATE, DELETE ON {dst} TO {role}"
        ))
        .await;
    let url = target.url().replacen("postgres@", &format!("{role}@"), 1);
    assert_ne!(url, target.url());
    let text = spec(&source, &target, "")
        .replace("undo = true\n", "")
        .replacen(
            &format!("url = \"{}\"\ntable", target.url()),
            &format!("url = \"{url}\"\ntable"),
            1,
        );
    let path = ws.write("spec.toml", &text);
    let ran = ws.run(&["run", &path, "--json"]);
    assert_ne!(ran.code, 0, "{ran:?}");
    let all = format!("{}{}", ran.stdout, ran.stderr);
    assert!(all.contains("creating the undo log"), "{ran:?}");
    assert!(all.contains("undo = false"), "{ran:?}");
    target
        .exec(&format!(
            "REVOKE ALL ON {dst} FROM {role}; REVOKE ALL ON SCHEMA {schema} FROM {role}; \
             DROP ROLE {role}"
        ))
        .await;
    source.drop_now().await;
    target.drop_now().await;
}

/// SQLite `replace` logs only the rows its rewrite changed when a UNIQUE index makes the key
/// unique, comparing keys by the target's collation: a `NOCASE` key whose case the source
/// changed is an update, and the rollback brings the old spelling back. A key without a
/// unique index logs the whole window instead. Both on the pushdown and on the row path, and
/// with the table written as `main.dst`.
#[tokio::test]
async fn sqlite_replace_rollback_with_a_nocase_key_and_a_key_without_an_index() {
    use crate::support::rows;
    let keys = [
        ("k TEXT COLLATE NOCASE PRIMARY KEY", "main.dst", 3),
        ("k TEXT NOT NULL", "dst", 5),
    ];
    for (key, table, logged) in keys {
        for pushdown in [true, false] {
            let ws = Workspace::new();
            let (source, target, before) = sqlite_pair(
                &ws,
                &[
                    "CREATE TABLE src (k TEXT, ts TEXT, v TEXT)",
                    "INSERT INTO src VALUES ('ABC', '2026-01-01T01:00:00Z', 'x'), \
                     ('same', '2026-01-01T02:00:00Z', 's'), ('new', '2026-01-01T03:00:00Z', 'n')",
                ],
                &[
                    &format!("CREATE TABLE dst ({key}, ts TEXT, v TEXT)"),
                    "INSERT INTO dst VALUES ('abc', '2026-01-01T01:00:00Z', 'x'), \
                     ('same', '2026-01-01T02:00:00Z', 's'), ('gone', '2026-01-01T04:00:00Z', 'g'), \
                     ('out', '2026-01-05T00:00:00Z', 'o')",
                ],
            )
            .await;
            let all = ALL_DST;
            let spec = ws.write(
                "spec.toml",
                &replace_one_day(
                    table,
                    "SELECT k, ts, v FROM src WHERE ts >= :start AND ts < :end",
                    pushdown,
                ),
            );
            let label = format!("{key}, pushdown {pushdown}");
            let ran = ws.run(&["run", &spec, "--json"]);
            assert_eq!(ran.code, 0, "{label}: {ran:?}");
            assert_eq!(
                rows(&target, all).await.len(),
                4,
                "{label}: ABC, same, new, out"
            );
            let id = run_id(&ran);
            // abc → ABC (updated), new (inserted), gone (deleted); without a unique index
            // every row of the window before (abc, same, gone) and each row written (ABC,
            // same, new), one entry per key by its own spelling.
            rolled_back_to(&ws, &id, logged, (&target, all, &before), &label).await;
            source.close().await;
            target.close().await;
        }
    }
}

/// SQLite `replace` logs what its rewrite changed whether the query returns a row inside its
/// window or not: `moved` (in the window before) and `fresh` (a new key) come back from the
/// query with a time outside the window, which the pushdown's log of the window's rows does
/// not see (it finds them by the query's keys once its count of the window falls short); and
/// `num`, written back as the real `1.0` over the integer `1` in a column declared without a
/// type, is a change (equal values, another storage class), restored as the integer. The
/// row path (insert trigger) logs the same.
#[tokio::test]
async fn sqlite_replace_logs_rows_written_outside_their_window_and_type_changes() {
    use crate::support::rows;
    const TYPED: &str = "SELECT k, ts, v, typeof(v) FROM dst ORDER BY k";
    for pushdown in [true, false] {
        let label = format!("pushdown {pushdown}");
        let ws = Workspace::new();
        let (source, target, _) = sqlite_pair(
            &ws,
            &[
                "CREATE TABLE src (k TEXT, ts TEXT, v)",
                "INSERT INTO src VALUES ('moved', '2026-01-01T01:00:00Z', 'm'), \
                 ('num', '2026-01-01T02:00:00Z', 1.0), ('same', '2026-01-01T03:00:00Z', 's'), \
                 ('fresh', '2026-01-01T05:00:00Z', 'f')",
            ],
            &[
                "CREATE TABLE dst (k TEXT PRIMARY KEY, ts TEXT, v)",
                "INSERT INTO dst VALUES ('moved', '2026-01-01T01:00:00Z', 'm'), \
                 ('num', '2026-01-01T02:00:00Z', 1), ('same', '2026-01-01T03:00:00Z', 's'), \
                 ('gone', '2026-01-01T04:00:00Z', 'g'), ('out', '2026-01-05T00:00:00Z', 'o')",
            ],
        )
        .await;
        let before = rows(&target, TYPED).await;
        let query = "SELECT k, CASE WHEN k IN ('moved', 'fresh') THEN '2026-02-01T00:00:00Z' \
                     ELSE ts END AS ts, v FROM src WHERE ts >= :start AND ts < :end";
        let spec = ws.write("spec.toml", &replace_one_day("dst", query, pushdown));
        let ran = ws.run(&["run", &spec, "--json"]);
        assert_eq!(ran.code, 0, "{label}: {ran:?}");
        let after = rows(&target, TYPED).await;
        assert!(
            after.iter().any(|r| r[0].as_deref() == Some("t:fresh")
                && r[1].as_deref() == Some("t:2026-02-01T00:00:00Z")),
            "{label}: {after:?}"
        );
        assert!(
            after
                .iter()
                .any(|r| r[0].as_deref() == Some("t:num") && r[3].as_deref() == Some("t:real")),
            "{label}: {after:?}"
        );
        // moved and num updated, fresh inserted, gone deleted; same is as it was.
        rolled_back_to(&ws, &run_id(&ran), 4, (&target, TYPED, &before), &label).await;
        source.close().await;
        target.close().await;
    }
}

/// SQLite `upsert` on the pushdown logs its new keys by one of two means: insert triggers
/// (the direct path while keys are mostly new) or found before the write and logged after it
/// (staged batches, and the direct path once keys mostly exist). Each restores the target,
/// with a `NOCASE` key (`ABC` updates `abc`; `New` and `NEW` are one new key) and a `BINARY`
/// one, and with a key the source returns twice (`zz`: inserted, then changed by its second
/// row in the same statement, which is still an insert to undo, not an update).
#[tokio::test]
async fn sqlite_upsert_rollback_on_every_pushdown_path() {
    use crate::support::rows;
    // (label, [limits], scope start): day 1 holds two rows the target already has, so with
    // one partition at a time day 2 runs after a batch of existing keys. Not reconciled: the
    // source's duplicate and case-folded keys never match the target by design.
    let paths = [
        ("staged batches", "batch_rows = 2", "2026-01-01"),
        (
            "direct, keys mostly existing",
            "batch_rows = 100",
            "2026-01-01",
        ),
        ("direct, keys mostly new", "batch_rows = 100", "2026-01-02"),
    ];
    let keys = ["k TEXT COLLATE NOCASE PRIMARY KEY", "k TEXT PRIMARY KEY"];
    for key in keys {
        for (path, limits, start) in paths {
            let label = format!("{key}, {path}");
            let ws = Workspace::new();
            let (source, target, before) = sqlite_pair(
                &ws,
                &[
                    "CREATE TABLE src (k TEXT, ts TEXT, v TEXT)",
                    "INSERT INTO src VALUES ('p1', '2026-01-01T01:00:00Z', 'p'), \
                     ('p2', '2026-01-01T02:00:00Z', 'p'), \
                     ('ABC', '2026-01-02T01:00:00Z', 'x2'), ('same', '2026-01-02T02:00:00Z', 's'), \
                     ('New', '2026-01-02T03:00:00Z', 'n1'), ('NEW', '2026-01-02T04:00:00Z', 'n2'), \
                     ('zz', '2026-01-02T05:00:00Z', 'z1'), ('zz', '2026-01-02T06:00:00Z', 'z2')",
                ],
                &[
                    &format!("CREATE TABLE dst ({key}, ts TEXT, v TEXT)"),
                    "INSERT INTO dst VALUES ('p1', '2026-01-01T01:00:00Z', 'p'), \
                     ('p2', '2026-01-01T02:00:00Z', 'p'), \
                     ('abc', '2026-01-02T01:00:00Z', 'x'), ('same', '2026-01-02T02:00:00Z', 's'), \
                     ('out', '2026-01-05T00:00:00Z', 'o')",
                ],
            )
            .await;
            let all = ALL_DST;
            let spec = ws.write("spec.toml", &one_at_a_time(limits, start, "2026-01-03"));
            let ran = ws.run(&["run", &spec, "--json"]);
            assert_eq!(ran.code, 0, "{label}: {ran:?}");
            let written = rows(
                &target,
                "SELECT k, v FROM dst WHERE k IN ('ABC', 'abc', 'New', 'NEW', 'zz') \
                 ORDER BY k COLLATE BINARY",
            )
            .await;
            assert_eq!(
                written.len(),
                if key.contains("NOCASE") { 3 } else { 5 },
                "{label}"
            );
            assert!(
                written.iter().any(|r| r[0].as_deref() == Some("t:zz")),
                "{label}: {written:?}"
            );
            // Logged: abc updated (NOCASE) or ABC new (BINARY); New (and NEW when BINARY)
            // and zz inserted; nothing for p1, p2, same.
            let logged = if key.contains("NOCASE") { 3 } else { 4 };
            let id = run_id(&ran);
            rolled_back_to(&ws, &id, logged, (&target, all, &before), &label).await;
            source.close().await;
            target.close().await;
        }
    }
}

/// The target's rows as [`rolled_back_to`] compares them (`dst`, keys in byte order).
/// The pushdown's direct path logs a batch of new keys after its insert, under a savepoint,
/// and falls back to the counted upsert in the same transaction when some key existed: one
/// partition at a time, day 1 is all new, day 2 holds a new key and one the target has
/// (changed), day 3 is all new again. Each key is logged once with the right operation, the
/// counts are exact, and the rollback restores the target row for row.
#[tokio::test]
async fn sqlite_direct_new_keys_are_logged_after_the_insert_or_counted() {
    use crate::support::rows;
    let ws = Workspace::new();
    let (source, target, before) = sqlite_pair(
        &ws,
        &[
            "CREATE TABLE src (k TEXT, ts TEXT, v TEXT)",
            "INSERT INTO src VALUES ('a1', '2026-01-01T01:00:00Z', 'a'), \
             ('a2', '2026-01-01T02:00:00Z', 'a'), ('b1', '2026-01-02T01:00:00Z', 'b'), \
             ('e1', '2026-01-02T02:00:00Z', 'new'), ('c1', '2026-01-03T01:00:00Z', 'c'), \
             ('c2', '2026-01-03T02:00:00Z', 'c')",
        ],
        &[
            "CREATE TABLE dst (k TEXT PRIMARY KEY, ts TEXT, v TEXT)",
            "INSERT INTO dst VALUES ('e1', '2026-01-02T02:00:00Z', 'old'), \
             ('out', '2026-01-05T00:00:00Z', 'o')",
        ],
    )
    .await;
    let spec = ws.write(
        "spec.toml",
        &one_at_a_time("batch_rows = 100", "2026-01-01", "2026-01-04"),
    );
    let ran = ws.run(&["run", &spec, "--json"]);
    assert_eq!(ran.code, 0, "{ran:?}");
    let counts = &ran.json()["rows"];
    assert_eq!(
        (&counts["inserted"], &counts["updated"]),
        (&J::from(5), &J::from(1)),
        "{ran:?}"
    );
    assert_eq!(
        rows(
            &target,
            "SELECT k, bf_undo_op, v FROM dst__bf_undo ORDER BY k"
        )
        .await,
        [
            ["a1", "inserted"],
            ["a2", "inserted"],
            ["b1", "inserted"],
            ["c1", "inserted"],
            ["c2", "inserted"],
            ["e1", "updated"],
        ]
        .map(|[k, op]| vec![
            Some(format!("t:{k}")),
            Some(format!("t:{op}")),
            (op == "updated").then(|| "t:old".to_owned())
        ])
    );
    rolled_back_to(
        &ws,
        &run_id(&ran),
        6,
        (&target, ALL_DST, &before),
        "direct new",
    )
    .await;
    source.close().await;
    target.close().await;
}

/// The spec of the SQLite pushdown-path tests: `src` (k, ts, v) to `dst` by `k`, one
/// partition at a time with `limits`, daily from `start` to `end` (dates), not reconciled (the
/// sources' duplicate and case-folded keys never match the target by design).
fn one_at_a_time(limits: &str, start: &str, end: &str) -> String {
    format!(
        r#"name = "upsert_paths"
reason = "test"
[source]
url = "sqlite://source.db"
query = "SELECT k, ts, v FROM src WHERE ts >= :start AND ts < :end"
time_format = "rfc3339"
time_column = "ts"
[target]
url = "sqlite://target.db"
table = "dst"
key = ["k"]
time_format = "rfc3339"
[limits]
concurrency = 1
{limits}
[validate]
after_partition = false
at_end = false
[scope]
start = "{start}T00:00:00Z"
end = "{end}T00:00:00Z"
partition = "1d"
"#
    )
}

/// A SQLite `replace` of day 2026-01-01 from `source.db`'s `query` into `target.db`'s `table`
/// (key `k`, window `ts`), with or without the pushdown; not reconciled (the tests' sources
/// differ from their targets by design: case-folded keys, rows moved out of the window).
fn replace_one_day(table: &str, query: &str, pushdown: bool) -> String {
    format!(
        r#"name = "replace_one_day"
reason = "test"
[source]
url = "sqlite://source.db"
query = "{query}"
time_format = "rfc3339"
time_column = "ts"
[target]
url = "sqlite://target.db"
table = "{table}"
key = ["k"]
mode = "replace"
window_column = "ts"
time_format = "rfc3339"
pushdown = {pushdown}
[validate]
after_partition = false
at_end = false
[scope]
start = "2026-01-01T00:00:00Z"
end = "2026-01-02T00:00:00Z"
partition = "1d"
"#
    )
}

const ALL_DST: &str = "SELECT k, ts, v FROM dst ORDER BY k COLLATE BINARY";

/// The workspace's `source.db` and `target.db`, each set up by its statements, and the
/// target's rows ([`ALL_DST`]) before anything runs.
async fn sqlite_pair(
    ws: &Workspace,
    source: &[&str],
    target: &[&str],
) -> (sqlx::SqlitePool, sqlx::SqlitePool, Vec<Vec<Option<String>>>) {
    use crate::support::{exec, rows, sqlite};
    let source_db = sqlite(&ws.path("source.db")).await;
    exec(&source_db, source).await;
    let target_db = sqlite(&ws.path("target.db")).await;
    exec(&target_db, target).await;
    let before = rows(&target_db, ALL_DST).await;
    (source_db, target_db, before)
}

/// Checks run `id` logged `logged` undo rows, rolls it back with no conflict, and checks the
/// target's rows (`all` on `target`) are `before` again.
async fn rolled_back_to(
    ws: &Workspace,
    id: &str,
    logged: u64,
    (target, all, before): (&sqlx::SqlitePool, &str, &[Vec<Option<String>>]),
    label: &str,
) {
    let status = ws.run(&["status", id, "--json"]);
    assert_eq!(
        status.json()["undo_rows"].as_u64(),
        Some(logged),
        "{label}: {status:?}"
    );
    let back = ws.run(&["rollback", id, "--json"]);
    assert_eq!(back.code, 0, "{label}: {back:?}");
    assert_eq!(back.json()["conflicts"], 0, "{label}: {back:?}");
    assert_eq!(crate::support::rows(target, all).await, before, "{label}");
}
