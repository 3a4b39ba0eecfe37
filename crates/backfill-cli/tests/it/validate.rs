//! Reconciliation after writing (`[validate]`, `backfill validate`, issue 11) through the real
//! binary, on SQLite, PostgreSQL and MySQL/MariaDB: a correct run verifies every partition; a
//! target row changed by a trigger while the run writes fails its partition with
//! `reconcile_mismatch` naming the key; `validate RUN` after someone edits the target reports
//! the partition and exits 1; a tolerance lets it pass; `sql` mode reconciles by check
//! queries; a `[validate]` that cannot work is a spec error naming the field; a target
//! column the source does not write is not compared.

use backfill_testkit::servers::{Db, System};
use serde_json::Value as J;

use crate::support::{Workspace, audit_events, exec, sqlite};

/// Rows per day and days: ids `1..=60`, day `d` (from 0) holding ids `6d+1 ..= 6d+6`.
const PER_DAY: i64 = 6;
const DAYS: i64 = 10;

fn tuples(system: System) -> String {
    (1..=PER_DAY * DAYS)
        .map(|i| {
            let day = (i - 1) / PER_DAY + 1;
            let minute = (i - 1) % PER_DAY;
            let ts = match system {
                System::Sqlite => format!("2026-01-{day:02}T00:{minute:02}:00Z"),
                _ => format!("2026-01-{day:02} 00:{minute:02}:00"),
            };
            format!("({i}, {}, '{ts}', 'note {i}')", i * 100)
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

/// Source `src` with the rows, empty target `dst`; `None` when the server is not there.
async fn fixture(system: System, ws: &Workspace) -> Option<(Db, Db)> {
    let source = Db::open(system, ws.dir.path(), "bf_val", "src").await?;
    let target = Db::open(system, ws.dir.path(), "bf_val", "dst").await?;
    let src = source.table("src");
    source.exec(&create(system, &src)).await;
    source
        .exec(&format!("INSERT INTO {src} VALUES {}", tuples(system)))
        .await;
    let dst = target.table("dst");
    target.exec(&create(system, &dst)).await;
    // The time index such a table has: each partition's check reads its window by it.
    target
        .exec(&format!("CREATE INDEX dst_ts ON {dst} (ts)"))
        .await;
    Some((source, target))
}

fn spec(source: &Db, target: &Db, validate: &str) -> String {
    let src = source.table("src");
    format!(
        r#"name = "validate_test"
reason = "integration test"

[source]
url = "{}"
query = "SELECT id, amount_cents, ts, note FROM {src} WHERE ts >= :start AND ts < :end"
time_column = "ts"

[target]
url = "{}"
table = "{}"
key = ["id"]

[scope]
start = "2026-01-01T00:00:00Z"
end = "2026-01-11T00:00:00Z"
partition = "1d"
{validate}
"#,
        source.url(),
        target.url(),
        target.table("dst"),
    )
}

/// The `partition.done` events of `events`, after checking there are some and that each
/// carries a verified check (the partition was reconciled as it ended).
fn each_checked_as_it_ended(events: &[J]) -> Vec<&J> {
    let done: Vec<&J> = events
        .iter()
        .filter(|e| e["action"] == "partition.done")
        .collect();
    assert!(!done.is_empty(), "{events:#?}");
    for e in &done {
        assert_eq!(e["detail"]["reconcile"]["status"], "verified", "{e:#}");
    }
    done
}

fn reconciliation(j: &J) -> (u64, u64, u64) {
    let r = &j["reconciliation"];
    (
        r["verified"].as_u64().unwrap_or(99),
        r["mismatched"].as_u64().unwrap_or(99),
        r["not_verified"].as_u64().unwrap_or(99),
    )
}

async fn correct_run_verifies_then_validate_finds_an_edit(system: System) {
    let ws = Workspace::new();
    let Some((source, target)) = fixture(system, &ws).await else {
        return;
    };
    // The end-of-run re-check is off by default (each partition was checked as it ended);
    // asked for here, it adds one `run.reconciled` event.
    let path = ws.write(
        "spec.toml",
        &spec(&source, &target, "[validate]\nat_end = true\n"),
    );

    let plan = ws.run(&["plan", &path]);
    assert!(
        plan.stdout
            .contains("reconcile:  row count and checksum of both sides by `ts`"),
        "{plan:?}"
    );
    let ran = ws.run(&["run", &path, "--json"]);
    assert_eq!(ran.code, 0, "{ran:?}");
    let summary = ran.json();
    assert_eq!(reconciliation(&summary), (10, 0, 0), "{summary:#}");
    let run_id = summary["run_id"].as_str().unwrap().to_owned();
    // Each partition's finish event carries its check; the run's end adds one event.
    let events = audit_events(&ws, &run_id);
    for e in each_checked_as_it_ended(&events) {
        assert_eq!(e["detail"]["reconcile"]["source_rows"], PER_DAY, "{e:#}");
    }
    assert!(events.iter().any(|e| e["action"] == "run.reconciled"));

    let valid = ws.run(&["validate", &run_id, "--json"]);
    assert_eq!(valid.code, 0, "{valid:?}");
    assert_eq!(reconciliation(&valid.json()), (10, 0, 0), "{valid:?}");

    // Someone edits the target: day 8 (ids 43..=48) now differs.
    let dst = target.table("dst");
    target
        .exec(&format!(
            "UPDATE {dst} SET amount_cents = amount_cents + 1 WHERE id = 45"
        ))
        .await;
    let found = ws.run(&["validate", &path, "--json"]);
    assert_eq!(found.code, 1, "{found:?}");
    let j = found.json();
    assert_eq!(reconciliation(&j), (9, 1, 0), "{j:#}");
    let message = j["mismatched"][0]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("reconcile_mismatch") && message.contains("id=45 (update: amount_cents)"),
        "{j:#}"
    );
    let text = ws.run(&["validate", &run_id]);
    assert_eq!(text.code, 1, "{text:?}");
    assert!(text.stdout.contains("9 verified, 1 mismatched"), "{text:?}");
    let status = ws.run(&["status", &run_id, "--json"]);
    assert_eq!(reconciliation(&status.json()), (9, 1, 0), "{status:?}");
    let events = audit_events(&ws, &run_id);
    let validated: Vec<&J> = events
        .iter()
        .filter(|e| e["action"] == "validate")
        .collect();
    assert_eq!(validated.len(), 3, "{events:#?}");
    assert_eq!(validated[2]["detail"]["mismatched"], 1);

    // A tolerance of one row lets that difference pass ([validate] is not in the plan hash,
    // so the run still matches its spec).
    ws.write(
        "spec.toml",
        &spec(&source, &target, "[validate]\ntolerance = 1\n"),
    );
    let tolerated = ws.run(&["validate", &run_id, "--json"]);
    assert_eq!(tolerated.code, 0, "{tolerated:?}");
    assert_eq!(
        reconciliation(&tolerated.json()),
        (10, 0, 0),
        "{tolerated:?}"
    );
    let audit = ws.run(&["audit", "--verify"]);
    assert_eq!(audit.code, 0, "{audit:?}");
    source.drop_now().await;
    target.drop_now().await;
}

/// A target column the source does not write (a load time, say) is not compared by default:
/// a run into such a table verifies every partition, an edit of that column is not a
/// mismatch, an edit of a written one is; `diff` agrees. It used to leave every partition
/// "not verified" (the source has no such column to fingerprint).
async fn a_column_the_source_does_not_write_is_not_compared(system: System) {
    let ws = Workspace::new();
    let Some((source, target)) = fixture(system, &ws).await else {
        return;
    };
    let dst = target.table("dst");
    target
        .exec(&format!(
            "ALTER TABLE {dst} ADD COLUMN loaded_at VARCHAR(30) DEFAULT 'at load'"
        ))
        .await;
    let path = ws.write("spec.toml", &spec(&source, &target, ""));
    let ran = ws.run(&["run", &path, "--json"]);
    assert_eq!(ran.code, 0, "{ran:?}");
    assert_eq!(reconciliation(&ran.json()), (10, 0, 0), "{ran:?}");
    let run_id = ran.json()["run_id"].as_str().unwrap().to_owned();
    target
        .exec(&format!(
            "UPDATE {dst} SET loaded_at = 'later' WHERE id = 45"
        ))
        .await;
    let valid = ws.run(&["validate", &run_id, "--json"]);
    assert_eq!(valid.code, 0, "{valid:?}");
    assert_eq!(reconciliation(&valid.json()), (10, 0, 0), "{valid:?}");
    let diff = ws.run(&["diff", &path, "--json"]);
    assert_eq!(diff.code, 0, "{diff:?}");
    assert_eq!(diff.json()["totals"]["update"], 0, "{diff:?}");
    assert_eq!(
        diff.json()["totals"]["unchanged"],
        PER_DAY * DAYS,
        "{diff:?}"
    );
    target
        .exec(&format!(
            "UPDATE {dst} SET amount_cents = amount_cents + 1 WHERE id = 45"
        ))
        .await;
    let found = ws.run(&["validate", &run_id, "--json"]);
    assert_eq!(found.code, 1, "{found:?}");
    assert_eq!(reconciliation(&found.json()), (9, 1, 0), "{found:?}");
    // Asked to compare that column, nothing can be verified, and every report says why.
    ws.write(
        "spec.toml",
        &spec(&source, &target, "[validate]\ncolumns = [\"loaded_at\"]\n"),
    );
    let asked = ws.run(&["validate", &run_id, "--json"]);
    assert_eq!(asked.code, 0, "{asked:?}");
    assert_eq!(reconciliation(&asked.json()), (0, 0, 10), "{asked:?}");
    for j in [asked.json(), ws.run(&["status", &run_id, "--json"]).json()] {
        let reason = j["reconciliation"]["not_verified_reason"]
            .as_str()
            .unwrap_or_default();
        assert!(reason.contains("loaded_at"), "{j:#}");
    }
    source.drop_now().await;
    target.drop_now().await;
}

#[tokio::test]
async fn a_column_the_source_does_not_write_is_not_compared_sqlite() {
    a_column_the_source_does_not_write_is_not_compared(System::Sqlite).await;
}

#[tokio::test]
async fn a_column_the_source_does_not_write_is_not_compared_postgres() {
    a_column_the_source_does_not_write_is_not_compared(System::Postgres).await;
}

#[tokio::test]
async fn a_column_the_source_does_not_write_is_not_compared_mysql() {
    a_column_the_source_does_not_write_is_not_compared(System::MySql).await;
}

#[tokio::test]
async fn validate_sqlite() {
    correct_run_verifies_then_validate_finds_an_edit(System::Sqlite).await;
}

#[tokio::test]
async fn validate_postgres() {
    correct_run_verifies_then_validate_finds_an_edit(System::Postgres).await;
}

#[tokio::test]
async fn validate_mysql() {
    correct_run_verifies_then_validate_finds_an_edit(System::MySql).await;
}

/// A trigger rewrites row 45 as the run writes it: its partition (day 8) fails with
/// `reconcile_mismatch` naming the key, without a retry; the others are verified.
async fn concurrent_writer_fails_the_partition(system: System) {
    let ws = Workspace::new();
    let Some((source, target)) = fixture(system, &ws).await else {
        return;
    };
    let dst = target.table("dst");
    match system {
        System::Sqlite => {
            target
                .exec(&format!(
                    "CREATE TRIGGER meddle AFTER INSERT ON {dst} WHEN NEW.id = 45 BEGIN \
                     UPDATE {dst} SET note = 'changed by a trigger' WHERE id = 45; END"
                ))
                .await;
        }
        System::Postgres => {
            let f = target.table("meddle");
            target
                .exec(&format!(
                    "CREATE FUNCTION {f}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
                     NEW.note := 'changed by a trigger'; RETURN NEW; END $$"
                ))
                .await;
            target
                .exec(&format!(
                    "CREATE TRIGGER meddle BEFORE INSERT ON {dst} FOR EACH ROW \
                     WHEN (NEW.id = 45) EXECUTE FUNCTION {f}()"
                ))
                .await;
        }
        System::MySql => return,
    }
    let path = ws.write("spec.toml", &spec(&source, &target, ""));
    let ran = ws.run(&["run", &path, "--json"]);
    assert_eq!(ran.code, 1, "{ran:?}");
    let summary = ran.json();
    assert_eq!(summary["partitions"]["failed"], 1, "{summary:#}");
    let error = summary["failures"][0]["error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with("reconcile_mismatch: source 6 rows, target 6 rows (checksums differ)")
            && error.contains("id=45 (update: note)"),
        "{summary:#}"
    );
    assert_eq!(reconciliation(&summary), (9, 1, 0), "{summary:#}");
    let run_id = summary["run_id"].as_str().unwrap().to_owned();
    let events = audit_events(&ws, &run_id);
    let failed: Vec<&J> = events
        .iter()
        .filter(|e| e["action"] == "partition.failed")
        .collect();
    assert_eq!(failed.len(), 1, "not retried: {events:#?}");
    assert_eq!(failed[0]["detail"]["reconcile"]["status"], "mismatch");
    assert!(!events.iter().any(|e| e["action"] == "partition.retry"));
    source.drop_now().await;
    target.drop_now().await;
}

#[tokio::test]
async fn reconcile_mismatch_sqlite() {
    concurrent_writer_fails_the_partition(System::Sqlite).await;
}

#[tokio::test]
async fn reconcile_mismatch_postgres() {
    concurrent_writer_fails_the_partition(System::Postgres).await;
}

/// `sql` mode: a pair of check queries per window; equal rows verify, a wrong one fails the
/// partition. Without checks, plan and run say why nothing is verified.
#[tokio::test]
async fn sql_mode_reconciles_by_check_queries() {
    let ws = Workspace::new();
    let db = sqlite(&ws.path("warehouse.db")).await;
    exec(
        &db,
        &[
            "CREATE TABLE events (id INTEGER PRIMARY KEY, ts TEXT NOT NULL, amount INTEGER NOT NULL)",
            "INSERT INTO events (ts, amount) VALUES ('2026-01-01T01:00:00Z', 1), \
             ('2026-01-01T05:00:00Z', 2), ('2026-01-02T00:00:00Z', 10), ('2026-01-03T03:00:00Z', 400)",
            "CREATE TABLE daily (day TEXT PRIMARY KEY, n INTEGER NOT NULL, total INTEGER NOT NULL)",
        ],
    )
    .await;
    db.close().await;
    let url = format!("sqlite://{}", ws.path("warehouse.db").display());
    let spec = |validate: &str| {
        format!(
            r#"name = "daily_rollup"
reason = "recompute the rollup"

[target]
url = "{url}"
mode = "sql"
sql = "INSERT INTO daily (day, n, total) SELECT substr(ts, 1, 10), count(*), sum(amount) FROM events WHERE ts >= :start AND ts < :end GROUP BY 1 ON CONFLICT (day) DO UPDATE SET n = excluded.n, total = excluded.total"

[scope]
start = "2026-01-01T00:00:00Z"
end = "2026-01-04T00:00:00Z"
partition = "1d"
{validate}
"#
        )
    };
    let checks = |extra: &str| {
        format!(
            "[validate]\nsource_check = \"SELECT count(*), coalesce(sum(amount), 0) FROM events \
             WHERE ts >= :start AND ts < :end\"\ntarget_check = \"SELECT coalesce(sum(n), 0), \
             coalesce(sum(total), 0){extra} FROM daily WHERE day >= substr(:start, 1, 10) AND \
             day < substr(:end, 1, 10)\"\n"
        )
    };
    let none = ws.write("none.toml", &spec(""));
    let plan = ws.run(&["plan", &none]);
    assert!(
        plan.stdout
            .contains("not verified: `sql` mode makes its own rows"),
        "{plan:?}"
    );

    let path = ws.write("spec.toml", &spec(&checks("")));
    let ran = ws.run(&["run", &path, "--json"]);
    assert_eq!(ran.code, 0, "{ran:?}");
    assert_eq!(reconciliation(&ran.json()), (3, 0, 0), "{ran:?}");

    let wrong = ws.write(
        "wrong.toml",
        &spec(&checks(" + 1")).replace("daily_rollup", "wrong"),
    );
    let ran = ws.run(&["run", &wrong, "--json"]);
    assert_eq!(ran.code, 1, "{ran:?}");
    let j = ran.json();
    assert_eq!(j["partitions"]["failed"], 3, "{j:#}");
    assert!(
        j["failures"][0]["error"]
            .as_str()
            .unwrap_or_default()
            .starts_with("reconcile_mismatch: source_check returned"),
        "{j:#}"
    );
}

/// A `[validate]` that cannot work is refused while parsing, naming the field (exit 2);
/// without the section, a spec with no window column runs "not verified" with the reason.
#[tokio::test]
async fn bad_validate_sections_are_spec_errors() {
    let ws = Workspace::new();
    let Some((source, target)) = fixture(System::Sqlite, &ws).await else {
        return;
    };
    let no_column = spec(&source, &target, "").replace("time_column = \"ts\"\n", "");
    let cases = [
        (
            no_column.clone() + "[validate]\nat_end = true\n",
            "validate.window_column",
        ),
        (
            spec(&source, &target, "[validate]\ntolerance = -1\n"),
            "validate.tolerance",
        ),
        (
            spec(&source, &target, "[validate]\ncolumns = []\n"),
            "validate.columns",
        ),
        (
            spec(
                &source,
                &target,
                "[validate]\nsource_check = \"SELECT 1 WHERE :start < :end\"\n",
            ),
            "validate.source_check",
        ),
        (
            spec(&source, &target, "[validate]\ntolerence = 1\n"),
            "did you mean `tolerance`?",
        ),
    ];
    for (i, (text, needle)) in cases.iter().enumerate() {
        let path = ws.write(&format!("bad{i}.toml"), text);
        let ran = ws.run(&["check", "--offline", &path]);
        assert_eq!(ran.code, 2, "{text}\n{ran:?}");
        assert!(ran.stderr.contains(needle), "{needle}: {ran:?}");
    }
    let path = ws.write("nocolumn.toml", &no_column);
    let ran = ws.run(&["run", &path, "--json"]);
    assert_eq!(ran.code, 0, "{ran:?}");
    let j = ran.json();
    assert_eq!(reconciliation(&j), (0, 0, 10), "{j:#}");
    assert!(
        j["reconciliation"]["not_verified_reason"]
            .as_str()
            .unwrap_or_default()
            .contains("no column places rows in partitions"),
        "{j:#}"
    );
    // An explicit [validate] naming an unknown column is refused before anything is written.
    let path = ws.write(
        "unknown.toml",
        &spec(&source, &target, "[validate]\ncolumns = [\"nope\"]\n").replace("validate_test", "x"),
    );
    let ran = ws.run(&["run", &path]);
    assert_eq!(ran.code, 1, "{ran:?}");
    assert!(ran.stderr.contains("\"nope\""), "{ran:?}");
}

/// Without an index leading with the window column, each partition's check scans the whole
/// target table: `check` and the run say so (with the index to create, or how to reconcile
/// once at the end), and each partition is still checked as it ends; an explicit `[validate]`
/// is not warned about.
async fn an_unindexed_target_is_warned_about(system: System) {
    let ws = Workspace::new();
    let Some((source, target)) = fixture(system, &ws).await else {
        return;
    };
    let drop = match system {
        System::Postgres => format!("DROP INDEX {}", target.table("dst_ts")),
        _ => "DROP INDEX dst_ts".to_owned(),
    };
    target.exec(&drop).await;
    let path = ws.write("spec.toml", &spec(&source, &target, ""));
    let checked = ws.run(&["check", &path]);
    assert!(
        format!("{}{}", checked.stdout, checked.stderr)
            .contains("each partition's reconciliation will scan the whole table"),
        "`check` says so first: {checked:?}"
    );
    let ran = ws.run(&["run", &path, "--json"]);
    assert_eq!(ran.code, 0, "{ran:?}");
    assert!(
        ran.stderr
            .contains("each partition's reconciliation scans the whole table"),
        "{ran:?}"
    );
    let summary = ran.json();
    assert_eq!(reconciliation(&summary), (10, 0, 0), "{summary:#}");
    let run_id = summary["run_id"].as_str().unwrap().to_owned();
    each_checked_as_it_ended(&audit_events(&ws, &run_id));

    let explicit = ws.write(
        "explicit.toml",
        &spec(&source, &target, "[validate]\nafter_partition = true\n")
            .replace("validate_test", "validate_explicit"),
    );
    let checked = ws.run(&["run", &explicit, "--json"]);
    assert_eq!(checked.code, 0, "{checked:?}");
    assert!(
        !checked.stderr.contains("scans the whole table"),
        "{checked:?}"
    );
    let run_id = checked.json()["run_id"].as_str().unwrap().to_owned();
    each_checked_as_it_ended(&audit_events(&ws, &run_id));
}

#[tokio::test]
async fn unindexed_target_is_warned_about_sqlite() {
    an_unindexed_target_is_warned_about(System::Sqlite).await;
}

#[tokio::test]
async fn unindexed_target_is_warned_about_postgres() {
    an_unindexed_target_is_warned_about(System::Postgres).await;
}

/// An `upsert` never deletes, so target rows whose key is not in the source are kept by
/// design: reported as `extra_kept`, not a mismatch (a run into a table with rows of its own
/// does not fail). With `propagate_deletes` they are deleted, and the partition verifies.
#[tokio::test]
async fn extra_target_rows_are_kept_by_an_upsert_not_a_mismatch() {
    let ws = Workspace::new();
    let Some((source, target)) = fixture(System::Sqlite, &ws).await else {
        return;
    };
    let dst = target.table("dst");
    target
        .exec(&format!(
            "INSERT INTO {dst} VALUES (9001, 1, '2026-01-04T12:00:00Z', 'mine')"
        ))
        .await;
    let path = ws.write("spec.toml", &spec(&source, &target, ""));
    let ran = ws.run(&["run", &path, "--json"]);
    assert_eq!(ran.code, 0, "{ran:?}");
    let summary = ran.json();
    assert_eq!(reconciliation(&summary), (10, 0, 0), "{summary:#}");
    let run_id = summary["run_id"].as_str().unwrap_or_default().to_owned();
    let kept: Vec<J> = audit_events(&ws, &run_id)
        .into_iter()
        .filter(|e| e["detail"]["reconcile"]["detail"]["extra_kept"] == 1)
        .collect();
    assert_eq!(kept.len(), 1, "one partition reports its extra row");
    let valid = ws.run(&["validate", &run_id]);
    assert_eq!(valid.code, 0, "{valid:?}");
    // Someone changes a row the run wrote: that is a mismatch, extra rows or not.
    target
        .exec(&format!("UPDATE {dst} SET note = 'edited' WHERE id = 20"))
        .await;
    let edited = ws.run(&["validate", &run_id]);
    assert_eq!(edited.code, 1, "{edited:?}");
    assert!(edited.stdout.contains("id=20"), "{edited:?}");
    assert!(!edited.stdout.contains("id=9001"), "{edited:?}");
}
