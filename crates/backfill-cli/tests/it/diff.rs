//! `backfill diff` and `backfill gaps` through the real binary, on SQLite, PostgreSQL and
//! MySQL/MariaDB: a target equal to its source but for 3 changed rows, 1 missing day and 1 day
//! with extra rows is reported exactly; an equal target is all unchanged; nothing is written.

use backfill_testkit::servers::{Db, System};
use serde_json::Value as J;

use crate::support::Workspace;

/// Rows per day and days of the fixture: ids `1..=300`, day `d` (from 0) holding ids
/// `30d+1 ..= 30d+30`.
const PER_DAY: i64 = 30;
const DAYS: i64 = 10;

/// The fixture's rows as SQL tuples: `(id, amount_cents, ts, note)`.
fn tuples(system: System) -> String {
    (1..=PER_DAY * DAYS)
        .map(|i| {
            let day = (i - 1) / PER_DAY + 1;
            let minute = (i - 1) % PER_DAY;
            let ts = match system {
                System::Sqlite => format!("2026-01-{day:02}T00:{minute:02}:00Z"),
                _ => format!("2026-01-{day:02} 00:{minute:02}:00"),
            };
            let note = if i % 7 == 0 {
                "NULL".to_owned()
            } else {
                format!("'note {i} é'")
            };
            format!("({i}, {}, '{ts}', {note})", i * 100)
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

/// Source `src` and target `dst` with the same rows; `None` when the server is not there.
async fn fixture(system: System, ws: &Workspace) -> Option<(Db, Db)> {
    let source = Db::open(system, ws.dir.path(), "bf_diff", "src").await?;
    let target = Db::open(system, ws.dir.path(), "bf_diff", "dst").await?;
    for (db, table) in [(&source, "src"), (&target, "dst")] {
        let table = db.table(table);
        db.exec(&create(system, &table)).await;
        db.exec(&format!("INSERT INTO {table} VALUES {}", tuples(system)))
            .await;
    }
    Some((source, target))
}

fn spec(source: &Db, target: &Db, mode: &str) -> String {
    let src = source.table("src");
    format!(
        r#"name = "diff_test"
reason = "integration test"

[source]
url = "{}"
query = "SELECT id, amount_cents, ts, note FROM {src} WHERE ts >= :start AND ts < :end"
time_column = "ts"

[target]
url = "{}"
table = "{}"
key = ["id"]
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

/// Breaks the target: 3 rows of day 2 changed, day 5 deleted, 2 extra rows in day 7.
async fn break_target(system: System, target: &Db) {
    let dst = target.table("dst");
    target
        .exec(&format!(
            "UPDATE {dst} SET amount_cents = amount_cents + 1 WHERE id IN (31, 45, 60)"
        ))
        .await;
    target
        .exec(&format!("DELETE FROM {dst} WHERE id BETWEEN 121 AND 150"))
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
}

fn ids(keys: &J, change: &str) -> Vec<String> {
    let mut out: Vec<String> = keys
        .as_array()
        .into_iter()
        .flatten()
        .filter(|k| k["change"] == change)
        .map(|k| k["key"]["id"].as_str().unwrap_or_default().to_owned())
        .collect();
    out.sort_by_key(|s| s.parse::<i64>().unwrap_or(0));
    out
}

async fn diff_reports_exactly_what_differs(system: System) {
    let ws = Workspace::new();
    let Some((source, target)) = fixture(system, &ws).await else {
        return;
    };
    let path = ws.write("spec.toml", &spec(&source, &target, ""));

    // Equal sides: every partition unchanged, and no gaps (exit 0).
    let ran = ws.run(&["diff", &path, "--json"]);
    assert_eq!(ran.code, 0, "{ran:?}");
    let json = ran.json();
    assert_eq!(json["totals"]["unchanged"], 300, "{json:#}");
    assert_eq!(json["totals"]["partitions_changed"], 0, "{json:#}");
    assert_eq!(json["queries"], 2, "one bucket query per side: {json:#}");
    let row_hash = if system == System::Postgres {
        "native"
    } else {
        "portable"
    };
    assert_eq!(json["row_hash"], row_hash, "{json:#}");
    let gaps = ws.run(&["gaps", &path]);
    assert_eq!(gaps.code, 0, "{gaps:?}");
    assert!(gaps.stdout.contains("no gaps"), "{gaps:?}");

    break_target(system, &target).await;
    let ran = ws.run(&["diff", &path, "--json", "--columns", "--sample", "2"]);
    assert_eq!(ran.code, 0, "{ran:?}");
    let json = ran.json();
    let totals = &json["totals"];
    assert_eq!(
        (
            &totals["insert"],
            &totals["update"],
            &totals["extra"],
            &totals["unchanged"]
        ),
        (&J::from(30), &J::from(3), &J::from(2), &J::from(267)),
        "{json:#}"
    );
    assert_eq!(totals["partitions_changed"], 3, "{json:#}");
    let parts = json["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 10);
    assert_eq!(parts[1]["status"], "differs");
    assert_eq!(ids(&parts[1]["keys"], "update"), ["31", "45", "60"]);
    for k in parts[1]["keys"].as_array().unwrap() {
        assert_eq!(k["columns"], serde_json::json!(["amount_cents"]), "{k}");
    }
    assert_eq!(parts[4]["insert"], 30);
    assert_eq!(parts[4]["target_rows"], 0);
    assert_eq!(parts[6]["extra"], 2);
    assert_eq!(ids(&parts[6]["keys"], "extra"), ["1001", "1002"]);
    assert_eq!(parts[0]["status"], "unchanged");
    assert_eq!(parts[0]["unchanged"], 30);
    // Samples: both sides' canonical values, side by side.
    let sample = json["sample"].as_array().unwrap();
    assert_eq!(sample.len(), 2, "{json:#}");
    assert_eq!(sample[0]["change"], "update");
    assert_eq!(sample[0]["source"]["amount_cents"], "3100");
    assert_eq!(sample[0]["target"]["amount_cents"], "3101");

    // Bisection: slices of at most 4 rows are compared row by row, bigger ones cut again by
    // fingerprints; the same answer, with more fingerprint queries and fewer rows fetched.
    let cut = ws.run(&["diff", &path, "--json", "--fetch-rows", "4"]);
    assert_eq!(cut.code, 0, "{cut:?}");
    let cut = cut.json();
    assert_eq!(cut["totals"], json["totals"], "{cut:#}");
    assert_eq!(
        ids(&cut["partitions"][1]["keys"], "update"),
        ["31", "45", "60"]
    );
    assert!(cut["queries"].as_u64() > Some(2), "{cut:#}");
    assert!(
        cut["rows_fetched"].as_u64() < json["rows_fetched"].as_u64(),
        "{cut:#}"
    );

    // People's output names the keys and, with --columns, the columns.
    let text = ws.run(&["diff", &path, "--columns", "--sample", "1"]);
    assert_eq!(text.code, 0, "{text:?}");
    assert!(
        text.stdout.contains("update  id=45  (amount_cents)"),
        "{text:?}"
    );
    assert!(text.stdout.contains("extra   id=1002"), "{text:?}");
    assert!(text.stdout.contains("sample: update id=31"), "{text:?}");
    assert!(
        text.stderr.contains("narrowing them down to keys"),
        "{text:?}"
    );

    // --columns with a list: differences elsewhere do not count.
    let narrow = ws.run(&["diff", &path, "--json", "--columns=note"]);
    assert_eq!(narrow.code, 0, "{narrow:?}");
    assert_eq!(narrow.json()["totals"]["update"], 0, "{narrow:?}");

    // gaps: day 5 missing, days 2 and 7 drifted; exit 1.
    let gaps = ws.run(&["gaps", &path, "--json"]);
    assert_eq!(gaps.code, 1, "{gaps:?}");
    let g = gaps.json();
    assert_eq!(
        (&g["missing"], &g["drifted"]),
        (&J::from(1), &J::from(2)),
        "{g:#}"
    );
    assert_eq!(g["gaps"][1]["gap"], "missing");
    assert_eq!(g["gaps"][1]["delta"], -30);

    // Read-only: the target still has its broken rows.
    let again = ws.run(&["diff", &path, "--json"]);
    assert_eq!(again.json()["totals"], json["totals"]);
    source.drop_now().await;
    target.drop_now().await;
}

#[tokio::test]
async fn diff_sqlite() {
    diff_reports_exactly_what_differs(System::Sqlite).await;
}

#[tokio::test]
async fn diff_postgres() {
    diff_reports_exactly_what_differs(System::Postgres).await;
}

#[tokio::test]
async fn diff_mysql() {
    diff_reports_exactly_what_differs(System::MySql).await;
}

/// `sql` mode has nothing to compare: exit 2 with the reason.
#[tokio::test]
async fn diff_refuses_sql_mode() {
    let ws = Workspace::new();
    let Some((source, target)) = fixture(System::Sqlite, &ws).await else {
        return;
    };
    let mode = "mode = \"sql\"\nsql = \"DELETE FROM dst WHERE ts >= :start AND ts < :end\"";
    let text = spec(&source, &target, mode).replace("key = [\"id\"]\n", "");
    let path = ws.write("spec.toml", &text);
    let ran = ws.run(&["diff", &path]);
    assert_eq!(ran.code, 2, "{ran:?}");
    assert!(ran.stderr.contains("in `sql` mode"), "{ran:?}");
}

/// A JSON column in PostgreSQL cannot be fingerprinted there: the error names it and
/// suggests --columns, which works around it.
#[tokio::test]
async fn diff_names_a_json_column_postgres_cannot_hash() {
    let ws = Workspace::new();
    let Some((source, target)) = fixture(System::Postgres, &ws).await else {
        return;
    };
    for (db, t) in [(&source, "src"), (&target, "dst")] {
        db.exec(&format!("ALTER TABLE {} ADD COLUMN doc jsonb", db.table(t)))
            .await;
    }
    let text = spec(&source, &target, "").replace("note FROM", "note, doc FROM");
    let path = ws.write("spec.toml", &text);
    let ran = ws.run(&["diff", &path]);
    assert_eq!(ran.code, 2, "{ran:?}");
    assert!(ran.stderr.contains("column \"doc\" is JSON"), "{ran:?}");
    assert!(ran.stderr.contains("--columns"), "{ran:?}");
    let ran = ws.run(&["diff", &path, "--json", "--columns=amount_cents,ts,note"]);
    assert_eq!(ran.code, 0, "{ran:?}");
    assert_eq!(ran.json()["totals"]["unchanged"], 300);
    source.drop_now().await;
    target.drop_now().await;
}

/// Two PostgreSQL databases are compared with PostgreSQL's own row hash, and a difference it
/// sees that is one of presentation only (here `char(4)` and `char(8)` pad the same text
/// differently) is checked again with the portable fingerprint: nothing is reported. A real
/// change beside it still is.
#[tokio::test]
async fn diff_postgres_native_hash_rechecks_what_differs_in_print_only() {
    let ws = Workspace::new();
    let Some((source, target)) = fixture(System::Postgres, &ws).await else {
        return;
    };
    for (db, t, width) in [(&source, "src", 4), (&target, "dst", 8)] {
        let table = db.table(t);
        db.exec(&format!(
            "ALTER TABLE {table} ADD COLUMN code char({width})"
        ))
        .await;
        db.exec(&format!("UPDATE {table} SET code = 'ab'")).await;
    }
    let text = spec(&source, &target, "").replace("note FROM", "note, code FROM");
    let path = ws.write("spec.toml", &text);
    let ran = ws.run(&["diff", &path, "--json"]);
    assert_eq!(ran.code, 0, "{ran:?}");
    let json = ran.json();
    assert_eq!(json["row_hash"], "native", "{json:#}");
    assert_eq!(json["totals"]["unchanged"], 300, "{json:#}");
    assert_eq!(json["totals"]["partitions_changed"], 0, "{json:#}");
    // Every day differed natively: one portable query per side and day, after the first two.
    assert_eq!(json["queries"], 2 + 2 * DAYS, "{json:#}");

    let dst = target.table("dst");
    target
        .exec(&format!("UPDATE {dst} SET code = 'zz' WHERE id = 77"))
        .await;
    let ran = ws.run(&["diff", &path, "--json", "--columns"]);
    assert_eq!(ran.code, 0, "{ran:?}");
    let json = ran.json();
    assert_eq!(json["totals"]["update"], 1, "{json:#}");
    assert_eq!(json["totals"]["partitions_changed"], 1, "{json:#}");
    let day3 = &json["partitions"][2];
    assert_eq!(ids(&day3["keys"], "update"), ["77"], "{json:#}");
    assert_eq!(day3["keys"][0]["columns"], serde_json::json!(["code"]));
    source.drop_now().await;
    target.drop_now().await;
}

/// A source column whose type prints unlike the target's (`timestamp` against
/// `timestamptz`) keeps the portable fingerprint, which compares the values (in UTC): equal
/// sides, all unchanged.
#[tokio::test]
async fn diff_postgres_types_that_print_differently_use_the_portable_hash() {
    let ws = Workspace::new();
    let Some((source, target)) = fixture(System::Postgres, &ws).await else {
        return;
    };
    let text = spec(&source, &target, "").replace(
        "amount_cents, ts, note FROM",
        "amount_cents, (ts AT TIME ZONE 'UTC') AS ts, note FROM",
    );
    let path = ws.write("spec.toml", &text);
    let ran = ws.run(&["diff", &path, "--json"]);
    assert_eq!(ran.code, 0, "{ran:?}");
    let json = ran.json();
    assert_eq!(json["row_hash"], "portable", "{json:#}");
    assert_eq!(json["totals"]["unchanged"], 300, "{json:#}");
    assert_eq!(json["queries"], 2, "{json:#}");
    source.drop_now().await;
    target.drop_now().await;
}
