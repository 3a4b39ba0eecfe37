//! Writing batches into a SQLite table: upsert, replace and sql modes.
//!
//! Every write is one `BEGIN IMMEDIATE` transaction (the write lock is taken up front, so a
//! batch never fails half-way on a lock upgrade), made of multi-row statements of a fixed
//! size so sqlx's statement cache prepares each shape once. Counts come from the database:
//! the upsert first counts which keys of the batch exist, then `changes()` tells how many rows
//! the upsert actually wrote; identical rows, and with `target.guard` rows whose target guard
//! is newer than the incoming one, are filtered by the `DO UPDATE ... WHERE` clause and never
//! written.

use std::fmt;
use std::sync::Arc;

use backfill_core::params::Placeholder;
use backfill_core::plan::Window;
use backfill_core::retry::ErrorClass;
use backfill_core::spec::{TargetSpec, WriteMode};
use backfill_core::timefmt::TimeFormat;
use backfill_core::value::{Batch, RowCounts, Value};
use sqlx::sqlite::{Sqlite, SqliteConnection, SqlitePool};
use sqlx::{AssertSqlSafe, Row, Transaction};

use super::run_tags::RunTags;
use super::{Role, arguments, connect, sql, sql_error};
use crate::shared::{
    EXTRA_CONTEXT, Table, TargetSettings, batch_columns, batch_guard, check_existing, check_extra,
    check_target, is_key, no_unique_key, replace_column, require_table, sql_statement,
    upsert_counts,
};
use crate::undo::{self, Conn, Dialect, SqliteReplaceLog, UndoBatch, UndoLog};
use crate::window::{bounds, named_values};
use crate::{ConnectorError, Extra, ReplaceInner, ReplaceTxn, Savepoint, Sink};

/// `(schema, table)` for the `pragma_*` functions: `main` when the name has no schema part.
fn parts(table: &Table) -> (&str, &str) {
    let (schema, name) = table.parts();
    (schema.unwrap_or("main"), name)
}

/// A SQLite sink: one table of one database file, written in the spec's mode.
#[derive(Debug)]
pub struct SqliteSink {
    pool: SqlitePool,
    /// `None` only in `sql` mode.
    table: Option<Table>,
    /// Key columns (validated); empty only in `sql` mode.
    key: Vec<String>,
    /// Upsert guard column (validated): a target row whose guard is greater than the incoming
    /// row's is never overwritten.
    guard: Option<String>,
    mode: WriteMode,
    time_format: TimeFormat,
    /// `sql` mode: the statement with `?N` placeholders and the name bound at each.
    statement: Option<(Arc<str>, Vec<String>)>,
    /// The table's columns with numeric affinity, read from the catalog once.
    numeric: tokio::sync::OnceCell<Arc<Vec<(String, Affinity)>>>,
    /// The undo log, built on the first write that keeps one.
    undo_log: tokio::sync::OnceCell<Arc<UndoLog>>,
    /// The short tags the undo log writes for runs, made with the log.
    run_tags: std::sync::OnceLock<Arc<RunTags>>,
}

/// A column's type affinity, from its declared type by SQLite's rules
/// (<https://www.sqlite.org/datatype3.html#determination_of_column_affinity>): the storage
/// class SQLite converts text to on insert.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Affinity {
    Integer,
    Text,
    Blob,
    Real,
    Numeric,
}

impl Affinity {
    fn of(declared: &str) -> Affinity {
        let ty = declared.to_ascii_uppercase();
        if ty.contains("INT") {
            Affinity::Integer
        } else if ["CHAR", "CLOB", "TEXT"].iter().any(|t| ty.contains(t)) {
            Affinity::Text
        } else if ty.contains("BLOB") || ty.trim().is_empty() {
            Affinity::Blob
        } else if ["REAL", "FLOA", "DOUB"].iter().any(|t| ty.contains(t)) {
            Affinity::Real
        } else {
            Affinity::Numeric
        }
    }

    /// Whether SQLite stores the plain decimal `text` in a column of this affinity with its
    /// value intact. INTEGER and NUMERIC keep integers that fit 64 bits exactly; every numeric
    /// affinity turns other numbers into a double, which keeps 15 significant digits.
    fn keeps_decimal(self, text: &str) -> bool {
        let unsigned = text.trim_start_matches(['-', '+']);
        let (int_part, frac_part) = unsigned.split_once('.').unwrap_or((unsigned, ""));
        let frac = frac_part.trim_end_matches('0');
        match self {
            Affinity::Text | Affinity::Blob => true,
            Affinity::Integer | Affinity::Numeric if frac.is_empty() => {
                text.split('.')
                    .next()
                    .is_some_and(|i| i.parse::<i64>().is_ok())
                    || significant_digits(int_part, "") <= 15
            }
            Affinity::Integer | Affinity::Numeric | Affinity::Real => {
                significant_digits(int_part, frac) <= 15
            }
        }
    }
}

/// Significant digits of the number `int_part.frac`: without leading zeros, and (when `frac`
/// is empty) without trailing zeros of the integer part.
fn significant_digits(int_part: &str, frac: &str) -> usize {
    let digits = format!("{int_part}{frac}");
    let digits = digits.trim_start_matches('0');
    if frac.is_empty() {
        digits.trim_end_matches('0').len()
    } else {
        digits.len()
    }
}

/// Refuses a batch holding a decimal that a numeric-affinity column of the target would
/// round (SQLite converts the text to a 15-digit double): a data error naming the column,
/// so the engine quarantines exactly the rows concerned instead of storing rounded numbers.
fn check_decimals(
    batch: &Batch,
    numeric: &[(String, Affinity)],
    table: &Table,
) -> Result<(), ConnectorError> {
    for (i, column) in batch.columns.iter().enumerate() {
        let Some((_, affinity)) = numeric.iter().find(|(c, _)| c.eq_ignore_ascii_case(column))
        else {
            continue;
        };
        for row in &batch.rows {
            if let Some(Value::Decimal(d)) = row.get(i)
                && !affinity.keeps_decimal(d)
            {
                // Class `Data`: the target refuses this row, as a constraint would.
                return Err(ConnectorError::Sql {
                    context: format!("write into {}", table.quoted),
                    message: format!(
                        "column \"{column}\" of {} has {affinity:?} affinity: SQLite would round \
                         the decimal {d} to 15 significant digits; declare the column TEXT to \
                         keep every digit",
                        table.describe()
                    ),
                    class: ErrorClass::Data,
                });
            }
        }
    }
    Ok(())
}

impl SqliteSink {
    /// Opens the file of `spec.url` (never creating it) in WAL mode with `synchronous = FULL`
    /// and validates the table, key and mode settings.
    pub async fn open(spec: &TargetSpec, pool_size: u32) -> Result<SqliteSink, ConnectorError> {
        let TargetSettings { table, statement } = check_target(
            spec,
            spec.guard.as_deref(),
            sql::quote,
            Placeholder::QuestionNumbered,
        )?;
        let pool = connect(&spec.url, pool_size, Role::Target).await?;
        Ok(SqliteSink {
            pool,
            table,
            key: spec.key.clone(),
            guard: spec.guard.clone(),
            mode: spec.mode.clone(),
            time_format: spec.time_format.clone(),
            statement,
            numeric: tokio::sync::OnceCell::new(),
            undo_log: tokio::sync::OnceCell::new(),
            run_tags: std::sync::OnceLock::new(),
        })
    }

    /// The table's columns whose affinity converts text to numbers, with that affinity.
    async fn numeric_columns(
        &self,
        table: &Table,
    ) -> Result<Arc<Vec<(String, Affinity)>>, ConnectorError> {
        self.numeric
            .get_or_try_init(|| async {
                let (schema, name) = parts(table);
                let rows: Vec<(String, String)> =
                    sqlx::query_as("SELECT name, type FROM pragma_table_info(?1, ?2) ORDER BY cid")
                        .bind(name)
                        .bind(schema)
                        .fetch_all(&self.pool)
                        .await
                        .map_err(|e| sql_error(table.describe(), &e))?;
                let numeric = rows
                    .into_iter()
                    .map(|(column, declared)| (column, Affinity::of(&declared)))
                    .filter(|(_, a)| !matches!(a, Affinity::Text | Affinity::Blob))
                    .collect();
                Ok(Arc::new(numeric))
            })
            .await
            .cloned()
    }

    fn table(&self) -> Result<&Table, ConnectorError> {
        require_table(self.table.as_ref(), &self.mode)
    }

    /// The undo log of the target, its table created on first use.
    pub(crate) async fn undo_log(&self) -> Result<Arc<UndoLog>, ConnectorError> {
        let table = self.table()?;
        self.undo_log
            .get_or_try_init(|| async {
                // The log names the table bare (`main.t` is `t`): a trigger body may not
                // qualify a table, and the undo table's index is created in its schema.
                let name = match parts(table) {
                    ("main", name) => name.to_owned(),
                    _ => table.name.clone(),
                };
                let mut log = undo::open_log!(
                    &self.pool,
                    Dialect::Sqlite,
                    crate::fingerprint::sqlite::catalog,
                    &name,
                    &self.key,
                    Sqlite
                );
                log.set_key_collations(self.key_collations(table).await?);
                let _ = self
                    .run_tags
                    .set(Arc::new(RunTags::new(self.pool.clone(), &name)));
                Ok(Arc::new(log))
            })
            .await
            .cloned()
    }

    /// The undo log's run tags ([`RunTags`]), the log created first when missing.
    pub(crate) async fn run_tags(&self) -> Result<Arc<RunTags>, ConnectorError> {
        self.undo_log().await?;
        self.run_tags
            .get()
            .cloned()
            .ok_or_else(|| ConnectorError::Data {
                message: "the undo log's run tags were not made with it".to_owned(),
            })
    }

    /// `undo` with its run id replaced by the run's tag in the log (see [`RunTags`]).
    async fn tagged(&self, undo: Option<&UndoBatch>) -> Result<Option<UndoBatch>, ConnectorError> {
        match undo {
            Some(b) => Ok(Some(self.run_tags().await?.batch(b).await?)),
            None => Ok(None),
        }
    }

    /// `upsert` with the undo log of `undo` written in the same transaction.
    pub async fn upsert_undo(
        &self,
        batch: &Batch,
        extra: Option<&Extra>,
        undo: Option<&UndoBatch>,
    ) -> Result<RowCounts, ConnectorError> {
        let tagged = self.tagged(undo).await?;
        let undo = tagged.as_ref();
        let log = match undo {
            Some(_) => Some(self.undo_log().await?),
            None => None,
        };
        let table = self.table()?;
        let context = format!("upsert into {}", table.quoted);
        let (columns, key_positions) = batch_columns(batch, &self.key, sql::quote)?;
        check_decimals(batch, &self.numeric_columns(table).await?, table)?;
        let key_quoted: Vec<String> = key_positions.iter().map(|&p| columns[p].clone()).collect();
        let guard = batch_guard(batch, self.guard.as_deref(), sql::quote)?;
        let width = columns.len();
        // Without `every_key`, the log is written by temporary triggers inside the write's
        // own statements, for the rows it inserts or changes only; with it, every key is
        // logged by statements around the write.
        let triggers = match (&log, undo) {
            (Some(log), Some(b)) if !b.every_key => Some(log.sqlite_triggers(b, true)),
            _ => None,
        };
        let statements = undo.filter(|_| triggers.is_none());
        let keys = undo::batch_keys(batch, &key_positions, statements.is_some());

        let mut tx = begin(&self.pool, &context).await?;
        if let Some(triggers) = &triggers {
            install(&mut tx, &triggers.create, &context).await?;
        }
        if let (Some(log), Some(b)) = (&log, statements) {
            let mut conn = Conn::Sqlite(&mut tx);
            for stmt in log.before_write(b, &keys) {
                conn.exec(&stmt, &context).await?;
            }
        }
        let existing = count_existing(
            &mut tx,
            &context,
            table,
            &key_quoted,
            &key_positions,
            &batch.rows,
        )
        .await?;
        let written = write_chunks(&mut tx, &context, &batch.rows, width, |n| {
            sql::upsert(&table.quoted, &columns, &key_positions, guard.as_deref(), n)
        })
        .await?;
        if let (Some(log), Some(b)) = (&log, statements) {
            let mut conn = Conn::Sqlite(&mut tx);
            for stmt in log.after_write(b, &keys) {
                conn.exec(&stmt, &context).await?;
            }
        }
        if let Some(triggers) = &triggers {
            install(&mut tx, &triggers.drop, &context).await?;
        }
        run_extra(&mut tx, extra).await?;
        tx.commit().await.map_err(|e| sql_error(&context, &e))?;

        let n = batch.rows.len() as u64;
        let inserted = n.saturating_sub(existing);
        let updated = written.saturating_sub(inserted);
        Ok(upsert_counts(n, inserted, updated))
    }

    /// `propagate_deletes` in `upsert`: deletes the rows of `window` (by `column`) whose key
    /// no batch of the run wrote, logging their before-images; returns the rows deleted.
    pub async fn delete_missing(
        &self,
        window: &Window,
        column: &str,
        undo: &UndoBatch,
    ) -> Result<u64, ConnectorError> {
        let log = self.undo_log().await?;
        let undo = &self.run_tags().await?.batch(undo).await?;
        let table = self.table()?;
        let context = format!("delete rows missing from the source in {}", table.quoted);
        let bounds = bounds(window, &self.time_format);
        let column = sql::quote(column);
        let predicate = format!("t.{column} >= ? AND t.{column} < ?");
        let mut tx = begin(&self.pool, &context).await?;
        let [copy, delete] = log.delete_missing(undo, &predicate, &bounds);
        let mut conn = Conn::Sqlite(&mut tx);
        conn.exec(&copy, &context).await?;
        let deleted = conn.exec(&delete, &context).await?;
        tx.commit().await.map_err(|e| sql_error(&context, &e))?;
        Ok(deleted)
    }

    /// `begin_replace` that logs, at its commit, the rows the window's rewrite changed
    /// ([`UndoLog::sqlite_replace`]), when `undo` is given.
    pub async fn begin_replace_undo(
        &self,
        window: &Window,
        undo: Option<&UndoBatch>,
    ) -> Result<ReplaceTxn, ConnectorError> {
        let tagged = self.tagged(undo).await?;
        let undo = tagged.as_ref();
        let log = match undo {
            Some(_) => Some(self.undo_log().await?),
            None => None,
        };
        let table = self.table()?;
        let window_column = replace_column(&self.mode)?;
        let context = format!("delete window {window} from {}", table.quoted);
        let bounds = bounds(window, &self.time_format);
        // Read before the transaction holds a pooled connection.
        let numeric = self.numeric_columns(table).await?;
        let column = sql::quote(window_column);
        let replace_log = match (&log, undo) {
            (Some(log), Some(b)) => {
                let predicate = format!("t.{column} >= ? AND t.{column} < ?");
                Some(log.sqlite_replace(b, &predicate, &bounds))
            }
            _ => None,
        };
        // `BEGIN IMMEDIATE`: the write lock is held before the window's rows are kept.
        let mut tx = begin(&self.pool, &context).await?;
        if let Some(r) = &replace_log {
            install(&mut tx, &r.prepare, &context).await?;
            Conn::Sqlite(&mut tx).exec(&r.keep, &context).await?;
        }
        let text = sql::delete_window(&table.quoted, &column);
        let done = sqlx::query_with(AssertSqlSafe(text), arguments(&bounds, 2)?)
            .execute(&mut *tx)
            .await
            .map_err(|e| sql_error(&context, &e))?;
        if let Some(r) = &replace_log {
            install(&mut tx, &r.after_delete, &context).await?;
        }
        Ok(ReplaceTxn {
            inner: ReplaceInner::Sqlite(SqliteReplace {
                tx,
                table: table.clone(),
                numeric,
                undo: replace_log,
            }),
            deleted: done.rows_affected(),
        })
    }

    /// The table's columns, in order, and its primary key columns; empty when it does not
    /// exist.
    async fn table_columns(
        &self,
        table: &Table,
    ) -> Result<(Vec<String>, Vec<String>), ConnectorError> {
        let (schema, name) = parts(table);
        let context = table.describe();
        let rows = sqlx::query("SELECT name, pk FROM pragma_table_info(?1, ?2) ORDER BY cid")
            .bind(name)
            .bind(schema)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| sql_error(&context, &e))?;
        let mut columns = Vec::with_capacity(rows.len());
        let mut pk: Vec<(i64, String)> = Vec::new();
        for row in rows {
            let column: String = row.try_get(0).map_err(|e| sql_error(&context, &e))?;
            let rank: i64 = row.try_get(1).map_err(|e| sql_error(&context, &e))?;
            if rank > 0 {
                pk.push((rank, column.clone()));
            }
            columns.push(column);
        }
        pk.sort();
        Ok((columns, pk.into_iter().map(|(_, c)| c).collect()))
    }

    /// The collations of the key columns, in key order, when they are the columns of a full
    /// (non-partial) UNIQUE index or of a rowid alias (`INTEGER PRIMARY KEY`, `BINARY`);
    /// `None` when no such index makes the key unique.
    async fn key_collations(&self, table: &Table) -> Result<Option<Vec<String>>, ConnectorError> {
        let (schema, name) = parts(table);
        let context = table.describe();
        let indexes: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM pragma_index_list(?1, ?2) WHERE \"unique\" = 1 AND partial = 0",
        )
        .bind(name)
        .bind(schema)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| sql_error(&context, &e))?;
        for index in indexes {
            let cols: Vec<(Option<String>, Option<String>)> = sqlx::query_as(
                "SELECT name, coll FROM pragma_index_xinfo(?1, ?2) WHERE key = 1 ORDER BY seqno",
            )
            .bind(&index)
            .bind(schema)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| sql_error(&context, &e))?;
            let names: Option<Vec<String>> = cols.iter().map(|(n, _)| n.clone()).collect();
            if names.is_some_and(|names| is_key(&names, &self.key)) {
                let collations = self.key.iter().map(|k| {
                    cols.iter()
                        .find(|(n, _)| n.as_deref().is_some_and(|n| n.eq_ignore_ascii_case(k)))
                        .and_then(|(_, c)| c.clone())
                        .unwrap_or_else(|| "BINARY".to_owned())
                });
                return Ok(Some(collations.collect()));
            }
        }
        // A rowid alias has no index of its own.
        let pk: Vec<(String, String)> =
            sqlx::query_as("SELECT name, type FROM pragma_table_info(?1, ?2) WHERE pk > 0")
                .bind(name)
                .bind(schema)
                .fetch_all(&self.pool)
                .await
                .map_err(|e| sql_error(&context, &e))?;
        Ok(match pk.as_slice() {
            [(column, ty)]
                if ty.eq_ignore_ascii_case("INTEGER")
                    && is_key(std::slice::from_ref(column), &self.key) =>
            {
                Some(vec!["BINARY".to_owned()])
            }
            _ => None,
        })
    }

    /// True when the key columns are the primary key or a full (non-partial) UNIQUE index.
    async fn key_is_unique(&self, table: &Table, pk: &[String]) -> Result<bool, ConnectorError> {
        Ok(is_key(pk, &self.key) || self.key_collations(table).await?.is_some())
    }
}

/// Runs `build(n)` over `rows` in chunks of a fixed size; returns the sum of rows affected. Full chunks share one SQL text, so it is prepared once.
async fn write_chunks(
    conn: &mut SqliteConnection,
    context: &str,
    rows: &[Vec<Value>],
    width: usize,
    build: impl Fn(usize) -> String,
) -> Result<u64, ConnectorError> {
    let per = sql::rows_per_stmt(width);
    let full: Option<Arc<str>> = (rows.len() >= per).then(|| build(per).into());
    let mut total = 0;
    for chunk in rows.chunks(per) {
        let text: Arc<str> = match &full {
            Some(full) if chunk.len() == per => Arc::clone(full),
            _ => build(chunk.len()).into(),
        };
        let args = arguments(chunk.iter().flatten(), chunk.len() * width)?;
        let done = sqlx::query_with(AssertSqlSafe(text), args)
            .execute(&mut *conn)
            .await
            .map_err(|e| sql_error(context, &e))?;
        total += done.rows_affected();
    }
    Ok(total)
}

/// Counts the rows of the batch whose key already exists in the target.
async fn count_existing(
    conn: &mut SqliteConnection,
    context: &str,
    table: &Table,
    key_quoted: &[String],
    key_positions: &[usize],
    rows: &[Vec<Value>],
) -> Result<u64, ConnectorError> {
    let per = sql::rows_per_stmt(key_positions.len());
    let full: Option<Arc<str>> =
        (rows.len() >= per).then(|| sql::count_existing(&table.quoted, key_quoted, per).into());
    let mut total = 0;
    for chunk in rows.chunks(per) {
        let text: Arc<str> = match &full {
            Some(full) if chunk.len() == per => Arc::clone(full),
            _ => sql::count_existing(&table.quoted, key_quoted, chunk.len()).into(),
        };
        let args = arguments(
            chunk
                .iter()
                .flat_map(|r| key_positions.iter().map(move |&p| &r[p])),
            chunk.len() * key_positions.len(),
        )?;
        let row = sqlx::query_with(AssertSqlSafe(text), args)
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| sql_error(context, &e))?;
        let n: i64 = row.try_get(0).map_err(|e| sql_error(context, &e))?;
        total += u64::try_from(n).unwrap_or(0);
    }
    Ok(total)
}

/// Runs the engine's extra statement; anything but exactly one affected row is a stale
/// attempt, and the caller's transaction is dropped (rolled back).
pub(super) async fn run_extra(
    conn: &mut SqliteConnection,
    extra: Option<&Extra>,
) -> Result<(), ConnectorError> {
    let Some(extra) = extra else {
        return Ok(());
    };
    let args = arguments(&extra.params, extra.params.len())?;
    let done = sqlx::query_with(AssertSqlSafe(extra.sql.as_str()), args)
        .execute(&mut *conn)
        .await
        .map_err(|e| sql_error(EXTRA_CONTEXT, &e))?;
    check_extra(done.rows_affected())
}

/// Starts a write transaction holding the write lock.
async fn begin(
    pool: &SqlitePool,
    context: &str,
) -> Result<Transaction<'static, Sqlite>, ConnectorError> {
    pool.begin_with("BEGIN IMMEDIATE")
        .await
        .map_err(|e| sql_error(context, &e))
}

impl Sink for SqliteSink {
    async fn check_columns(&self, columns: &[String]) -> Result<Vec<String>, ConnectorError> {
        let table = self.table()?;
        let (existing, pk) = self.table_columns(table).await?;
        let needed = self.key.iter().chain(&self.guard);
        check_existing(table, &existing, columns, needed, &self.mode)?;
        if self.mode == WriteMode::Upsert && !self.key_is_unique(table, &pk).await? {
            return Err(no_unique_key(table, &self.key));
        }
        Ok(existing)
    }

    async fn leads_an_index(&self, column: &str) -> Result<Option<bool>, ConnectorError> {
        let Some(table) = &self.table else {
            return Ok(None);
        };
        let (schema, name) = parts(table);
        // An index whose first column is the window column, or the INTEGER PRIMARY KEY
        // (the rowid itself).
        let leading: i64 = sqlx::query_scalar(
            "SELECT (SELECT COUNT(*) FROM pragma_index_list(?1, ?2) AS l \
                     JOIN pragma_index_info(l.name, ?2) AS i \
                     WHERE i.seqno = 0 AND i.name = ?3 COLLATE NOCASE) \
                  + (SELECT COUNT(*) FROM pragma_table_info(?1, ?2) \
                     WHERE pk = 1 AND upper(type) = 'INTEGER' AND name = ?3 COLLATE NOCASE \
                     AND (SELECT COUNT(*) FROM pragma_table_info(?1, ?2) WHERE pk > 0) = 1)",
        )
        .bind(name)
        .bind(schema)
        .bind(column)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| sql_error(table.describe(), &e))?;
        Ok(Some(leading > 0))
    }

    async fn upsert(
        &self,
        batch: &Batch,
        extra: Option<&Extra>,
    ) -> Result<RowCounts, ConnectorError> {
        self.upsert_undo(batch, extra, None).await
    }

    async fn begin_replace(&self, window: &Window) -> Result<ReplaceTxn, ConnectorError> {
        self.begin_replace_undo(window, None).await
    }

    async fn execute_sql(&self, window: &Window) -> Result<RowCounts, ConnectorError> {
        let (text, names) = sql_statement(self.statement.as_ref(), &self.mode)?;
        let values = named_values(names, window, &self.time_format);
        let done = sqlx::query_with(
            AssertSqlSafe(Arc::clone(text)),
            arguments(&values, values.len())?,
        )
        .execute(&self.pool)
        .await
        .map_err(|e| sql_error("target statement", &e))?;
        Ok(RowCounts {
            affected: done.rows_affected(),
            ..RowCounts::default()
        })
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}

/// Runs the undo log's trigger SQL (several statements, one round trip) in `tx`.
pub(crate) async fn install(
    tx: &mut sqlx::SqliteConnection,
    sql: &str,
    context: &str,
) -> Result<(), ConnectorError> {
    sqlx::raw_sql(AssertSqlSafe(sql.to_owned()))
        .execute(tx)
        .await
        .map(drop)
        .map_err(|e| sql_error(context, &e))
}

/// The SQLite side of a [`ReplaceTxn`]: an open `BEGIN IMMEDIATE` transaction in which the
/// window is already deleted. Dropped without commit, sqlx rolls it back.
pub struct SqliteReplace {
    tx: Transaction<'static, Sqlite>,
    table: Table,
    numeric: Arc<Vec<(String, Affinity)>>,
    /// The undo log's SQL (its trigger installed), when `target.undo` is on.
    undo: Option<SqliteReplaceLog>,
}

impl fmt::Debug for SqliteReplace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteReplace")
            .field("table", &self.table.name)
            .finish_non_exhaustive()
    }
}

impl SqliteReplace {
    /// Inserts `batch` in the transaction; returns the rows inserted.
    pub(crate) async fn insert(&mut self, batch: &Batch) -> Result<u64, ConnectorError> {
        let context = format!("insert into {}", self.table.quoted);
        let (columns, _) = batch_columns(batch, &[], sql::quote)?;
        check_decimals(batch, &self.numeric, &self.table)?;
        let table = &self.table.quoted;
        // The undo log's trigger logs each inserted row.
        write_chunks(&mut self.tx, &context, &batch.rows, columns.len(), |n| {
            sql::insert(table, &columns, n)
        })
        .await
    }

    /// Sets, rolls back to or releases the transaction's one savepoint.
    pub(crate) async fn savepoint(&mut self, step: Savepoint) -> Result<(), ConnectorError> {
        sqlx::raw_sql(step.sql())
            .execute(&mut *self.tx)
            .await
            .map(drop)
            .map_err(|e| sql_error("savepoint", &e))
    }

    /// Runs `extra`, then commits.
    pub(crate) async fn commit(mut self, extra: Option<&Extra>) -> Result<(), ConnectorError> {
        let context = format!("replace in {}", self.table.quoted);
        if let Some(r) = &self.undo {
            install(&mut self.tx, &r.commit, &context).await?;
        }
        run_extra(&mut self.tx, extra).await?;
        self.tx.commit().await.map_err(|e| sql_error(&context, &e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn affinity_follows_sqlites_rules() {
        for (declared, want) in [
            ("INTEGER", Affinity::Integer),
            ("BIGINT", Affinity::Integer),
            ("VARCHAR(10)", Affinity::Text),
            ("text", Affinity::Text),
            ("BLOB", Affinity::Blob),
            ("", Affinity::Blob),
            ("DOUBLE PRECISION", Affinity::Real),
            ("FLOAT", Affinity::Real),
            ("DECIMAL(38,10)", Affinity::Numeric),
            ("NUMERIC", Affinity::Numeric),
            ("DATE", Affinity::Numeric),
        ] {
            assert_eq!(Affinity::of(declared), want, "{declared}");
        }
    }

    #[test]
    fn decimals_beyond_15_significant_digits_do_not_fit_numeric_columns() {
        let numeric = Affinity::Numeric;
        for kept in [
            "0.1000000000",
            "-12.50",
            "123456789012345",
            "9223372036854775807",
            "100000000000000000000",
            "0.000000000000001",
        ] {
            assert!(numeric.keeps_decimal(kept), "{kept}");
        }
        for rounded in [
            "9999999999999999999999999999.9999999999",
            "1234567890123456.1",
            "99999999999999999999",
        ] {
            assert!(!numeric.keeps_decimal(rounded), "{rounded}");
        }
        // A double cannot hold every 64-bit integer.
        assert!(!Affinity::Real.keeps_decimal("9223372036854775807"));
        assert!(Affinity::Text.keeps_decimal("9999999999999999999999999999.9999999999"));
    }
}
