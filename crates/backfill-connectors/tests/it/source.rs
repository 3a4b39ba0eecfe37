//! Reading: keyset pagination, window binding, value decoding and open-time checks.

use backfill_connectors::{ConnectorError, open_source};
use backfill_core::retry::ErrorClass;
use backfill_core::timefmt::TimeFormat;
use backfill_core::value::Value;

use crate::{Dir, day, keys, read_all, rows, source, source_spec, strings};

const EVENTS: &str = "
CREATE TABLE events (id INTEGER PRIMARY KEY, ts TEXT NOT NULL, unix INTEGER NOT NULL, v TEXT);
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 96)
INSERT INTO events
SELECT i,
       strftime('%Y-%m-%dT%H:%M:%SZ', 1735689600 + (i - 1) * 3600, 'unixepoch'),
       1735689600 + (i - 1) * 3600,
       'v' || i
FROM n;
";

#[tokio::test]
async fn keyset_pagination_returns_every_row_once_in_key_order() {
    let dir = Dir::temp();
    let url = dir.db("src.db", EVENTS).await;
    // Rows come out of the query in reverse; pagination must still follow the key.
    let src = source(
        &url,
        "SELECT id, v FROM events WHERE id >= :start AND id < :end ORDER BY id DESC;",
        &["id"],
    )
    .await;
    let (all, batches) = read_all(&src, &keys(10, 60), 7).await;
    assert_eq!(all.columns, ["id", "v"]);
    let ids: Vec<Value> = all.rows.iter().map(|r| r[0].clone()).collect();
    let want: Vec<Value> = (10..60).map(Value::Int).collect();
    assert_eq!(ids, want);
    assert_eq!(batches, 8); // 50 rows: 7 full batches and one of 1
    assert_eq!(src.count(&keys(10, 60)).await.unwrap(), 50);
}

#[tokio::test]
async fn keyset_pagination_with_a_composite_key() {
    let dir = Dir::temp();
    let url = dir
        .db(
            "src.db",
            "CREATE TABLE m (a TEXT, b INTEGER, x REAL, PRIMARY KEY (a, b));
             WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 59)
             INSERT INTO m SELECT char(65 + i % 3), i / 3, i * 0.5 FROM n;",
        )
        .await;
    let src = source(&url, "SELECT b, x, a FROM m", &["a", "b"]).await;
    let (all, _) = read_all(&src, &keys(0, 1), 4).await;
    assert_eq!(all.rows.len(), 60);
    let got: Vec<(Value, Value)> = all
        .rows
        .iter()
        .map(|r| (r[2].clone(), r[0].clone()))
        .collect();
    let want: Vec<(Value, Value)> = ["A", "B", "C"]
        .iter()
        .flat_map(|a| (0..20).map(move |b| (Value::Text((*a).into()), Value::Int(b))))
        .collect();
    assert_eq!(got, want);
    assert_eq!(src.key_positions(&all.columns).unwrap(), [2, 0]);
}

#[tokio::test]
async fn binds_time_windows_as_rfc3339_text_and_unix_ints() {
    let dir = Dir::temp();
    let url = dir.db("src.db", EVENTS).await;
    let text = open_source(
        &source_spec(
            &url,
            "SELECT id FROM events WHERE ts >= :start AND ts < :end",
            TimeFormat::Rfc3339,
        ),
        &strings(&["id"]),
        1,
    )
    .await
    .unwrap();
    let unix = open_source(
        &source_spec(
            &url,
            "SELECT id FROM events WHERE unix >= :start AND unix < :end",
            TimeFormat::Unix,
        ),
        &strings(&["id"]),
        1,
    )
    .await
    .unwrap();
    for src in [&text, &unix] {
        let (all, _) = read_all(src, &day(2), 10).await;
        let ids: Vec<Value> = all.rows.iter().map(|r| r[0].clone()).collect();
        assert_eq!(ids, (25..=48).map(Value::Int).collect::<Vec<_>>());
        assert_eq!(src.count(&day(2)).await.unwrap(), 24);
    }
    // The wrong format finds nothing; the right one is found by count_with_format.
    assert_eq!(
        text.count_with_format(&day(2), &TimeFormat::Unix)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        unix.count_with_format(&day(1), &TimeFormat::Unix)
            .await
            .unwrap(),
        24
    );
    let sample = text.sample(&day(3), "id", 3).await.unwrap();
    assert_eq!(sample, [Value::Int(49), Value::Int(50), Value::Int(51)]);
}

#[tokio::test]
async fn decodes_each_storage_class() {
    let dir = Dir::temp();
    let url = dir
        .db(
            "src.db",
            "CREATE TABLE t (id INTEGER PRIMARY KEY, anything);
             INSERT INTO t VALUES (1, NULL), (2, 42), (3, 1.5), (4, 'héllo ✓'), (5, x'00ff');",
        )
        .await;
    let src = source(&url, "SELECT * FROM t", &["id"]).await;
    let batch = src.read_batch(&keys(0, 10), None, 100).await.unwrap();
    let got: Vec<Value> = batch.rows.into_iter().map(|r| r[1].clone()).collect();
    assert_eq!(
        got,
        [
            Value::Null,
            Value::Int(42),
            Value::Float(1.5),
            Value::Text("héllo ✓".into()),
            Value::Blob(vec![0, 255]),
        ]
    );
    // An empty window still names the columns.
    let src = source(
        &url,
        "SELECT * FROM t WHERE id >= :start AND id < :end",
        &["id"],
    )
    .await;
    let empty = src.read_batch(&keys(100, 200), None, 10).await.unwrap();
    assert!(empty.rows.is_empty());
    assert_eq!(empty.columns, ["id", "anything"]);
}

#[tokio::test]
async fn missing_source_file_is_a_connect_error_naming_the_path() {
    let dir = Dir::temp();
    let path = dir.path("nope.db");
    let url = format!("sqlite://{}", path.display());
    let err = open_source(
        &source_spec(&url, "SELECT 1 AS id", TimeFormat::Rfc3339),
        &strings(&["id"]),
        1,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ConnectorError::Connect { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
    assert!(!path.exists(), "a source file is never created");
}

#[tokio::test]
async fn missing_key_column_is_reported_with_the_available_columns() {
    let dir = Dir::temp();
    let url = dir.db("src.db", EVENTS).await;
    let err = open_source(
        &source_spec(&url, "SELECT ts, v FROM events", TimeFormat::Rfc3339),
        &strings(&["id"]),
        1,
    )
    .await
    .unwrap_err();
    match &err {
        ConnectorError::MissingColumn {
            column, available, ..
        } => {
            assert_eq!(column, "id");
            assert_eq!(available, &strings(&["ts", "v"]));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(err.class(), ErrorClass::Permanent);
}

#[tokio::test]
async fn bad_queries_fail_at_open_with_a_permanent_error() {
    let dir = Dir::temp();
    let url = dir.db("src.db", EVENTS).await;
    let open = |query: &'static str| {
        let url = url.clone();
        async move {
            open_source(
                &source_spec(&url, query, TimeFormat::Rfc3339),
                &strings(&["id"]),
                1,
            )
            .await
            .unwrap_err()
        }
    };
    let err = open("SELECT id FROM nowhere").await;
    assert!(err.to_string().contains("no such table"), "{err}");
    assert_eq!(err.class(), ErrorClass::Permanent);
    let err = open("SELECT id FROM events WHERE ts > :since").await;
    assert!(err.to_string().contains(":since"), "{err}");
}

#[tokio::test]
async fn null_keys_are_refused() {
    let dir = Dir::temp();
    let url = dir
        .db(
            "src.db",
            "CREATE TABLE t (k TEXT, v INTEGER); INSERT INTO t VALUES ('a', 1), (NULL, 2);",
        )
        .await;
    let src = source(&url, "SELECT k, v FROM t", &["k"]).await;
    let err = src.read_batch(&keys(0, 1), None, 10).await.unwrap_err();
    assert!(
        err.to_string().contains("NULL in key column \"k\""),
        "{err}"
    );
}

#[tokio::test]
async fn has_rows_asks_without_reading_a_page() {
    let dir = Dir::temp();
    let url = dir
        .db(
            "src.db",
            "CREATE TABLE t (n INTEGER, k TEXT); INSERT INTO t VALUES (1, 'a'), (5, NULL);",
        )
        .await;
    let src = source(
        &url,
        "SELECT n, k FROM t WHERE n >= :start AND n < :end",
        &["k"],
    )
    .await;
    assert!(src.has_rows(&keys(0, 2)).await.unwrap());
    assert!(!src.has_rows(&keys(2, 5)).await.unwrap());
    // The window's only row has a NULL key: it holds a row all the same (an ordered page of
    // one row would fail on the key here; reading the rows reports it).
    assert!(src.has_rows(&keys(5, 6)).await.unwrap());
    assert!(src.read_batch(&keys(5, 6), None, 1).await.is_err());
}

#[tokio::test]
async fn opening_a_sqlite_source_bounds_sqlites_heap_for_the_process() {
    let dir = Dir::temp();
    let url = dir.db("src.db", EVENTS).await;
    let _src = source(&url, "SELECT id, v FROM events", &["id"]).await;
    // The soft heap limit is one setting of the process: any connection reads it.
    assert_eq!(
        rows(&url, "PRAGMA soft_heap_limit").await,
        [[Value::Int(4 * 1024 * 1024)]]
    );
}
