//! Reading windows from PostgreSQL with keyset pagination.
//!
//! The user's query (`:start`/`:end` rewritten to `$1`/`$2`) becomes a subquery `q`; a page is
//! `SELECT * FROM (query) AS q WHERE (k1, k2) > ($3, $4) ORDER BY k1, k2 LIMIT $5`.
//! Invariant: the query is prepared when the source is opened, so unknown key columns and
//! column types without a faithful [`Value`] fail before anything is written.

use std::sync::Arc;

use backfill_core::params::{self, Placeholder};
use backfill_core::plan::Window;
use backfill_core::retry::ErrorClass;
use backfill_core::spec::SourceSpec;
use backfill_core::timefmt::TimeFormat;
use backfill_core::value::{BATCH_BYTES, Batch, Value, row_size};
use sqlx::postgres::PgPool;
use sqlx::{AssertSqlSafe, Column, Executor, Row, SqlSafeStr, Statement, TypeInfo, ValueRef as _};

use super::{
    arguments, check_type, connect, copy_binary, decode_row, decode_rows, decode_value, sql,
    sql_error,
};
use crate::ident::check_column;
use crate::shared::{keyed_batch, page_columns, page_values, resolve_column, resolve_key};
use crate::window::{check_names, named_values};
use crate::{ConnectorError, RawBatch, RawStream, RowStream, Source};
use futures_util::TryStreamExt;

const CONTEXT: &str = "source query";

/// A PostgreSQL source: the spec's query, read in key order.
#[derive(Debug)]
pub struct PostgresSource {
    pool: PgPool,
    /// Parameter names of the rewritten query, one per `$N`.
    names: Vec<String>,
    /// The query's columns.
    columns: Vec<String>,
    /// The type OID of each column, as the driver reports it.
    oids: Vec<Option<u32>>,
    /// Key columns, spelled as the query returns them.
    key: Vec<String>,
    time_format: TimeFormat,
    /// The query, placeholders rewritten.
    query: String,
    first_page: Arc<str>,
    next_page: Arc<str>,
    /// The pages without a limit, for [`PostgresSource::stream`].
    first_stream: Arc<str>,
    next_stream: Arc<str>,
    /// The whole window in no particular order, for [`PostgresSource::stream_unordered`].
    unordered_stream: Arc<str>,
    count_sql: Arc<str>,
    any_sql: Arc<str>,
}

impl PostgresSource {
    /// Connects, prepares the query to learn its columns and their types, and checks that
    /// every `key` column is among them and every type can be read.
    pub async fn open(
        spec: &SourceSpec,
        key: &[String],
        pool_size: u32,
    ) -> Result<PostgresSource, ConnectorError> {
        // No key is fine for `sql` mode, which reads no rows; reading in order needs one
        // (checked where rows are read, by `require_key`).
        for k in key {
            check_column(k, "key column")?;
        }
        let rewritten = params::rewrite(
            sql::trim_statement(&spec.query),
            Placeholder::DollarNumbered,
        );
        check_names(&rewritten.names, CONTEXT)?;
        let pool = connect(&spec.url, pool_size).await?;

        let probe = AssertSqlSafe(sql::wrap("*", &rewritten.sql));
        let statement = (&pool)
            .prepare(probe.into_sql_str())
            .await
            .map_err(|e| sql_error(CONTEXT, &e))?;
        let mut columns = Vec::with_capacity(statement.columns().len());
        let mut oids = Vec::with_capacity(statement.columns().len());
        for c in statement.columns() {
            check_type(c.name(), c.type_info().name())?;
            columns.push(c.name().to_owned());
            oids.push(c.type_info().oid().map(|o| o.0));
        }
        let key = resolve_key(key, &columns, CONTEXT)?;

        let quoted: Vec<String> = key.iter().map(|k| sql::quote(k)).collect();
        let first_param = rewritten.names.len() + 1;
        Ok(PostgresSource {
            pool,
            first_page: sql::page(&rewritten.sql, &quoted, first_param, false).into(),
            next_page: sql::page(&rewritten.sql, &quoted, first_param, true).into(),
            first_stream: sql::ordered(&rewritten.sql, &quoted, first_param, false).into(),
            next_stream: sql::ordered(&rewritten.sql, &quoted, first_param, true).into(),
            // Not the probe's text: sqlx keeps the probe prepared on its connection, with the
            // parameter types the server guessed, and would run this query with them instead
            // of the types the window's values are sent as.
            unordered_stream: format!("{} WHERE true", sql::wrap("*", &rewritten.sql)).into(),
            count_sql: sql::count(&rewritten.sql).into(),
            any_sql: sql::any(&rewritten.sql).into(),
            names: rewritten.names,
            query: rewritten.sql,
            columns,
            oids,
            key,
            time_format: spec.time_format.clone(),
        })
    }

    /// Streams the rows of `window` after `after`, in key order, from one query, `chunk` rows
    /// per batch. A keyset page re-runs the query and sorts the whole window for every
    /// batch; a stream reads the window once. A task holds one pooled connection and reads
    /// the next batch while the engine writes the one before (the read of batch n + 1
    /// overlaps the write of batch n), starting a batch only once the previous one was taken:
    /// at most two batches of a stream are in memory. Dropping the stream stops it.
    pub(crate) async fn stream(
        &self,
        window: &Window,
        after: Option<&[Value]>,
        chunk: u32,
    ) -> Result<RowStream, ConnectorError> {
        let values = page_values(&self.key, &self.names, window, &self.time_format, after)?;
        let sql = match after {
            None => Arc::clone(&self.first_stream),
            Some(_) => Arc::clone(&self.next_stream),
        };
        self.stream_query(sql, &values, chunk)
    }

    /// Streams every row of `window` like [`stream`](Self::stream), in whatever order the
    /// query returns them: for a writer that takes the window whole (`replace`), which has
    /// no use for key order and need not pay for sorting each window.
    pub(crate) async fn stream_unordered(
        &self,
        window: &Window,
        chunk: u32,
    ) -> Result<RowStream, ConnectorError> {
        let values = named_values(&self.names, window, &self.time_format);
        self.stream_query(Arc::clone(&self.unordered_stream), &values, chunk)
    }

    /// The query's columns and their type OIDs.
    pub(crate) fn raw_types(&self) -> (&[String], &[Option<u32>]) {
        (&self.columns, &self.oids)
    }

    /// Streams every row of `window` in no particular order, undecoded: each batch is the
    /// binary `COPY` tuples of up to `chunk` rows (fewer at `BATCH_BYTES`), each field the
    /// bytes PostgreSQL sent (results come in binary, the format binary `COPY` reads). A NULL
    /// key fails the stream, as on the row path. At most two batches are in memory.
    pub(crate) async fn stream_raw(
        &self,
        window: &Window,
        chunk: u32,
    ) -> Result<RawStream, ConnectorError> {
        let values = named_values(&self.names, window, &self.time_format);
        let reader = Undecoded {
            columns: self.columns.clone(),
            oids: self.oids.clone(),
            key_positions: self.key_positions(&self.columns)?,
            chunk: chunk.max(1) as usize,
        };
        let sql = Arc::clone(&self.unordered_stream);
        let (rx, task) = spawn_batches(self.pool.clone(), sql, &values, reader)?;
        Ok(RawStream::new(self.columns.clone(), rx, task))
    }

    /// Runs `sql` with `values` in a task that hands out batches of `chunk` rows.
    fn stream_query(
        &self,
        sql: Arc<str>,
        values: &[Value],
        chunk: u32,
    ) -> Result<RowStream, ConnectorError> {
        let reader = Decoded {
            columns: self.columns.clone(),
            key_positions: self.key_positions(&self.columns)?,
            chunk: chunk.max(1) as usize,
        };
        let (rx, task) = spawn_batches(self.pool.clone(), sql, values, reader)?;
        Ok(RowStream::new(self.columns.clone(), rx, task))
    }

    /// Whether `window` holds any row, without ordering the window.
    pub(crate) async fn has_rows(&self, window: &Window) -> Result<bool, ConnectorError> {
        let values = named_values(&self.names, window, &self.time_format);
        sqlx::query_scalar_with(
            AssertSqlSafe(Arc::clone(&self.any_sql)),
            arguments(&values)?,
        )
        .fetch_one(&self.pool)
        .await
        .map_err(|e| sql_error(CONTEXT, &e))
    }

    async fn count_as(&self, window: &Window, format: &TimeFormat) -> Result<u64, ConnectorError> {
        let values = named_values(&self.names, window, format);
        let args = arguments(&values)?;
        // Another format binds other parameter types: do not reuse a statement prepared
        // for the configured one.
        let persistent = format == &self.time_format;
        let row = sqlx::query_with(AssertSqlSafe(Arc::clone(&self.count_sql)), args)
            .persistent(persistent)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| sql_error(CONTEXT, &e))?;
        let n: i64 = row.try_get(0).map_err(|e| sql_error(CONTEXT, &e))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }
}

/// The rows of a streamed query.
type PgRows<'p> = futures_util::stream::BoxStream<'p, Result<sqlx::postgres::PgRow, sqlx::Error>>;

/// How a stream's task turns the query's rows into batches.
trait BatchReader: Send + 'static {
    type Batch: Send + 'static;
    /// The next batch; true with it when the query is exhausted or failed.
    fn read<'a>(
        &'a self,
        rows: &'a mut PgRows<'_>,
    ) -> impl Future<Output = (Result<Self::Batch, ConnectorError>, bool)> + Send + 'a;
    fn is_empty(batch: &Self::Batch) -> bool;
}

/// Rows decoded into values, `chunk` at a time, a NULL key refused.
struct Decoded {
    columns: Vec<String>,
    key_positions: Vec<usize>,
    chunk: usize,
}

impl BatchReader for Decoded {
    type Batch = Vec<Vec<Value>>;
    async fn read(&self, rows: &mut PgRows<'_>) -> (Result<Self::Batch, ConnectorError>, bool) {
        let (batch, end) = next_chunk(rows, &self.columns, self.chunk).await;
        let checked = batch.and_then(|rows| {
            crate::ident::reject_null_keys(&rows, &self.key_positions, &self.columns).map(|()| rows)
        });
        (checked, end)
    }
    fn is_empty(batch: &Self::Batch) -> bool {
        batch.is_empty()
    }
}

/// Rows kept as binary `COPY` tuples, checked against the prepared types.
struct Undecoded {
    columns: Vec<String>,
    oids: Vec<Option<u32>>,
    key_positions: Vec<usize>,
    chunk: usize,
}

impl BatchReader for Undecoded {
    type Batch = RawBatch;
    async fn read(&self, rows: &mut PgRows<'_>) -> (Result<Self::Batch, ConnectorError>, bool) {
        next_raw_chunk(
            rows,
            &self.columns,
            &self.oids,
            &self.key_positions,
            self.chunk,
        )
        .await
    }
    fn is_empty(batch: &Self::Batch) -> bool {
        batch.is_empty()
    }
}

/// Runs `sql` with `values` in a task that hands out `reader`'s batches, each with whether
/// it is the window's last.
fn spawn_batches<R: BatchReader>(
    pool: PgPool,
    sql: Arc<str>,
    values: &[Value],
    reader: R,
) -> Result<(crate::BatchReceiver<R::Batch>, tokio::task::JoinHandle<()>), ConnectorError> {
    let args = arguments(values)?;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let task = tokio::spawn(async move {
        let mut rows: PgRows<'_> = sqlx::query_with(AssertSqlSafe(sql), args).fetch(&pool);
        loop {
            // A batch is read only once the one before it was taken: at most two batches
            // of a stream are alive, the one being written and the one being read.
            let Ok(permit) = tx.reserve().await else {
                return;
            };
            let (batch, end) = reader.read(&mut rows).await;
            let failed = batch.is_err();
            // The last batch goes even when empty: it tells the end of the window from a
            // task that stopped early.
            if end || !matches!(&batch, Ok(b) if R::is_empty(b)) {
                permit.send(batch.map(|b| (b, end)));
            }
            if end || failed {
                return;
            }
        }
    });
    Ok((rx, task))
}

/// Reads the next undecoded batch from a streamed query, as [`next_chunk`] reads a decoded
/// one; true with it when the query is exhausted or failed.
async fn next_raw_chunk<S>(
    rows: &mut S,
    columns: &[String],
    oids: &[Option<u32>],
    key_positions: &[usize],
    chunk: usize,
) -> (Result<RawBatch, ConnectorError>, bool)
where
    S: futures_util::Stream<Item = Result<sqlx::postgres::PgRow, sqlx::Error>> + Unpin,
{
    let mut batch = RawBatch {
        rows: 0,
        full: false,
        tuples: Vec::with_capacity(64 * 1024),
    };
    while batch.rows < chunk && batch.tuples.len() < BATCH_BYTES {
        match rows.try_next().await {
            Ok(Some(row)) => {
                if batch.rows == 0
                    && let Err(e) = same_types(&row, columns, oids)
                {
                    return (Err(e), true);
                }
                if let Err(e) = raw_row(&row, columns, key_positions, &mut batch.tuples) {
                    return (Err(e), true);
                }
                batch.rows += 1;
            }
            Ok(None) => return (Ok(batch), true),
            Err(e) => return (Err(sql_error(CONTEXT, &e)), true),
        }
    }
    batch.full = true;
    (Ok(batch), false)
}

/// Whether `row`'s columns have the types the query was prepared with, which the target was
/// chosen for: a column whose type follows a parameter's (`SELECT :start AS s`) may differ.
/// An error (a `Data` one: the partition is then redone on the decoded path) when not.
fn same_types(
    row: &sqlx::postgres::PgRow,
    columns: &[String],
    oids: &[Option<u32>],
) -> Result<(), ConnectorError> {
    for (i, column) in row.columns().iter().enumerate() {
        let got = column.type_info().oid().map(|o| o.0);
        if got != oids.get(i).copied().flatten() {
            return Err(ConnectorError::Sql {
                context: CONTEXT.to_owned(),
                message: format!(
                    "column `{}` came back as {} where the query was prepared with another \
                     type; the partition is read again decoded",
                    columns.get(i).map_or("?", String::as_str),
                    column.type_info().name()
                ),
                class: ErrorClass::Data,
            });
        }
    }
    Ok(())
}

/// Appends `row` as one binary `COPY` tuple of its fields' wire bytes; a NULL key is an
/// error naming the column, as on the row path.
fn raw_row(
    row: &sqlx::postgres::PgRow,
    columns: &[String],
    key_positions: &[usize],
    out: &mut Vec<u8>,
) -> Result<(), ConnectorError> {
    let mut fields = Vec::with_capacity(columns.len());
    for (i, column) in columns.iter().enumerate() {
        let value = row.try_get_raw(i).map_err(|e| sql_error(CONTEXT, &e))?;
        if value.is_null() {
            if key_positions.contains(&i) {
                return Err(ConnectorError::Data {
                    message: format!(
                        "a source row has NULL in key column \"{}\"; key values must be \
                         non-NULL to be ordered and resumed",
                        column
                    ),
                });
            }
            fields.push(None);
        } else {
            let bytes = value.as_bytes().map_err(|e| ConnectorError::Data {
                message: format!("{CONTEXT}: column `{column}`: {e}"),
            })?;
            fields.push(Some(bytes));
        }
    }
    copy_binary::raw_tuple(out, fields.into_iter()).ok_or_else(|| ConnectorError::Data {
        message: format!("{CONTEXT}: a row too wide for binary COPY"),
    })
}

/// Reads the next batch from a streamed query: up to `chunk` rows, or fewer at the row that
/// reaches `BATCH_BYTES` (`Batch::is_full` then tells the engine to read on) or at the end;
/// true with it when the query is exhausted or failed. Rows are decoded as they arrive, so
/// no raw row outlives its message in the driver's read buffer.
async fn next_chunk<S>(
    rows: &mut S,
    columns: &[String],
    chunk: usize,
) -> (Result<Vec<Vec<Value>>, ConnectorError>, bool)
where
    S: futures_util::Stream<Item = Result<sqlx::postgres::PgRow, sqlx::Error>> + Unpin,
{
    let mut buf = Vec::with_capacity(chunk.min(1024));
    let mut size = 0;
    while buf.len() < chunk && size < BATCH_BYTES {
        match rows.try_next().await {
            Ok(Some(row)) => match decode_row(&row, columns) {
                Ok(values) => {
                    size += row_size(&values);
                    buf.push(values);
                }
                Err(e) => return (Err(e), true),
            },
            Ok(None) => return (Ok(buf), true),
            Err(e) => return (Err(sql_error(CONTEXT, &e)), true),
        }
    }
    (Ok(buf), false)
}

impl Source for PostgresSource {
    async fn read_batch(
        &self,
        window: &Window,
        after: Option<&[Value]>,
        limit: u32,
    ) -> Result<Batch, ConnectorError> {
        let mut values = page_values(&self.key, &self.names, window, &self.time_format, after)?;
        values.push(Value::Int(i64::from(limit)));
        let sql = match after {
            None => &self.first_page,
            Some(_) => &self.next_page,
        };
        let args = arguments(&values)?;
        let rows = sqlx::query_with(AssertSqlSafe(Arc::clone(sql)), args)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| sql_error(CONTEXT, &e))?;
        let columns = page_columns(&rows, &self.columns);
        let rows = decode_rows(rows, &columns)?;
        keyed_batch(&self.key, columns, rows, CONTEXT)
    }

    fn key_positions(&self, columns: &[String]) -> Result<Vec<usize>, ConnectorError> {
        crate::ident::key_positions(&self.key, columns, CONTEXT)
    }

    async fn count(&self, window: &Window) -> Result<u64, ConnectorError> {
        self.count_as(window, &self.time_format).await
    }

    async fn sample(
        &self,
        window: &Window,
        column: &str,
        limit: u32,
    ) -> Result<Vec<Value>, ConnectorError> {
        let column = resolve_column(&self.columns, column, CONTEXT)?;
        let mut values = named_values(&self.names, window, &self.time_format);
        values.push(Value::Int(i64::from(limit)));
        let text = sql::sample(&self.query, &sql::quote(column), values.len());
        let args = arguments(&values)?;
        let rows = sqlx::query_with(AssertSqlSafe(text), args)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| sql_error(CONTEXT, &e))?;
        let rows = decode_rows(rows, std::slice::from_ref(column))?;
        Ok(rows
            .into_iter()
            .filter_map(|r| r.into_iter().next())
            .collect())
    }

    async fn count_with_format(
        &self,
        window: &Window,
        format: &TimeFormat,
    ) -> Result<u64, ConnectorError> {
        self.count_as(window, format).await
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}

/// What `source.ready` says is read in its own context, so its errors name it.
const READY_CONTEXT: &str = "source.ready query";

impl PostgresSource {
    /// The first value of the first row `source.ready` returns for `window` (bound like the
    /// source query), `None` for no row. See `crate::ready`.
    pub(crate) async fn ready_value(
        &self,
        ready_sql: &str,
        window: &Window,
    ) -> Result<Option<Value>, ConnectorError> {
        let rewritten =
            params::rewrite(sql::trim_statement(ready_sql), Placeholder::DollarNumbered);
        check_names(&rewritten.names, READY_CONTEXT)?;
        let values = named_values(&rewritten.names, window, &self.time_format);
        let row = sqlx::query_with(AssertSqlSafe(rewritten.sql), arguments(&values)?)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| sql_error(READY_CONTEXT, &e))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let values = crate::shared::decode_row(&row, &["ready".to_owned()], decode_value)?;
        Ok(values.into_iter().next())
    }
}
