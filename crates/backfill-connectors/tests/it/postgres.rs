//! The PostgreSQL connector against a real server: pagination, type round trips, upsert
//! counts and guard, replace, error classification.
//!
//! Each test runs in its own schema `bf_conn_…` (`backfill_testkit::PgSchema`, server
//! `BACKFILL_TEST_POSTGRES_URL`), dropped at the end (also when the test panics). When the
//! server is unreachable a test is skipped and counted as skipped, or fails when services are
//! required (`backfill_testkit::skip`).

use std::future::Future;

use backfill_connectors::{ConnectorError, Extra, open_sink, open_source};
use backfill_core::retry::ErrorClass;
use backfill_core::spec::WriteMode;
use backfill_core::timefmt::TimeFormat;
use backfill_core::value::{Batch, RowCounts, Value};
use backfill_testkit::PgSchema;
use chrono::{TimeZone, Utc};
use sqlx::{AssertSqlSafe, Connection, Executor, PgConnection};

use crate::{day, keys, nodelay_of, read_all, source_spec, strings, target_spec};

/// One test's schema on the server.
#[derive(Clone)]
struct Pg {
    url: String,
    schema: String,
}

impl Pg {
    /// `name` qualified with the test's schema.
    fn t(&self, name: &str) -> String {
        format!("{}.{name}", self.schema)
    }

    /// Runs `script` with the test's schema first on the search path.
    async fn exec(&self, script: &str) {
        let mut conn = PgConnection::connect(&self.url).await.unwrap();
        let script = format!("SET search_path TO {};\n{script}", self.schema);
        conn.execute(sqlx::raw_sql(AssertSqlSafe(script)))
            .await
            .unwrap();
        conn.close().await.unwrap();
    }

    /// One `i64` from `sql` (in the test's schema).
    async fn scalar(&self, sql: &str) -> i64 {
        let mut conn = PgConnection::connect(&self.url).await.unwrap();
        conn.execute(sqlx::raw_sql(AssertSqlSafe(format!(
            "SET search_path TO {}",
            self.schema
        ))))
        .await
        .unwrap();
        let n: i64 = sqlx::query_scalar(AssertSqlSafe(sql.to_owned()))
            .fetch_one(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
        n
    }

    /// Every row of `query` read through the connector, in `key` order.
    async fn read(&self, query: &str, key: &[&str]) -> Batch {
        let source = open_source(
            &source_spec(&self.url, query, TimeFormat::Rfc3339),
            &strings(key),
            2,
        )
        .await
        .unwrap();
        let (batch, _) = read_all(&source, &keys(0, 1), 1000).await;
        source.close().await;
        batch
    }
}

/// Runs `test` in a fresh schema, then drops it, also when the test panics.
async fn run<F, Fut>(test: F)
where
    F: FnOnce(Pg) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(schema) = PgSchema::create("bf_conn").await else {
        return;
    };
    let pg = Pg {
        url: schema.server_url().to_owned(),
        schema: schema.name().to_owned(),
    };
    let outcome = tokio::spawn(test(pg)).await;
    schema.drop_now().await;
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
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

#[tokio::test]
async fn pagination_returns_every_row_once_with_single_and_composite_keys() {
    run(|pg| async move {
        pg.exec(
            "CREATE TABLE e (id int4 PRIMARY KEY, a int4, b text, ts timestamptz);
             INSERT INTO e SELECT g, g % 7, 'b' || (g / 7), \
               timestamptz '2025-01-01' + g * interval '10 minutes' FROM generate_series(1, 500) g;",
        )
        .await;
        let e = pg.t("e");
        let query = format!("SELECT * FROM {e} WHERE id >= :start AND id < :end");
        let source = id_source(&pg.url, &query, 3).await;
        let (all, batches) = read_all(&source, &keys(1, 301), 7).await;
        assert_eq!(all.columns, ["id", "a", "b", "ts"]);
        let ids: Vec<Value> = all.rows.iter().map(|r| r[0].clone()).collect();
        assert_eq!(ids, (1..301).map(Value::Int).collect::<Vec<_>>());
        assert_eq!(batches, 300 / 7 + 1);
        assert_eq!(source.count(&keys(1, 301)).await.unwrap(), 300);
        let empty = source.read_batch(&keys(900, 901), None, 10).await.unwrap();
        assert_eq!(empty.columns, ["id", "a", "b", "ts"]);
        assert!(empty.rows.is_empty());
        source.close().await;

        // Composite key (a, b), in a time window bound natively as timestamptz.
        let query = format!("SELECT a, b, id FROM {e} WHERE ts >= :start AND ts < :end");
        let spec = source_spec(&pg.url, &query, TimeFormat::Native);
        let source = open_source(&spec, &strings(&["a", "b"]), 2).await.unwrap();
        let (all, _) = read_all(&source, &day(1), 5).await;
        // 2025-01-01 00:10 .. 23:50: ids 1..=143.
        assert_eq!(all.rows.len(), 143);
        let mut pairs: Vec<(Value, Value)> = all
            .rows
            .iter()
            .map(|r| (r[0].clone(), r[1].clone()))
            .collect();
        let ordered = pairs.clone();
        pairs.dedup();
        assert_eq!(pairs.len(), 143, "no pair twice");
        let mut ids: Vec<i64> = all
            .rows
            .iter()
            .map(|r| match r[2] {
                Value::Int(i) => i,
                _ => panic!("id"),
            })
            .collect();
        ids.sort_unstable();
        assert_eq!(ids, (1..=143).collect::<Vec<_>>());
        let mut sorted = ordered.clone();
        sorted.sort_by(|x, y| {
            let key = |p: &(Value, Value)| match p {
                (Value::Int(a), Value::Text(b)) => (*a, b.clone()),
                _ => panic!("types"),
            };
            key(x).cmp(&key(y))
        });
        assert_eq!(ordered, sorted, "key order");
        assert_eq!(source.count(&day(1)).await.unwrap(), 143);
        assert_eq!(
            source.count_with_format(&day(1), &TimeFormat::Native).await.unwrap(),
            143
        );
        // Text bounds do not compare with a timestamptz column; the statement cache is
        // not confused by the other parameter types.
        assert!(
            source
                .count_with_format(&day(1), &TimeFormat::Rfc3339)
                .await
                .is_err()
        );
        assert_eq!(source.count(&day(1)).await.unwrap(), 143);
        let sample = source.sample(&day(1), "b", 3).await.unwrap();
        assert_eq!(sample.len(), 3);

        // A stream hands out exactly the batches the pages do, from the start or from any
        // resume key, and ends with an empty batch.
        let mut paged = Vec::new();
        let mut after: Option<Vec<Value>> = None;
        loop {
            let batch = source.read_batch(&day(1), after.as_deref(), 5).await.unwrap();
            if batch.is_empty() {
                break;
            }
            after = batch.rows.last().map(|r| r[..2].to_vec());
            paged.push(batch);
        }
        for skip in [0usize, 1, 17] {
            let resume = skip.checked_sub(1).map(|i| paged[i].rows[4][..2].to_vec());
            let mut stream = source
                .stream(&day(1), resume.as_deref(), 5)
                .await
                .unwrap()
                .expect("PostgreSQL streams");
            for want in &paged[skip..] {
                assert_eq!(&stream.next_batch().await.unwrap(), want, "after {skip} pages");
            }
            assert!(stream.next_batch().await.unwrap().is_empty());
            assert!(stream.next_batch().await.unwrap().is_empty());
        }
        // Dropped half-way, the stream lets its connection go back to the pool (of 2).
        for _ in 0..4 {
            let mut stream = source.stream(&day(1), None, 5).await.unwrap().unwrap();
            assert_eq!(stream.next_batch().await.unwrap(), paged[0]);
        }
        // Unordered, it hands out the same rows in batches of the same size, then an empty
        // batch; dropped half-way, it too gives its connection back.
        let mut stream = source.stream_unordered(&day(1), 5).await.unwrap().unwrap();
        let mut rows = Vec::new();
        loop {
            let batch = stream.next_batch().await.unwrap();
            if batch.is_empty() {
                break;
            }
            assert!(batch.len() == 5 || rows.len() + batch.len() == 143, "{}", batch.len());
            rows.extend(batch.rows);
        }
        let mut want: Vec<Vec<Value>> = paged.iter().flat_map(|b| b.rows.clone()).collect();
        let key = |r: &Vec<Value>| format!("{:?}", &r[..2]);
        rows.sort_by_key(key);
        want.sort_by_key(key);
        assert_eq!(rows, want);
        for _ in 0..4 {
            let mut stream = source.stream_unordered(&day(1), 5).await.unwrap().unwrap();
            assert_eq!(stream.next_batch().await.unwrap().len(), 5);
        }
        assert!(source.has_rows(&day(1)).await.unwrap());
        assert!(!source.has_rows(&day(30)).await.unwrap());

        // A key the query does not return.
        let err = open_source(&spec, &strings(&["nope"]), 1).await.unwrap_err();
        assert!(matches!(err, ConnectorError::MissingColumn { .. }), "{err}");
    })
    .await;
}

/// A source of `query` keyed by `id`, window bounds as RFC 3339 or integers.
async fn id_source(url: &str, query: &str, pool: u32) -> backfill_connectors::AnySource {
    open_source(
        &source_spec(url, query, TimeFormat::Rfc3339),
        &strings(&["id"]),
        pool,
    )
    .await
    .unwrap()
}

const TYPES: &str = "(id int8 PRIMARY KEY, i2 int2, i4 int4, i8 int8, f4 float4, f8 float8, \
    n numeric, n2 numeric(10,2), t text, vc varchar(10), c char(3), b bytea, bo bool, d date, \
    tm time, ts timestamp, tz timestamptz, j json, jb jsonb, u uuid)";

/// Rows 1 (every column NULL but the key) and 2 (edge values of every type) of `src`.
const EDGE_ROWS: &str = "INSERT INTO src (id) VALUES (1);
    INSERT INTO src VALUES (2, -32768, -2147483648, -9223372036854775808, 0.1, '-0',
      '12345678901234567890.123456789012345678', -0.50,
      E'h\\u00e9llo \\U0001F980 \\t\\n\\\\ \"q\"', '', 'ab', '\\x00ff0a5c', true,
      '1900-02-28', '23:59:59.999999', '1969-07-20 20:17:40.123456',
      '1901-12-13 20:45:52.5+00', '{\"b\": 1,  \"a\":[1,2]}', '{\"b\": 1}',
      'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11');";

#[tokio::test]
async fn every_type_round_trips_exactly_from_postgres_to_postgres() {
    run(|pg| async move {
        pg.exec(&format!(
            "CREATE TABLE src {TYPES}; CREATE TABLE dst {TYPES}; {EDGE_ROWS}
             INSERT INTO src VALUES (3, 32767, 2147483647, 9223372036854775807, 3.4e38, 1e300,
               '-99999999999999999999999999999999999999', 0.00, '', 'x', 'abc', '', false,
               '2100-01-01', '00:00:00', '2262-04-11 23:47:16', '2999-12-31 23:59:59.999999+00',
               '[]', 'null', '00000000-0000-0000-0000-000000000000');"
        ))
        .await;
        let src = pg
            .read(&format!("SELECT * FROM {}", pg.t("src")), &["id"])
            .await;
        assert_eq!(src.rows.len(), 3);
        let row = &src.rows[1];
        assert_eq!(row[3], Value::Int(i64::MIN));
        assert_eq!(row[4], Value::Float(f64::from(0.1f32)));
        assert_eq!(row[5], Value::Float(-0.0));
        assert_eq!(
            row[6],
            Value::Decimal("12345678901234567890.123456789012345678".into())
        );
        assert_eq!(row[7], Value::Decimal("-0.50".into()));
        assert_eq!(
            row[8],
            Value::Text("h\u{e9}llo \u{1F980} \t\n\\ \"q\"".into())
        );
        assert_eq!(row[9], Value::Text(String::new()));
        assert_eq!(row[10], Value::Text("ab ".into()));
        assert_eq!(row[11], Value::Blob(vec![0, 0xff, 0x0a, 0x5c]));
        assert_eq!(row[12], Value::Bool(true));
        assert_eq!(
            row[15],
            Value::Timestamp(
                chrono::NaiveDate::from_ymd_opt(1969, 7, 20)
                    .unwrap()
                    .and_hms_micro_opt(20, 17, 40, 123_456)
                    .unwrap()
            )
        );
        assert_eq!(
            row[16],
            Value::TimestampTz(
                Utc.with_ymd_and_hms(1901, 12, 13, 20, 45, 52).unwrap()
                    + chrono::Duration::milliseconds(500)
            )
        );
        assert_eq!(row[17], Value::Json("{\"b\": 1,  \"a\":[1,2]}".into()));
        assert_eq!(row[18], Value::Json("{\"b\": 1}".into()));
        assert_eq!(src.rows[0][8], Value::Null);
        assert_eq!(src.rows[2][3], Value::Int(i64::MAX));
        assert_eq!(src.rows[2][7], Value::Decimal("0.00".into()));

        let sink = open_sink(
            &target_spec(&pg.url, &pg.t("dst"), &["id"], WriteMode::Upsert),
            2,
        )
        .await
        .unwrap();
        sink.check_columns(&src.columns).await.unwrap();
        assert_eq!(sink.upsert(&src, None).await.unwrap(), counts(3, 0, 0));
        assert_eq!(sink.upsert(&src, None).await.unwrap(), counts(0, 0, 3));
        let dst = pg
            .read(&format!("SELECT * FROM {}", pg.t("dst")), &["id"])
            .await;
        assert_eq!(dst, src);
        assert_eq!(
            pg.scalar("SELECT count(*) FROM dst WHERE t IS NULL").await,
            1
        );
        assert_eq!(pg.scalar("SELECT count(*) FROM dst WHERE t = ''").await, 1);
        sink.close().await;
    })
    .await;
}

/// `replace` between two PostgreSQL tables whose columns have the same types takes the rows
/// undecoded (`stream_raw` into `insert_raw`: each field's wire bytes into a binary `COPY`):
/// every type arrives exactly as on the decoded path, a NULL key is refused, and a target
/// column of another type (int8 for int4) or a missing one turns the undecoded path down.
#[tokio::test]
async fn replace_moves_every_type_undecoded_between_postgres_tables_of_the_same_types() {
    run(|pg| async move {
        pg.exec(&format!(
            "CREATE TABLE src {TYPES}; CREATE TABLE dst {TYPES}; {EDGE_ROWS}
             INSERT INTO src SELECT g, 7, 7, 7, 7, 7, 7, 7, 'row ' || g, 'v', 'c', '\\x01', false,
               '2025-01-01', '12:00', '2025-01-01', '2025-01-01+00', '{{}}', '[1]',
               gen_random_uuid() FROM generate_series(3, 12) g;
             INSERT INTO dst (id, t) VALUES (5, 'old'), (500, 'outside the window');"
        ))
        .await;
        let query = format!(
            "SELECT * FROM {} WHERE id >= :start AND id < :end",
            pg.t("src")
        );
        let source = id_source(&pg.url, &query, 2).await;
        let (columns, oids) = source.raw_types().expect("PostgreSQL hands rows over undecoded");
        let (columns, oids) = (columns.to_vec(), oids.to_vec());
        let mut spec = target_spec(
            &pg.url,
            &pg.t("dst"),
            &["id"],
            WriteMode::Replace {
                window_column: "id".to_owned(),
            },
        );
        spec.time_format = TimeFormat::Rfc3339;
        let sink = open_sink(&spec, 1).await.unwrap();
        let mut txn = sink.begin_replace(&keys(1, 100)).await.unwrap();
        assert_eq!(txn.deleted(), 1);
        assert!(txn.accepts_raw(&columns, &oids));
        let mut stream = source.stream_raw(&keys(1, 100), 5).await.unwrap().unwrap();
        let mut sizes = Vec::new();
        loop {
            let batch = stream.next_batch().await.unwrap();
            if batch.is_empty() {
                break;
            }
            sizes.push((batch.len(), batch.is_full()));
            assert_eq!(txn.insert_raw(&stream, &batch).await.unwrap(), batch.len() as u64);
            if !batch.is_full() {
                break;
            }
        }
        assert_eq!(sizes, [(5, true), (5, true), (2, false)]);
        txn.commit(None).await.unwrap();
        let src = pg
            .read(&format!("SELECT * FROM {}", pg.t("src")), &["id"])
            .await;
        let dst = pg
            .read(
                &format!("SELECT * FROM {} WHERE id < 100", pg.t("dst")),
                &["id"],
            )
            .await;
        assert_eq!(dst, src, "every value as the source holds it");
        assert_eq!(pg.scalar("SELECT count(*) FROM dst WHERE id = 500").await, 1);

        // Another type, or a column the target lacks: not undecoded.
        pg.exec("CREATE TABLE dst2 (id int8 PRIMARY KEY, i4 int8); CREATE TABLE dst3 (id int8 PRIMARY KEY);")
            .await;
        let narrow = |table: &str| {
            let mut spec = spec.clone();
            spec.table = Some(pg.t(table));
            spec
        };
        let picked = |names: &[&str]| {
            let i: Vec<usize> = names
                .iter()
                .map(|n| columns.iter().position(|c| c == n).unwrap())
                .collect();
            (
                i.iter().map(|&i| columns[i].clone()).collect::<Vec<_>>(),
                i.iter().map(|&i| oids[i]).collect::<Vec<_>>(),
            )
        };
        let sink2 = open_sink(&narrow("dst2"), 1).await.unwrap();
        let txn2 = sink2.begin_replace(&keys(1, 100)).await.unwrap();
        let (c, o) = picked(&["id", "i4"]);
        assert!(!txn2.accepts_raw(&c, &o), "int4 into int8");
        let (c, o) = picked(&["id"]);
        assert!(txn2.accepts_raw(&c, &o));
        let sink3 = open_sink(&narrow("dst3"), 1).await.unwrap();
        let txn3 = sink3.begin_replace(&keys(1, 100)).await.unwrap();
        let (c, o) = picked(&["id", "t"]);
        assert!(!txn3.accepts_raw(&c, &o), "no column t");
        drop((txn2, txn3));

        // A NULL key fails the stream as on the decoded path.
        pg.exec("CREATE TABLE nk (id int8, v text); INSERT INTO nk VALUES (1, 'a'), (NULL, 'b');")
            .await;
        let query = format!("SELECT * FROM {} WHERE id >= :start AND id < :end OR id IS NULL", pg.t("nk"));
        let nk = id_source(&pg.url, &query, 1).await;
        let mut stream = nk.stream_raw(&keys(1, 100), 10).await.unwrap().unwrap();
        let err = stream.next_batch().await.unwrap_err();
        assert!(err.to_string().contains("NULL in key column \"id\""), "{err}");
        for s in [source, nk] {
            s.close().await;
        }
        for s in [sink, sink2, sink3] {
            s.close().await;
        }
    })
    .await;
}

/// The unordered and undecoded streams bind a window's values with their own types, not with
/// the types the server guessed when the source prepared its probe: an `int4` key compared with
/// `int8` bounds, on a pool of one connection (the probe's). And a column whose type follows a
/// parameter's (`:end - 1`: `int4` when prepared, `int8` when run) is caught by the undecoded
/// stream rather than copied into an `int4` column as `int8` bytes.
#[tokio::test]
async fn unordered_streams_bind_the_windows_own_types() {
    run(|pg| async move {
        pg.exec("CREATE TABLE i4 (id int4 PRIMARY KEY, v text); INSERT INTO i4 SELECT g, 'v' || g FROM generate_series(1, 20) g;")
            .await;
        let query = format!(
            "SELECT * FROM {} WHERE id >= :start AND id < :end",
            pg.t("i4")
        );
        let source = id_source(&pg.url, &query, 1).await;
        for _ in 0..2 {
            let mut stream = source.stream_unordered(&keys(1, 11), 100).await.unwrap().unwrap();
            assert_eq!(stream.next_batch().await.unwrap().len(), 10);
            let mut raw = source.stream_raw(&keys(11, 100), 100).await.unwrap().unwrap();
            assert_eq!(raw.next_batch().await.unwrap().len(), 10);
        }
        source.close().await;

        let query = format!(
            "SELECT id, :end - 1 AS last FROM {} WHERE id >= :start AND id < :end",
            pg.t("i4")
        );
        let source = id_source(&pg.url, &query, 1).await;
        let mut raw = source.stream_raw(&keys(1, 100), 100).await.unwrap().unwrap();
        let err = raw.next_batch().await.unwrap_err();
        assert!(err.to_string().contains("prepared with another type"), "{err}");
        assert_eq!(err.class(), ErrorClass::Data, "{err}");
        source.close().await;
    })
    .await;
}

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
async fn upsert_counts_inserts_updates_and_unchanged_rows_and_replay_is_a_no_op() {
    run(|pg| async move {
        pg.exec(
            "CREATE TABLE t (id int8 PRIMARY KEY, a text, b float8, j json DEFAULT '{}');
             CREATE TABLE checkpoints (partition text PRIMARY KEY, token int8);
             INSERT INTO checkpoints VALUES ('p1', 7);",
        )
        .await;
        let sink = open_sink(
            &target_spec(&pg.url, &pg.t("t"), &["id"], WriteMode::Upsert),
            2,
        )
        .await
        .unwrap();
        assert_eq!(
            sink.check_columns(&strings(&["id", "a", "b"]))
                .await
                .unwrap(),
            ["id", "a", "b", "j"]
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
        let extra = Extra {
            sql: format!(
                "UPDATE {} SET token = token + 1 WHERE partition = $1 AND token = $2",
                pg.t("checkpoints")
            ),
            params: vec![Value::Text("p1".into()), Value::Int(7)],
        };
        assert_eq!(
            sink.upsert(&second, Some(&extra)).await.unwrap(),
            counts(1, 2, 1)
        );
        // The same extra again is stale (token moved on): nothing is written.
        let third = batch(&[(5, Some("v"), 5.0)]);
        let err = sink.upsert(&third, Some(&extra)).await.unwrap_err();
        assert_eq!(err.class(), ErrorClass::Permanent, "{err}");
        assert_eq!(pg.scalar("SELECT count(*) FROM t WHERE id = 5").await, 0);
        for _ in 0..3 {
            assert_eq!(sink.upsert(&second, None).await.unwrap(), counts(0, 0, 4));
        }
        let got = pg
            .read(&format!("SELECT id, a, b FROM {}", pg.t("t")), &["id"])
            .await;
        assert_eq!(got.rows, second.rows);
        assert_eq!(pg.scalar("SELECT token FROM checkpoints").await, 8);

        // A key without a unique index cannot be upserted.
        let sink = open_sink(
            &target_spec(&pg.url, &pg.t("t"), &["a"], WriteMode::Upsert),
            1,
        )
        .await
        .unwrap();
        let err = sink.check_columns(&strings(&["a"])).await.unwrap_err();
        assert!(err.to_string().contains("UNIQUE"), "{err}");
    })
    .await;
}

#[tokio::test]
async fn guard_keeps_target_rows_that_are_newer() {
    run(|pg| async move {
        pg.exec(
            "CREATE TABLE g (id int8 PRIMARY KEY, v text, updated_at timestamptz);
             INSERT INTO g VALUES (1, 'live', '2025-06-01+00'), (2, 'stale', '2024-01-01+00'),
               (3, 'no guard', NULL);",
        )
        .await;
        let mut spec = target_spec(&pg.url, &pg.t("g"), &["id"], WriteMode::Upsert);
        spec.guard = Some("updated_at".to_owned());
        let sink = open_sink(&spec, 1).await.unwrap();
        let at = |m: u32| Value::TimestampTz(Utc.with_ymd_and_hms(2025, m, 1, 0, 0, 0).unwrap());
        let b = Batch {
            columns: strings(&["id", "v", "updated_at"]),
            rows: vec![
                vec![Value::Int(1), Value::Text("backfill".into()), at(1)],
                vec![Value::Int(2), Value::Text("backfill".into()), at(1)],
                vec![Value::Int(3), Value::Text("backfill".into()), at(1)],
                vec![Value::Int(4), Value::Text("backfill".into()), at(1)],
            ],
        };
        sink.check_columns(&b.columns).await.unwrap();
        assert_eq!(sink.upsert(&b, None).await.unwrap(), counts(1, 2, 1));
        assert_eq!(
            pg.scalar("SELECT count(*) FROM g WHERE id = 1 AND v = 'live'")
                .await,
            1
        );
        assert_eq!(
            pg.scalar("SELECT count(*) FROM g WHERE v = 'backfill'")
                .await,
            3
        );
    })
    .await;
}

#[tokio::test]
async fn replace_only_touches_the_window_and_sql_mode_counts_affected_rows() {
    run(|pg| async move {
        pg.exec(
            "CREATE TABLE ev (id int8 PRIMARY KEY, ts timestamptz NOT NULL, v text);
             INSERT INTO ev VALUES (1, '2025-01-01 10:00+00', 'd1'), (2, '2025-01-02 10:00+00', 'd2'),
               (3, '2025-01-02 23:59:59+00', 'd2'), (4, '2025-01-03 00:00+00', 'd3');",
        )
        .await;
        let mut spec = target_spec(
            &pg.url,
            &pg.t("ev"),
            &["id"],
            WriteMode::Replace {
                window_column: "ts".to_owned(),
            },
        );
        spec.time_format = TimeFormat::Native;
        let sink = open_sink(&spec, 1).await.unwrap();
        assert_eq!(sink.leads_an_index("ts").await.unwrap(), Some(false));
        pg.exec("CREATE INDEX ev_ts ON ev (ts)").await;
        assert_eq!(sink.leads_an_index("ts").await.unwrap(), Some(true));
        let at = |h: u32| Value::TimestampTz(Utc.with_ymd_and_hms(2025, 1, 2, h, 0, 0).unwrap());
        let rows = Batch {
            columns: strings(&["id", "ts", "v"]),
            rows: vec![
                vec![Value::Int(2), at(1), Value::Text("new".into())],
                vec![Value::Int(5), at(2), Value::Text("new".into())],
            ],
        };
        sink.check_columns(&rows.columns).await.unwrap();
        // Dropped without commit: nothing changes.
        {
            let mut txn = sink.begin_replace(&day(2)).await.unwrap();
            assert_eq!(txn.deleted(), 2);
            assert_eq!(txn.insert(&rows).await.unwrap(), 2);
        }
        assert_eq!(pg.scalar("SELECT count(*) FROM ev WHERE v = 'd2'").await, 2);
        for _ in 0..2 {
            let mut txn = sink.begin_replace(&day(2)).await.unwrap();
            assert_eq!(txn.insert(&rows).await.unwrap(), 2);
            txn.commit(None).await.unwrap();
        }
        // rfc3339 bounds are cast to the column's type: deleting day 2 again (and writing
        // the same rows) leaves the same table.
        spec.time_format = TimeFormat::Rfc3339;
        let sink = open_sink(&spec, 1).await.unwrap();
        let mut txn = sink.begin_replace(&day(2)).await.unwrap();
        assert_eq!(txn.deleted(), 2);
        assert_eq!(txn.insert(&rows).await.unwrap(), 2);
        txn.commit(None).await.unwrap();
        let got = pg
            .read(&format!("SELECT id, v FROM {}", pg.t("ev")), &["id"])
            .await;
        let want: Vec<Vec<Value>> = [(1, "d1"), (2, "new"), (4, "d3"), (5, "new")]
            .iter()
            .map(|(i, v)| vec![Value::Int(*i), Value::Text((*v).into())])
            .collect();
        assert_eq!(got.rows, want);

        let mut spec = target_spec(
            &pg.url,
            &pg.t("ev"),
            &[],
            WriteMode::Sql {
                statement: format!(
                    "UPDATE {} SET v = 'sql' WHERE ts >= :start AND ts < :end",
                    pg.t("ev")
                ),
            },
        );
        spec.table = None;
        spec.time_format = TimeFormat::Native;
        let sink = open_sink(&spec, 1).await.unwrap();
        assert_eq!(sink.execute_sql(&day(2)).await.unwrap().affected, 2);
    })
    .await;
}

/// A failed COPY aborts a PostgreSQL transaction; under savepoints the rows the target
/// rejects are isolated and the rest of the window still commits in the same transaction.
#[tokio::test]
async fn replace_isolates_rejected_rows_under_savepoints() {
    run(|pg| async move {
        pg.exec(
            "CREATE TABLE ev (id int8 PRIMARY KEY, ts timestamptz NOT NULL, v text CHECK (v <> 'bad'));
             INSERT INTO ev VALUES (1, '2025-01-02 10:00+00', 'old');",
        )
        .await;
        let mut spec = target_spec(
            &pg.url,
            &pg.t("ev"),
            &["id"],
            WriteMode::Replace {
                window_column: "ts".to_owned(),
            },
        );
        spec.time_format = TimeFormat::Native;
        let sink = open_sink(&spec, 1).await.unwrap();
        let at = |h: u32| Value::TimestampTz(Utc.with_ymd_and_hms(2025, 1, 2, h, 0, 0).unwrap());
        let rows = Batch {
            columns: strings(&["id", "ts", "v"]),
            rows: (0..10)
                .map(|i| {
                    let v = if i == 3 || i == 8 || i == 9 { "bad" } else { "ok" };
                    vec![Value::Int(i), at(i as u32), Value::Text(v.into())]
                })
                .collect(),
        };
        // Without savepoints the rejected row fails the whole transaction as a data error.
        {
            let mut txn = sink.begin_replace(&day(2)).await.unwrap();
            let err = txn.insert(&rows).await.unwrap_err();
            assert_eq!(err.class(), ErrorClass::Data, "{err}");
        }
        let mut txn = sink.begin_replace(&day(2)).await.unwrap();
        assert_eq!(txn.deleted(), 1);
        let (inserted, rejected) = txn.insert_isolating(&rows).await.unwrap();
        assert_eq!(inserted, 7);
        let indexes: Vec<usize> = rejected.iter().map(|(i, _)| *i).collect();
        assert_eq!(indexes, [3, 8, 9]);
        assert!(
            rejected
                .iter()
                .all(|(_, e)| e.class() == ErrorClass::Data && e.to_string().contains("check")),
            "{rejected:?}"
        );
        // The transaction is still usable: a later batch and the commit succeed.
        let more = Batch {
            columns: rows.columns.clone(),
            rows: vec![vec![Value::Int(20), at(20), Value::Text("ok".into())]],
        };
        assert_eq!(txn.insert(&more).await.unwrap(), 1);
        txn.commit(None).await.unwrap();
        let got = pg
            .read(&format!("SELECT id FROM {}", pg.t("ev")), &["id"])
            .await;
        let ids: Vec<Value> = got.rows.into_iter().map(|mut r| r.remove(0)).collect();
        let want: Vec<Value> = [0, 1, 2, 4, 5, 6, 7, 20].map(Value::Int).to_vec();
        assert_eq!(ids, want);
    })
    .await;
}

#[tokio::test]
async fn errors_name_unsupported_columns_and_classify_rejected_rows_as_data() {
    run(|pg| async move {
        let spec = source_spec(
            &pg.url,
            "SELECT 1::int8 AS id, interval '1 day' AS gap",
            TimeFormat::Rfc3339,
        );
        let err = open_source(&spec, &strings(&["id"]), 1).await.unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("\"gap\"") && text.contains("INTERVAL"),
            "{text}"
        );
        assert!(text.contains("gap::text"), "{text}");

        let bad = source_spec(
            "postgres://postgres:hunter2@127.0.0.1:5432/bf_no_such_database",
            "SELECT 1 AS id",
            TimeFormat::Rfc3339,
        );
        let err = open_source(&bad, &strings(&["id"]), 1).await.unwrap_err();
        assert!(matches!(err, ConnectorError::Connect { .. }), "{err}");
        assert!(!err.to_string().contains("hunter2"), "{err}");

        pg.exec("CREATE TABLE c (id int8 PRIMARY KEY, v int4 NOT NULL CHECK (v > 0));")
            .await;
        let sink = open_sink(
            &target_spec(&pg.url, &pg.t("c"), &["id"], WriteMode::Upsert),
            1,
        )
        .await
        .unwrap();
        let b = |v: Value| Batch {
            columns: strings(&["id", "v"]),
            rows: vec![vec![Value::Int(1), Value::Int(1)], vec![Value::Int(2), v]],
        };
        for v in [Value::Int(-1), Value::Null, Value::Int(i64::MAX)] {
            let err = sink.upsert(&b(v), None).await.unwrap_err();
            assert_eq!(err.class(), ErrorClass::Data, "{err}");
        }
        assert_eq!(pg.scalar("SELECT count(*) FROM c").await, 0);
        let err = sink
            .upsert(
                &Batch {
                    columns: strings(&["id", "nope"]),
                    rows: vec![],
                },
                None,
            )
            .await
            .unwrap_err();
        assert!(matches!(err, ConnectorError::MissingColumn { .. }), "{err}");
    })
    .await;
}

/// sqlx 0.9.0 opens its sockets with Nagle's algorithm on (sqlx#4335), so every `COPY` waited
/// ~40 ms for the server's delayed ACK; the connector's pool sets `TCP_NODELAY` on each new
/// connection.
#[tokio::test]
async fn pooled_connections_have_tcp_nodelay() {
    run(|pg| async move {
        pg.exec("CREATE TABLE t (id int8 PRIMARY KEY, a text, b float8)")
            .await;
        // The connector's connections, told apart from every other by their application name.
        let name = pg.schema.clone();
        let separator = if pg.url.contains('?') { '&' } else { '?' };
        let url = format!("{}{separator}application_name={name}", pg.url);
        let sink = open_sink(
            &target_spec(&url, &pg.t("t"), &["id"], WriteMode::Upsert),
            2,
        )
        .await
        .unwrap();
        let batch = batch(&[(1, Some("x"), 1.0)]);
        assert_eq!(sink.upsert(&batch, None).await.unwrap(), counts(1, 0, 0));
        let mut conn = PgConnection::connect(&pg.url).await.unwrap();
        let ends: Vec<(String, i32, String, i32)> = sqlx::query_as(
            "SELECT host(client_addr), client_port, host(inet_server_addr()), inet_server_port() \
             FROM pg_stat_activity WHERE application_name = $1",
        )
        .bind(&name)
        .fetch_all(&mut conn)
        .await
        .unwrap();
        conn.close().await.unwrap();
        let port = |p: i32| u16::try_from(p).unwrap();
        let ends: Vec<_> = ends
            .into_iter()
            .map(|(c, cp, s, sp)| ((c, port(cp)), (s, port(sp))))
            .collect();
        let nodelay = nodelay_of(&ends);
        assert!(
            nodelay.contains(&Some(true)) && !nodelay.contains(&Some(false)),
            "TCP_NODELAY of the connector's connections {ends:?}: {nodelay:?}"
        );
        sink.close().await;
    })
    .await;
}

#[tokio::test]
async fn a_stream_of_wide_rows_cuts_its_batches_by_bytes() {
    run(|pg| async move {
        // 20 rows of 1 MiB: 8 of them reach BATCH_BYTES (8 MiB) before 1,000 rows do.
        pg.exec(
            "CREATE TABLE w (id int4 PRIMARY KEY, body text);
             INSERT INTO w SELECT g, repeat('x', 1048576) || g FROM generate_series(1, 20) g;",
        )
        .await;
        let query = format!(
            "SELECT * FROM {} WHERE id >= :start AND id < :end",
            pg.t("w")
        );
        let source = id_source(&pg.url, &query, 2).await;
        let mut stream = source
            .stream(&keys(1, 100), None, 1000)
            .await
            .unwrap()
            .expect("PostgreSQL streams");
        let mut sizes = Vec::new();
        loop {
            let batch = stream.next_batch().await.unwrap();
            if batch.is_empty() {
                break;
            }
            assert!(
                batch.size() < backfill_core::value::BATCH_BYTES + 2 * 1048576,
                "{}",
                batch.size()
            );
            sizes.push((batch.len(), batch.is_full(1000)));
        }
        assert_eq!(sizes, [(8, true), (8, true), (4, false)]);
        source.close().await;
    })
    .await;
}

/// An upsert binds each column of the batch as one binary array and runs one statement
/// (`INSERT … SELECT * FROM unnest($1::int8[], …)`), alone when no checkpoint rides along:
/// no staging table, no transaction of its own. A batch whose values need the server's casts
/// (text into an integer column) goes through the `COPY` text staging table instead; both
/// count exactly, and a rejected row leaves nothing of its batch written.
#[tokio::test]
async fn upsert_binds_arrays_in_one_statement_and_stages_values_that_need_a_cast() {
    run(|pg| async move {
        pg.exec(
            "CREATE TABLE u (id int8 PRIMARY KEY, n int4 CHECK (n > 0), note varchar(5),
               at timestamptz, amount numeric(8,2));
             CREATE TABLE checkpoints (partition text PRIMARY KEY, token int8);
             INSERT INTO checkpoints VALUES ('p1', 1);",
        )
        .await;
        let name = format!("{}_arrays", pg.schema);
        let separator = if pg.url.contains('?') { '&' } else { '?' };
        let url = format!("{}{separator}application_name={name}", pg.url);
        let sink = open_sink(
            &target_spec(&url, &pg.t("u"), &["id"], WriteMode::Upsert),
            1,
        )
        .await
        .unwrap();
        let at = Value::TimestampTz(Utc.with_ymd_and_hms(2025, 3, 1, 12, 0, 0).unwrap());
        let row = |id: i64, n: Value, note: Option<&str>| {
            vec![
                Value::Int(id),
                n,
                note.map_or(Value::Null, |s| Value::Text(s.into())),
                at.clone(),
                Value::Decimal("12.50".into()),
            ]
        };
        let columns = strings(&["id", "n", "note", "at", "amount"]);
        let exact = Batch {
            columns: columns.clone(),
            rows: vec![
                row(1, Value::Int(1), Some("a")),
                row(2, Value::Null, None),
                row(3, Value::Int(3), Some("ccc")),
            ],
        };
        sink.check_columns(&exact.columns).await.unwrap();
        assert_eq!(sink.upsert(&exact, None).await.unwrap(), counts(3, 0, 0));
        let last_query = || async {
            let mut conn = PgConnection::connect(&pg.url).await.unwrap();
            let q: Vec<String> = sqlx::query_scalar(
                "SELECT query FROM pg_stat_activity WHERE application_name = $1",
            )
            .bind(&name)
            .fetch_all(&mut conn)
            .await
            .unwrap();
            conn.close().await.unwrap();
            q
        };
        let q = last_query().await;
        assert_eq!(q.len(), 1, "{q:?}");
        assert!(
            q[0].contains("unnest($1::int8[], $2::int4[], $3::text[]"),
            "{q:?}"
        );
        assert_eq!(sink.upsert(&exact, None).await.unwrap(), counts(0, 0, 3));

        // Text for an integer column needs the server's cast: staged as COPY text.
        let cast = Batch {
            columns: columns.clone(),
            rows: vec![
                row(3, Value::Text("33".into()), Some("ccc")),
                row(4, Value::Text("4".into()), Some("d")),
                row(1, Value::Int(1), Some("a")),
            ],
        };
        assert_eq!(sink.upsert(&cast, None).await.unwrap(), counts(1, 1, 1));
        assert_eq!(last_query().await, ["COMMIT"]);
        assert_eq!(pg.scalar("SELECT n::int8 FROM u WHERE id = 3").await, 33);

        // With a checkpoint riding along, both commit in one transaction.
        let extra = Extra {
            sql: format!(
                "UPDATE {} SET token = token + 1 WHERE partition = $1 AND token = $2",
                pg.t("checkpoints")
            ),
            params: vec![Value::Text("p1".into()), Value::Int(1)],
        };
        let more = Batch {
            columns: columns.clone(),
            rows: vec![row(5, Value::Int(5), Some("e"))],
        };
        assert_eq!(
            sink.upsert(&more, Some(&extra)).await.unwrap(),
            counts(1, 0, 0)
        );
        assert_eq!(pg.scalar("SELECT token FROM checkpoints").await, 2);
        // Stale now: the batch is rolled back with it.
        let stale = Batch {
            columns: columns.clone(),
            rows: vec![row(6, Value::Int(6), Some("f"))],
        };
        sink.upsert(&stale, Some(&extra)).await.unwrap_err();
        assert_eq!(pg.scalar("SELECT count(*) FROM u WHERE id = 6").await, 0);

        // A rejected row (CHECK, a too long varchar) writes nothing of its batch, by either path.
        for bad in [
            row(7, Value::Int(-7), Some("g")),
            row(7, Value::Int(7), Some("too long")),
            row(7, Value::Text("-7".into()), Some("g")),
        ] {
            let batch = Batch {
                columns: columns.clone(),
                rows: vec![row(8, Value::Int(8), Some("h")), bad],
            };
            let err = sink.upsert(&batch, None).await.unwrap_err();
            assert_eq!(err.class(), ErrorClass::Data, "{err}");
        }
        assert_eq!(pg.scalar("SELECT count(*) FROM u WHERE id >= 7").await, 0);
        assert_eq!(pg.scalar("SELECT count(*) FROM u").await, 5);
        sink.close().await;
    })
    .await;
}

/// Eight sinks with `undo` write their first batch at the same moment, 10 rounds, the undo
/// table dropped before each: all create (or find) the one undo table and every write
/// succeeds. Two runs of different specs writing the same table do this; PostgreSQL can fail
/// one of two concurrent `CREATE TABLE IF NOT EXISTS` on its catalog's unique index.
#[tokio::test]
async fn sinks_creating_one_undo_table_at_once_all_succeed() {
    run(|pg| async move {
        pg.exec("CREATE TABLE t (id int8 PRIMARY KEY, a text, b float8);")
            .await;
        let undo_table = pg.t("t__bf_undo");
        for round in 0..10i64 {
            pg.exec(&format!("DROP TABLE IF EXISTS {undo_table};"))
                .await;
            let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(8));
            let mut writers = tokio::task::JoinSet::new();
            for n in 0..8i64 {
                let mut spec = target_spec(&pg.url, &pg.t("t"), &["id"], WriteMode::Upsert);
                spec.undo = true;
                let barrier = barrier.clone();
                writers.spawn(async move {
                    let sink = open_sink(&spec, 1).await.unwrap();
                    let undo = backfill_connectors::UndoBatch {
                        run_id: format!("run-{n}"),
                        partition_id: format!("p{round}"),
                        every_key: false,
                    };
                    let rows = batch(&[(round * 8 + n, Some("x"), 1.0)]);
                    barrier.wait().await;
                    let written = sink.upsert_undo(&rows, None, Some(&undo)).await;
                    sink.close().await;
                    written
                });
            }
            while let Some(written) = writers.join_next().await {
                let counts = written
                    .unwrap()
                    .unwrap_or_else(|e| panic!("round {round}: {e}"));
                assert_eq!(counts.inserted, 1, "round {round}");
            }
            assert_eq!(
                pg.scalar(&format!("SELECT count(*) FROM {undo_table}"))
                    .await,
                8,
                "round {round}: one undo row per writer"
            );
        }
    })
    .await;
}
