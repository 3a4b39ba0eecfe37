//! Writing batches into a PostgreSQL table: upsert, replace and sql modes.
//!
//! An upsert is one statement, `INSERT … SELECT * FROM unnest($1::int8[], …) ON CONFLICT DO
//! UPDATE … WHERE <a value differs>`, with each column of the batch bound as one binary array
//! (`copy_binary::ArrayParam`); its text depends only on the columns, so each pooled
//! connection prepares it once. With the engine's `Extra` checkpoint it runs in one
//! transaction with it; alone, the statement is its own transaction. A batch whose values
//! need the server's casts (or a column type without a binary array here) is `COPY`ed as
//! text into a temporary table with the target's column types (dropped at commit) and moved
//! by the same statement reading that table, in one transaction. Either way
//! `RETURNING (xmax = 0)` lets the database count inserted and updated rows, and the rest of
//! the batch was unchanged (or held back by the guard). A replace deletes the window and `COPY`s each batch straight into the
//! target, in one transaction.

use std::fmt;
use std::sync::{Arc, Mutex};

use backfill_core::params::Placeholder;
use backfill_core::plan::Window;
use backfill_core::retry::ErrorClass;
use backfill_core::spec::{TargetSpec, WriteMode};
use backfill_core::timefmt::TimeFormat;
use backfill_core::value::{Batch, RowCounts, Value};
use sqlx::postgres::{PgArguments, PgConnection, PgPool, PgRow, Postgres};
use sqlx::{Arguments, AssertSqlSafe, Row, Transaction};

use super::{arguments, connect, copy_binary, copy_text, exchange, sql, sql_error};
use crate::ident::{check_column, position};
use crate::shared::{
    EXTRA_CONTEXT, Table, TargetSettings, batch_key_positions, check_extra, check_row_widths,
    check_target, is_key, no_unique_key, replace_column, require_table, sql_statement,
    upsert_counts,
};
use crate::undo::{self, Conn, Dialect, UndoBatch, UndoLog};
use crate::window::{bounds, named_values};
use crate::{ConnectorError, Extra, RawBatch, ReplaceInner, ReplaceTxn, Savepoint, Sink};

/// The target table's columns as the catalog knows them.
#[derive(Debug)]
struct TableInfo {
    /// Column names, in table order.
    columns: Vec<String>,
    /// `format_type` of each column.
    types: Vec<String>,
    /// Column lists of the primary key and full unique indexes.
    unique: Vec<Vec<String>>,
    /// Whether each column is `NOT NULL`, in table order.
    not_null: Vec<bool>,
    /// The type OID of each column, in table order.
    oids: Vec<u32>,
}

impl TableInfo {
    /// Whether `key` has a unique index and no column of it can be NULL: what the undo log
    /// of a `replace` written at commit needs (`UndoLog::replace_commit`).
    fn key_unique_not_null(&self, key: &[String]) -> bool {
        self.unique.iter().any(|c| is_key(c, key))
            && key
                .iter()
                .all(|k| position(&self.columns, k).is_some_and(|i| self.not_null[i]))
    }

    /// The table's spelling of `column`, quoted, and its position.
    fn resolve(&self, table: &Table, column: &str) -> Result<(usize, String), ConnectorError> {
        check_column(column, "column")?;
        match position(&self.columns, column) {
            Some(i) => Ok((i, sql::quote(&self.columns[i]))),
            None => Err(ConnectorError::MissingColumn {
                column: column.to_owned(),
                available: self.columns.clone(),
                table: table.describe(),
            }),
        }
    }

    /// The target columns of `batch`.
    fn batch_columns(&self, table: &Table, batch: &Batch) -> Result<BatchColumns, ConnectorError> {
        let mut quoted = Vec::with_capacity(batch.columns.len());
        let mut as_text = Vec::with_capacity(batch.columns.len());
        let mut binary = Vec::with_capacity(batch.columns.len());
        for c in &batch.columns {
            let (i, q) = self.resolve(table, c)?;
            quoted.push(q);
            binary.push(copy_binary::Column::of(&self.types[i]));
            // Types without an equality operator compare by their text.
            as_text.push(matches!(
                self.types[i].as_str(),
                "json" | "xml" | "point" | "line" | "lseg" | "box" | "path" | "polygon" | "circle"
            ));
        }
        check_row_widths(batch)?;
        Ok(BatchColumns {
            quoted,
            as_text,
            binary,
        })
    }
}

/// The target columns of a batch, in the batch's order.
struct BatchColumns {
    /// Quoted names.
    quoted: Vec<String>,
    /// Whether each compares as text (types without an equality operator).
    as_text: Vec<bool>,
    /// How each is encoded for binary COPY.
    binary: Vec<copy_binary::Column>,
}

/// A PostgreSQL sink: one table, written in the spec's mode.
#[derive(Debug)]
pub struct PostgresSink {
    pool: PgPool,
    /// `None` only in `sql` mode.
    table: Option<Table>,
    /// Key columns (validated); empty only in `sql` mode.
    key: Vec<String>,
    guard: Option<String>,
    mode: WriteMode,
    time_format: TimeFormat,
    /// `sql` mode: the statement with `$N` placeholders and the name bound at each.
    statement: Option<(Arc<str>, Vec<String>)>,
    /// The catalog's view of the table, read once.
    info: Mutex<Option<Arc<TableInfo>>>,
    /// The undo log, built on the first write that keeps one.
    undo_log: tokio::sync::OnceCell<Arc<UndoLog>>,
    /// `replace` exchanges a window that is one partition (`target.partition_exchange`).
    partition_exchange: bool,
}

impl PostgresSink {
    /// Connects and validates the table, key and mode settings.
    pub async fn open(spec: &TargetSpec, pool_size: u32) -> Result<PostgresSink, ConnectorError> {
        let guard = spec.guard.as_deref();
        let TargetSettings { table, statement } =
            check_target(spec, guard, sql::quote, Placeholder::DollarNumbered)?;
        let pool = connect(&spec.url, pool_size).await?;
        Ok(PostgresSink {
            pool,
            table,
            key: spec.key.clone(),
            guard: spec.guard.clone(),
            mode: spec.mode.clone(),
            time_format: spec.time_format.clone(),
            statement,
            info: Mutex::new(None),
            undo_log: tokio::sync::OnceCell::new(),
            partition_exchange: spec.partition_exchange,
        })
    }

    fn table(&self) -> Result<&Table, ConnectorError> {
        require_table(self.table.as_ref(), &self.mode)
    }

    /// The undo log of the target, its table created on first use.
    async fn undo_log(&self) -> Result<Arc<UndoLog>, ConnectorError> {
        let table = self.table()?;
        self.undo_log
            .get_or_try_init(|| async {
                let log = undo::open_log!(
                    &self.pool,
                    Dialect::Postgres,
                    crate::fingerprint::postgres::catalog,
                    &table.name,
                    &self.key,
                    Postgres
                );
                if matches!(self.mode, WriteMode::Replace { .. })
                    && !self.info(table).await?.key_unique_not_null(&self.key)
                {
                    tracing::warn!(
                        table = %table.name,
                        key = %self.key.join(", "),
                        "the undo log of this `replace` takes every row of each window with a \
                         statement per batch (several times slower than one statement at \
                         commit), because the key has no unique index over NOT NULL columns; \
                         add one, or set `[target] undo = false` if the run needs no rollback"
                    );
                }
                Ok(Arc::new(log))
            })
            .await
            .cloned()
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
        let info = self.info(table).await?;
        let columns = info.batch_columns(table, batch)?;
        let key_positions = batch_key_positions(batch, &self.key)?;
        let guard = match &self.guard {
            Some(g) => Some(info.resolve(table, g)?.1),
            None => None,
        };
        let keys = undo::batch_keys(batch, &key_positions, undo.is_some_and(|u| u.every_key));
        let hooks = match (&log, undo) {
            (Some(log), Some(b)) => Some(UndoHooks {
                log,
                batch: b,
                keys: &keys,
            }),
            _ => None,
        };
        let statement = UpsertStatement {
            table: &table.quoted,
            columns: &columns,
            key: &key_positions,
            guard: guard.as_deref(),
            context: &context,
            undo: hooks,
        };
        let (inserted, updated) = match array_arguments(batch, &columns)? {
            Some((types, args)) => {
                statement
                    .run_arrays(&self.pool, &types, args, extra)
                    .await?
            }
            None => statement.run_staged(&self.pool, batch, extra).await?,
        };
        Ok(upsert_counts(batch.rows.len() as u64, inserted, updated))
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
        let info = self.info(table).await?;
        let (i, quoted) = info.resolve(table, column)?;
        let context = format!("delete rows missing from the source in {}", table.quoted);
        let bounds = bounds(window, &self.time_format);
        let predicate = window_predicate(&quoted, &bounds, &info.types[i]);
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| sql_error(&context, &e))?;
        let [copy, delete] = log.delete_missing(undo, &predicate, &bounds);
        let mut conn = Conn::Postgres(&mut tx);
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
        let info = self.info(table).await?;
        let (i, column) = info.resolve(table, window_column)?;
        let context = format!("delete window {window} from {}", table.quoted);
        let bounds = bounds(window, &self.time_format);
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| sql_error(&context, &e))?;
        if self.partition_exchange
            && log.is_none()
            && let Some(exchange) =
                exchange::find(&mut tx, table, &info.columns[i], &info.types[i], &bounds).await?
        {
            let deleted = exchange.begin(&mut tx).await?;
            return Ok(ReplaceTxn {
                inner: ReplaceInner::Postgres(PostgresReplace {
                    tx,
                    table: exchange.table().clone(),
                    info,
                    undo: None,
                    logged_at_commit: None,
                    under_savepoints: false,
                    key: self.key.clone(),
                    exchange: Some(Box::new(exchange)),
                }),
                deleted,
            });
        }
        if let (Some(undo_log), Some(_)) = (&log, undo)
            && info.key_unique_not_null(&self.key)
        {
            // Logged at commit in one statement (`UndoLog::replace_commit`).
            let predicate = window_predicate(&column, &bounds, &info.types[i]);
            let mut conn = Conn::Postgres(&mut tx);
            for stmt in undo_log.replace_begin() {
                conn.exec(&stmt, &context).await?;
            }
            let deleted = conn
                .exec(&undo_log.replace_delete(&predicate, &bounds), &context)
                .await?;
            return Ok(ReplaceTxn {
                inner: ReplaceInner::Postgres(PostgresReplace {
                    tx,
                    table: table.clone(),
                    info,
                    undo: log.zip(undo.cloned()),
                    logged_at_commit: Some((predicate, bounds.to_vec())),
                    under_savepoints: false,
                    key: self.key.clone(),
                    exchange: None,
                }),
                deleted,
            });
        }
        if let (Some(log), Some(b)) = (&log, undo) {
            let predicate = window_predicate(&column, &bounds, &info.types[i]);
            let stmt = log.before_window_delete(b, &predicate, &bounds, "updated");
            Conn::Postgres(&mut tx).exec(&stmt, &context).await?;
        }
        // Text bounds (rfc3339, strftime) are parsed as the column's type, so they compare
        // with a timestamp column as well as with a text one.
        let cast = matches!(bounds[0], Value::Text(_)).then(|| info.types[i].as_str());
        let text = sql::delete_window(&table.quoted, &column, cast);
        let done = sqlx::query_with(AssertSqlSafe(text), arguments(&bounds)?)
            .execute(&mut *tx)
            .await
            .map_err(|e| sql_error(&context, &e))?;
        Ok(ReplaceTxn {
            inner: ReplaceInner::Postgres(PostgresReplace {
                tx,
                table: table.clone(),
                info,
                undo: log.zip(undo.cloned()),
                logged_at_commit: None,
                under_savepoints: false,
                key: self.key.clone(),
                exchange: None,
            }),
            deleted: done.rows_affected(),
        })
    }

    /// The table's columns, types and unique keys, read from the catalog once.
    async fn info(&self, table: &Table) -> Result<Arc<TableInfo>, ConnectorError> {
        if let Some(info) = self.info.lock().map_err(poisoned)?.as_ref() {
            return Ok(Arc::clone(info));
        }
        let context = table.describe();
        let rows = sqlx::query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), a.attnotnull, \
             a.atttypid::int8 FROM pg_attribute a \
             WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped \
             ORDER BY a.attnum",
        )
        .bind(&table.quoted)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| sql_error(&context, &e))?;
        if rows.is_empty() {
            return Err(ConnectorError::Sql {
                context: context.clone(),
                message: format!("no such table: {}", table.name),
                class: ErrorClass::Permanent,
            });
        }
        let mut columns = Vec::with_capacity(rows.len());
        let mut types = Vec::with_capacity(rows.len());
        let mut not_null = Vec::with_capacity(rows.len());
        let mut oids = Vec::with_capacity(rows.len());
        for row in rows {
            columns.push(row.try_get(0).map_err(|e| sql_error(&context, &e))?);
            types.push(row.try_get(1).map_err(|e| sql_error(&context, &e))?);
            not_null.push(row.try_get(2).map_err(|e| sql_error(&context, &e))?);
            let oid: i64 = row.try_get(3).map_err(|e| sql_error(&context, &e))?;
            oids.push(u32::try_from(oid).unwrap_or(0));
        }
        let unique: Vec<Vec<String>> = sqlx::query_scalar(
            "SELECT array_agg(a.attname::text ORDER BY k.ord) FROM pg_index i \
             CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord) \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
             WHERE i.indrelid = to_regclass($1) AND i.indisunique AND i.indpred IS NULL \
             AND i.indexprs IS NULL AND k.ord <= i.indnkeyatts GROUP BY i.indexrelid",
        )
        .bind(&table.quoted)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| sql_error(&context, &e))?;
        let info = Arc::new(TableInfo {
            columns,
            types,
            unique,
            not_null,
            oids,
        });
        *self.info.lock().map_err(poisoned)? = Some(Arc::clone(&info));
        Ok(info)
    }
}

fn poisoned<T>(_: T) -> ConnectorError {
    ConnectorError::Data {
        message: "internal error: table cache poisoned".to_owned(),
    }
}

/// PostgreSQL's `FirstGenbkiObjectId`: OIDs below it are fixed in the built-in catalog's
/// source, the same in every database and version; `initdb` and users get OIDs from here on.
/// (0 is no type.)
const FIXED_OIDS_BELOW: u32 = 10_000;

/// The size of one `CopyData` message.
const COPY_PIECE: usize = 64 * 1024;

/// `COPY`s `batch` into `table` (quoted); returns the rows copied. In binary when every value
/// has an exact binary encoding for its column, else as text (see `copy_binary`).
async fn copy_rows(
    conn: &mut PgConnection,
    context: &str,
    table: &str,
    columns: &BatchColumns,
    batch: &Batch,
) -> Result<u64, ConnectorError> {
    if batch.rows.is_empty() {
        return Ok(0);
    }
    let (statement, data) = match copy_binary::encode(&batch.rows, &columns.binary) {
        Some(data) => (sql::copy_in_binary(table, &columns.quoted), data),
        None => (
            sql::copy_in(table, &columns.quoted),
            copy_text(&batch.rows)?.into_bytes(),
        ),
    };
    let mut copy = conn
        .copy_in_raw(&statement)
        .await
        .map_err(|e| sql_error(context, &e))?;
    // In pieces: the driver copies each message into the connection's write buffer, which
    // keeps its largest size for the connection's life; one message per batch would keep a
    // batch-sized buffer on every pooled connection.
    for piece in data.chunks(COPY_PIECE) {
        if let Err(e) = copy.send(piece).await {
            let _ = copy.abort("backfill: sending the batch failed").await;
            return Err(sql_error(context, &e));
        }
    }
    drop(data);
    copy.finish().await.map_err(|e| sql_error(context, &e))
}

/// Runs the engine's extra statement; anything but exactly one affected row is a stale
/// attempt, and the caller's transaction is dropped (rolled back).
async fn run_extra(conn: &mut PgConnection, extra: Option<&Extra>) -> Result<(), ConnectorError> {
    let Some(extra) = extra else {
        return Ok(());
    };
    let args = arguments(&extra.params)?;
    let done = sqlx::query_with(AssertSqlSafe(extra.sql.as_str()), args)
        .execute(&mut *conn)
        .await
        .map_err(|e| sql_error(EXTRA_CONTEXT, &e))?;
    check_extra(done.rows_affected())
}

/// Each column of `batch` as one binary array parameter, with the arrays' SQL types; `None`
/// for an empty batch, a column type without a binary array here, or a value that needs a
/// cast (the batch then goes through `COPY` into the staging table, as text where needed).
fn array_arguments(
    batch: &Batch,
    columns: &BatchColumns,
) -> Result<Option<(Vec<&'static str>, PgArguments)>, ConnectorError> {
    if batch.rows.is_empty() {
        return Ok(None);
    }
    let Some(types) = columns
        .binary
        .iter()
        .map(|c| c.array_type().map(|(_, name)| name))
        .collect::<Option<Vec<_>>>()
    else {
        return Ok(None);
    };
    let mut args = PgArguments::default();
    for (index, &column) in columns.binary.iter().enumerate() {
        let param = copy_binary::ArrayParam {
            rows: &batch.rows,
            index,
            column,
        };
        match Arguments::add(&mut args, param) {
            Ok(()) => {}
            Err(e) if e.is::<copy_binary::NeedsText>() => return Ok(None),
            Err(e) => {
                return Err(ConnectorError::Data {
                    message: format!("cannot bind column {}: {e}", columns.quoted[index]),
                });
            }
        }
    }
    Ok(Some((types, args)))
}

/// One batch's upsert statement: the target, the batch's columns, the key and the guard.
struct UpsertStatement<'a> {
    table: &'a str,
    columns: &'a BatchColumns,
    key: &'a [usize],
    guard: Option<&'a str>,
    context: &'a str,
    /// The undo log to write in the same transaction, when `target.undo` is on.
    undo: Option<UndoHooks<'a>>,
}

/// What a batch's undo log needs: the log, the partition and the batch's keys.
#[derive(Clone, Copy)]
struct UndoHooks<'a> {
    log: &'a UndoLog,
    batch: &'a UndoBatch,
    keys: &'a [Vec<Value>],
}

impl UndoHooks<'_> {
    /// True when the log is written by the upsert's own statement (only the rows it changes;
    /// see `UndoLog::postgres_ctes`), false when every key is logged by statements around it.
    fn inline(&self) -> bool {
        !self.batch.every_key
    }

    async fn before(&self, conn: &mut PgConnection, context: &str) -> Result<(), ConnectorError> {
        let mut conn = Conn::Postgres(conn);
        for stmt in self.log.before_write(self.batch, self.keys) {
            conn.exec(&stmt, context).await?;
        }
        Ok(())
    }

    async fn after(&self, conn: &mut PgConnection, context: &str) -> Result<(), ConnectorError> {
        let mut conn = Conn::Postgres(conn);
        for stmt in self.log.after_write(self.batch, self.keys) {
            conn.exec(&stmt, context).await?;
        }
        Ok(())
    }
}

/// `t.column >= $ AND t.column < $` (as `?`), casting text bounds to the column's type.
fn window_predicate(column: &str, bounds: &[Value], ty: &str) -> String {
    if matches!(bounds.first(), Some(Value::Text(_))) {
        format!("t.{column} >= CAST(? AS {ty}) AND t.{column} < CAST(? AS {ty})")
    } else {
        format!("t.{column} >= ? AND t.{column} < ?")
    }
}

impl UpsertStatement<'_> {
    /// The upsert that also writes the undo log (see `UndoLog::postgres_ctes`); its run and
    /// partition parameters follow the batch's own (none for the staging table).
    fn logged_text(&self, from: sql::UpsertFrom<'_>, hooks: &UndoHooks<'_>) -> String {
        let n = match from {
            sql::UpsertFrom::Arrays(types) => types.len(),
            sql::UpsertFrom::Stage => 0,
        };
        let pieces = hooks.log.postgres_ctes(n + 1, n + 2);
        sql::upsert_logged(
            &self.upsert(),
            from,
            &pieces.before,
            &pieces.log,
            &pieces.unlogged,
        )
    }

    /// What the statement writes, for the SQL builders.
    fn upsert(&self) -> sql::Upsert<'_> {
        sql::Upsert {
            table: self.table,
            columns: &self.columns.quoted,
            key: self.key,
            as_text: &self.columns.as_text,
            guard: self.guard,
        }
    }

    /// In the write's transaction, before it: the session in UTC (the log's digests print
    /// timestamps in it, as rollback does), and every key's before-image when every key is
    /// logged.
    async fn before_write(&self, tx: &mut PgConnection) -> Result<(), ConnectorError> {
        let Some(hooks) = self.undo else {
            return Ok(());
        };
        if hooks.inline() {
            sqlx::query(crate::undo::PG_DIGEST_SETTINGS)
                .execute(&mut *tx)
                .await
                .map_err(|e| sql_error(self.context, &e))?;
            return Ok(());
        }
        hooks.before(tx, self.context).await
    }

    /// In the write's transaction, after it: every key's digest when every key is logged.
    async fn after_write(&self, tx: &mut PgConnection) -> Result<(), ConnectorError> {
        match self.undo {
            Some(hooks) if !hooks.inline() => hooks.after(tx, self.context).await,
            _ => Ok(()),
        }
    }

    fn text(&self, from: sql::UpsertFrom<'_>) -> String {
        sql::upsert(&self.upsert(), from)
    }

    /// The batch bound as arrays: one statement, prepared once per connection (its text
    /// depends only on the columns). Without `extra` it runs alone (one statement is atomic);
    /// with it, both commit in one transaction. Returns (inserted, updated).
    async fn run_arrays(
        &self,
        pool: &PgPool,
        types: &[&str],
        args: PgArguments,
        extra: Option<&Extra>,
    ) -> Result<(u64, u64), ConnectorError> {
        let from = sql::UpsertFrom::Arrays(types);
        let (text, args) = match self.undo.filter(UndoHooks::inline) {
            Some(hooks) => {
                let mut args = args;
                for tag in [&hooks.batch.run_id, &hooks.batch.partition_id] {
                    Arguments::add(&mut args, tag.as_str()).map_err(|e| ConnectorError::Data {
                        message: format!("cannot bind the undo log's tag: {e}"),
                    })?;
                }
                (self.logged_text(from, &hooks), args)
            }
            None => (self.text(from), args),
        };
        let query = sqlx::query_with(AssertSqlSafe(text), args);
        if extra.is_none() && self.undo.is_none() {
            let row = query
                .fetch_one(pool)
                .await
                .map_err(|e| sql_error(self.context, &e))?;
            return self.counts(&row);
        }
        let mut tx = pool
            .begin()
            .await
            .map_err(|e| sql_error(self.context, &e))?;
        self.before_write(&mut tx).await?;
        let row = query
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| sql_error(self.context, &e))?;
        let counts = self.counts(&row)?;
        self.check_logged(&row)?;
        self.after_write(&mut tx).await?;
        run_extra(&mut tx, extra).await?;
        tx.commit().await.map_err(|e| sql_error(self.context, &e))?;
        Ok(counts)
    }

    /// The batch `COPY`ed into a temporary staging table typed like the target's columns
    /// (as text when some value needs the server's cast), then moved by one statement, in
    /// one transaction with `extra`. Returns (inserted, updated).
    async fn run_staged(
        &self,
        pool: &PgPool,
        batch: &Batch,
        extra: Option<&Extra>,
    ) -> Result<(u64, u64), ConnectorError> {
        let context = self.context;
        let mut tx = pool.begin().await.map_err(|e| sql_error(context, &e))?;
        let mut counts = (0, 0);
        self.before_write(&mut tx).await?;
        if !batch.rows.is_empty() {
            let stage = sql::create_stage(self.table, &self.columns.quoted);
            sqlx::raw_sql(AssertSqlSafe(stage))
                .execute(&mut *tx)
                .await
                .map_err(|e| sql_error(context, &e))?;
            copy_rows(&mut tx, context, sql::STAGE, self.columns, batch).await?;
            // Not prepared: the staging table is a new relation in every transaction.
            let query = match self.undo.filter(UndoHooks::inline) {
                Some(hooks) => {
                    let from = sql::UpsertFrom::Stage;
                    sqlx::query(AssertSqlSafe(self.logged_text(from, &hooks)))
                        .bind(hooks.batch.run_id.as_str())
                        .bind(hooks.batch.partition_id.as_str())
                }
                None => sqlx::query(AssertSqlSafe(self.text(sql::UpsertFrom::Stage))),
            };
            let row = query
                .persistent(false)
                .fetch_one(&mut *tx)
                .await
                .map_err(|e| sql_error(context, &e))?;
            counts = self.counts(&row)?;
            self.check_logged(&row)?;
        }
        self.after_write(&mut tx).await?;
        run_extra(&mut tx, extra).await?;
        tx.commit().await.map_err(|e| sql_error(context, &e))?;
        Ok(counts)
    }

    /// For an upsert that logged its own undo rows: fails (transient: the batch runs again,
    /// and its transaction is rolled back with the log) when it updated a row its snapshot
    /// did not see, so the log has no before-image for it (another session inserted the key
    /// meanwhile; see `UndoLog::postgres_ctes`).
    fn check_logged(&self, row: &PgRow) -> Result<(), ConnectorError> {
        if self.undo.is_none_or(|h| !h.inline()) {
            return Ok(());
        }
        let unlogged: i64 = row.try_get(2).map_err(|e| sql_error(self.context, &e))?;
        if unlogged == 0 {
            return Ok(());
        }
        Err(ConnectorError::Sql {
            context: self.context.to_owned(),
            message: format!(
                "{unlogged} row(s) of the batch were inserted by another session while it was \
                 written, so the undo log has no before-image for them; the batch runs again"
            ),
            class: ErrorClass::Transient,
        })
    }

    /// (inserted, updated) from the statement's one row.
    fn counts(&self, row: &PgRow) -> Result<(u64, u64), ConnectorError> {
        let ins: i64 = row.try_get(0).map_err(|e| sql_error(self.context, &e))?;
        let upd: i64 = row.try_get(1).map_err(|e| sql_error(self.context, &e))?;
        Ok((
            u64::try_from(ins).unwrap_or(0),
            u64::try_from(upd).unwrap_or(0),
        ))
    }
}

impl Sink for PostgresSink {
    async fn check_columns(&self, columns: &[String]) -> Result<Vec<String>, ConnectorError> {
        let table = self.table()?;
        let info = self.info(table).await?;
        for c in columns {
            check_column(c, "source column")?;
            info.resolve(table, c)?;
        }
        for k in &self.key {
            info.resolve(table, k)?;
        }
        if let Some(g) = &self.guard {
            info.resolve(table, g)?;
        }
        if let WriteMode::Replace { window_column } = &self.mode {
            info.resolve(table, window_column)?;
        }
        if self.mode == WriteMode::Upsert && !info.unique.iter().any(|c| is_key(c, &self.key)) {
            return Err(no_unique_key(table, &self.key));
        }
        Ok(info.columns.clone())
    }

    async fn leads_an_index(&self, column: &str) -> Result<Option<bool>, ConnectorError> {
        let Some(table) = &self.table else {
            return Ok(None);
        };
        let indexed: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_index i JOIN pg_attribute a \
             ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] \
             WHERE i.indrelid = to_regclass($1) AND lower(a.attname) = lower($2))",
        )
        .bind(&table.quoted)
        .bind(column)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| sql_error(table.describe(), &e))?;
        Ok(Some(indexed))
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

/// The PostgreSQL side of a [`ReplaceTxn`]: an open transaction in which the window is
/// already deleted. Dropped without commit, sqlx rolls it back.
pub struct PostgresReplace {
    tx: Transaction<'static, Postgres>,
    table: Table,
    info: Arc<TableInfo>,
    /// The undo log and the partition it logs for, when `target.undo` is on.
    undo: Option<(Arc<UndoLog>, UndoBatch)>,
    /// The window's predicate and bounds when the log is written at commit in one statement
    /// (`UndoLog::replace_commit`: the key has a unique index and no NULL), not around each
    /// batch.
    logged_at_commit: Option<(String, Vec<Value>)>,
    /// Whether a savepoint was set with the log written at commit: from then on each batch's
    /// keys are also `COPY`ed (rows inserted under a savepoint have a subtransaction's `xmin`).
    under_savepoints: bool,
    /// Key columns, to log each inserted batch's keys.
    key: Vec<String>,
    /// A window that is one partition: `table` is the standalone table exchanged for it at
    /// commit (nothing was deleted).
    exchange: Option<Box<exchange::Exchange>>,
}

impl fmt::Debug for PostgresReplace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresReplace")
            .field("table", &self.table.name)
            .finish_non_exhaustive()
    }
}

impl PostgresReplace {
    /// `COPY`s `batch` into the table inside the transaction; returns the rows inserted.
    pub(crate) async fn insert(&mut self, batch: &Batch) -> Result<u64, ConnectorError> {
        let context = format!("insert into {}", self.table.quoted);
        let columns = self.info.batch_columns(&self.table, batch)?;
        if self.undo.is_some() && self.logged_at_commit.is_some() {
            let n = copy_rows(&mut self.tx, &context, &self.table.quoted, &columns, batch).await?;
            if !self.under_savepoints {
                // Told at commit by their `xmin`.
                return Ok(n);
            }
            let keys = undo::batch_keys(batch, &batch_key_positions(batch, &self.key)?, true);
            // The keys the run wrote under a savepoint, for the log at commit: `COPY`ed like
            // the rows.
            let keys = Batch {
                columns: self.key.clone(),
                rows: keys,
            };
            let key_columns = self.info.batch_columns(&self.table, &keys)?;
            copy_rows(
                &mut self.tx,
                &context,
                undo::REPLACE_KEYS,
                &key_columns,
                &keys,
            )
            .await?;
            return Ok(n);
        }
        if let Some((log, b)) = &self.undo {
            let keys = undo::batch_keys(batch, &batch_key_positions(batch, &self.key)?, true);
            let hooks = UndoHooks {
                log,
                batch: b,
                keys: &keys,
            };
            hooks.before(&mut self.tx, &context).await?;
            let n = copy_rows(&mut self.tx, &context, &self.table.quoted, &columns, batch).await?;
            hooks.after(&mut self.tx, &context).await?;
            return Ok(n);
        }
        copy_rows(&mut self.tx, &context, &self.table.quoted, &columns, batch).await
    }

    /// Whether [`insert_raw`](Self::insert_raw) can take a source's undecoded rows: the
    /// table has each of `columns`, of the built-in type `oids` gives, and no undo log needs
    /// the batches' keys (the log written at commit needs them only under savepoints). Only
    /// built-in types: their OIDs are the same in every database, while a type created in a
    /// database (an enum, a domain, an extension's type) has an OID of that database, which
    /// another database may give to a different type.
    pub(crate) fn accepts_raw(&self, columns: &[String], oids: &[Option<u32>]) -> bool {
        let keys_needed =
            self.undo.is_some() && (self.logged_at_commit.is_none() || self.under_savepoints);
        !keys_needed
            && columns.len() == oids.len()
            && columns.iter().zip(oids).all(|(c, oid)| {
                position(&self.info.columns, c).is_some_and(|i| {
                    oid.is_some_and(|o| o != 0 && o < FIXED_OIDS_BELOW && o == self.info.oids[i])
                })
            })
    }

    /// `COPY`s an undecoded batch (binary tuples of `columns`) into the table inside the
    /// transaction; returns the rows inserted.
    pub(crate) async fn insert_raw(
        &mut self,
        columns: &[String],
        batch: &RawBatch,
    ) -> Result<u64, ConnectorError> {
        if batch.rows == 0 {
            return Ok(0);
        }
        let context = format!("insert into {}", self.table.quoted);
        let mut quoted = Vec::with_capacity(columns.len());
        for c in columns {
            quoted.push(self.info.resolve(&self.table, c)?.1);
        }
        let statement = sql::copy_in_binary(&self.table.quoted, &quoted);
        let mut copy = self
            .tx
            .copy_in_raw(&statement)
            .await
            .map_err(|e| sql_error(&context, &e))?;
        let pieces = std::iter::once(copy_binary::HEADER)
            .chain(batch.tuples.chunks(COPY_PIECE))
            .chain(std::iter::once(copy_binary::TRAILER));
        for piece in pieces {
            if let Err(e) = copy.send(piece).await {
                let _ = copy.abort("backfill: sending the batch failed").await;
                return Err(sql_error(&context, &e));
            }
        }
        copy.finish().await.map_err(|e| sql_error(&context, &e))
    }

    /// Sets, rolls back to or releases the transaction's one savepoint.
    pub(crate) async fn savepoint(&mut self, step: Savepoint) -> Result<(), ConnectorError> {
        if let (Some((log, _)), Some(_), false) =
            (&self.undo, &self.logged_at_commit, self.under_savepoints)
        {
            // Before the savepoint, so that its rollback keeps the table.
            let context = format!("insert into {}", self.table.quoted);
            Conn::Postgres(&mut self.tx)
                .exec(&log.replace_keys(), &context)
                .await?;
            self.under_savepoints = true;
        }
        sqlx::raw_sql(step.sql())
            .execute(&mut *self.tx)
            .await
            .map(drop)
            .map_err(|e| sql_error("savepoint", &e))
    }

    /// Runs `extra`, then commits.
    pub(crate) async fn commit(mut self, extra: Option<&Extra>) -> Result<(), ConnectorError> {
        let context = format!("replace in {}", self.table.quoted);
        match (&self.undo, &self.logged_at_commit) {
            (Some((log, b)), Some((predicate, bounds))) => {
                let mut conn = Conn::Postgres(&mut self.tx);
                for stmt in log.replace_commit(b, predicate, bounds, self.under_savepoints) {
                    conn.exec(&stmt, &context).await?;
                }
            }
            (Some((log, b)), None) => {
                Conn::Postgres(&mut self.tx)
                    .exec(&log.mark_deleted(b), &context)
                    .await?;
            }
            (None, _) => {}
        }
        if let Some(exchange) = &self.exchange {
            exchange.finish(&mut self.tx).await?;
        }
        run_extra(&mut self.tx, extra).await?;
        self.tx.commit().await.map_err(|e| sql_error(&context, &e))
    }
}
