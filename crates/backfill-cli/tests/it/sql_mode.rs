//! `sql` mode runs one statement per partition in the target: it needs no `[source]` and no
//! `target.key`; a `[source]`, when given, only counts rows for `plan`'s estimates (issue 10).

use crate::support::{Workspace, exec, rows, sqlite};

/// A SQLite database holding raw `events` (3 per day over 3 days, the third day 1 more) and an
/// empty `daily` rollup keyed by day.
async fn setup(ws: &Workspace) -> String {
    let db = sqlite(&ws.path("warehouse.db")).await;
    exec(
        &db,
        &[
            "CREATE TABLE events (id INTEGER PRIMARY KEY, ts TEXT NOT NULL, amount INTEGER NOT NULL)",
            "INSERT INTO events (ts, amount) VALUES \
             ('2026-01-01T01:00:00Z', 1), ('2026-01-01T05:00:00Z', 2), ('2026-01-01T23:59:59Z', 3), \
             ('2026-01-02T00:00:00Z', 10), ('2026-01-02T12:00:00Z', 20), ('2026-01-02T13:00:00Z', 30), \
             ('2026-01-03T00:00:00Z', 100), ('2026-01-03T01:00:00Z', 200), ('2026-01-03T02:00:00Z', 300), \
             ('2026-01-03T03:00:00Z', 400)",
            "CREATE TABLE daily (day TEXT PRIMARY KEY, n INTEGER NOT NULL, total INTEGER NOT NULL)",
        ],
    )
    .await;
    db.close().await;
    ws.path("warehouse.db").display().to_string()
}

fn spec(db: &str, source: &str) -> String {
    format!(
        r#"name = "daily_rollup"
reason = "recompute the rollup"
{source}
[target]
url = "sqlite://{db}"
mode = "sql"
sql = "INSERT INTO daily (day, n, total) SELECT substr(ts, 1, 10), count(*), sum(amount) FROM events WHERE ts >= :start AND ts < :end GROUP BY 1 ON CONFLICT (day) DO UPDATE SET n = excluded.n, total = excluded.total"

[scope]
start = "2026-01-01T00:00:00Z"
end = "2026-01-04T00:00:00Z"
partition = "1d"
"#
    )
}

async fn daily(db: &str) -> Vec<Vec<Option<String>>> {
    let pool = sqlite(std::path::Path::new(db)).await;
    let out = rows(&pool, "SELECT day, n, total FROM daily ORDER BY day").await;
    pool.close().await;
    out
}

fn expected() -> Vec<Vec<Option<String>>> {
    [
        ("2026-01-01", 3, 6),
        ("2026-01-02", 3, 60),
        ("2026-01-03", 4, 1000),
    ]
    .iter()
    .map(|(d, n, t)| {
        vec![
            Some(format!("t:{d}")),
            Some(format!("i:{n}")),
            Some(format!("i:{t}")),
        ]
    })
    .collect()
}

#[tokio::test]
async fn sql_mode_runs_without_a_source_or_key() {
    let ws = Workspace::new();
    let db = setup(&ws).await;
    let path = ws.write("spec.toml", &spec(&db, ""));

    let check = ws.run(&["check", &path]);
    assert_eq!(check.code, 0, "{check:?}");
    let plan = ws.run(&["plan", &path]);
    assert_eq!(plan.code, 0, "{plan:?}");
    assert!(plan.stdout.contains("partitions: 3"), "{plan:?}");
    assert!(
        plan.stdout
            .contains("rows:       not estimated (`sql` mode without `[source]`"),
        "{plan:?}"
    );
    let plan = ws.run(&["plan", &path, "--no-estimate", "--json"]);
    assert_eq!(plan.code, 0, "{plan:?}");
    assert_eq!(plan.json()["estimated_rows"], serde_json::Value::Null);

    let run = ws.run(&["run", &path]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(daily(&db).await, expected());
    // Statement replay: running it again leaves the same rollup.
    let again = ws.run(&["run", &path, "--new"]);
    assert_eq!(again.code, 0, "{again:?}");
    assert_eq!(daily(&db).await, expected());
}

#[tokio::test]
async fn sql_mode_source_only_counts_rows_and_needs_no_key_columns() {
    let ws = Workspace::new();
    let db = setup(&ws).await;
    // The query returns no `day` column (the rollup's key): it only says which rows a window
    // covers. Listing a key is allowed and ignored.
    let source = format!(
        "\n[source]\nurl = \"sqlite://{db}\"\nquery = \"SELECT ts FROM events WHERE ts >= :start AND ts < :end\"\n"
    );
    let text = spec(&db, &source).replace("mode = \"sql\"", "mode = \"sql\"\nkey = [\"day\"]");
    let path = ws.write("spec.toml", &text);

    let check = ws.run(&["check", &path]);
    assert_eq!(check.code, 0, "{check:?}");
    let plan = ws.run(&["plan", &path, "--json"]);
    assert_eq!(plan.code, 0, "{plan:?}");
    let plan = plan.json();
    assert_eq!(plan["estimated_rows"], 10);
    assert_eq!(plan["estimate_exact"], true);

    let run = ws.run(&["run", &path, "--reason", "with a source"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(daily(&db).await, expected());
}

#[tokio::test]
async fn sql_mode_without_a_source_refuses_limits_that_count_rows() {
    let ws = Workspace::new();
    let db = setup(&ws).await;
    let text = format!("{}\n[limits]\norder = \"largest_first\"\n", spec(&db, ""));
    let path = ws.write("spec.toml", &text);
    let plan = ws.run(&["plan", &path]);
    assert_eq!(plan.code, 2, "{plan:?}");
    assert!(
        plan.stderr.contains(
            "spec.toml:15:9: error: limits.order: `largest_first` needs `[source]`: it counts each partition's rows in the source"
        ),
        "{plan:?}"
    );
    // Other modes still need a source, and say so.
    let upsert = spec(&db, "").replace(
        "mode = \"sql\"",
        "mode = \"upsert\"\ntable = \"daily\"\nkey = [\"day\"]",
    );
    let path = ws.write("upsert.toml", &upsert);
    let run = ws.run(&["run", &path]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr
            .contains("error: source: missing section `[source]`"),
        "{run:?}"
    );
    assert!(run.stderr.contains("only `sql` mode"), "{run:?}");
}

/// The same rollup in PostgreSQL, without a source: the statement runs in the target, the
/// window bound as `timestamptz`.
#[tokio::test]
async fn sql_mode_without_a_source_runs_in_postgres() {
    let base = backfill_testkit::postgres_url();
    let pool = match sqlx::PgPool::connect(&base).await {
        Ok(pool) => pool,
        Err(e) => return backfill_testkit::unreachable("PostgreSQL", &base, &e).unwrap_or(()),
    };
    let schema = backfill_testkit::unique("bf_sqlmode");
    for sql in [
        format!("DROP SCHEMA IF EXISTS {schema} CASCADE"),
        format!("CREATE SCHEMA {schema}"),
        format!("CREATE TABLE {schema}.events (ts timestamptz NOT NULL, amount bigint NOT NULL)"),
        format!(
            "INSERT INTO {schema}.events VALUES ('2026-01-01T01:00:00Z', 1), \
             ('2026-01-01T23:59:59Z', 2), ('2026-01-02T00:00:00Z', 10)"
        ),
        format!("CREATE TABLE {schema}.daily (day date PRIMARY KEY, n bigint, total bigint)"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&pool)
            .await
            .unwrap();
    }
    let ws = Workspace::new();
    let text = format!(
        r#"name = "pg_rollup"
reason = "recompute"

[target]
url = "{base}"
mode = "sql"
sql = "INSERT INTO {schema}.daily SELECT (ts AT TIME ZONE 'UTC')::date, count(*), sum(amount) FROM {schema}.events WHERE ts >= :start AND ts < :end GROUP BY 1 ON CONFLICT (day) DO UPDATE SET n = excluded.n, total = excluded.total"

[scope]
start = "2026-01-01T00:00:00Z"
end = "2026-01-03T00:00:00Z"
partition = "1d"
"#
    );
    let path = ws.write("spec.toml", &text);
    let plan = ws.run(&["plan", &path]);
    assert_eq!(plan.code, 0, "{plan:?}");
    let run = ws.run(&["run", &path]);
    assert_eq!(run.code, 0, "{run:?}");
    let got: Vec<(String, i64, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT day::text, n, total FROM {schema}.daily ORDER BY day"
    )))
    .fetch_all(&pool)
    .await
    .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(
        got,
        [
            ("2026-01-01".to_owned(), 2, 3),
            ("2026-01-02".to_owned(), 1, 10)
        ]
    );
}
