//! Pushdown (SQLite → SQLite inside SQLite): exact counts, replays, the extra statement,
//! name resolution, locking, same-file and replace windows.

use std::time::Duration;

use backfill_connectors::{AnyPushdown, ConnectorError, Extra, open_pushdown};
use backfill_core::plan::Window;
use backfill_core::retry::ErrorClass;
use backfill_core::spec::WriteMode;
use backfill_core::timefmt::TimeFormat;
use backfill_core::value::{RowCounts, Value};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection, Executor};

use crate::{Dir, day, guarded_rows, keys, rows, source_spec, target_spec};

const QUERY: &str = "SELECT id, a, b FROM e WHERE id >= :start AND id < :end";

const SOURCE: &str = "
CREATE TABLE e (id INTEGER PRIMARY KEY, a TEXT, b REAL);
INSERT INTO e VALUES (1, 'x', 1.5), (2, NULL, 2.0), (3, 'z', 3.0), (4, 'w', 4.0),
  (5, 'v', 5.0), (6, 'u', 6.0), (7, X'00ff', 7.0);
";

const TARGET: &str = "
CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT, b REAL);
INSERT INTO t VALUES (1, 'x', 1.5), (2, 'old', 2.0), (3, 'z', 3.0), (9, 'outside', 9.0);
CREATE TABLE checkpoints (partition TEXT PRIMARY KEY, token INTEGER, last_key TEXT);
INSERT INTO checkpoints VALUES ('p1', 7, NULL);
";

async fn pushdown(
    source: &str,
    query: &str,
    target: &str,
    mode: WriteMode,
    extra_in_target: bool,
) -> Option<AnyPushdown> {
    open_pushdown(
        &source_spec(source, query, TimeFormat::Rfc3339),
        &target_spec(target, "t", &["id"], mode),
        2,
        extra_in_target,
    )
    .await
    .unwrap()
}

fn counts(inserted: u64, updated: u64, unchanged: u64) -> RowCounts {
    RowCounts {
        inserted,
        updated,
        unchanged,
        ..RowCounts::default()
    }
}

/// Upserts the whole window in batches of `limit` like the engine; returns the summed counts
/// and the last key of each batch.
async fn upsert_all(p: &AnyPushdown, window: &Window, limit: u32) -> (RowCounts, Vec<Vec<Value>>) {
    let mut total = RowCounts::default();
    let mut lasts = Vec::new();
    let mut part = p.partition(window, None, None).await.unwrap();
    loop {
        let staged = part.next_batch(limit).await.unwrap();
        if staged.is_empty() {
            return (total, lasts);
        }
        let n = staged.len();
        let last = staged.last_key().unwrap().to_vec();
        let c = staged.upsert(None).await.unwrap();
        assert_eq!(
            c.inserted + c.updated + c.unchanged,
            n as u64,
            "counts cover the batch"
        );
        total.add(&c);
        lasts.push(last);
        if n < limit as usize {
            return (total, lasts);
        }
    }
}

#[tokio::test]
async fn upsert_counts_exactly_and_a_replay_is_all_unchanged() {
    let dir = Dir::temp();
    let src = dir.db("src.db", SOURCE).await;
    let dst = dir.db("dst.db", TARGET).await;
    let p = pushdown(&src, QUERY, &dst, WriteMode::Upsert, false)
        .await
        .expect("pushdown applies");
    assert_eq!(p.columns(), ["id", "a", "b"]);

    // 1 and 3 identical, 2 differs (NULL vs 'old'), 4..7 new; 9 is outside the window.
    let (c, lasts) = upsert_all(&p, &keys(1, 8), 3).await;
    assert_eq!(c, counts(4, 1, 2));
    assert_eq!(
        lasts,
        [[Value::Int(3)], [Value::Int(6)], [Value::Int(7)]],
        "last keys in key order, one per batch"
    );
    let want: Vec<Vec<Value>> = rows(&src, "SELECT * FROM e ORDER BY id").await;
    let mut got = rows(&dst, "SELECT * FROM t ORDER BY id").await;
    assert_eq!(
        got.pop().unwrap()[0],
        Value::Int(9),
        "row outside untouched"
    );
    assert_eq!(got, want, "storage classes kept (NULL, REAL, BLOB)");

    let (again, _) = upsert_all(&p, &keys(1, 8), 3).await;
    assert_eq!(again, counts(0, 0, 7), "replay writes nothing");
    let (one, _) = upsert_all(&p, &keys(1, 8), 100).await;
    assert_eq!(one, counts(0, 0, 7), "one batch for the whole window");
    // Resuming after a checkpoint stages only the rows after it.
    let mut part = p
        .partition(&keys(1, 8), Some(&[Value::Int(5)]), None)
        .await
        .unwrap();
    let batch = part.next_batch(10).await.unwrap();
    assert_eq!(
        (batch.len(), batch.last_key()),
        (2, Some(&[Value::Int(7)][..]))
    );
    assert_eq!(batch.upsert(None).await.unwrap(), counts(0, 0, 2));
    assert!(part.next_batch(10).await.unwrap().is_empty());
    drop(part);
    p.close().await;
}

#[tokio::test]
async fn extra_commits_with_the_batch_or_rolls_it_back() {
    let dir = Dir::temp();
    let src = dir.db("src.db", SOURCE).await;
    let dst = dir.db("dst.db", TARGET).await;
    let p = pushdown(&src, QUERY, &dst, WriteMode::Upsert, true)
        .await
        .expect("no name in both files");
    let checkpoint = |token: i64, key: &str| Extra {
        sql: "UPDATE checkpoints SET last_key = ? WHERE partition = ? AND token = ?".to_owned(),
        params: vec![
            Value::Text(key.into()),
            Value::Text("p1".into()),
            Value::Int(token),
        ],
    };
    let before = rows(&dst, "SELECT * FROM t ORDER BY id").await;
    let mut part = p.partition(&keys(4, 8), None, None).await.unwrap();
    let staged = part.next_batch(10).await.unwrap();
    let err = staged
        .upsert(Some(&checkpoint(6, "[7]")))
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Permanent);
    assert!(err.to_string().contains("stale"), "{err}");
    assert_eq!(rows(&dst, "SELECT * FROM t ORDER BY id").await, before);

    // The failed batch is handed out again.
    let staged = part.next_batch(10).await.unwrap();
    assert_eq!(staged.last_key(), Some(&[Value::Int(7)][..]));
    assert_eq!(
        staged.upsert(Some(&checkpoint(7, "[7]"))).await.unwrap(),
        counts(4, 0, 0)
    );
    assert_eq!(
        rows(&dst, "SELECT last_key FROM checkpoints").await,
        [[Value::Text("[7]".into())]]
    );
}

#[tokio::test]
async fn unqualified_names_resolve_to_the_source_even_when_the_target_has_them() {
    let dir = Dir::temp();
    // Both files have a table `t`: the query's `t` is the source's.
    let src = dir
        .db(
            "src.db",
            "CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT, b REAL);
             INSERT INTO t VALUES (1, 'from source', 1.0), (2, 'source too', 2.0);",
        )
        .await;
    let dst = dir.db("dst.db", TARGET).await;
    let query = "SELECT id, a, b FROM t WHERE id >= :start AND id < :end";
    let p = pushdown(&src, query, &dst, WriteMode::Upsert, false)
        .await
        .expect("same names are fine without an extra statement");
    let (c, _) = upsert_all(&p, &keys(1, 3), 10).await;
    assert_eq!(c, counts(0, 2, 0));
    assert_eq!(
        rows(&dst, "SELECT a FROM t WHERE id < 3 ORDER BY id").await,
        [
            [Value::Text("from source".into())],
            [Value::Text("source too".into())]
        ]
    );
    p.close().await;

    // With the state store's statement naming target tables, a name in both files could
    // resolve to the source: the pushdown is not used.
    let src2 = dir
        .db(
            "src2.db",
            &format!("{SOURCE} CREATE TABLE checkpoints (x INTEGER);"),
        )
        .await;
    assert!(
        pushdown(&src2, QUERY, &dst, WriteMode::Upsert, true)
            .await
            .is_none(),
        "`checkpoints` exists in both files"
    );
    // A source table named like the TEMP table would be shadowed by it.
    let src3 = dir
        .db(
            "src3.db",
            &format!("{SOURCE} CREATE TABLE backfill_part (x INTEGER);"),
        )
        .await;
    assert!(
        pushdown(&src3, QUERY, &dst, WriteMode::Upsert, false)
            .await
            .is_none()
    );
    // With the undo log on, a source table named like the log would get the rows its
    // triggers write (a trigger body cannot qualify a table): the pushdown is not used.
    let src4 = dir
        .db(
            "src4.db",
            &format!("{SOURCE} CREATE TABLE t__bf_undo (x INTEGER);"),
        )
        .await;
    let source4 = source_spec(&src4, QUERY, TimeFormat::Rfc3339);
    let mut logged = target_spec(&dst, "t", &["id"], WriteMode::Upsert);
    logged.undo = true;
    assert!(
        open_pushdown(&source4, &logged, 2, false)
            .await
            .unwrap()
            .is_none(),
        "the source has `t__bf_undo`"
    );
    logged.undo = false;
    let unlogged = open_pushdown(&source4, &logged, 2, false).await.unwrap();
    assert!(
        unlogged.is_some(),
        "without the log the name does not matter"
    );
    unlogged.unwrap().close().await;
    // `sql` mode and a query the target cannot take fall back too.
    assert!(
        open_pushdown(
            &source_spec(&src, query, TimeFormat::Rfc3339),
            &crate::target_spec(
                &dst,
                "t",
                &["id"],
                WriteMode::Sql {
                    statement: "SELECT 1".into()
                }
            ),
            2,
            false
        )
        .await
        .unwrap()
        .is_none()
    );
    let extra_column = "SELECT id, a, b, 1 AS nope FROM e WHERE id >= :start AND id < :end";
    assert!(
        pushdown(&src2, extra_column, &dst, WriteMode::Upsert, false)
            .await
            .is_none(),
        "target has no column `nope`"
    );
}

#[tokio::test]
async fn source_and_target_in_the_same_file_need_no_attach() {
    let dir = Dir::temp();
    let url = dir.db("one.db", &format!("{SOURCE} {TARGET}")).await;
    let p = pushdown(&url, QUERY, &url, WriteMode::Upsert, true)
        .await
        .expect("one file");
    let mut part = p.partition(&keys(1, 8), None, None).await.unwrap();
    let staged = part.next_batch(100).await.unwrap();
    let extra = Extra {
        sql: "UPDATE checkpoints SET last_key = ? WHERE partition = 'p1'".to_owned(),
        params: vec![Value::Text("[7]".into())],
    };
    assert_eq!(staged.upsert(Some(&extra)).await.unwrap(), counts(4, 1, 2));
    assert_eq!(
        rows(&url, "SELECT count(*) FROM t").await,
        [[Value::Int(8)]]
    );
    assert_eq!(
        rows(&url, "SELECT last_key FROM checkpoints").await,
        [[Value::Text("[7]".into())]]
    );
}

#[tokio::test]
async fn null_keys_are_refused() {
    let dir = Dir::temp();
    let src = dir.db("src.db", SOURCE).await;
    let dst = dir.db("dst.db", TARGET).await;
    let query = "SELECT CASE WHEN id = 2 THEN NULL ELSE id END AS id, a, b FROM e \
                 WHERE id >= :start AND id < :end";
    let p = pushdown(&src, query, &dst, WriteMode::Upsert, false)
        .await
        .unwrap();
    let err = p.partition(&keys(1, 8), None, None).await.unwrap_err();
    assert!(matches!(err, ConnectorError::Data { .. }), "{err}");
    assert!(
        err.to_string().contains("NULL in key column \"id\""),
        "{err}"
    );
}

const EVENTS: &str = "
CREATE TABLE e (id INTEGER PRIMARY KEY, ts TEXT NOT NULL, v TEXT);
INSERT INTO e VALUES
  (1, '2025-01-01T10:00:00Z', 'a'), (2, '2025-01-02T00:00:00Z', 'b'),
  (3, '2025-01-02T23:59:59Z', 'c'), (4, '2025-01-03T00:00:00Z', 'd');
";

#[tokio::test]
async fn replace_rewrites_only_the_window_and_locks_only_the_target() {
    let dir = Dir::temp();
    let src = dir
        .db(
            "src.db",
            "CREATE TABLE e (id INTEGER PRIMARY KEY, ts TEXT NOT NULL, v TEXT);
             INSERT INTO e VALUES (2, '2025-01-02T00:00:00Z', 'B'),
               (5, '2025-01-02T12:00:00Z', 'E'), (6, '2025-01-03T01:00:00Z', 'F');",
        )
        .await;
    let dst = dir.db("dst.db", EVENTS).await;
    let query = "SELECT id, ts, v FROM e WHERE ts >= :start AND ts < :end";
    let mode = WriteMode::Replace {
        window_column: "ts".into(),
    };
    let p = open_pushdown(
        &source_spec(&src, query, TimeFormat::Rfc3339),
        &target_spec(&dst, "e", &["id"], mode),
        2,
        false,
    )
    .await
    .unwrap()
    .expect("pushdown applies");
    let before = rows(&dst, "SELECT * FROM e ORDER BY id").await;

    let txn = p.begin_replace(&day(2), None).await.unwrap();
    assert_eq!(
        txn.counts(),
        RowCounts {
            read: 2,
            inserted: 2,
            deleted: 2,
            ..RowCounts::default()
        }
    );
    // While it is open, the target is write-locked and the source is not.
    let path = |url: &str| url.trim_start_matches("sqlite://").to_owned();
    let try_write = |file: String| async move {
        let mut conn = SqliteConnectOptions::new()
            .filename(file)
            .busy_timeout(Duration::ZERO)
            .connect()
            .await
            .unwrap();
        let ok = conn.execute("BEGIN IMMEDIATE").await.is_ok();
        if ok {
            conn.execute("ROLLBACK").await.unwrap();
        }
        conn.close().await.unwrap();
        ok
    };
    assert!(!try_write(path(&dst)).await, "target locked");
    assert!(try_write(path(&src)).await, "source free for its writers");
    drop(txn);
    assert_eq!(rows(&dst, "SELECT * FROM e ORDER BY id").await, before);

    for _ in 0..2 {
        let txn = p.begin_replace(&day(2), None).await.unwrap();
        txn.commit(None).await.unwrap();
    }
    let text = |s: &str| Value::Text(s.into());
    assert_eq!(
        rows(&dst, "SELECT * FROM e ORDER BY id").await,
        [
            vec![Value::Int(1), text("2025-01-01T10:00:00Z"), text("a")],
            vec![Value::Int(2), text("2025-01-02T00:00:00Z"), text("B")],
            vec![Value::Int(4), text("2025-01-03T00:00:00Z"), text("d")],
            vec![Value::Int(5), text("2025-01-02T12:00:00Z"), text("E")],
        ]
    );
}

#[tokio::test]
async fn upsert_transaction_locks_only_the_target() {
    let dir = Dir::temp();
    let src = dir.db("src.db", SOURCE).await;
    let dst = dir.db("dst.db", TARGET).await;
    let p = pushdown(&src, QUERY, &dst, WriteMode::Upsert, false)
        .await
        .unwrap();
    // A writer holding the source's write lock does not stop the batch from being written:
    // staging only reads the source, and the write transaction touches the target only.
    let mut writer = SqliteConnectOptions::new()
        .filename(src.trim_start_matches("sqlite://"))
        .connect()
        .await
        .unwrap();
    writer.execute("BEGIN IMMEDIATE").await.unwrap();
    writer
        .execute("INSERT INTO e VALUES (100, 'later', 0.0)")
        .await
        .unwrap();
    let mut part = p.partition(&keys(1, 8), None, None).await.unwrap();
    let staged = part.next_batch(10).await.unwrap();
    assert_eq!(staged.upsert(None).await.unwrap(), counts(4, 1, 2));
    writer.execute("COMMIT").await.unwrap();
}

/// `guard = "v"` inside SQLite: the same rule as the row path (a newer target guard keeps
/// the row, counted unchanged); a query without the guard column leaves the pushdown to the
/// row path, which names the missing column.
#[tokio::test]
async fn guard_keeps_target_rows_that_are_newer() {
    let dir = Dir::temp();
    let src = dir
        .db(
            "src.db",
            "CREATE TABLE e (id INTEGER PRIMARY KEY, a TEXT, v INTEGER);
             INSERT INTO e VALUES (1, 'backfill', 2), (2, 'backfill', 2), (3, 'backfill', 2),
               (4, 'new', 2);",
        )
        .await;
    let dst = dir
        .db(
            "dst.db",
            "CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT, v INTEGER);
             INSERT INTO t VALUES (1, 'live', 5), (2, 'old', 1), (3, 'no guard', NULL);",
        )
        .await;
    let open = |query: &'static str| {
        let mut target = target_spec(&dst, "t", &["id"], WriteMode::Upsert);
        target.guard = Some("v".to_owned());
        let source = source_spec(&src, query, TimeFormat::Rfc3339);
        async move { open_pushdown(&source, &target, 2, false).await.unwrap() }
    };
    let p = open("SELECT id, a, v FROM e WHERE id >= :start AND id < :end")
        .await
        .expect("pushdown applies");
    let (c, _) = upsert_all(&p, &keys(1, 8), 2).await;
    assert_eq!(c, counts(1, 2, 1));
    let (again, _) = upsert_all(&p, &keys(1, 8), 2).await;
    assert_eq!(again, counts(0, 0, 4));
    assert_eq!(
        rows(&dst, "SELECT id, a, v FROM t ORDER BY id").await,
        guarded_rows()
    );
    p.close().await;

    assert!(
        open("SELECT id, a FROM e WHERE id >= :start AND id < :end")
            .await
            .is_none(),
        "no guard column in the query: the row path reports it"
    );
}

/// A partition whose rows after the checkpoint fit in one batch is written straight from the
/// query (no TEMP table): new keys inserted first, then only the existing ones upserted, with
/// the same counts, last keys and target as the staged path; a larger one is staged.
#[tokio::test]
async fn a_partition_that_fits_one_batch_is_written_without_staging() {
    let dir = Dir::temp();
    let src = dir.db("src.db", SOURCE).await;
    let dst = dir.db("dst.db", TARGET).await;
    let p = pushdown(&src, QUERY, &dst, WriteMode::Upsert, false)
        .await
        .expect("pushdown applies");

    // 1 and 3 identical, 2 differs, 4..7 new: both statements of the direct write run.
    let (c, lasts) = upsert_all(&p, &keys(1, 8), 7).await;
    assert_eq!(c, counts(4, 1, 2));
    assert_eq!(lasts, [[Value::Int(7)]]);
    let stats = p.stats();
    assert_eq!((stats.direct_batches, stats.staged_partitions), (1, 0));
    let want: Vec<Vec<Value>> = rows(&src, "SELECT * FROM e ORDER BY id").await;
    let mut got = rows(&dst, "SELECT * FROM t ORDER BY id").await;
    got.pop(); // 9, outside the window
    assert_eq!(got, want);

    // After a checkpoint: only the rows after it, in one direct batch.
    let mut part = p
        .partition(&keys(1, 8), Some(&[Value::Int(4)]), None)
        .await
        .unwrap();
    let batch = part.next_batch(3).await.unwrap();
    assert_eq!(
        (batch.len(), batch.last_key()),
        (3, Some(&[Value::Int(7)][..]))
    );
    assert_eq!(batch.upsert(None).await.unwrap(), counts(0, 0, 3));
    assert!(part.next_batch(3).await.unwrap().is_empty());
    drop(part);
    assert_eq!(p.stats().direct_batches, 2);

    // More rows than a batch: staged once, cut into batches.
    let (c, lasts) = upsert_all(&p, &keys(1, 8), 6).await;
    assert_eq!(c, counts(0, 0, 7));
    assert_eq!(lasts, [[Value::Int(6)], [Value::Int(7)]]);
    assert_eq!(p.stats().staged_partitions, 1);

    // The last direct batch found every key: the next one counts the existing keys before
    // its upsert instead of trying to insert first; the counts are as exact.
    let mut conn = SqliteConnectOptions::new()
        .filename(dst.trim_start_matches("sqlite://"))
        .connect()
        .await
        .unwrap();
    conn.execute("DELETE FROM t WHERE id = 5; UPDATE t SET a = 'changed' WHERE id = 6")
        .await
        .unwrap();
    conn.close().await.unwrap();
    let (c, _) = upsert_all(&p, &keys(1, 8), 7).await;
    assert_eq!(c, counts(1, 1, 5));
    assert_eq!(p.stats().direct_batches, 3);
    let mut got = rows(&dst, "SELECT * FROM t ORDER BY id").await;
    got.pop();
    assert_eq!(got, want);
    p.close().await;
}

/// Commits run with `synchronous = NORMAL` and are made durable by a sync of the target's
/// WAL file before `upsert` or `commit` returns: every commit is covered by a sync, and
/// concurrent writers share syncs instead of each holding the writer lock through its own.
#[tokio::test]
async fn every_commit_is_synced_before_the_write_returns() {
    let dir = Dir::temp();
    let src = dir.db("src.db", SOURCE).await;
    let dst = dir.db("dst.db", TARGET).await;
    let p = pushdown(&src, QUERY, &dst, WriteMode::Upsert, false)
        .await
        .expect("pushdown applies");
    let (c, _) = upsert_all(&p, &keys(1, 8), 3).await;
    assert_eq!(c, counts(4, 1, 2));
    let stats = p.stats();
    assert_eq!(stats.commits, 3, "one commit per batch");
    assert!(
        (1..=3).contains(&stats.wal_syncs),
        "every commit covered by a WAL sync: {stats:?}"
    );
    // Two partitions at once: each write returns only once synced.
    let one = async {
        let mut part = p.partition(&keys(1, 4), None, None).await.unwrap();
        part.next_batch(10)
            .await
            .unwrap()
            .upsert(None)
            .await
            .unwrap()
    };
    let two = async {
        let mut part = p.partition(&keys(4, 8), None, None).await.unwrap();
        part.next_batch(10)
            .await
            .unwrap()
            .upsert(None)
            .await
            .unwrap()
    };
    let (a, b) = tokio::join!(one, two);
    assert_eq!((a, b), (counts(0, 0, 3), counts(0, 0, 4)));
    let after = p.stats();
    assert_eq!(after.commits, 5);
    assert!(
        after.wal_syncs > stats.wal_syncs && after.wal_syncs <= 5,
        "{after:?}"
    );
    p.close().await;
}

/// A one-column key's last key comes from the count's `max(key)`, which compares with the
/// column's collation exactly as the key order does: with `COLLATE NOCASE`, `'B'` sorts
/// after `'a'` (in binary order it would not), and the batch ends there.
#[tokio::test]
async fn the_last_key_read_with_the_count_follows_the_keys_collation() {
    let dir = Dir::temp();
    let src = dir
        .db(
            "src.db",
            "CREATE TABLE e (k TEXT PRIMARY KEY COLLATE NOCASE, id INTEGER);
             INSERT INTO e VALUES ('B', 2), ('a', 1), ('C', 3), ('d', 9);",
        )
        .await;
    let dst = dir
        .db(
            "dst.db",
            "CREATE TABLE t (k TEXT PRIMARY KEY COLLATE NOCASE, id INTEGER);",
        )
        .await;
    let query = "SELECT k, id FROM e WHERE id >= :start AND id < :end";
    let p = open_pushdown(
        &source_spec(&src, query, TimeFormat::Rfc3339),
        &target_spec(&dst, "t", &["k"], WriteMode::Upsert),
        2,
        false,
    )
    .await
    .unwrap()
    .expect("pushdown applies");
    let (c, lasts) = upsert_all(&p, &keys(1, 4), 10).await;
    assert_eq!(c, counts(3, 0, 0));
    assert_eq!(lasts, [[Value::Text("C".into())]]);
    assert_eq!(p.stats().direct_batches, 1);
    // Resuming after 'B' (case-insensitively between 'a' and 'C'): only 'C' is after it.
    let mut part = p
        .partition(&keys(1, 4), Some(&[Value::Text("b".into())]), None)
        .await
        .unwrap();
    let batch = part.next_batch(10).await.unwrap();
    assert_eq!(
        (batch.len(), batch.last_key()),
        (1, Some(&[Value::Text("C".into())][..]))
    );
    drop(batch);
    drop(part);
    let got = rows(&dst, "SELECT k, id FROM t ORDER BY k").await;
    assert_eq!(got.len(), 3, "{got:?}");
    p.close().await;
}
