//! MySQL/MariaDB source and sink against a real server, each test in its own database.
//!
//! The database comes from `backfill_testkit::MyDatabase` (server `BACKFILL_TEST_MYSQL_URL`).
//! When the server is unreachable a test is skipped and counted as skipped, or fails when
//! services are required (`backfill_testkit::skip`).

use std::str::FromStr;

use backfill_connectors::{AnySource, ConnectorError, Extra, open_sink, open_source};
use backfill_core::SecretUrl;
use backfill_core::retry::ErrorClass;
use backfill_core::spec::{TargetSpec, WriteMode};
use backfill_core::timefmt::TimeFormat;
use backfill_core::value::{Batch, RowCounts, Value};
use backfill_testkit::{MyDatabase, mysql_url};
use chrono::{NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc};
use sqlx::AssertSqlSafe;
use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions};

use crate::{day, keys, nodelay_of, read_all, source_spec, strings};

/// A database of its own on the test server, dropped by [`Db::drop`].
struct Db {
    database: MyDatabase,
    /// The URL of the database (the connector's).
    url: String,
}

/// Creates a fresh database and runs `script` (statements separated by `;` at line ends)
/// in it; `None` (skipped, counted) when the server is not reachable and not required.
async fn db(script: &str) -> Option<Db> {
    let database = MyDatabase::create("bf_conn").await?;
    let db = Db {
        url: database.url(),
        database,
    };
    let pool = db.pool().await;
    for statement in script.split(";\n").map(str::trim).filter(|s| !s.is_empty()) {
        sqlx::raw_sql(AssertSqlSafe(statement.to_owned()))
            .execute(&pool)
            .await
            .unwrap_or_else(|e| panic!("{statement}: {e}"));
    }
    pool.close().await;
    Some(db)
}

impl Db {
    async fn pool(&self) -> MySqlPool {
        MySqlPoolOptions::new()
            .max_connections(1)
            .connect(&self.url)
            .await
            .unwrap()
    }

    async fn exec(&self, sql: &str) {
        let pool = self.pool().await;
        sqlx::raw_sql(AssertSqlSafe(sql.to_owned()))
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
    }

    /// Every row of `query`, read through the connector (key `id`).
    async fn read(&self, query: &str, key: &[&str]) -> Batch {
        let source = self.source(query, key, TimeFormat::Native).await;
        let (batch, _) = read_all(&source, &keys(i64::MIN, i64::MAX), 1000).await;
        source.close().await;
        batch
    }

    async fn source(&self, query: &str, key: &[&str], format: TimeFormat) -> AnySource {
        open_source(&source_spec(&self.url, query, format), &strings(key), 2)
            .await
            .unwrap()
    }

    fn target(&self, table: &str, key: &[&str], mode: WriteMode) -> TargetSpec {
        TargetSpec {
            url: SecretUrl::new(&self.url),
            table: Some(table.to_owned()),
            key: strings(key),
            mode,
            time_format: TimeFormat::Native,
            guard: None,
            pushdown: false,
            shadow: None,
            undo: false,
            propagate_deletes: false,
            delete_window_column: None,
            partition_exchange: false,
        }
    }

    async fn drop(self) {
        self.database.drop_now().await;
    }
}

fn counts(inserted: u64, updated: u64, unchanged: u64) -> RowCounts {
    RowCounts {
        inserted,
        updated,
        unchanged,
        ..RowCounts::default()
    }
}

fn ts(s: &str) -> NaiveDateTime {
    NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f").unwrap()
}

#[tokio::test]
async fn pagination_returns_every_row_once_in_key_order() {
    let mut script = String::from(
        "CREATE TABLE e (id INT PRIMARY KEY, ts DATETIME NOT NULL, a VARCHAR(10));\n\
         CREATE TABLE c (a INT, b VARCHAR(5), v INT, PRIMARY KEY (a, b));\n",
    );
    let mut values = Vec::new();
    for i in 0..300 {
        // Days 1..=3 of January 2025, 100 rows each, ids not in time order.
        let id = (i * 7919) % 1000;
        values.push(format!(
            "({id}, '2025-01-{:02} {:02}:00:00', 'r{i}')",
            1 + i / 100,
            i % 24
        ));
    }
    script.push_str(&format!("INSERT INTO e VALUES {};\n", values.join(",")));
    let c: Vec<String> = (0..50)
        .map(|i| format!("({}, 'b{}', {i})", i % 5, i / 5))
        .collect();
    script.push_str(&format!("INSERT INTO c VALUES {};\n", c.join(",")));
    let Some(db) = db(&script).await else { return };

    let query = "SELECT id, ts, a FROM e WHERE ts >= :start AND ts < :end";
    let source = db.source(query, &["id"], TimeFormat::Native).await;
    assert_eq!(source.count(&day(2)).await.unwrap(), 100);
    let (batch, batches) = read_all(&source, &day(2), 7).await;
    assert_eq!(batch.columns, ["id", "ts", "a"]);
    assert_eq!(batch.rows.len(), 100);
    assert_eq!(batches, 100 / 7 + 1);
    let ids: Vec<i64> = batch
        .rows
        .iter()
        .map(|r| match r[0] {
            Value::Int(i) => i,
            ref other => panic!("{other:?}"),
        })
        .collect();
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(ids, sorted, "in key order, no duplicate");
    assert!(batch.rows.iter().all(|r| matches!(
        &r[1],
        Value::Timestamp(t) if t.date() == NaiveDate::from_ymd_opt(2025, 1, 2).unwrap()
    )));
    let sample = source.sample(&day(1), "ts", 3).await.unwrap();
    assert_eq!(sample.len(), 3);
    assert_eq!(
        source
            .count_with_format(&day(3), &TimeFormat::Native)
            .await
            .unwrap(),
        100
    );
    source.close().await;

    // Unix and RFC 3339 bounds, each `:start` occurrence bound on its own.
    let unix = db
        .source(
            "SELECT id FROM e WHERE UNIX_TIMESTAMP(ts) >= :start AND UNIX_TIMESTAMP(ts) < :end \
             AND :start IS NOT NULL",
            &["id"],
            TimeFormat::Unix,
        )
        .await;
    assert_eq!(unix.count(&day(1)).await.unwrap(), 100);
    unix.close().await;

    // Key windows over a composite key.
    let composite = db
        .source(
            "SELECT a, b, v FROM c WHERE v >= :start AND v < :end",
            &["a", "b"],
            TimeFormat::Native,
        )
        .await;
    let (batch, _) = read_all(&composite, &keys(0, 50), 3).await;
    assert_eq!(batch.rows.len(), 50);
    let mut seen: Vec<Value> = batch.rows.iter().map(|r| r[2].clone()).collect();
    seen.sort_by_key(|v| match v {
        Value::Int(i) => *i,
        _ => -1,
    });
    assert_eq!(seen, (0..50).map(Value::Int).collect::<Vec<_>>());
    let pairs: Vec<(i64, String)> = batch
        .rows
        .iter()
        .map(|r| match (&r[0], &r[1]) {
            (Value::Int(a), Value::Text(b)) => (*a, b.clone()),
            other => panic!("{other:?}"),
        })
        .collect();
    assert!(
        pairs.windows(2).all(|w| w[0] < w[1]),
        "strictly in (a, b) order: {pairs:?}"
    );
    composite.close().await;

    // A key column the query does not return.
    let err = open_source(
        &source_spec(&db.url, "SELECT a FROM e", TimeFormat::Native),
        &strings(&["id"]),
        1,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ConnectorError::MissingColumn { .. }), "{err}");
    db.drop().await;
}

const TYPES: &str = "
CREATE TABLE src (
  id BIGINT PRIMARY KEY, i BIGINT, d DECIMAL(38,10), s VARCHAR(50), t TEXT, bl BLOB,
  vb VARBINARY(8), f DOUBLE, b BOOLEAN, dt DATE, tm TIME(6), ts DATETIME(6),
  tz TIMESTAMP(6) NULL, j JSON, u INT UNSIGNED, y TINYINT
);
INSERT INTO src VALUES
  (1, -9223372036854775808, 9999999999999999999999999999.9999999999, 'héllo wörld 🎉', '',
   X'00FF10', X'', 1.7976931348623157e308, TRUE, '0001-01-01', '00:00:00', '1901-12-13 20:45:52.123456',
   '1970-01-01 00:00:01.000000', '{\"a\": [1, 2.5, \"x\"]}', 4294967295, -128),
  (2, 9223372036854775807, -9999999999999999999999999999.9999999999, '', NULL,
   NULL, X'DEADBEEF', -0.0, FALSE, '9999-12-31', '23:59:59.999999', '2999-12-31 23:59:59.999999',
   '2038-01-19 03:14:07.999999', 'null', 0, 127),
  (3, 0, 1.5000000000, NULL, 'x', X'', NULL, 5e-324, NULL, NULL, NULL, '1969-12-31 23:59:59.999999',
   NULL, NULL, NULL, NULL),
  (4, NULL, -0.0000000001, 'NULL', 'text', NULL, NULL, NULL, TRUE, '2024-02-29', '12:34:56', NULL,
   '2025-06-01 12:00:00', '[]', 1, 0);
CREATE TABLE dst LIKE src;
CREATE TABLE wide (id BIGINT UNSIGNED PRIMARY KEY);
INSERT INTO wide VALUES (18446744073709551615)
";

#[tokio::test]
async fn types_round_trip_exactly() {
    let Some(db) = db(TYPES).await else { return };
    let source = db.read("SELECT * FROM src", &["id"]).await;
    assert_eq!(source.rows.len(), 4);
    let r1 = &source.rows[0];
    assert_eq!(r1[1], Value::Int(i64::MIN));
    assert_eq!(
        r1[2],
        Value::Decimal("9999999999999999999999999999.9999999999".into())
    );
    assert_eq!(r1[3], Value::Text("héllo wörld 🎉".into()));
    assert_eq!(r1[4], Value::Text(String::new()));
    assert_eq!(r1[5], Value::Blob(vec![0, 0xff, 0x10]));
    assert_eq!(r1[6], Value::Blob(vec![]));
    assert_eq!(r1[7], Value::Float(f64::MAX));
    assert_eq!(r1[8], Value::Bool(true));
    assert_eq!(
        r1[9],
        Value::Date(NaiveDate::from_ymd_opt(1, 1, 1).unwrap())
    );
    assert_eq!(r1[10], Value::Time(NaiveTime::MIN));
    assert_eq!(r1[11], Value::Timestamp(ts("1901-12-13 20:45:52.123456")));
    assert_eq!(
        r1[12],
        Value::TimestampTz(Utc.with_ymd_and_hms(1970, 1, 1, 0, 0, 1).unwrap())
    );
    // MariaDB's JSON is LONGTEXT: the document comes back as text.
    assert!(
        matches!(&r1[13], Value::Text(j) | Value::Json(j) if j == "{\"a\": [1, 2.5, \"x\"]}"),
        "{:?}",
        r1[13]
    );
    assert_eq!(r1[14], Value::Int(4_294_967_295));
    assert_eq!(r1[15], Value::Int(-128));
    let r2 = &source.rows[1];
    assert_eq!(r2[1], Value::Int(i64::MAX));
    assert_eq!(r2[3], Value::Text(String::new()));
    assert_eq!(r2[4], Value::Null);
    assert_eq!(r2[11], Value::Timestamp(ts("2999-12-31 23:59:59.999999")));
    assert_eq!(
        r2[10],
        Value::Time(NaiveTime::from_hms_micro_opt(23, 59, 59, 999_999).unwrap())
    );
    assert_eq!(source.rows[2][2], Value::Decimal("1.5000000000".into()));
    assert_eq!(
        source.rows[2][11],
        Value::Timestamp(ts("1969-12-31 23:59:59.999999"))
    );
    assert_eq!(source.rows[3][2], Value::Decimal("-0.0000000001".into()));
    assert_eq!(source.rows[3][3], Value::Text("NULL".into()));

    let sink = open_sink(&db.target("dst", &["id"], WriteMode::Upsert), 2)
        .await
        .unwrap();
    sink.check_columns(&source.columns).await.unwrap();
    assert_eq!(sink.upsert(&source, None).await.unwrap(), counts(4, 0, 0));
    assert_eq!(sink.upsert(&source, None).await.unwrap(), counts(0, 0, 4));
    sink.close().await;
    let copy = db.read("SELECT * FROM dst", &["id"]).await;
    assert_eq!(copy, source);

    // An unsigned value beyond i64 names its column.
    let wide = db
        .source("SELECT id FROM wide", &["id"], TimeFormat::Native)
        .await;
    let err = wide
        .read_batch(&keys(0, 1), None, 10)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("\"id\"") && err.contains("18446744073709551615"),
        "{err}"
    );
    wide.close().await;
    db.drop().await;
}

#[tokio::test]
async fn unsupported_types_name_the_column_when_opened() {
    let Some(db) = db("CREATE TABLE g (id INT PRIMARY KEY, flags BIT(8), shape POINT)").await
    else {
        return;
    };
    let err = open_source(
        &source_spec(&db.url, "SELECT id, flags FROM g", TimeFormat::Native),
        &strings(&["id"]),
        1,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("\"flags\"") && err.contains("BIT") && err.contains("cast it"),
        "{err}"
    );
    let err = open_source(
        &source_spec(&db.url, "SELECT id, shape FROM g", TimeFormat::Native),
        &strings(&["id"]),
        1,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("\"shape\""), "{err}");
    // Cast in the query, it reads.
    let ok = db
        .source(
            "SELECT id, CAST(flags AS UNSIGNED) AS flags FROM g",
            &["id"],
            TimeFormat::Native,
        )
        .await;
    ok.close().await;
    db.drop().await;
}

const TARGET: &str = "
CREATE TABLE t (id INT PRIMARY KEY, a VARCHAR(20), b DOUBLE NOT NULL,
  CONSTRAINT b_small CHECK (b < 1000000));
CREATE TABLE checkpoints (`partition` VARCHAR(10) PRIMARY KEY, token INT, last_key TEXT);
INSERT INTO checkpoints VALUES ('p1', 7, NULL)
";

fn batch(rows: &[(i64, Option<&str>, f64)]) -> Batch {
    Batch {
        columns: strings(&["id", "a", "b"]),
        rows: rows
            .iter()
            .map(|(id, a, b)| {
                vec![
                    Value::Int(*id),
                    a.map_or(Value::Null, |a| Value::Text(a.into())),
                    Value::Float(*b),
                ]
            })
            .collect(),
    }
}

#[tokio::test]
async fn upsert_counts_and_replay_is_unchanged() {
    let Some(db) = db(TARGET).await else { return };
    let sink = open_sink(&db.target("t", &["id"], WriteMode::Upsert), 2)
        .await
        .unwrap();
    assert_eq!(
        sink.check_columns(&strings(&["id", "a", "b"]))
            .await
            .unwrap(),
        ["id", "a", "b"]
    );
    let first = batch(&[(1, Some("x"), 1.0), (2, None, 2.0), (3, Some("z"), 3.0)]);
    assert_eq!(sink.upsert(&first, None).await.unwrap(), counts(3, 0, 0));
    assert_eq!(sink.upsert(&first, None).await.unwrap(), counts(0, 0, 3));
    let second = batch(&[
        (1, Some("x"), 1.0),
        (2, Some("y"), 2.0),
        (3, None, 3.0),
        (4, Some("w"), 4.0),
    ]);
    assert_eq!(sink.upsert(&second, None).await.unwrap(), counts(1, 2, 1));
    for _ in 0..2 {
        assert_eq!(sink.upsert(&second, None).await.unwrap(), counts(0, 0, 4));
    }
    assert_eq!(
        db.read("SELECT id, a, b FROM t", &["id"]).await.rows,
        second.rows
    );

    // Several statements per batch, counts still exact.
    let big = |tag: &str| Batch {
        columns: strings(&["id", "a", "b"]),
        rows: (0..2500)
            .map(|i| {
                vec![
                    Value::Int(100 + i),
                    Value::Text(format!("{tag}{}", i % 2)),
                    Value::Float(0.5),
                ]
            })
            .collect(),
    };
    assert_eq!(
        sink.upsert(&big("a"), None).await.unwrap(),
        counts(2500, 0, 0)
    );
    assert_eq!(
        sink.upsert(&big("b"), None).await.unwrap(),
        counts(0, 2500, 0)
    );
    assert_eq!(
        sink.upsert(&big("b"), None).await.unwrap(),
        counts(0, 0, 2500)
    );

    // The extra statement commits with the batch; a stale one rolls the batch back.
    let checkpoint = |token: i64, key: &str| Extra {
        sql: "UPDATE checkpoints SET last_key = ? WHERE `partition` = ? AND token = ?".to_owned(),
        params: vec![
            Value::Text(key.into()),
            Value::Text("p1".into()),
            Value::Int(token),
        ],
    };
    let third = batch(&[(5, Some("v"), 5.0)]);
    let err = sink
        .upsert(&third, Some(&checkpoint(8, "5")))
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Permanent, "{err}");
    assert_eq!(
        sink.upsert(&third, Some(&checkpoint(7, "5")))
            .await
            .unwrap(),
        counts(1, 0, 0)
    );
    // Same checkpoint value again: matched, so still one affected row.
    assert_eq!(
        sink.upsert(&third, Some(&checkpoint(7, "5")))
            .await
            .unwrap(),
        counts(0, 0, 1)
    );
    sink.close().await;
    db.drop().await;
}

#[tokio::test]
async fn guard_keeps_newer_target_rows() {
    let Some(db) = db(
        "CREATE TABLE g (id INT PRIMARY KEY, v VARCHAR(10), updated_at DATETIME(6));\n\
         INSERT INTO g VALUES (1, 'live', '2025-02-01 00:00:00'), (2, 'old', '2024-01-01 00:00:00')",
    )
    .await
    else {
        return;
    };
    let mut spec = db.target("g", &["id"], WriteMode::Upsert);
    spec.guard = Some("updated_at".to_owned());
    let sink = open_sink(&spec, 1).await.unwrap();
    sink.check_columns(&strings(&["id", "v", "updated_at"]))
        .await
        .unwrap();
    let at = |s: &str| Value::Timestamp(ts(s));
    let incoming = Batch {
        columns: strings(&["id", "updated_at", "v"]),
        rows: vec![
            vec![
                Value::Int(1),
                at("2025-01-01 00:00:00"),
                Value::Text("backfill".into()),
            ],
            vec![
                Value::Int(2),
                at("2025-01-01 00:00:00"),
                Value::Text("backfill".into()),
            ],
            vec![
                Value::Int(3),
                at("2025-01-01 00:00:00"),
                Value::Text("new".into()),
            ],
        ],
    };
    assert_eq!(sink.upsert(&incoming, None).await.unwrap(), counts(1, 1, 1));
    assert_eq!(sink.upsert(&incoming, None).await.unwrap(), counts(0, 0, 3));
    sink.close().await;
    assert_eq!(
        db.read("SELECT id, v, updated_at FROM g", &["id"])
            .await
            .rows,
        vec![
            vec![
                Value::Int(1),
                Value::Text("live".into()),
                at("2025-02-01 00:00:00")
            ],
            vec![
                Value::Int(2),
                Value::Text("backfill".into()),
                at("2025-01-01 00:00:00")
            ],
            vec![
                Value::Int(3),
                Value::Text("new".into()),
                at("2025-01-01 00:00:00")
            ],
        ]
    );
    db.drop().await;
}

#[tokio::test]
async fn replace_touches_only_the_window_and_sql_mode_counts() {
    let Some(db) = db(
        "CREATE TABLE r (id INT PRIMARY KEY, ts DATETIME NOT NULL, v VARCHAR(10));\n\
         INSERT INTO r VALUES (1, '2025-01-01 10:00:00', 'a'), (2, '2025-01-02 00:00:00', 'b'), \
         (3, '2025-01-02 23:59:59', 'c'), (4, '2025-01-03 00:00:00', 'd')",
    )
    .await
    else {
        return;
    };
    let spec = db.target(
        "r",
        &["id"],
        WriteMode::Replace {
            window_column: "ts".to_owned(),
        },
    );
    let sink = open_sink(&spec, 1).await.unwrap();
    assert_eq!(sink.leads_an_index("ts").await.unwrap(), Some(false));
    db.exec("CREATE INDEX r_ts ON r (ts)").await;
    assert_eq!(sink.leads_an_index("ts").await.unwrap(), Some(true));
    sink.check_columns(&strings(&["id", "ts", "v"]))
        .await
        .unwrap();
    let rows = Batch {
        columns: strings(&["id", "ts", "v"]),
        rows: vec![
            vec![
                Value::Int(2),
                Value::Timestamp(ts("2025-01-02 01:00:00")),
                Value::Text("B".into()),
            ],
            vec![
                Value::Int(5),
                Value::Timestamp(ts("2025-01-02 02:00:00")),
                Value::Text("E".into()),
            ],
        ],
    };
    // Dropped without commit: nothing changes.
    let mut txn = sink.begin_replace(&day(2)).await.unwrap();
    assert_eq!(txn.deleted(), 2);
    assert_eq!(txn.insert(&rows).await.unwrap(), 2);
    drop(txn);
    assert_eq!(db.read("SELECT id FROM r", &["id"]).await.rows.len(), 4);

    for _ in 0..2 {
        let mut txn = sink.begin_replace(&day(2)).await.unwrap();
        assert_eq!(txn.insert(&rows).await.unwrap(), 2);
        txn.commit(None).await.unwrap();
    }
    let ids: Vec<Value> = db
        .read("SELECT id, v FROM r", &["id"])
        .await
        .rows
        .into_iter()
        .map(|r| r[1].clone())
        .collect();
    assert_eq!(ids, ["a", "B", "d", "E"].map(|s| Value::Text(s.into())));
    sink.close().await;

    let sql = open_sink(
        &TargetSpec {
            table: None,
            key: vec![],
            ..db.target(
                "r",
                &[],
                WriteMode::Sql {
                    statement: "UPDATE r SET v = 'k' WHERE id >= :start AND id < :end".to_owned(),
                },
            )
        },
        1,
    )
    .await
    .unwrap();
    assert_eq!(sql.execute_sql(&keys(1, 3)).await.unwrap().affected, 2);
    sql.close().await;
    db.exec("DELETE FROM r").await;
    db.drop().await;
}

/// Under savepoints the rows MySQL rejects are isolated and the rest of the window commits.
#[tokio::test]
async fn replace_isolates_rejected_rows_under_savepoints() {
    let Some(db) = db(
        "CREATE TABLE q (id INT PRIMARY KEY, ts DATETIME NOT NULL, v VARCHAR(10) NOT NULL);\n\
         INSERT INTO q VALUES (100, '2025-01-02 10:00:00', 'old')",
    )
    .await
    else {
        return;
    };
    let spec = db.target(
        "q",
        &["id"],
        WriteMode::Replace {
            window_column: "ts".to_owned(),
        },
    );
    let sink = open_sink(&spec, 1).await.unwrap();
    let rows = Batch {
        columns: strings(&["id", "ts", "v"]),
        rows: (0..6)
            .map(|i| {
                let v = if i == 1 || i == 4 {
                    Value::Null
                } else {
                    Value::Text("ok".into())
                };
                vec![
                    Value::Int(i),
                    Value::Timestamp(ts(&format!("2025-01-02 0{i}:00:00"))),
                    v,
                ]
            })
            .collect(),
    };
    let mut txn = sink.begin_replace(&day(2)).await.unwrap();
    assert_eq!(txn.deleted(), 1);
    let (inserted, rejected) = txn.insert_isolating(&rows).await.unwrap();
    assert_eq!(inserted, 4);
    let indexes: Vec<usize> = rejected.iter().map(|(i, _)| *i).collect();
    assert_eq!(indexes, [1, 4]);
    assert!(
        rejected.iter().all(|(_, e)| e.class() == ErrorClass::Data),
        "{rejected:?}"
    );
    txn.commit(None).await.unwrap();
    let ids: Vec<Value> = db
        .read("SELECT id FROM q", &["id"])
        .await
        .rows
        .into_iter()
        .map(|mut r| r.remove(0))
        .collect();
    assert_eq!(ids, [0, 2, 3, 5].map(Value::Int));
    sink.close().await;
    db.drop().await;
}

#[tokio::test]
async fn rejected_rows_are_data_errors() {
    let Some(db) = db(TARGET).await else { return };
    let sink = open_sink(&db.target("t", &["id"], WriteMode::Upsert), 1)
        .await
        .unwrap();
    let mut null_b = batch(&[(1, Some("x"), 1.0)]);
    null_b.rows[0][2] = Value::Null;
    let too_long = batch(&[(1, Some("this text is far too long for twenty"), 1.0)]);
    let check = batch(&[(1, Some("x"), 5e6)]);
    for bad in [null_b, too_long, check] {
        let err = sink.upsert(&bad, None).await.unwrap_err();
        assert_eq!(err.class(), ErrorClass::Data, "{err}");
    }
    assert!(db.read("SELECT id FROM t", &["id"]).await.rows.is_empty());
    sink.close().await;

    // A missing table or a non-unique key is permanent, found before any write.
    let missing = open_sink(&db.target("nope", &["id"], WriteMode::Upsert), 1)
        .await
        .unwrap();
    let err = missing.check_columns(&strings(&["id"])).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Permanent, "{err}");
    let not_unique = open_sink(&db.target("t", &["a"], WriteMode::Upsert), 1)
        .await
        .unwrap();
    let err = not_unique
        .check_columns(&strings(&["id", "a"]))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("UNIQUE"), "{err}");
    db.drop().await;
}

#[tokio::test]
async fn refused_connection_is_a_connect_error_without_password() {
    let Some(db) = db("").await else { return };
    let base = mysql_url();
    let rest = base.split_once("://").map_or(base.as_str(), |(_, r)| r);
    let host = rest.split_once('@').map_or(rest, |(_, h)| h);
    let spec = source_spec(
        &format!("mysql://bf_nobody:hunter2@{host}"),
        "SELECT 1 AS id",
        TimeFormat::Native,
    );
    let err = open_source(&spec, &strings(&["id"]), 1).await.unwrap_err();
    assert!(matches!(err, ConnectorError::Connect { .. }), "{err}");
    assert_eq!(err.class(), ErrorClass::Transient);
    assert!(!err.to_string().contains("hunter2"), "{err}");
    db.drop().await;
}

#[tokio::test]
async fn large_rows_are_split_under_max_allowed_packet() {
    let Some(db) = db("CREATE TABLE big (id INT PRIMARY KEY, body LONGBLOB)").await else {
        return;
    };
    let pool = db.pool().await;
    let packet: i64 = sqlx::query_scalar("SELECT CAST(@@max_allowed_packet AS SIGNED)")
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    // Rows of a quarter packet each: 12 of them need several statements.
    let size = usize::try_from(packet / 4).unwrap();
    let make = |fill: u8| Batch {
        columns: strings(&["id", "body"]),
        rows: (0..12)
            .map(|i| vec![Value::Int(i), Value::Blob(vec![fill; size])])
            .collect(),
    };
    let sink = open_sink(&db.target("big", &["id"], WriteMode::Upsert), 1)
        .await
        .unwrap();
    assert_eq!(sink.upsert(&make(1), None).await.unwrap(), counts(12, 0, 0));
    assert_eq!(sink.upsert(&make(2), None).await.unwrap(), counts(0, 12, 0));
    assert_eq!(sink.upsert(&make(2), None).await.unwrap(), counts(0, 0, 12));
    sink.close().await;
    db.drop().await;
}

/// sqlx 0.9.0 opens its sockets with Nagle's algorithm on (sqlx#4335), so a round trip made of
/// several writes could wait ~40 ms for the server's delayed ACK; the connector's pool sets
/// `TCP_NODELAY` on each new connection.
#[tokio::test]
async fn pooled_connections_have_tcp_nodelay() {
    let Some(db) = db(TARGET).await else { return };
    let sink = open_sink(&db.target("t", &["id"], WriteMode::Upsert), 2)
        .await
        .unwrap();
    let batch = batch(&[(1, Some("x"), 1.0)]);
    assert_eq!(sink.upsert(&batch, None).await.unwrap(), counts(1, 0, 0));
    // The connector's connections are the only ones on this test's database.
    let clients: Vec<String> =
        sqlx::query_scalar("SELECT host FROM information_schema.processlist WHERE db = ?")
            .bind(db.database.name())
            .fetch_all(db.database.pool())
            .await
            .unwrap();
    let server = MySqlConnectOptions::from_str(&db.url).unwrap();
    let server = (server.get_host().to_owned(), server.get_port());
    let ends: Vec<_> = clients
        .iter()
        .map(|client| {
            let (host, port) = client.rsplit_once(':').unwrap();
            ((host.to_owned(), port.parse().unwrap()), server.clone())
        })
        .collect();
    let nodelay = nodelay_of(&ends);
    assert!(
        nodelay.contains(&Some(true)) && !nodelay.contains(&Some(false)),
        "TCP_NODELAY of the connector's connections {ends:?}: {nodelay:?}"
    );
    sink.close().await;
    db.drop().await;
}

#[tokio::test]
async fn a_page_of_wide_rows_is_cut_by_bytes() {
    // 20 rows of 1 MiB: 8 of them reach BATCH_BYTES (8 MiB) before a page of 1,000 rows ends.
    let script = "CREATE TABLE w (id INT PRIMARY KEY, body LONGTEXT NOT NULL);\n\
                  INSERT INTO w SELECT seq, CONCAT(REPEAT('x', 1048576), seq) FROM seq_1_to_20;\n";
    let Some(db) = db(script).await else { return };
    let source = db
        .source(
            "SELECT id, body FROM w WHERE id >= :start AND id < :end",
            &["id"],
            TimeFormat::Native,
        )
        .await;
    let (all, batches) = read_all(&source, &keys(1, 100), 1000).await;
    assert_eq!(all.rows.len(), 20);
    assert_eq!(batches, 3, "8 + 8 + 4 rows");
}
