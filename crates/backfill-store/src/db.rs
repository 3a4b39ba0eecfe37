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
    Sqlite {
        tx: sqlx::Transaction<'static, Sqlite>,
        _gate: tokio::sync::OwnedMutexGuard<()>,
    },
    Postgres(sqlx::Transaction<'static, Postgres>),
}

impl WriteTxn {
    /// A SQLite transaction begun with `BEGIN IMMEDIATE`, holding this process's write gate.
    pub(crate) fn sqlite(
        tx: sqlx::Transaction<'static, Sqlite>,
        gate: tokio::sync::OwnedMutexGuard<()>,
    ) -> WriteTxn {
        WriteTxn {
            inner: TxnInner::Sqlite { tx, _gate: gate },
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

    /// Commits (and on SQLite then releases the write gate).
    pub(crate) async fn commit(self) -> Result<(), sqlx::Error> {
        match self.inner {
            TxnInner::Sqlite { tx, .. } => tx.commit().await,
            TxnInner::Postgres(tx) => tx.commit().await,
        }
    }

    pub(crate) fn dialect(&self) -> Dialect {
        match self.inner {
            TxnInner::Sqlite { .. } => Dialect::Sqlite,
            TxnInner::Postgres(_) => Dialect::Postgres,
        }
    }
}

impl Db for WriteTxn {
    fn exec(&mut self) -> Exec<'_> {
        match &mut self.inner {
            TxnInner::Sqlite { tx, .. } => Exec::Sqlite(tx),
            TxnInner::Postgres(tx) => Exec::Postgres(tx),
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

impl Stmt {
    pub(crate) fn bind(mut self, arg: impl Into<Arg>) -> Stmt {
        self.args.push(arg.into());
        self
    }

    /// Runs it and returns the number of rows it affected.
    pub(crate) async fn execute(self, db: &mut impl Db) -> Result<u64, sqlx::Error> {
        let Stmt { sql, args } = self;
        Ok(match db.exec() {
            Exec::Sqlite(conn) => bind_all!(Sqlite, sql, args)
                .execute(conn)
                .await?
                .rows_affected(),
            Exec::Postgres(conn) => bind_all!(Postgres, Dialect::Postgres.sql(&sql), args)
                .execute(conn)
                .await?
                .rows_affected(),
        })
    }

    pub(crate) async fn fetch_all(self, db: &mut impl Db) -> Result<Vec<DbRow>, sqlx::Error> {
        let Stmt { sql, args } = self;
        Ok(match db.exec() {
            Exec::Sqlite(conn) => bind_all!(Sqlite, sql, args)
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
        })
    }

    pub(crate) async fn fetch_optional(
        self,
        db: &mut impl Db,
    ) -> Result<Option<DbRow>, sqlx::Error> {
        let Stmt { sql, args } = self;
        Ok(match db.exec() {
            Exec::Sqlite(conn) => bind_all!(Sqlite, sql, args)
                .fetch_optional(conn)
                .await?
                .map(DbRow::Sqlite),
            Exec::Postgres(conn) => bind_all!(Postgres, Dialect::Postgres.sql(&sql), args)
                .fetch_optional(conn)
                .await?
                .map(DbRow::Postgres),
        })
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
}
