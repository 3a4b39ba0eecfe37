//! The one per-backend layer: every SQL statement of the store is written once, with `?`
//! placeholders, and run on SQLite or PostgreSQL through the small types here.
//!
//! - [`Dialect`] knows the two differences the statements care about: placeholders (`?` on
//!   SQLite, `$1…` on PostgreSQL, rewritten by [`Dialect::sql`]) and row locks
//!   ([`Dialect::for_update`]: SQLite's `BEGIN IMMEDIATE` already holds the database lock).
//! - [`Stmt`] is a statement with backend-neutral [`Arg`]uments, run on anything that is [`Db`]:
//!   a pooled connection ([`Conn`]) or a write transaction ([`WriteTxn`]).
//! - [`DbRow`] reads a column of either backend's row with one `try_get`.
//!
//! Columns are only ever TEXT or 64-bit integers (timestamps are RFC 3339 text), so the row
//! codecs of the store are shared unchanged.

use futures_util::TryStreamExt;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnection, PgRow};
use sqlx::sqlite::{SqliteConnection, SqliteRow};
use sqlx::{AssertSqlSafe, Postgres, Row, Sqlite};

/// Which SQL the connection speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// `sql` (written with `?` placeholders) in this dialect's placeholder style. A `?` inside a
    /// quoted literal or identifier is left alone.
    pub(crate) fn sql(self, sql: &str) -> String {
        if self == Dialect::Sqlite {
            return sql.to_owned();
        }
        let mut out = String::with_capacity(sql.len() + 16);
        let mut n = 0;
        let mut quote: Option<char> = None;
        for c in sql.chars() {
            match (quote, c) {
                (None, '\'' | '"') => quote = Some(c),
                (Some(q), c) if c == q => quote = None,
                (None, '?') => {
                    n += 1;
                    out.push('$');
                    out.push_str(&n.to_string());
                    continue;
                }
                _ => {}
            }
            out.push(c);
        }
        out
    }

    /// The suffix that locks the rows a `SELECT` in a write transaction reads, so a
    /// read-then-update cannot interleave with another writer.
    pub(crate) fn for_update(self) -> &'static str {
        match self {
            Dialect::Sqlite => "",
            Dialect::Postgres => " FOR UPDATE",
        }
    }
}

/// A bound parameter, independent of the backend.
#[derive(Clone, Debug)]
pub(crate) enum Arg {
    Int(Option<i64>),
    Float(f64),
    Text(Option<String>),
    Blob(Vec<u8>),
    Bool(bool),
}

impl From<i64> for Arg {
    fn from(v: i64) -> Arg {
        Arg::Int(Some(v))
    }
}
impl From<bool> for Arg {
    fn from(v: bool) -> Arg {
        Arg::Bool(v)
    }
}
impl From<&str> for Arg {
    fn from(v: &str) -> Arg {
        Arg::Text(Some(v.to_owned()))
    }
}
impl From<String> for Arg {
    fn from(v: String) -> Arg {
        Arg::Text(Some(v))
    }
}
impl From<&String> for Arg {
    fn from(v: &String) -> Arg {
        Arg::Text(Some(v.clone()))
    }
}
impl From<Option<&str>> for Arg {
    fn from(v: Option<&str>) -> Arg {
        Arg::Text(v.map(str::to_owned))
    }
}
impl From<&backfill_core::Value> for Arg {
    fn from(v: &backfill_core::Value) -> Arg {
        use backfill_core::Value;
        match v {
            Value::Null => Arg::Int(None),
            Value::Int(i) => Arg::Int(Some(*i)),
            Value::Float(f) => Arg::Float(*f),
            Value::Text(s) => Arg::Text(Some(s.clone())),
            Value::Blob(b) => Arg::Blob(b.clone()),
            Value::Bool(b) => Arg::Int(Some(i64::from(*b))),
            // Checkpoints hold key values: everything else is stored as its portable text.
            other => Arg::Text(other.as_portable_text()),
        }
    }
}

/// A borrowed connection of either backend.
pub(crate) enum Exec<'c> {
    Sqlite(&'c mut SqliteConnection),
    Postgres(&'c mut PgConnection),
}

/// Anything a [`Stmt`] can run on.
pub(crate) trait Db {
    fn exec(&mut self) -> Exec<'_>;

    /// Text to send before and after the next statement's own (SQLite only): a
    /// [`WriteTxn`]'s `BEGIN IMMEDIATE` and `COMMIT`.
    fn wrap(&mut self) -> (&'static str, &'static str) {
        ("", "")
    }

    /// The statement [`Db::wrap`] wrapped succeeded.
    fn ran(&mut self) {}
}

/// A connection taken from the store's pool, for reads and single-statement writes.
pub(crate) enum Conn {
    Sqlite(PoolConnection<Sqlite>),
    Postgres(PoolConnection<Postgres>),
}

impl Db for Conn {
    fn exec(&mut self) -> Exec<'_> {
        match self {
            Conn::Sqlite(c) => Exec::Sqlite(c),
            Conn::Postgres(c) => Exec::Postgres(c),
        }
    }
}

/// A write transaction: on SQLite `BEGIN IMMEDIATE` plus this process's write gate, on
/// PostgreSQL a transaction holding the store's advisory lock (see `Store::begin_write`). It
/// rolls back when dropped uncommitted.
///
/// On SQLite the transaction's own statements travel with its first and last statements: a
/// statement is a round trip to the connection's worker thread (two thread hand-offs), and
/// the hottest transactions (an empty partition's, an attempt's start) are two statements,
/// so sending `BEGIN IMMEDIATE` and `COMMIT` on their own doubled their round trips, and the
/// wall time of a run of many small partitions with them (bench/run, overhead per
/// partition). `BEGIN IMMEDIATE` is sent before the first statement, in its text; `COMMIT`
/// after the statement that follows [`WriteTxn::commit_with_next`], or by
/// [`WriteTxn::commit`].
pub(crate) struct WriteTxn {
    inner: TxnInner,
    /// The audit chain's last event `(seq, hash)` as this transaction knows it (`(0, GENESIS)`
    /// for an empty chain): read with the fence check when the transaction began, or the event
    /// it appended last. Writers are serialised for the whole transaction, so it is still the
    /// chain's last event when the next event is appended, which then needs no query to find
    /// it. `None`: not read yet.
    pub(crate) last_audit: Option<(i64, String)>,
}

enum TxnInner {
    Sqlite(SqliteTxn),
    Postgres(sqlx::Transaction<'static, Postgres>),
}

/// This process's SQLite write gate, and behind it the connection that wrote last
/// (`Store::write_gate`).
pub(crate) type WriteGate = std::sync::Arc<tokio::sync::Mutex<Option<PoolConnection<Sqlite>>>>;

/// A SQLite transaction whose `BEGIN IMMEDIATE` and `COMMIT` travel inside its statements.
struct SqliteTxn {
    /// `None` only once dropped.
    conn: Option<PoolConnection<Sqlite>>,
    /// Held until the transaction ends (after its rollback, when dropped uncommitted).
    gate: Option<tokio::sync::OwnedMutexGuard<Option<PoolConnection<Sqlite>>>>,
    /// The connection waits behind the gate for the next write when the transaction ends
    /// (instead of going back to the pool).
    keep: bool,
    state: SqliteTxnState,
    /// The next statement ends with `COMMIT` ([`WriteTxn::commit_with_next`]).
    commit_next: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum SqliteTxnState {
    /// Nothing sent yet: the next statement begins the transaction.
    NotBegun,
    /// `BEGIN IMMEDIATE` was sent (it may have failed: then the rollback is harmless).
    Open,
    /// Committed: the connection is out of any transaction.
    Committed,
}

const SQLITE_BEGIN: &str = "BEGIN IMMEDIATE; ";
const SQLITE_COMMIT: &str = "; COMMIT";

impl WriteTxn {
    /// A SQLite transaction on `conn`, holding this process's write gate; `BEGIN IMMEDIATE`
    /// goes with its first statement.
    /// With `keep`, `conn` waits behind the gate for the next write once the transaction
    /// ends.
    pub(crate) fn sqlite(
        conn: PoolConnection<Sqlite>,
        gate: tokio::sync::OwnedMutexGuard<Option<PoolConnection<Sqlite>>>,
        keep: bool,
    ) -> WriteTxn {
        WriteTxn {
            inner: TxnInner::Sqlite(SqliteTxn {
                conn: Some(conn),
                gate: Some(gate),
                keep,
                state: SqliteTxnState::NotBegun,
                commit_next: false,
            }),
            last_audit: None,
        }
    }

    /// A PostgreSQL transaction holding the store's advisory lock.
    pub(crate) fn postgres(tx: sqlx::Transaction<'static, Postgres>) -> WriteTxn {
        WriteTxn {
            inner: TxnInner::Postgres(tx),
            last_audit: None,
        }
    }

    /// Asks that the next statement commit the transaction when it succeeds (on SQLite, in
    /// the same round trip; on PostgreSQL [`WriteTxn::commit`] does it). Call
    /// [`WriteTxn::commit`] after it all the same: it then has nothing left to send.
    pub(crate) fn commit_with_next(&mut self) {
        if let TxnInner::Sqlite(tx) = &mut self.inner {
            tx.commit_next = true;
        }
    }

    /// Commits (and on SQLite then releases the write gate).
    pub(crate) async fn commit(self) -> Result<(), sqlx::Error> {
        match self.inner {
            TxnInner::Sqlite(mut tx) => {
                if tx.state == SqliteTxnState::Open {
                    let conn = tx.conn.as_deref_mut().expect("a live transaction");
                    sqlx::raw_sql(AssertSqlSafe("COMMIT")).execute(conn).await?;
                }
                // Nothing sent (nothing to commit), or committed by its last statement.
                tx.state = SqliteTxnState::Committed;
                Ok(())
            }
            TxnInner::Postgres(tx) => tx.commit().await,
        }
    }

    /// The connection with the transaction begun, for a statement not run as a [`Stmt`]
    /// (a migration's script).
    pub(crate) async fn begun(&mut self) -> Result<Exec<'_>, sqlx::Error> {
        if let TxnInner::Sqlite(tx) = &mut self.inner
            && tx.state == SqliteTxnState::NotBegun
        {
            tx.state = SqliteTxnState::Open;
            let conn = tx.conn.as_deref_mut().expect("a live transaction");
            sqlx::raw_sql(AssertSqlSafe("BEGIN IMMEDIATE"))
                .execute(conn)
                .await?;
        }
        Ok(self.exec())
    }

    pub(crate) fn dialect(&self) -> Dialect {
        match self.inner {
            TxnInner::Sqlite(_) => Dialect::Sqlite,
            TxnInner::Postgres(_) => Dialect::Postgres,
        }
    }
}

impl Drop for SqliteTxn {
    /// Ended: the connection waits behind the gate ([`SqliteTxn::keep`]) or goes back to the
    /// pool. Uncommitted: rolls back first, holding the write gate until then (a task: drop
    /// cannot wait). A connection whose rollback fails is closed, which rolls back too,
    /// instead of being used again inside a transaction.
    fn drop(&mut self) {
        let (Some(mut conn), Some(mut gate)) = (self.conn.take(), self.gate.take()) else {
            return;
        };
        let keep = self.keep;
        if self.state != SqliteTxnState::Open {
            if keep {
                *gate = Some(conn);
            }
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            conn.close_on_drop();
            return;
        };
        runtime.spawn(async move {
            let rolled_back = sqlx::raw_sql(AssertSqlSafe("ROLLBACK"))
                .execute(&mut *conn)
                .await
                .is_ok();
            if !rolled_back {
                conn.close_on_drop();
            } else if keep {
                *gate = Some(conn);
            }
        });
    }
}

impl Db for WriteTxn {
    fn exec(&mut self) -> Exec<'_> {
        match &mut self.inner {
            TxnInner::Sqlite(tx) => {
                Exec::Sqlite(tx.conn.as_deref_mut().expect("a live transaction"))
            }
            TxnInner::Postgres(tx) => Exec::Postgres(tx),
        }
    }

    fn wrap(&mut self) -> (&'static str, &'static str) {
        let TxnInner::Sqlite(tx) = &mut self.inner else {
            return ("", "");
        };
        let begin = match tx.state {
            SqliteTxnState::NotBegun => {
                tx.state = SqliteTxnState::Open;
                SQLITE_BEGIN
            }
            SqliteTxnState::Open | SqliteTxnState::Committed => "",
        };
        let commit = if tx.commit_next { SQLITE_COMMIT } else { "" };
        (begin, commit)
    }

    fn ran(&mut self) {
        if let TxnInner::Sqlite(tx) = &mut self.inner
            && std::mem::take(&mut tx.commit_next)
        {
            tx.state = SqliteTxnState::Committed;
        }
    }
}

/// A row of either backend.
pub(crate) enum DbRow {
    Sqlite(SqliteRow),
    Postgres(PgRow),
}

impl DbRow {
    /// Like [`sqlx::Row::try_get`], for a type both backends decode.
    pub(crate) fn try_get<'r, T, I>(&'r self, index: I) -> Result<T, sqlx::Error>
    where
        T: sqlx::Decode<'r, Sqlite>
            + sqlx::Type<Sqlite>
            + sqlx::Decode<'r, Postgres>
            + sqlx::Type<Postgres>,
        I: sqlx::ColumnIndex<SqliteRow> + sqlx::ColumnIndex<PgRow>,
    {
        match self {
            DbRow::Sqlite(row) => row.try_get(index),
            DbRow::Postgres(row) => row.try_get(index),
        }
    }
}

/// One SQL statement (with `?` placeholders) and its arguments.
#[must_use]
pub(crate) struct Stmt {
    sql: String,
    args: Vec<Arg>,
}

/// Starts a statement; bind its parameters in placeholder order.
pub(crate) fn stmt(sql: impl Into<String>) -> Stmt {
    Stmt {
        sql: sql.into(),
        args: Vec::new(),
    }
}

/// Binds every argument to a `sqlx` query of one backend.
macro_rules! bind_all {
    ($db:ty, $sql:expr, $args:expr) => {{
        let mut query = sqlx::query::<$db>(AssertSqlSafe($sql));
        for arg in $args {
            query = match arg {
                Arg::Int(v) => query.bind(v),
                Arg::Float(v) => query.bind(v),
                Arg::Text(v) => query.bind(v),
                Arg::Blob(v) => query.bind(v),
                Arg::Bool(v) => query.bind(v),
            };
        }
        query
    }};
}

/// Runs `sql`, wrapped in a transaction's `before` and `after` ([`Db::wrap`]), and returns
/// the rows its own statements changed. Not the sum over every statement: SQLite reports
/// for `BEGIN` and `COMMIT` the changes of the last `INSERT`, `UPDATE` or `DELETE` before
/// them, so theirs are left out.
async fn sqlite_affected(
    conn: &mut SqliteConnection,
    sql: String,
    args: Vec<Arg>,
    before: &str,
    after: &str,
) -> Result<u64, sqlx::Error> {
    #[allow(deprecated)] // several statements in one: supported by the SQLite driver only
    let results: Vec<u64> = bind_all!(Sqlite, sql, args)
        .fetch_many(conn)
        .try_filter_map(|item| async move { Ok(item.left().map(|done| done.rows_affected())) })
        .try_collect()
        .await?;
    let first = usize::from(!before.is_empty());
    let last = results.len() - usize::from(!after.is_empty());
    Ok(results.get(first..last).unwrap_or_default().iter().sum())
}

/// `sql` between a transaction's `before` and `after` ([`Db::wrap`]).
fn wrapped(sql: String, before: &str, after: &str) -> String {
    if before.is_empty() && after.is_empty() {
        sql
    } else {
        format!("{before}{sql}{after}")
    }
}

impl Stmt {
    pub(crate) fn bind(mut self, arg: impl Into<Arg>) -> Stmt {
        self.args.push(arg.into());
        self
    }

    /// Runs it and returns the number of rows it affected.
    pub(crate) async fn execute(self, db: &mut impl Db) -> Result<u64, sqlx::Error> {
        let Stmt { sql, args } = self;
        let (before, after) = db.wrap();
        let affected = match db.exec() {
            Exec::Sqlite(conn) if !before.is_empty() || !after.is_empty() => {
                sqlite_affected(conn, wrapped(sql, before, after), args, before, after).await?
            }
            Exec::Sqlite(conn) => bind_all!(Sqlite, sql, args)
                .execute(conn)
                .await?
                .rows_affected(),
            Exec::Postgres(conn) => bind_all!(Postgres, Dialect::Postgres.sql(&sql), args)
                .execute(conn)
                .await?
                .rows_affected(),
        };
        db.ran();
        Ok(affected)
    }

    pub(crate) async fn fetch_all(self, db: &mut impl Db) -> Result<Vec<DbRow>, sqlx::Error> {
        let Stmt { sql, args } = self;
        let (before, after) = db.wrap();
        let rows = match db.exec() {
            Exec::Sqlite(conn) => bind_all!(Sqlite, wrapped(sql, before, after), args)
                .fetch_all(conn)
                .await?
                .into_iter()
                .map(DbRow::Sqlite)
                .collect(),
            Exec::Postgres(conn) => bind_all!(Postgres, Dialect::Postgres.sql(&sql), args)
                .fetch_all(conn)
                .await?
                .into_iter()
                .map(DbRow::Postgres)
                .collect(),
        };
        db.ran();
        Ok(rows)
    }

    pub(crate) async fn fetch_optional(
        self,
        db: &mut impl Db,
    ) -> Result<Option<DbRow>, sqlx::Error> {
        let Stmt { sql, args } = self;
        let (before, after) = db.wrap();
        let row = match db.exec() {
            // A `COMMIT` after it must run: every statement to its end, not to the first row.
            Exec::Sqlite(conn) if !after.is_empty() => {
                bind_all!(Sqlite, wrapped(sql, before, after), args)
                    .fetch_all(conn)
                    .await?
                    .into_iter()
                    .next()
                    .map(DbRow::Sqlite)
            }
            Exec::Sqlite(conn) => bind_all!(Sqlite, wrapped(sql, before, ""), args)
                .fetch_optional(conn)
                .await?
                .map(DbRow::Sqlite),
            Exec::Postgres(conn) => bind_all!(Postgres, Dialect::Postgres.sql(&sql), args)
                .fetch_optional(conn)
                .await?
                .map(DbRow::Postgres),
        };
        db.ran();
        Ok(row)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_outside_quotes() {
        let sql = "UPDATE t SET a = ?, b = '?', \"c?\" = ? WHERE d = ?";
        assert_eq!(Dialect::Sqlite.sql(sql), sql);
        assert_eq!(
            Dialect::Postgres.sql(sql),
            "UPDATE t SET a = $1, b = '?', \"c?\" = $2 WHERE d = $3"
        );
        assert_eq!(Dialect::Postgres.sql("it''s ? x"), "it''s $1 x");
    }

    /// A store whose one pooled connection every transaction of the test shares.
    async fn memory_store() -> crate::Store {
        let store = crate::Store::open("sqlite::memory:").await.unwrap();
        stmt("CREATE TABLE t (id INTEGER PRIMARY KEY, x INTEGER NOT NULL)")
            .execute(&mut store.conn().await.unwrap())
            .await
            .unwrap();
        store
    }

    async fn rows(store: &crate::Store) -> Vec<(i64, i64)> {
        stmt("SELECT id, x FROM t ORDER BY id")
            .fetch_all(&mut store.conn().await.unwrap())
            .await
            .unwrap()
            .iter()
            .map(|r| (r.try_get(0).unwrap(), r.try_get(1).unwrap()))
            .collect()
    }

    #[tokio::test]
    async fn a_sqlite_write_transaction_begins_and_commits_inside_its_statements() {
        let store = memory_store().await;
        let mut tx = store.begin_write().await.unwrap();
        let inserted = stmt("INSERT INTO t VALUES (1, 1), (2, 1), (3, 1)")
            .execute(&mut tx)
            .await
            .unwrap();
        assert_eq!(inserted, 3);
        tx.commit_with_next();
        // SQLite reports for `BEGIN` and `COMMIT` the changes of the last write before them
        // (3 here): they must not be counted as this statement's.
        let updated = stmt("UPDATE t SET x = 2 WHERE id = 2")
            .execute(&mut tx)
            .await
            .unwrap();
        assert_eq!(updated, 1);
        tx.commit().await.unwrap();
        assert_eq!(rows(&store).await, [(1, 1), (2, 2), (3, 1)]);

        // The next transaction on the same connection: its `BEGIN` follows an update of 1 row.
        let mut tx = store.begin_write().await.unwrap();
        let none = stmt("UPDATE t SET x = 9 WHERE id = 99")
            .execute(&mut tx)
            .await
            .unwrap();
        assert_eq!(none, 0);
        tx.commit_with_next();
        let row = stmt("UPDATE t SET x = 3 WHERE id = 3 RETURNING x")
            .fetch_optional(&mut tx)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.try_get::<i64, _>(0).unwrap(), 3);
        tx.commit().await.unwrap();
        assert_eq!(rows(&store).await, [(1, 1), (2, 2), (3, 3)]);

        // Committed by nothing: nothing was sent.
        store.begin_write().await.unwrap().commit().await.unwrap();
    }

    #[tokio::test]
    async fn a_file_store_keeps_its_writer_and_still_closes() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("state.db").display());
        let store = crate::Store::open(&url).await.unwrap();
        let mut tx = store.begin_write().await.unwrap();
        stmt("CREATE TABLE t (id INTEGER PRIMARY KEY)")
            .execute(&mut tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        let written = store
            .write_one(stmt("INSERT INTO t VALUES (1)"))
            .await
            .unwrap();
        assert_eq!(written, 1);
        assert!(
            store.write_gate.lock().await.is_some(),
            "the connection that wrote waits behind the gate"
        );
        // The pool waits for every connection it handed out: the writer goes back first.
        tokio::time::timeout(std::time::Duration::from_secs(10), store.close())
            .await
            .expect("closing a store that kept its writer");
    }

    #[tokio::test]
    async fn a_sqlite_write_transaction_dropped_uncommitted_rolls_back() {
        let store = memory_store().await;
        let mut tx = store.begin_write().await.unwrap();
        stmt("INSERT INTO t VALUES (1, 1)")
            .execute(&mut tx)
            .await
            .unwrap();
        drop(tx);
        // The rollback holds the write gate and the connection until it is done.
        let mut tx = store.begin_write().await.unwrap();
        stmt("INSERT INTO t VALUES (2, 2)")
            .execute(&mut tx)
            .await
            .unwrap();
        // A statement that fails ends the transaction the same way.
        tx.commit_with_next();
        let failed = stmt("INSERT INTO t VALUES (2, 3)").execute(&mut tx).await;
        assert!(failed.is_err(), "a duplicate key must fail");
        drop(tx);
        assert_eq!(rows(&store).await, []);
        // The connection is out of any transaction: a new one begins and commits.
        let mut tx = store.begin_write().await.unwrap();
        stmt("INSERT INTO t VALUES (4, 4)")
            .execute(&mut tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        assert_eq!(rows(&store).await, [(4, 4)]);
    }
}
