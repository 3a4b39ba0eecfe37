//! Writing: upsert counts and replays, replace atomicity, sql mode, extra statements, errors.

use backfill_connectors::{ConnectorError, Extra, open_sink};
use backfill_core::retry::ErrorClass;
use backfill_core::spec::WriteMode;
use backfill_core::value::{Batch, RowCounts, Value};

use crate::{Dir, day, guarded_rows, keys, read_all, rows, sink, source, strings, target_spec};

const TARGET: &str = "
CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT, b REAL);
CREATE TABLE checkpoints (partition TEXT PRIMARY KEY, token INTEGER, last_key TEXT);
INSERT INTO checkpoints VALUES ('p1', 7, NULL);
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

fn counts(inserted: u64, updated: u64, unchanged: u64) -> RowCounts {
    RowCounts {
        inserted,
        updated,
        unchanged,
        ..RowCounts::default()
    }
}

#[tokio::test]
async fn upsert_counts_inserts_updates_and_unchanged_rows_and_replay_is_a_no_op() {
    let dir = Dir::temp();
    let url = dir.db("dst.db", TARGET).await;
    let sink = sink(&url, "t", &["id"], WriteMode::Upsert).await;
    assert_eq!(
        sink.check_columns(&strings(&["id", "a", "b"]))
            .await
            .unwrap(),
        ["id", "a", "b"]
    );
    let first = batch(&[(1, Some("x"), 1.0), (2, None, 2.0), (3, Some("z"), 3.0)]);
    assert_eq!(sink.upsert(&first, None).await.unwrap(), counts(3, 0, 0));
    assert_eq!(sink.upsert(&first, None).await.unwrap(), counts(0, 0, 3));

    // One NULL becomes a value, one value becomes NULL, one row is new, one is the same.
    let second = batch(&[
        (1, Some("x"), 1.0),
        (2, Some("y"), 2.0),
        (3, None, 3.0),
        (4, Some("w"), 4.0),
    ]);
    assert_eq!(sink.upsert(&second, None).await.unwrap(), counts(1, 2, 1));
    for _ in 0..3 {
        assert_eq!(sink.upsert(&second, None).await.unwrap(), counts(0, 0, 4));
    }
    assert_eq!(
        rows(&url, "SELECT id, a, b FROM t ORDER BY id").await,
        second.rows
    );
}

#[tokio::test]
async fn upsert_spanning_several_statements_counts_exactly() {
    let dir = Dir::temp();
    let url = dir.db("dst.db", TARGET).await;
    let sink = sink(&url, "t", &["id"], WriteMode::Upsert).await;
    let make = |n: i64, tag: &str| Batch {
        columns: strings(&["id", "a", "b"]),
        rows: (0..n)
            .map(|i| {
                vec![
                    Value::Int(i),
                    Value::Text(format!("{tag}{}", i % 2)),
                    Value::Float(0.5),
                ]
            })
            .collect(),
    };
    assert_eq!(
        sink.upsert(&make(1234, "x"), None).await.unwrap(),
        counts(1234, 0, 0)
    );
    // Changing the tag changes every row; 300 more rows are new; odd ids become "y1"... all change.
    let changed = make(1534, "y");
    assert_eq!(
        sink.upsert(&changed, None).await.unwrap(),
        counts(300, 1234, 0)
    );
    assert_eq!(
        sink.upsert(&changed, None).await.unwrap(),
        counts(0, 0, 1534)
    );
}

#[tokio::test]
async fn odd_values_round_trip_from_source_to_sink() {
    let dir = Dir::temp();
    let huge = "é✓".repeat(1_500_000); // ~7.5 MB of UTF-8
    let src_url = dir
        .db(
            "src.db",
            "CREATE TABLE s (k TEXT PRIMARY KEY, n INTEGER, f REAL, t TEXT, b BLOB);",
        )
        .await;
    let dst_url = dir
        .db(
            "dst.db",
            "CREATE TABLE d (k TEXT PRIMARY KEY, n INTEGER, f REAL, t TEXT, b BLOB);",
        )
        .await;
    let src_sink = sink(&src_url, "s", &["k"], WriteMode::Upsert).await;
    let fixture = Batch {
        columns: strings(&["k", "n", "f", "t", "b"]),
        rows: vec![
            vec![
                Value::Text("nulls".into()),
                Value::Null,
                Value::Null,
                Value::Null,
                Value::Null,
            ],
            vec![
                Value::Text("ünï💥".into()),
                Value::Int(i64::MIN),
                Value::Float(-0.1),
                Value::Text("日本語\n\"quotes\" 'and' \\ \0 nul".into()),
                Value::Blob(vec![0, 1, 2, 255]),
            ],
            vec![
                Value::Text("huge".into()),
                Value::Int(i64::MAX),
                Value::Float(1e300),
                Value::Text(huge),
                Value::Blob(vec![7; 3_000_000]),
            ],
            vec![
                Value::Text("empty".into()),
                Value::Int(0),
                Value::Float(0.0),
                Value::Text(String::new()),
                Value::Blob(Vec::new()),
            ],
        ],
    };
    assert_eq!(
        src_sink.upsert(&fixture, None).await.unwrap(),
        counts(4, 0, 0)
    );

    let src = source(&src_url, "SELECT * FROM s", &["k"]).await;
    let dst = sink(&dst_url, "d", &["k"], WriteMode::Upsert).await;
    let (read, _) = read_all(&src, &keys(0, 1), 3).await;
    dst.check_columns(&read.columns).await.unwrap();
    assert_eq!(dst.upsert(&read, None).await.unwrap(), counts(4, 0, 0));
    assert_eq!(dst.upsert(&read, None).await.unwrap(), counts(0, 0, 4));

    let back = source(&dst_url, "SELECT * FROM d", &["k"]).await;
    let (copied, _) = read_all(&back, &keys(0, 1), 10).await;
    assert_eq!(copied, read);
    let mut want = fixture.rows.clone();
    want.sort_by(|a, b| match (&a[0], &b[0]) {
        (Value::Text(x), Value::Text(y)) => x.cmp(y),
        _ => unreachable!(),
    });
    assert_eq!(copied.rows, want);
}

const EVENTS: &str = "
CREATE TABLE e (id INTEGER PRIMARY KEY, ts TEXT NOT NULL, v TEXT);
INSERT INTO e VALUES
  (1, '2025-01-01T10:00:00Z', 'a'), (2, '2025-01-02T00:00:00Z', 'b'),
  (3, '2025-01-02T23:59:59Z', 'c'), (4, '2025-01-03T00:00:00Z', 'd');
CREATE TABLE checkpoints (partition TEXT PRIMARY KEY, token INTEGER, last_key TEXT);
INSERT INTO checkpoints VALUES ('p1', 7, NULL);
";

fn replace_mode() -> WriteMode {
    WriteMode::Replace {
        window_column: "ts".to_owned(),
    }
}

fn event(id: i64, ts: &str, v: &str) -> Vec<Value> {
    vec![
        Value::Int(id),
        Value::Text(ts.into()),
        Value::Text(v.into()),
    ]
}

/// `check` warns when deleting a window would scan the whole table, and reconciliation after
/// each partition moves to the end of the run when it would.
#[tokio::test]
async fn the_sink_knows_whether_a_column_leads_an_index() {
    let dir = Dir::temp();
    let url = dir.db("dst.db", EVENTS).await;
    let plain = sink(&url, "e", &["id"], replace_mode()).await;
    assert_eq!(plain.leads_an_index("ts").await.unwrap(), Some(false));
    // The INTEGER PRIMARY KEY is the rowid: windows by `id` need no index.
    assert_eq!(plain.leads_an_index("id").await.unwrap(), Some(true));
    let url = dir
        .db(
            "idx.db",
            &format!("{EVENTS}; CREATE INDEX e_ts ON e (ts, v);"),
        )
        .await;
    let indexed = sink(&url, "e", &["id"], WriteMode::Upsert).await;
    assert_eq!(indexed.leads_an_index("ts").await.unwrap(), Some(true));
    // A column that is second in an index does not lead it.
    assert_eq!(indexed.leads_an_index("v").await.unwrap(), Some(false));
}

#[tokio::test]
async fn replace_deletes_only_the_window_and_commits_atomically() {
    let dir = Dir::temp();
    let url = dir.db("dst.db", EVENTS).await;
    let sink = sink(&url, "e", &["id"], replace_mode()).await;
    let before = rows(&url, "SELECT * FROM e ORDER BY id").await;

    // Dropped without commit: nothing changes.
    let mut txn = sink.begin_replace(&day(2)).await.unwrap();
    assert_eq!(txn.deleted(), 2);
    let new = Batch {
        columns: strings(&["id", "ts", "v"]),
        rows: vec![
            event(2, "2025-01-02T00:00:00Z", "B"),
            event(5, "2025-01-02T12:00:00Z", "E"),
        ],
    };
    assert_eq!(txn.insert(&new).await.unwrap(), 2);
    drop(txn);
    assert_eq!(rows(&url, "SELECT * FROM e ORDER BY id").await, before);

    // Committed, twice: the same result as once.
    for _ in 0..2 {
        let mut txn = sink.begin_replace(&day(2)).await.unwrap();
        assert_eq!(txn.insert(&new).await.unwrap(), 2);
        txn.commit(None).await.unwrap();
    }
    assert_eq!(
        rows(&url, "SELECT * FROM e ORDER BY id").await,
        [
            event(1, "2025-01-01T10:00:00Z", "a"),
            event(2, "2025-01-02T00:00:00Z", "B"),
            event(4, "2025-01-03T00:00:00Z", "d"),
            event(5, "2025-01-02T12:00:00Z", "E"),
        ]
    );
}

#[tokio::test]
async fn extra_statement_commits_with_the_write_or_rolls_it_back() {
    let dir = Dir::temp();
    let url = dir.db("dst.db", TARGET).await;
    let sink = sink(&url, "t", &["id"], WriteMode::Upsert).await;
    let checkpoint = |token: i64, key: &str| Extra {
        sql: "UPDATE checkpoints SET last_key = ? WHERE partition = ? AND token = ?".to_owned(),
        params: vec![
            Value::Text(key.into()),
            Value::Text("p1".into()),
            Value::Int(token),
        ],
    };
    let b = batch(&[(1, Some("x"), 1.0)]);
    sink.upsert(&b, Some(&checkpoint(7, "[1]"))).await.unwrap();
    assert_eq!(
        rows(&url, "SELECT last_key FROM checkpoints").await,
        [[Value::Text("[1]".into())]]
    );

    // A stale token affects no row: the batch is not written either.
    let b2 = batch(&[(2, Some("y"), 2.0)]);
    let err = sink
        .upsert(&b2, Some(&checkpoint(6, "[2]")))
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Permanent);
    assert!(err.to_string().contains("stale"), "{err}");
    assert_eq!(
        rows(&url, "SELECT count(*) FROM t").await,
        [[Value::Int(1)]]
    );

    // Replace mode: a failing extra rolls back the delete and the inserts.
    let events = dir.db("events.db", EVENTS).await;
    let sink = crate::sink(&events, "e", &["id"], replace_mode()).await;
    let before = rows(&events, "SELECT * FROM e ORDER BY id").await;
    let txn = sink.begin_replace(&day(2)).await.unwrap();
    assert!(txn.commit(Some(&checkpoint(6, "x"))).await.is_err());
    assert_eq!(rows(&events, "SELECT * FROM e ORDER BY id").await, before);
    let txn = sink.begin_replace(&day(2)).await.unwrap();
    txn.commit(Some(&checkpoint(7, "done"))).await.unwrap();
    assert_eq!(
        rows(&events, "SELECT count(*) FROM e").await,
        [[Value::Int(2)]]
    );
}

#[tokio::test]
async fn execute_sql_reports_rows_affected() {
    let dir = Dir::temp();
    let url = dir
        .db(
            "dst.db",
            &format!("{EVENTS} CREATE TABLE daily (day TEXT PRIMARY KEY, n INTEGER);"),
        )
        .await;
    let mode = WriteMode::Sql {
        statement: "INSERT INTO daily SELECT substr(ts, 1, 10), count(*) FROM e \
                    WHERE ts >= :start AND ts < :end GROUP BY 1 \
                    ON CONFLICT (day) DO UPDATE SET n = excluded.n;"
            .to_owned(),
    };
    let mut spec = target_spec(&url, "daily", &[], mode);
    spec.table = None;
    let sink = open_sink(&spec, 1).await.unwrap();
    let counts = sink.execute_sql(&day(2)).await.unwrap();
    assert_eq!(counts.affected, 1);
    assert_eq!(
        rows(&url, "SELECT * FROM daily").await,
        [[Value::Text("2025-01-02".into()), Value::Int(2)]]
    );
}

#[tokio::test]
async fn missing_target_column_is_named_with_the_table() {
    let dir = Dir::temp();
    let url = dir.db("dst.db", TARGET).await;
    let sink = sink(&url, "t", &["id"], WriteMode::Upsert).await;
    let err = sink
        .check_columns(&strings(&["id", "a", "colour"]))
        .await
        .unwrap_err();
    match &err {
        ConnectorError::MissingColumn {
            column, available, ..
        } => {
            assert_eq!(column, "colour");
            assert_eq!(available, &strings(&["id", "a", "b"]));
        }
        other => panic!("{other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains("\"colour\"") && text.contains("\"t\""),
        "{text}"
    );

    let missing = crate::sink(&url, "nope", &["id"], WriteMode::Upsert).await;
    let err = missing.check_columns(&strings(&["id"])).await.unwrap_err();
    assert!(err.to_string().contains("no such table"), "{err}");
}

#[tokio::test]
async fn upsert_needs_a_unique_key_in_the_target() {
    let dir = Dir::temp();
    let url = dir
        .db(
            "dst.db",
            "CREATE TABLE loose (id INTEGER, v TEXT);
             CREATE TABLE pair (a TEXT, b INTEGER, v TEXT);
             CREATE UNIQUE INDEX pair_ab ON pair (b, a);",
        )
        .await;
    let loose = sink(&url, "loose", &["id"], WriteMode::Upsert).await;
    let err = loose
        .check_columns(&strings(&["id", "v"]))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("no PRIMARY KEY or UNIQUE index"),
        "{err}"
    );
    let pair = sink(&url, "pair", &["a", "b"], WriteMode::Upsert).await;
    pair.check_columns(&strings(&["a", "b", "v"]))
        .await
        .unwrap();
    let b = Batch {
        columns: strings(&["a", "b", "v"]),
        rows: vec![vec![
            Value::Text("x".into()),
            Value::Int(1),
            Value::Text("v".into()),
        ]],
    };
    assert_eq!(pair.upsert(&b, None).await.unwrap(), counts(1, 0, 0));
    assert_eq!(pair.upsert(&b, None).await.unwrap(), counts(0, 0, 1));
}

#[tokio::test]
async fn constraint_violation_is_a_data_error_and_writes_nothing() {
    let dir = Dir::temp();
    let url = dir
        .db(
            "dst.db",
            "CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT NOT NULL, b REAL);",
        )
        .await;
    let sink = sink(&url, "t", &["id"], WriteMode::Upsert).await;
    let err = sink
        .upsert(&batch(&[(1, Some("ok"), 1.0), (2, None, 2.0)]), None)
        .await
        .unwrap_err();
    assert!(matches!(err, ConnectorError::Sql { .. }), "{err:?}");
    assert_eq!(err.class(), ErrorClass::Data);
    assert!(err.to_string().contains("NOT NULL"), "{err}");
    assert_eq!(
        rows(&url, "SELECT count(*) FROM t").await,
        [[Value::Int(0)]]
    );
}

#[tokio::test]
async fn missing_target_file_is_a_connect_error_and_is_not_created() {
    let dir = Dir::temp();
    let path = dir.path("absent.db");
    let err = open_sink(
        &target_spec(&crate::url(&path), "t", &["id"], WriteMode::Upsert),
        1,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ConnectorError::Connect { .. }), "{err:?}");
    assert!(err.to_string().contains("absent.db"), "{err}");
    assert!(!path.exists());
}

/// `guard = "v"`: a target row whose guard is greater than the incoming row's keeps every
/// value (a live write won); a NULL or older guard is overwritten; held-back rows count as
/// unchanged, and a batch without the guard column is refused, naming it.
#[tokio::test]
async fn guard_keeps_target_rows_that_are_newer() {
    let dir = Dir::temp();
    let url = dir
        .db(
            "dst.db",
            "CREATE TABLE g (id INTEGER PRIMARY KEY, a TEXT, v INTEGER);
             INSERT INTO g VALUES (1, 'live', 5), (2, 'old', 1), (3, 'no guard', NULL);",
        )
        .await;
    let mut spec = target_spec(&url, "g", &["id"], WriteMode::Upsert);
    spec.guard = Some("v".to_owned());
    let sink = open_sink(&spec, 2).await.unwrap();
    sink.check_columns(&strings(&["id", "a", "v"]))
        .await
        .unwrap();
    let incoming = Batch {
        columns: strings(&["id", "v", "a"]),
        rows: [
            (1, "backfill"),
            (2, "backfill"),
            (3, "backfill"),
            (4, "new"),
        ]
        .into_iter()
        .map(|(id, a)| vec![Value::Int(id), Value::Int(2), Value::Text(a.into())])
        .collect(),
    };
    assert_eq!(sink.upsert(&incoming, None).await.unwrap(), counts(1, 2, 1));
    assert_eq!(sink.upsert(&incoming, None).await.unwrap(), counts(0, 0, 4));
    assert_eq!(
        rows(&url, "SELECT id, a, v FROM g ORDER BY id").await,
        guarded_rows()
    );

    let without = Batch {
        columns: strings(&["id", "a"]),
        rows: vec![vec![Value::Int(1), Value::Text("x".into())]],
    };
    let err = sink.upsert(&without, None).await.unwrap_err();
    assert!(
        matches!(&err, ConnectorError::MissingColumn { column, .. } if column == "v"),
        "{err}"
    );
    // The target must have the guard column.
    let mut spec = target_spec(&url, "g", &["id"], WriteMode::Upsert);
    spec.guard = Some("updated_at".to_owned());
    let sink = open_sink(&spec, 2).await.unwrap();
    let err = sink
        .check_columns(&strings(&["id", "a", "v"]))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ConnectorError::MissingColumn { column, .. } if column == "updated_at"),
        "{err}"
    );
}

/// SQLite's undo log is written by temporary triggers that live only inside the write that
/// logs: they log the rows it inserts or changes (not a row written as it was), keep a key's
/// first before-image, tag them with the run's short tag (mapped to its id, a quote in it,
/// in the tags table), and nothing the same connections write later without the log is
/// logged.
#[tokio::test]
async fn sqlite_undo_triggers_log_only_their_own_writes() {
    let dir = Dir::temp();
    let url = dir.db("dst.db", TARGET).await;
    let sink = sink(&url, "t", &["id"], WriteMode::Upsert).await;
    let before = batch(&[(1, Some("x"), 1.0), (2, Some("y"), 2.0)]);
    sink.upsert(&before, None).await.unwrap();
    let undo = backfill_connectors::UndoBatch {
        run_id: "run 'one'".into(),
        partition_id: "p1".into(),
        every_key: false,
    };
    // One row changed, one the same, one new: two are logged.
    let written = batch(&[(1, Some("x2"), 1.0), (2, Some("y"), 2.0), (3, None, 3.0)]);
    for _ in 0..2 {
        sink.upsert_undo(&written, None, Some(&undo)).await.unwrap();
    }
    let changed = batch(&[(1, Some("x3"), 1.5), (3, Some("z"), 3.0)]);
    sink.upsert_undo(&changed, None, Some(&undo)).await.unwrap();
    let log = "SELECT id, bf_undo_run, bf_undo_op, a, bf_undo_after IS NOT NULL \
               FROM t__bf_undo ORDER BY id";
    let text = |s: &str| Value::Text(s.into());
    let expected = vec![
        vec![
            Value::Int(1),
            text("#1"),
            text("updated"),
            text("x"),
            Value::Int(1),
        ],
        vec![
            Value::Int(3),
            text("#1"),
            text("inserted"),
            Value::Null,
            Value::Int(1),
        ],
    ];
    assert_eq!(rows(&url, log).await, expected);
    assert_eq!(
        rows(&url, "SELECT run, tag FROM t__bf_undo_runs").await,
        [[text("run 'one'"), text("#1")]]
    );
    // The digest follows the last write.
    let digests = "SELECT bf_undo_after FROM t__bf_undo ORDER BY id";
    let logged = rows(&url, digests).await;
    sink.upsert_undo(&written, None, Some(&undo)).await.unwrap();
    assert_ne!(rows(&url, digests).await, logged);
    // Writes without the log, on both pooled connections, and a replace: nothing more.
    for (round, b) in [(0, 0.5), (1, 1.5), (2, 2.5), (3, 3.5)] {
        let other = batch(&[(1, Some("w"), b), (10 + round, None, 0.0)]);
        sink.upsert(&other, None).await.unwrap();
    }
    assert_eq!(rows(&url, log).await.len(), 2);
    assert_eq!(
        rows(&url, "SELECT count(*) FROM t").await,
        [[Value::Int(7)]]
    );
}

/// A run's undo rows on SQLite carry a short tag, one per run and never shared; a run that
/// already has rows under its id (logged before tags existed) keeps its id as its tag, so
/// its log is not split in two and its rollback finds every row.
#[tokio::test]
async fn sqlite_undo_tags_are_per_run_and_a_run_logged_under_its_id_keeps_it() {
    let dir = Dir::temp();
    let url = dir.db("dst.db", TARGET).await;
    let sink = sink(&url, "t", &["id"], WriteMode::Upsert).await;
    let undo = |run: &str| backfill_connectors::UndoBatch {
        run_id: run.into(),
        partition_id: "p1".into(),
        every_key: false,
    };
    sink.upsert_undo(&batch(&[(1, Some("x"), 1.0)]), None, Some(&undo("first")))
        .await
        .unwrap();
    // A row the previous version logged for a run, under the run's id.
    let before_tags = rows(
        &url,
        "INSERT INTO t__bf_undo (bf_undo_run, bf_undo_partition, bf_undo_op, id) \
         VALUES ('old-run', 'p0', 'inserted', 50) RETURNING id",
    )
    .await;
    assert_eq!(before_tags, [[Value::Int(50)]]);
    sink.upsert_undo(&batch(&[(2, Some("y"), 2.0)]), None, Some(&undo("old-run")))
        .await
        .unwrap();
    sink.upsert_undo(&batch(&[(3, Some("z"), 3.0)]), None, Some(&undo("third")))
        .await
        .unwrap();
    // The same sink and a new one (another process) agree on each run's tag.
    let again = crate::sink(&url, "t", &["id"], WriteMode::Upsert).await;
    again
        .upsert_undo(&batch(&[(4, None, 4.0)]), None, Some(&undo("first")))
        .await
        .unwrap();
    let text = |s: &str| Value::Text(s.into());
    assert_eq!(
        rows(&url, "SELECT run, tag FROM t__bf_undo_runs ORDER BY n").await,
        [
            [text("first"), text("#1")],
            [text("old-run"), text("old-run")],
            [text("third"), text("#3")],
        ]
    );
    assert_eq!(
        rows(&url, "SELECT id, bf_undo_run FROM t__bf_undo ORDER BY id").await,
        [
            [Value::Int(1), text("#1")],
            [Value::Int(2), text("old-run")],
            [Value::Int(3), text("#3")],
            [Value::Int(4), text("#1")],
            [Value::Int(50), text("old-run")],
        ]
    );
}

/// The SQLite undo log's digest reads raw values: a value that is not of its column's
/// declared kind (SQLite stores it anyway) is logged, not an error that fails the write.
#[tokio::test]
async fn sqlite_undo_logs_values_that_are_not_of_their_columns_kind() {
    let dir = Dir::temp();
    let url = dir
        .db(
            "dst.db",
            "CREATE TABLE d (id INTEGER PRIMARY KEY, day DATE, n NUMERIC);
             INSERT INTO d VALUES (1, 'n/a', 'many');",
        )
        .await;
    let sink = sink(&url, "d", &["id"], WriteMode::Upsert).await;
    let undo = backfill_connectors::UndoBatch {
        run_id: "r".into(),
        partition_id: "p".into(),
        every_key: false,
    };
    let rows = Batch {
        columns: strings(&["id", "day", "n"]),
        rows: vec![
            vec![
                Value::Int(1),
                Value::Text("unknown".into()),
                Value::Text("x".into()),
            ],
            vec![
                Value::Int(2),
                Value::Text("n/a".into()),
                Value::Blob(vec![0, 255]),
            ],
        ],
    };
    sink.upsert_undo(&rows, None, Some(&undo)).await.unwrap();
    let log = "SELECT id, bf_undo_op, day, n, typeof(bf_undo_after), \
               length(bf_undo_after) FROM d__bf_undo ORDER BY id";
    let text = |s: &str| Value::Text(s.into());
    assert_eq!(
        crate::rows(&url, log).await,
        [
            vec![
                Value::Int(1),
                text("updated"),
                text("n/a"),
                text("many"),
                text("blob"),
                Value::Int(16)
            ],
            vec![
                Value::Int(2),
                text("inserted"),
                Value::Null,
                Value::Null,
                text("blob"),
                Value::Int(16)
            ],
        ]
    );
}
