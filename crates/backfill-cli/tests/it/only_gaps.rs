//! `run --only-gaps` and `run --only-diff` through the real binary, on SQLite and PostgreSQL:
//! a `replace` target equal to its source but for 3 drifted days, 1 missing day and 1 day with
//! extra rows. Only those partitions are written (a trigger logs every row the run touches),
//! the others are skipped as correct (summary, status, audit), and afterwards `gaps` finds
//! none and `diff` finds every row equal. `--only-diff` writes only the differing slices.
//! Also: `diff`/`gaps` audit events, refusals, and `audit --verify` on a truncated tail.

use backfill_testkit::servers::{Db, System};
use serde_json::Value as J;

use crate::support::Workspace;

/// Rows per day (one every 144 s) and days: ids `1..=6000`, day `d` (from 0) holding ids
/// `600d+1 ..= 600d+600`. Big enough that `--only-diff` cuts a day into slices.
const PER_DAY: i64 = 600;
const DAYS: i64 = 10;

fn ts(system: System, day: i64, second: i64) -> String {
    let (h, m, s) = (second / 3600, second / 60 % 60, second % 60);
    match system {
        System::Sqlite => format!("2026-01-{day:02}T{h:02}:{m:02}:{s:02}Z"),
        _ => format!("2026-01-{day:02} {h:02}:{m:02}:{s:02}"),
    }
}

fn tuples(system: System) -> String {
    (1..=PER_DAY * DAYS)
        .map(|i| {
            let day = (i - 1) / PER_DAY + 1;
            let at = ts(system, day, (i - 1) % PER_DAY * 144);
            format!("({i}, {}, '{at}', 'note {i}')", i * 100)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Source `src`, target `dst` with the same rows, and a `writes` log of every id the target's
/// rows are inserted, updated or deleted with (triggers); `None` without the server.
async fn fixture(system: System, ws: &Workspace) -> Option<(Db, Db)> {
    let source = Db::open(system, ws.dir.path(), "bf_gaps", "src").await?;
    let target = Db::open(system, ws.dir.path(), "bf_gaps", "dst").await?;
    let ts_type = if system == System::Sqlite {
        "TEXT"
    } else {
        "timestamptz"
    };
    for (db, table) in [(&source, "src"), (&target, "dst")] {
        let t = db.table(table);
        db.exec(&format!(
            "CREATE TABLE {t} (id BIGINT PRIMARY KEY, amount_cents BIGINT, ts {ts_type} NOT NULL, \
             note VARCHAR(100))"
        ))
        .await;
        db.exec(&format!("INSERT INTO {t} VALUES {}", tuples(system)))
            .await;
    }
    let (dst, writes) = (target.table("dst"), target.table("writes"));
    target
        .exec(&format!("CREATE TABLE {writes} (id BIGINT NOT NULL)"))
        .await;
    match system {
        System::Sqlite => {
            for (event, row) in [("INSERT", "NEW"), ("UPDATE", "NEW"), ("DELETE", "OLD")] {
                target
                    .exec(&format!(
                        "CREATE TRIGGER log_{event} AFTER {event} ON {dst} \
                         BEGIN INSERT INTO {writes} VALUES ({row}.id); END"
                    ))
                    .await;
            }
        }
        _ => {
            let f = target.table("log_write");
            target
                .exec(&format!(
                    "CREATE FUNCTION {f}() RETURNS trigger AS $$ BEGIN \
                     INSERT INTO {writes} VALUES (CASE WHEN TG_OP = 'DELETE' THEN OLD.id \
                     ELSE NEW.id END); RETURN NULL; END $$ LANGUAGE plpgsql; \
                     CREATE TRIGGER log_write AFTER INSERT OR UPDATE OR DELETE ON {dst} \
                     FOR EACH ROW EXECUTE FUNCTION {f}()"
                ))
                .await;
        }
    }
    Some((source, target))
}

/// Distinct ids in the target's write log.
async fn written_ids(target: &Db) -> Vec<i64> {
    let sql = format!(
        "SELECT DISTINCT id FROM {} ORDER BY id",
        target.table("writes")
    );
    match target {
        Db::Sqlite(pool, _) => sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_all(pool)
            .await
            .unwrap(),
        Db::Postgres(schema) => sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_all(schema.pool())
            .await
            .unwrap(),
        Db::MySql(_) => unreachable!("not used with MySQL"),
    }
}

fn spec(source: &Db, target: &Db) -> String {
    format!(
        r#"name = "only_gaps_test"
reason = "integration test"

[source]
url = "{}"
query = "SELECT id, amount_cents, ts, note FROM {} WHERE ts >= :start AND ts < :end"
time_column = "ts"

[target]
url = "{}"
table = "{}"
key = ["id"]
mode = "replace"
window_column = "ts"

[scope]
start = "2026-01-01T00:00:00Z"
end = "2026-01-11T00:00:00Z"
partition = "1d"
"#,
        source.url(),
        source.table("src"),
        target.url(),
        target.table("dst"),
    )
}

/// Days (from 1) 2, 3 and 4 drift (one row each), day 6 is missing, day 8 has 2 extra rows;
/// clears the write log.
async fn break_target(system: System, target: &Db) {
    let (dst, writes) = (target.table("dst"), target.table("writes"));
    target
        .exec(&format!(
            "UPDATE {dst} SET amount_cents = amount_cents + 1 WHERE id IN (700, 1500, 2100)"
        ))
        .await;
    target
        .exec(&format!("DELETE FROM {dst} WHERE id BETWEEN 3001 AND 3600"))
        .await;
    let (a, b) = (ts(system, 8, 43_210), ts(system, 8, 46_810));
    target
        .exec(&format!(
            "INSERT INTO {dst} VALUES (9001, 5, '{a}', 'stray'), (9002, 6, '{b}', NULL)"
        ))
        .await;
    target.exec(&format!("DELETE FROM {writes}")).await;
}

/// The ids of day `day` (from 1).
fn day(day: i64) -> std::ops::RangeInclusive<i64> {
    (day - 1) * PER_DAY + 1..=day * PER_DAY
}

fn actions(events: &J) -> Vec<&str> {
    events
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["action"].as_str())
        .collect()
}

async fn only_gaps_writes_only_what_differs(system: System) {
    let ws = Workspace::new();
    let Some((source, target)) = fixture(system, &ws).await else {
        return;
    };
    let path = ws.write("spec.toml", &spec(&source, &target));
    break_target(system, &target).await;

    let ran = ws.run(&["run", &path, "--only-gaps", "--json"]);
    assert_eq!(ran.code, 0, "{ran:?}");
    let summary = ran.json();
    assert_eq!(summary["state"], "succeeded", "{summary:#}");
    assert_eq!(summary["partitions"]["skipped"], 5, "{summary:#}");
    let differing = summary["only_gaps"]["differing"].as_array().unwrap();
    let gaps: Vec<&str> = differing
        .iter()
        .map(|d| d["gap"].as_str().unwrap())
        .collect();
    assert_eq!(
        gaps,
        ["drifted", "drifted", "drifted", "missing", "drifted"],
        "{summary:#}"
    );
    assert_eq!(differing[3]["changed"]["inserted"], 600, "{summary:#}");
    assert!(
        ran.stderr.contains("5 of 10 partitions already match"),
        "{ran:?}"
    );

    // Only the 5 differing days were written (replace: each deleted and inserted whole).
    let written = written_ids(&target).await;
    let touched: Vec<i64> = [2, 3, 4, 6]
        .into_iter()
        .flat_map(day)
        .chain(day(8))
        .chain([9001, 9002])
        .collect();
    assert!(
        written.iter().all(|id| touched.contains(id)),
        "rows of a skipped day were written: {:?}",
        written
            .iter()
            .filter(|id| !touched.contains(id))
            .take(5)
            .collect::<Vec<_>>()
    );
    assert_eq!(written.len(), touched.len(), "every row of a differing day");

    // Row by row: every row equal, none extra; no gaps left.
    let diff = ws.run(&["diff", &path, "--json"]);
    assert_eq!(diff.code, 0, "{diff:?}");
    let totals = &diff.json()["totals"];
    assert_eq!(
        (
            &totals["unchanged"],
            &totals["insert"],
            &totals["update"],
            &totals["extra"]
        ),
        (&J::from(6000), &J::from(0), &J::from(0), &J::from(0)),
        "{totals:#}"
    );
    let gaps = ws.run(&["gaps", &path]);
    assert_eq!(gaps.code, 0, "{gaps:?}");

    // Status shows the skipped partitions; one audit event records them.
    let run_id = summary["run_id"].as_str().unwrap();
    let status = ws.run(&["status", run_id, "--json"]);
    assert_eq!(status.json()["partitions_skipped"], 5, "{status:?}");
    let text = ws.run(&["status", run_id]);
    assert!(
        text.stdout
            .contains("skipped:    5 partitions already correct"),
        "{text:?}"
    );
    let events = ws.run(&["audit", run_id, "--json"]).json();
    let skips: Vec<&J> = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "run.skipped_correct")
        .collect();
    assert_eq!(skips.len(), 1, "{events:#}");
    assert_eq!(skips[0]["detail"]["skipped"], 5);
    assert_eq!(
        skips[0]["detail"]["skipped_index_ranges"],
        serde_json::json!(["0", "4", "6", "8-9"])
    );
    // `diff` and `gaps` are in the chain too, with no run.
    let all = ws.run(&["audit", "--json"]).json();
    let acts = actions(&all);
    assert!(
        acts.contains(&"spec.diff") && acts.contains(&"spec.gaps"),
        "{acts:?}"
    );
    let diff_event = all
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "spec.diff")
        .unwrap();
    assert_eq!(diff_event["run_id"], J::Null);
    assert_eq!(diff_event["detail"]["spec"], "only_gaps_test");
    assert_eq!(diff_event["detail"]["totals"]["unchanged"], 6000);
    assert!(diff_event["detail"]["plan_hash"].is_string());
    assert_eq!(ws.run(&["audit", "--verify"]).code, 0);

    // Once repaired, a new --only-gaps run skips everything, writes nothing, and succeeds.
    let again = ws.run(&["run", &path, "--only-gaps", "--json"]);
    assert_eq!(again.code, 0, "{again:?}");
    let again = again.json();
    assert_eq!(
        (&again["state"], &again["partitions"]["skipped"]),
        (&J::from("succeeded"), &J::from(10)),
        "{again:#}"
    );
    assert_eq!(written_ids(&target).await, written);
    source.drop_now().await;
    target.drop_now().await;
}

#[tokio::test]
async fn only_gaps_sqlite() {
    only_gaps_writes_only_what_differs(System::Sqlite).await;
}

#[tokio::test]
async fn only_gaps_postgres() {
    only_gaps_writes_only_what_differs(System::Postgres).await;
}

async fn only_diff_writes_only_differing_slices(system: System) {
    let ws = Workspace::new();
    let Some((source, target)) = fixture(system, &ws).await else {
        return;
    };
    let path = ws.write("spec.toml", &spec(&source, &target));
    break_target(system, &target).await;

    let ran = ws.run(&["run", &path, "--only-diff", "--json"]);
    assert_eq!(ran.code, 0, "{ran:?}");
    let summary = ran.json();
    assert_eq!(summary["partitions"]["skipped"], 5, "{summary:#}");
    let differing = summary["only_gaps"]["differing"].as_array().unwrap();
    let would: Vec<&J> = differing.iter().map(|d| &d["would_change"]).collect();
    assert_eq!(would[0]["update"], 1, "{summary:#}");
    assert_eq!(would[0]["unchanged"], 599, "{summary:#}");
    assert_eq!(would[3]["insert"], 600, "{summary:#}");
    assert_eq!(would[4]["extra"], 2, "{summary:#}");

    // A drifted day is rewritten only around its changed row (a slice of the day), the
    // missing day whole, the extra rows' slices only.
    let written = written_ids(&target).await;
    for (changed, d) in [(700, 2), (1500, 3), (2100, 4)] {
        let in_day: Vec<&i64> = written.iter().filter(|id| day(d).contains(id)).collect();
        assert!(in_day.contains(&&changed), "{d}: {in_day:?}");
        assert!(
            in_day.len() <= (PER_DAY / 8) as usize,
            "day {d}: {} rows written",
            in_day.len()
        );
    }
    assert!(day(6).all(|id| written.contains(&id)));
    assert!(written.contains(&9001) && written.contains(&9002));
    let day8 = written.iter().filter(|id| day(8).contains(id)).count();
    assert!(day8 <= (PER_DAY / 4) as usize, "day 8: {day8} rows written");
    for untouched in [1, 5, 7, 9, 10] {
        assert!(!written.iter().any(|id| day(untouched).contains(id)));
    }
    let diff = ws.run(&["diff", &path, "--json"]);
    let totals = &diff.json()["totals"];
    assert_eq!(
        (&totals["unchanged"], &totals["extra"]),
        (&J::from(6000), &J::from(0)),
        "{totals:#}"
    );
    let run_id = summary["run_id"].as_str().unwrap();
    let events = ws.run(&["audit", run_id, "--json"]).json();
    assert!(
        actions(&events).contains(&"partition.narrowed"),
        "{events:#}"
    );
    source.drop_now().await;
    target.drop_now().await;
}

#[tokio::test]
async fn only_diff_sqlite() {
    only_diff_writes_only_differing_slices(System::Sqlite).await;
}

#[tokio::test]
async fn only_diff_postgres() {
    only_diff_writes_only_differing_slices(System::Postgres).await;
}

/// `sql` mode has nothing to compare, and a resumed run cannot skip: both refused (exit 2)
/// before anything is written.
#[tokio::test]
async fn only_gaps_refuses_sql_mode_and_resume() {
    let ws = Workspace::new();
    let Some((source, target)) = fixture(System::Sqlite, &ws).await else {
        return;
    };
    let text = spec(&source, &target).replace(
        "mode = \"replace\"\nwindow_column = \"ts\"",
        "mode = \"sql\"\nsql = \"DELETE FROM dst WHERE ts >= :start AND ts < :end\"",
    );
    let sql = ws.write("sql.toml", &text.replace("key = [\"id\"]\n", ""));
    let ran = ws.run(&["run", &sql, "--only-gaps"]);
    assert_eq!(ran.code, 2, "{ran:?}");
    assert!(ran.stderr.contains("in `sql` mode"), "{ran:?}");
    assert!(runs_of(&ws).is_empty());

    let path = ws.write("spec.toml", &spec(&source, &target));
    let created = ws.run(&["run", &path, "--create-only"]);
    assert_eq!(created.code, 0, "{created:?}");
    let ran = ws.run(&["run", &path, "--only-gaps"]);
    assert_eq!(ran.code, 2, "{ran:?}");
    assert!(ran.stderr.contains("unfinished run"), "{ran:?}");
    assert!(ran.stderr.contains("--new --only-gaps"), "{ran:?}");
    let alone = ws.run(&["run", &path, "--window-column", "ts"]);
    assert_eq!(alone.code, 2, "{alone:?}");
}

/// The skips and narrowing on a PostgreSQL state store (one `UPDATE` per chunk of skips).
#[tokio::test]
async fn only_diff_with_a_postgres_state_store() {
    let ws = Workspace::new();
    let Some((source, target)) = fixture(System::Sqlite, &ws).await else {
        return;
    };
    let Some(schema) = backfill_testkit::servers::PgSchema::create("bf_gaps_state").await else {
        return;
    };
    let state = backfill_testkit::servers::with_param(schema.server_url(), "schema", schema.name());
    let path = ws.write("spec.toml", &spec(&source, &target));
    break_target(System::Sqlite, &target).await;
    let ran = ws.run(&["--state", &state, "run", &path, "--only-diff", "--json"]);
    assert_eq!(ran.code, 0, "{ran:?}");
    let summary = ran.json();
    assert_eq!(summary["partitions"]["skipped"], 5, "{summary:#}");
    assert_eq!(
        summary["only_gaps"]["differing"][0]["would_change"]["update"],
        1
    );
    let run_id = summary["run_id"].as_str().unwrap();
    let events = ws
        .run(&["--state", &state, "audit", run_id, "--json"])
        .json();
    let acts = actions(&events);
    assert!(acts.contains(&"partition.narrowed") && acts.contains(&"run.skipped_correct"));
    let gaps = ws.run(&["--state", &state, "gaps", &path]);
    assert_eq!(gaps.code, 0, "{gaps:?}");
    assert_eq!(ws.run(&["--state", &state, "audit", "--verify"]).code, 0);
    schema.drop_now().await;
}

fn runs_of(ws: &Workspace) -> Vec<J> {
    crate::support::runs_json(ws)
}

/// Removing the last audit events leaves a chain that still links; the anchored head names
/// the missing range.
/// Without an anchor (a store from before schema 10 that never appended since), the chain
/// verifies as before.
async fn truncated_tail_is_detected(state: &str, delete: impl AsyncFn(&str)) {
    let ws = Workspace::new();
    let Some((source, target)) = fixture(System::Sqlite, &ws).await else {
        return;
    };
    let path = ws.write("spec.toml", &spec(&source, &target));
    let ran = ws.run(&["--state", state, "run", &path]);
    assert_eq!(ran.code, 0, "{ran:?}");
    let ok = ws.run(&["--state", state, "audit", "--verify", "--json"]);
    assert_eq!(ok.code, 0, "{ok:?}");
    let events = ok.json()["events"].as_u64().unwrap();
    delete("DELETE FROM audit_events WHERE seq > (SELECT MAX(seq) - 3 FROM audit_events)").await;
    let bad = ws.run(&["--state", state, "audit", "--verify"]);
    assert_eq!(bad.code, 1, "{bad:?}");
    let missing = format!("events {}..={events} are missing", events - 2);
    assert!(bad.stdout.contains(&missing), "{bad:?}");
    delete("DELETE FROM audit_head").await;
    let old = ws.run(&["--state", state, "audit", "--verify"]);
    assert_eq!(old.code, 0, "{old:?}");
}

#[tokio::test]
async fn truncated_tail_sqlite() {
    let ws = Workspace::new();
    let state = format!("sqlite://{}", ws.path("store.db").display());
    let file = ws.path("store.db");
    truncated_tail_is_detected(&state, async |sql: &str| {
        let pool = crate::support::sqlite(&file).await;
        crate::support::exec(&pool, &[sql]).await;
    })
    .await;
}

#[tokio::test]
async fn truncated_tail_postgres() {
    let Some(schema) = backfill_testkit::servers::PgSchema::create("bf_tail").await else {
        return;
    };
    let state = backfill_testkit::servers::with_param(schema.server_url(), "schema", schema.name());
    let table = schema.table("audit_events");
    truncated_tail_is_detected(&state, async |sql: &str| {
        let sql = sql
            .replace("audit_events", &table)
            .replace("audit_head", &schema.table("audit_head"));
        schema.exec(&sql).await;
    })
    .await;
}
