//! Writing batches into a MySQL table: upsert, replace and sql modes.
//!
//! Every write is one transaction of multi-row statements, each sized to stay under the
//! server's `max_allowed_packet` (read when the sink opens, rows measured per batch) and under
//! MySQL's 65,535 placeholders.
//!
//! Counts: the upsert first counts which keys of the batch exist (`existing`), then runs
//! `INSERT … ON DUPLICATE KEY UPDATE`. sqlx always connects with `CLIENT_FOUND_ROWS`, under
//! which MySQL reports 1 affected row per inserted row, 2 per changed row and 1 (not 0) per
//! row left as it was. So `affected = inserted + 2·updated + (existing − updated)
//! = batch + updated`, which gives `updated = affected − batch` exactly.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use backfill_core::params::Placeholder;
use backfill_core::plan::Window;
use backfill_core::spec::{TargetSpec, WriteMode};
use backfill_core::timefmt::TimeFormat;
use backfill_core::value::{Batch, RowCounts, Value};
use sqlx::mysql::{MySql, MySqlConnection, MySqlPool};
use sqlx::{AssertSqlSafe, Row, Transaction};

use super::{arguments, connect, sql, sql_error};
use crate::ident::position;
use crate::shared::{
    EXTRA_CONTEXT, Table, TargetSettings, batch_columns, batch_guard, check_existing, check_extra,
    check_target, is_key, no_unique_key, replace_column, require_table, sql_statement,
    upsert_counts,
};
use crate::undo::{self, Conn, Dialect, UndoBatch, UndoLog};
use crate::window::{bounds, named_values};
use crate::{ConnectorError, Extra, ReplaceInner, ReplaceTxn, Savepoint, Sink};

/// Most rows in one multi-row statement.
const MAX_ROWS_PER_STMT: usize = 1000;

/// A MySQL sink: one table, written in the spec's mode.
#[derive(Debug)]
pub struct MySqlSink {
    pool: MySqlPool,
    table: Option<Table>,
    key: Vec<String>,
    guard: Option<String>,
    mode: WriteMode,
    time_format: TimeFormat,
    /// `sql` mode: the statement with `?` placeholders and the name bound at each.
    statement: Option<(Arc<str>, Vec<String>)>,
    /// Bytes of bound values one statement may carry (half of `max_allowed_packet`).
    packet_budget: usize,
    /// The table's `DATETIME` and `TIMESTAMP` columns, read from the catalog once.
    temporal: tokio::sync::OnceCell<Arc<Vec<String>>>,
    /// The undo log, built on the first write that keeps one.
    undo_log: tokio::sync::OnceCell<Arc<UndoLog>>,
}

impl MySqlSink {
    /// Connects to `spec.url`, validates the table, key and mode settings and reads the
    /// server's `max_allowed_packet`.
    pub async fn open(spec: &TargetSpec, pool_size: u32) -> Result<MySqlSink, ConnectorError> {
        let guard = spec.guard.as_deref();
        let TargetSettings { table, statement } =
            check_target(spec, guard, sql::quote, Placeholder::Question)?;
        let pool = connect(&spec.url, pool_size).await?;
        let packet: i64 = sqlx::query_scalar("SELECT CAST(@@max_allowed_packet AS SIGNED)")
            .fetch_one(&pool)
            .await
            .map_err(|e| sql_error("reading max_allowed_packet", &e))?;
        let packet_budget = usize::try_from(packet / 2)
            .unwrap_or(1 << 20)
            .saturating_sub(4096)
            .max(1024);
        Ok(MySqlSink {
            pool,
            table,
            key: spec.key.clone(),
            guard: spec.guard.clone(),
            mode: spec.mode.clone(),
            time_format: spec.time_format.clone(),
            statement,
            packet_budget,
            temporal: tokio::sync::OnceCell::new(),
            undo_log: tokio::sync::OnceCell::new(),
        })
    }

    /// The table's `DATETIME` and `TIMESTAMP` columns (see [`instants_as_datetimes`]).
    async fn temporal_columns(&self, table: &Table) -> Result<Arc<Vec<String>>, ConnectorError> {
        self.temporal
            .get_or_try_init(|| async {
                let (columns, types, _) = self.describe_table(table).await?;
                let temporal = columns
                    .into_iter()
                    .zip(types)
                    .filter(|(_, ty)| {
                        ty.eq_ignore_ascii_case("datetime") || ty.eq_ignore_ascii_case("timestamp")
                    })
                    .map(|(c, _)| c)
                    .collect();
                Ok(Arc::new(temporal))
            })
            .await
            .cloned()
    }

    /// The undo log of the target, its table created on first use.
    async fn undo_log(&self) -> Result<Arc<UndoLog>, ConnectorError> {
        let table = self.table()?;
        self.undo_log
            .get_or_try_init(|| async {
                let mut log = undo::open_log!(
                    &self.pool,
                    Dialect::MySql,
                    crate::fingerprint::mysql::catalog,
                    &table.name,
                    &self.key,
                    MySql
                );
                log.set_log_unchanged(self.has_write_trigger(table).await?);
                Ok(Arc::new(log))
            })
            .await
            .cloned()
    }

    /// Whether the target has an `INSERT` or `UPDATE` trigger: either fires for a row an
    /// `INSERT … ON DUPLICATE KEY UPDATE` leaves as its values are, and may change it, so the
    /// undo log keeps every existing row's before-image and reads each digest from the
    /// target. (MariaDB 12 lists several events in one trigger's `EVENT_MANIPULATION`. MySQL 8
    /// lists only the triggers the user has the TRIGGER privilege on.)
    async fn has_write_trigger(&self, table: &Table) -> Result<bool, ConnectorError> {
        let (schema, name) = table.parts();
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM information_schema.TRIGGERS \
             WHERE EVENT_OBJECT_SCHEMA = COALESCE(?, DATABASE()) AND EVENT_OBJECT_TABLE = ? \
             AND (EVENT_MANIPULATION LIKE '%INSERT%' OR EVENT_MANIPULATION LIKE '%UPDATE%')",
        )
        .bind(schema)
        .bind(name)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| sql_error(table.describe(), &e))?;
        Ok(n > 0)
    }

    /// `upsert` with the undo log of `undo` written in the same transaction.
    pub async fn upsert_undo(
        &self,
        batch: &Batch,
        extra: Option<&Extra>,
        undo: Option<&UndoBatch>,
    ) -> Result<RowCounts, ConnectorError> {
        let log = match undo {
            Some(_) => Some(self.undo_log().await?),
            None => None,
        };
        let table = self.table()?;
        let context = format!("upsert into {}", table.quoted);
        let (columns, key_positions) = batch_columns(batch, &self.key, sql::quote)?;
        let temporal = self.temporal_columns(table).await?;
        let batch = &*instants_as_datetimes(batch, &temporal);
        let key_quoted: Vec<String> = key_positions.iter().map(|&p| columns[p].clone()).collect();
        let guard = batch_guard(batch, self.guard.as_deref(), sql::quote)?;
        let write = Upsert {
            context: &context,
            table,
            columns: &columns,
            key_positions: &key_positions,
            guard: guard.as_deref(),
            rows: &batch.rows,
            packet_budget: self.packet_budget,
        };

        let mut tx = begin(&self.pool, &context).await?;
        let (existing, affected) = match (&log, undo) {
            (Some(log), Some(b)) => write.logged(&mut tx, log, b).await?,
            _ => {
                let existing = count_existing(
                    &mut tx,
                    &context,
                    table,
                    &key_quoted,
                    &key_positions,
                    &batch.rows,
                    self.packet_budget,
                )
                .await?;
                (existing, write.plain(&mut tx).await?)
            }
        };
        run_extra(&mut tx, extra).await?;
        tx.commit().await.map_err(|e| sql_error(&context, &e))?;

        // CLIENT_FOUND_ROWS: affected = batch + updated (see the module comment).
        let n = batch.rows.len() as u64;
        let inserted = n.saturating_sub(existing);
        let updated = affected.saturating_sub(n).min(existing);
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
        let table = self.table()?;
        let context = format!("delete rows missing from the source in {}", table.quoted);
        let bounds = bounds(window, &self.time_format);
        let column = sql::quote(column);
        let predicate = format!("t.{column} >= ? AND t.{column} < ?");
        let mut tx = begin(&self.pool, &context).await?;
        let [copy, delete] = log.delete_missing(undo, &predicate, &bounds);
        let mut conn = Conn::MySql(&mut tx);
        conn.exec(&copy, &context).await?;
        let deleted = conn.exec(&delete, &context).await?;
        tx.commit().await.map_err(|e| sql_error(&context, &e))?;
        Ok(deleted)
    }

    /// `begin_replace` with the window's before-images logged first.
    pub async fn begin_replace_undo(
        &self,
        window: &Window,
        undo: Option<&UndoBatch>,
    ) -> Result<ReplaceTxn, ConnectorError> {
        let log = match undo {
            Some(_) => Some(self.undo_log().await?),
            None => None,
        };
        let table = self.table()?;
        let window_column = replace_column(&self.mode)?;
        let context = format!("delete window {window} from {}", table.quoted);
        let bounds = bounds(window, &self.time_format);
        // Read before the transaction holds a pooled connection.
        let temporal = self.temporal_columns(table).await?;
        let mut tx = begin(&self.pool, &context).await?;
        let mut undo_commit = Vec::new();
        if let (Some(log), Some(b)) = (&log, undo) {
            let column = sql::quote(window_column);
            let predicate = format!("t.{column} >= ? AND t.{column} < ?");
            let replace_log = log.mysql_replace(b, &predicate, &bounds);
            for stmt in &replace_log.begin {
                Conn::MySql(&mut tx).exec(stmt, &context).await?;
            }
            undo_commit = replace_log.commit;
        }
        let text = sql::delete_window(&table.quoted, &sql::quote(window_column));
        let done = sqlx::query_with(AssertSqlSafe(text), arguments(&bounds)?)
            .execute(&mut *tx)
            .await
            .map_err(|e| sql_error(&context, &e))?;
        Ok(ReplaceTxn {
            inner: ReplaceInner::MySql(MySqlReplace {
                tx,
                table: table.clone(),
                packet_budget: self.packet_budget,
                temporal,
                undo: log.map(|_| undo_commit),
                key: self.key.clone(),
            }),
            deleted: done.rows_affected(),
        })
    }

    fn table(&self) -> Result<&Table, ConnectorError> {
        require_table(self.table.as_ref(), &self.mode)
    }

    /// The table's columns in order (empty when it does not exist), their `DATA_TYPE`s and
    /// its unique keys (PRIMARY and UNIQUE indexes), each as its columns.
    async fn describe_table(
        &self,
        table: &Table,
    ) -> Result<(Vec<String>, Vec<String>, Vec<Vec<String>>), ConnectorError> {
        let (schema, name) = table.parts();
        let context = table.describe();
        let described: Vec<(String, String)> = sqlx::query_as(
            "SELECT CAST(COLUMN_NAME AS CHAR), CAST(DATA_TYPE AS CHAR) \
             FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = COALESCE(?, DATABASE()) AND TABLE_NAME = ? \
             ORDER BY ORDINAL_POSITION",
        )
        .bind(schema)
        .bind(name)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| sql_error(&context, &e))?;
        let (columns, types) = described.into_iter().unzip();
        let rows = sqlx::query(
            "SELECT CAST(INDEX_NAME AS CHAR), CAST(COLUMN_NAME AS CHAR) \
             FROM information_schema.STATISTICS \
             WHERE TABLE_SCHEMA = COALESCE(?, DATABASE()) AND TABLE_NAME = ? AND NON_UNIQUE = 0 \
             ORDER BY INDEX_NAME, SEQ_IN_INDEX",
        )
        .bind(schema)
        .bind(name)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| sql_error(&context, &e))?;
        let mut keys: Vec<(String, Vec<String>)> = Vec::new();
        for row in rows {
            let index: String = row.try_get(0).map_err(|e| sql_error(&context, &e))?;
            let column: String = row.try_get(1).map_err(|e| sql_error(&context, &e))?;
            match keys.last_mut() {
                Some((i, cols)) if *i == index => cols.push(column),
                _ => keys.push((index, vec![column])),
            }
        }
        Ok((columns, types, keys.into_iter().map(|(_, c)| c).collect()))
    }
}

/// `batch` with every text value of a `temporal` column that is an RFC 3339 instant
/// (`2025-01-01T00:00:00Z`, how SQLite sources hold instants) turned into that instant, which
/// binds as its UTC wall clock (the session time zone is UTC). MySQL refuses the `T…Z`
/// spelling for `DATETIME` and `TIMESTAMP`. Other values, and other columns, are untouched;
/// borrowed when nothing changes.
fn instants_as_datetimes<'b>(batch: &'b Batch, temporal: &[String]) -> Cow<'b, Batch> {
    let positions: Vec<usize> = batch
        .columns
        .iter()
        .enumerate()
        .filter(|(_, c)| position(temporal, c).is_some())
        .map(|(i, _)| i)
        .collect();
    let instant = |v: &Value| match v {
        Value::Text(s) => chrono::DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|t| Value::TimestampTz(t.with_timezone(&chrono::Utc))),
        _ => None,
    };
    let any = batch
        .rows
        .iter()
        .any(|row| positions.iter().any(|&i| instant(&row[i]).is_some()));
    if !any {
        return Cow::Borrowed(batch);
    }
    let rows = batch
        .rows
        .iter()
        .map(|row| {
            let mut row = row.clone();
            for &i in &positions {
                if let Some(v) = instant(&row[i]) {
                    row[i] = v;
                }
            }
            row
        })
        .collect();
    Cow::Owned(Batch {
        columns: batch.columns.clone(),
        rows,
    })
}

/// Bytes one value takes in a statement's parameters (an estimate from above).
fn value_bytes(v: &Value) -> usize {
    let payload = match v {
        Value::Null | Value::Bool(_) => 1,
        Value::Int(_) | Value::Float(_) => 8,
        Value::Decimal(s) | Value::Text(s) | Value::Json(s) => s.len() + 9,
        Value::Blob(b) => b.len() + 9,
        Value::Date(_) => 5,
        Value::Time(_) => 13,
        Value::Timestamp(_) | Value::TimestampTz(_) => 12,
        Value::Uuid(_) => 37,
    };
    // Type code and null bitmap per parameter, and its `?,` in the statement text.
    payload + 5
}

/// The largest row of `rows`, in statement bytes.
fn max_row_bytes<'a>(rows: impl Iterator<Item = &'a [Value]>) -> usize {
    rows.map(|r| r.iter().map(value_bytes).sum::<usize>() + 3)
        .max()
        .unwrap_or(1)
}

/// Runs `build(n)` over `rows` in chunks sized for the packet budget; returns the sum of
/// rows affected. Full chunks share one SQL text, so it is prepared once.
async fn write_chunks(
    conn: &mut MySqlConnection,
    context: &str,
    rows: &[Vec<Value>],
    packet_budget: usize,
    build: impl Fn(usize) -> String,
) -> Result<u64, ConnectorError> {
    let width = rows.first().map_or(1, Vec::len);
    let row_bytes = max_row_bytes(rows.iter().map(Vec::as_slice));
    let per = sql::rows_per_stmt(width, row_bytes, packet_budget, MAX_ROWS_PER_STMT);
    let full: Option<Arc<str>> = (rows.len() >= per).then(|| build(per).into());
    let mut total = 0;
    for chunk in rows.chunks(per) {
        let text: Arc<str> = match &full {
            Some(full) if chunk.len() == per => Arc::clone(full),
            _ => build(chunk.len()).into(),
        };
        let done = sqlx::query_with(AssertSqlSafe(text), arguments(chunk.iter().flatten())?)
            .execute(&mut *conn)
            .await
            .map_err(|e| sql_error(context, &e))?;
        total += done.rows_affected();
    }
    Ok(total)
}

/// One batch's `upsert` into `table`.
struct Upsert<'a> {
    context: &'a str,
    table: &'a Table,
    /// The batch's columns, quoted.
    columns: &'a [String],
    key_positions: &'a [usize],
    guard: Option<&'a str>,
    rows: &'a [Vec<Value>],
    packet_budget: usize,
}

impl Upsert<'_> {
    /// Writes the rows as multi-row statements; returns the rows affected.
    async fn plain(&self, conn: &mut MySqlConnection) -> Result<u64, ConnectorError> {
        write_chunks(conn, self.context, self.rows, self.packet_budget, |n| {
            sql::upsert(
                &self.table.quoted,
                self.columns,
                self.key_positions,
                self.guard,
                n,
            )
        })
        .await
    }

    /// Writes the rows with their undo log: staged in a temporary table, logged by joins
    /// over it, then upserted from it in one statement ([`UndoLog::mysql_staged`]). Returns
    /// the rows whose key existed and the rows affected.
    async fn logged(
        &self,
        conn: &mut MySqlConnection,
        log: &UndoLog,
        b: &UndoBatch,
    ) -> Result<(u64, u64), ConnectorError> {
        let staged = log.mysql_staged(b, self.columns, self.guard.is_some());
        for sql in &staged.create {
            sqlx::raw_sql(AssertSqlSafe(sql.as_str()))
                .execute(&mut *conn)
                .await
                .map_err(|e| sql_error(self.context, &e))?;
        }
        write_chunks(conn, self.context, self.rows, self.packet_budget, |n| {
            sql::insert(&staged.stage, self.columns, n)
        })
        .await?;
        let existing: i64 = sqlx::query_scalar(AssertSqlSafe(staged.count.as_str()))
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| sql_error(self.context, &e))?;
        Conn::MySql(conn).exec(&staged.log, self.context).await?;
        let upsert = sql::upsert_from(
            &self.table.quoted,
            self.columns,
            self.key_positions,
            self.guard,
            (&staged.stage, undo::MYSQL_SEQ),
        );
        let affected = sqlx::raw_sql(AssertSqlSafe(upsert))
            .execute(&mut *conn)
            .await
            .map_err(|e| sql_error(self.context, &e))?
            .rows_affected();
        if let Some(after) = &staged.after {
            Conn::MySql(conn).exec(after, self.context).await?;
        }
        Ok((u64::try_from(existing).unwrap_or(0), affected))
    }
}

/// Counts the rows of the batch whose key already exists in the target.
async fn count_existing(
    conn: &mut MySqlConnection,
    context: &str,
    table: &Table,
    key_quoted: &[String],
    key_positions: &[usize],
    rows: &[Vec<Value>],
    packet_budget: usize,
) -> Result<u64, ConnectorError> {
    let keys: Vec<Vec<Value>> = rows
        .iter()
        .map(|r| key_positions.iter().map(|&p| r[p].clone()).collect())
        .collect();
    let row_bytes = max_row_bytes(keys.iter().map(Vec::as_slice));
    let per = sql::rows_per_stmt(
        key_positions.len(),
        row_bytes,
        packet_budget,
        MAX_ROWS_PER_STMT,
    );
    let full: Option<Arc<str>> =
        (keys.len() >= per).then(|| sql::count_existing(&table.quoted, key_quoted, per).into());
    let mut total = 0;
    for chunk in keys.chunks(per) {
        let text: Arc<str> = match &full {
            Some(full) if chunk.len() == per => Arc::clone(full),
            _ => sql::count_existing(&table.quoted, key_quoted, chunk.len()).into(),
        };
        let row = sqlx::query_with(AssertSqlSafe(text), arguments(chunk.iter().flatten())?)
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
async fn run_extra(
    conn: &mut MySqlConnection,
    extra: Option<&Extra>,
) -> Result<(), ConnectorError> {
    let Some(extra) = extra else {
        return Ok(());
    };
    let done = sqlx::query_with(AssertSqlSafe(extra.sql.as_str()), arguments(&extra.params)?)
        .execute(&mut *conn)
        .await
        .map_err(|e| sql_error(EXTRA_CONTEXT, &e))?;
    check_extra(done.rows_affected())
}

async fn begin(
    pool: &MySqlPool,
    context: &str,
) -> Result<Transaction<'static, MySql>, ConnectorError> {
    pool.begin().await.map_err(|e| sql_error(context, &e))
}

impl Sink for MySqlSink {
    async fn check_columns(&self, columns: &[String]) -> Result<Vec<String>, ConnectorError> {
        let table = self.table()?;
        let (existing, _, unique) = self.describe_table(table).await?;
        let needed = self.key.iter().chain(&self.guard);
        check_existing(table, &existing, columns, needed, &self.mode)?;
        if self.mode == WriteMode::Upsert && !unique.iter().any(|cols| is_key(cols, &self.key)) {
            return Err(no_unique_key(table, &self.key));
        }
        Ok(existing)
    }

    async fn leads_an_index(&self, column: &str) -> Result<Option<bool>, ConnectorError> {
        let Some(table) = &self.table else {
            return Ok(None);
        };
        let (schema, name) = table.parts();
        let leading: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM information_schema.STATISTICS \
             WHERE TABLE_SCHEMA = COALESCE(?, DATABASE()) AND TABLE_NAME = ? \
             AND SEQ_IN_INDEX = 1 AND COLUMN_NAME = ?",
        )
        .bind(schema)
        .bind(name)
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
        let done = sqlx::query_with(AssertSqlSafe(Arc::clone(text)), arguments(&values)?)
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

/// The MySQL side of a [`ReplaceTxn`]: an open transaction in which the window is already
/// deleted. Dropped without commit, sqlx rolls it back.
pub struct MySqlReplace {
    tx: Transaction<'static, MySql>,
    table: Table,
    packet_budget: usize,
    temporal: Arc<Vec<String>>,
    /// With `target.undo`: the statements that log the window at commit
    /// ([`UndoLog::mysql_replace`]); each batch's keys go to [`undo::MYSQL_KEYS`] meanwhile.
    undo: Option<Vec<undo::Stmt>>,
    /// Key columns, to record each inserted batch's keys.
    key: Vec<String>,
}

impl fmt::Debug for MySqlReplace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MySqlReplace")
            .field("table", &self.table.name)
            .finish_non_exhaustive()
    }
}

impl MySqlReplace {
    /// Inserts `batch` in the transaction; returns the rows inserted.
    pub(crate) async fn insert(&mut self, batch: &Batch) -> Result<u64, ConnectorError> {
        let context = format!("insert into {}", self.table.quoted);
        // The key's positions only to record the batch's keys for the undo log.
        let key: &[String] = if self.undo.is_some() { &self.key } else { &[] };
        let (columns, key_positions) = batch_columns(batch, key, sql::quote)?;
        let batch = &*instants_as_datetimes(batch, &self.temporal);
        let table = &self.table.quoted;
        let n = write_chunks(
            &mut self.tx,
            &context,
            &batch.rows,
            self.packet_budget,
            |n| sql::insert(table, &columns, n),
        )
        .await?;
        if self.undo.is_some() {
            let key_columns: Vec<String> =
                key_positions.iter().map(|&p| columns[p].clone()).collect();
            let keys = undo::batch_keys(batch, &key_positions, true);
            write_chunks(&mut self.tx, &context, &keys, self.packet_budget, |n| {
                sql::insert(undo::MYSQL_KEYS, &key_columns, n)
            })
            .await?;
        }
        Ok(n)
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
        for stmt in self.undo.iter().flatten() {
            Conn::MySql(&mut self.tx).exec(stmt, &context).await?;
        }
        run_extra(&mut self.tx, extra).await?;
        self.tx.commit().await.map_err(|e| sql_error(&context, &e))
    }
}
