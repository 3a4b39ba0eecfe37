//! `[target] partition_exchange` through the real binary on PostgreSQL: a `replace` into a
//! declared-partitioned table loads each window that is one partition into a standalone table
//! and exchanges it for the partition (new relation, same name, still attached); the target
//! ends equal to the source in the scope and untouched outside it; a window that is not one
//! partition is replaced in place; the key is refused where it cannot apply.

use backfill_testkit::servers::PgSchema;
use sqlx::{Executor as _, Row};

use crate::support::Workspace;

/// Rows per day in the source; days 1 to 3 are the scope, day 4 lies outside it.
const PER_DAY: i64 = 10;

async fn schema() -> Option<PgSchema> {
    PgSchema::create("bf_exchange").await
}

/// Source: days 1 to 3. Target, partitioned by day (days 1 to 4): day 1 stale (other
/// amounts and an extra row), day 2 empty, day 3 already right, day 4 outside the scope.
async fn fixture(db: &PgSchema) {
    let (src, dst) = (db.table("src"), db.table("dst"));
    let rows = |days: std::ops::RangeInclusive<i64>, bump: i64| {
        days.flat_map(|d| {
            (0..PER_DAY).map(move |m| {
                format!(
                    "({}, {}, '2026-01-{d:02} 00:{m:02}:00+00')",
                    d * 100 + m,
                    d * 1000 + m + bump
                )
            })
        })
        .collect::<Vec<_>>()
        .join(", ")
    };
    db.exec(&format!(
        "CREATE TABLE {src} (id bigint PRIMARY KEY, amount bigint NOT NULL, ts timestamptz NOT NULL);
         INSERT INTO {src} VALUES {};
         CREATE TABLE {dst} (id bigint NOT NULL, amount bigint NOT NULL, ts timestamptz NOT NULL,
           PRIMARY KEY (id, ts)) PARTITION BY RANGE (ts);
         CREATE INDEX ON {dst} (ts);
         CREATE TABLE {d1} PARTITION OF {dst} FOR VALUES FROM ('2026-01-01') TO ('2026-01-02');
         CREATE TABLE {d2} PARTITION OF {dst} FOR VALUES FROM ('2026-01-02') TO ('2026-01-03');
         CREATE TABLE {d3} PARTITION OF {dst} FOR VALUES FROM ('2026-01-03') TO ('2026-01-04');
         CREATE TABLE {d4} PARTITION OF {dst} FOR VALUES FROM ('2026-01-04') TO ('2026-01-05');
         INSERT INTO {dst} VALUES {}, (199, 7, '2026-01-01 23:00:00+00');
         INSERT INTO {dst} VALUES {};
         INSERT INTO {dst} VALUES {}",
        rows(1..=3, 0),
        rows(1..=1, 5),
        rows(3..=3, 0),
        rows(4..=4, 0),
        d1 = db.table("dst_d1"),
        d2 = db.table("dst_d2"),
        d3 = db.table("dst_d3"),
        d4 = db.table("dst_d4"),
    ))
    .await;
}

fn spec(db: &PgSchema, partition: &str, extra: &str) -> String {
    format!(
        r#"name = "exchange_test"
reason = "integration test"

[source]
url = "{url}"
query = "SELECT id, amount, ts FROM {src} WHERE ts >= :start AND ts < :end"
time_column = "ts"

[target]
url = "{url}"
table = "{dst}"
key = ["id", "ts"]
mode = "replace"
window_column = "ts"
partition_exchange = true
{extra}

[scope]
start = "2026-01-01T00:00:00Z"
end = "2026-01-04T00:00:00Z"
partition = "{partition}"
"#,
        url = db.server_url(),
        src = db.table("src"),
        dst = db.table("dst"),
    )
}

/// The schema's index names.
async fn indexes(db: &PgSchema) -> Vec<String> {
    sqlx::query_scalar("SELECT indexname::text FROM pg_indexes WHERE schemaname = $1 ORDER BY 1")
        .bind(db.name())
        .fetch_all(db.pool())
        .await
        .expect("indexes")
}

/// Each partition of `dst` by name, with its relation's oid, and the schema's other tables.
async fn partitions(db: &PgSchema) -> (Vec<(String, u32)>, Vec<String>) {
    let attached = sqlx::query(
        "SELECT c.relname::text, c.oid::int8 FROM pg_inherits i \
         JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = to_regclass($1) \
         ORDER BY 1",
    )
    .bind(db.table("dst"))
    .fetch_all(db.pool())
    .await
    .expect("partitions")
    .iter()
    .map(|r| (r.get(0), u32::try_from(r.get::<i64, _>(1)).unwrap_or(0)))
    .collect();
    let tables = sqlx::query_scalar(
        "SELECT tablename::text FROM pg_tables WHERE schemaname = $1 ORDER BY 1",
    )
    .bind(db.name())
    .fetch_all(db.pool())
    .await
    .expect("tables");
    (attached, tables)
}

/// `(id, amount, ts)` of `table`'s rows, ordered.
async fn rows(db: &PgSchema, table: &str, filter: &str) -> Vec<(i64, i64, String)> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT id, amount, to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI') FROM {} \
         {filter} ORDER BY id",
        db.table(table)
    )))
    .fetch_all(db.pool())
    .await
    .expect("rows")
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

const IN_SCOPE: &str = "WHERE ts < '2026-01-04'";
const OUTSIDE: &str = "WHERE ts >= '2026-01-04'";

#[tokio::test]
async fn aligned_windows_are_exchanged_for_their_partitions_postgres() {
    let Some(db) = schema().await else {
        return;
    };
    fixture(&db).await;
    let ws = Workspace::new();
    let (before, _) = partitions(&db).await;
    let indexes_before = indexes(&db).await;
    let outside = rows(&db, "dst", OUTSIDE).await;

    let path = ws.write("spec.toml", &spec(&db, "1d", ""));
    let ran = ws.run(&["run", &path, "--json"]);
    assert_eq!(ran.code, 0, "{ran:?}");
    let json = ran.json();
    assert_eq!(json["rows"]["inserted"], 3 * PER_DAY, "{json:#}");
    // Day 1's 11 stale rows and day 3's 10 went with their partitions.
    assert_eq!(json["rows"]["deleted"], 2 * PER_DAY + 1, "{json:#}");

    assert_eq!(rows(&db, "dst", IN_SCOPE).await, rows(&db, "src", "").await);
    assert_eq!(rows(&db, "dst", OUTSIDE).await, outside);
    let (after, tables) = partitions(&db).await;
    let names = |p: &[(String, u32)]| p.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(names(&after), names(&before), "same partitions, same names");
    for ((name, old), (_, new)) in before.iter().zip(&after) {
        if name == "dst_d4" {
            assert_eq!(old, new, "the partition outside the scope is untouched");
        } else {
            assert_ne!(old, new, "{name} was exchanged for a new relation");
        }
    }
    assert!(
        tables.iter().all(|t| !t.contains("__bf_x")),
        "no stray table: {tables:?}"
    );
    assert_eq!(
        indexes(&db).await,
        indexes_before,
        "the partitions' index names are kept"
    );
    // The exchanged partitions kept the parent's indexes (the primary key serves this).
    let dup = db
        .pool()
        .execute(sqlx::AssertSqlSafe(format!(
            "INSERT INTO {} VALUES (101, 1, '2026-01-01 00:01:00+00')",
            db.table("dst")
        )))
        .await;
    assert!(
        dup.is_err(),
        "the primary key holds on an exchanged partition"
    );

    // Windows that are not one partition (12 hours) are replaced in place: correct, and no
    // partition changes.
    db.exec(&format!(
        "UPDATE {} SET amount = -1 WHERE id = 205",
        db.table("dst")
    ))
    .await;
    let path = ws.write("half.toml", &spec(&db, "12h", ""));
    let ran = ws.run(&["run", &path, "--new", "--json"]);
    assert_eq!(ran.code, 0, "{ran:?}");
    assert_eq!(rows(&db, "dst", IN_SCOPE).await, rows(&db, "src", "").await);
    let (again, _) = partitions(&db).await;
    assert_eq!(again, after, "in place: the same relations");
    db.drop_now().await;
}

/// SIGKILL while the exchanges wait for the parent's lock (a reader holds it): every window's
/// transaction dies with the process, so the partitions are the same relations with the same
/// rows and no loaded table is left behind; `resume` then exchanges them.
#[tokio::test]
async fn sigkill_during_the_exchange_leaves_the_partitions_as_they_were_postgres() {
    let Some(db) = schema().await else {
        return;
    };
    fixture(&db).await;
    let ws = Workspace::new();
    let (before, tables_before) = partitions(&db).await;
    let rows_before = rows(&db, "dst", "").await;
    let path = ws.write("spec.toml", &spec(&db, "1d", ""));

    let mut reader = db.pool().begin().await.expect("begin");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "LOCK TABLE {} IN ACCESS SHARE MODE",
        db.table("dst")
    )))
    .execute(&mut *reader)
    .await
    .expect("a reader's lock on the parent");
    let mut child = ws
        .command(&["run", &path])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn run");
    let reached = crate::support::backfill_waits_on_a_lock(
        db.pool(),
        Some("DETACH PARTITION"),
        std::time::Duration::from_secs(8),
    )
    .await;
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    reader.rollback().await.expect("release the reader");
    assert!(reached, "the run never waited on the exchange's lock");

    assert_eq!(partitions(&db).await, (before.clone(), tables_before));
    assert_eq!(
        rows(&db, "dst", "").await,
        rows_before,
        "row by row as before"
    );

    let run = crate::support::runs_json(&ws)[0]["run_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let resumed = ws.run(&["resume", &run, "--json"]);
    assert_eq!(resumed.code, 0, "{resumed:?}");
    assert_eq!(rows(&db, "dst", IN_SCOPE).await, rows(&db, "src", "").await);
    let (after, _) = partitions(&db).await;
    assert_ne!(after[0], before[0], "dst_d1 exchanged on resume");
    db.drop_now().await;
}

#[tokio::test]
async fn partition_exchange_is_refused_where_it_cannot_apply() {
    let ws = Workspace::new();
    let base = |extra: &str, mode: &str| {
        format!(
            r#"name = "exchange_keys"
reason = "test"

[source]
url = "sqlite://src.db"
query = "SELECT id, ts FROM t WHERE ts >= :start AND ts < :end"

[target]
url = "postgres://127.0.0.1/test"
table = "t"
key = ["id"]
{mode}
partition_exchange = true
{extra}

[scope]
start = "2026-01-01T00:00:00Z"
end = "2026-01-02T00:00:00Z"
partition = "1d"
"#
        )
    };
    let upsert = ws.write("upsert.toml", &base("", ""));
    let ran = ws.run(&["check", &upsert, "--offline"]);
    assert_eq!(ran.code, 2, "{ran:?}");
    assert!(
        ran.stderr.contains("target.partition_exchange")
            && ran.stderr.contains("only applies to `replace` mode"),
        "{ran:?}"
    );
    let replace = "mode = \"replace\"\nwindow_column = \"ts\"";
    let undo = ws.write("undo.toml", &base("undo = true", replace));
    let ran = ws.run(&["check", &undo, "--offline"]);
    assert_eq!(ran.code, 2, "{ran:?}");
    assert!(
        ran.stderr.contains("cannot be combined with `undo`"),
        "{ran:?}"
    );
    let good = ws.write("good.toml", &base("", replace));
    let ran = ws.run(&["check", &good, "--offline"]);
    assert_eq!(ran.code, 0, "{ran:?}");
}
