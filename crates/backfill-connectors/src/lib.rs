//! Sources and sinks: reading a window of rows and writing batches of them, per database.
//!
//! Owns: the [`Source`] and [`Sink`] protocols, one module per system ([`sqlite`],
//! [`postgres`], [`mysql`] for MySQL and MariaDB), and the single place where systems are
//! registered: the closed enums [`AnySource`] and [`AnySink`], built by [`open_source`] and
//! [`open_sink`] from the URL scheme. The engine only ever sees database-neutral types:
//! [`Value`], [`Batch`], [`Window`] and [`RowCounts`].
//!
//! A third, optional protocol, [`AnyPushdown`] ([`open_pushdown`]), moves the same batches
//! without the rows leaving the databases when source and target allow it (both SQLite
//! files today); the engine uses it instead of `read_batch` + `upsert`/`replace` and keeps
//! the same batches, checkpoints and counts.
//!
//! [`fingerprint`] computes `backfill_core::fingerprint` inside each database (row hashes,
//! range and bucketed fingerprints) for diff and reconciliation.
//!
//! Does not: plan, retry, throttle, checkpoint or decide when to commit a partition; the engine
//! does. Connectors never read the state store; the one bridge is [`Extra`], a statement the
//! engine hands in to run inside the write transaction.
//!
//! Invariants:
//! - Writes are idempotent per batch: writing the same batch again, any number of times,
//!   leaves the target as one write would (upsert skips identical rows; replace deletes the
//!   window first, in the same transaction).
//! - Every value, window bound and key is a bound parameter; no value is ever pasted into SQL.
//! - Identifiers (table, key and column names) are validated with
//!   [`backfill_core::spec::is_identifier`] and quoted before they reach SQL text.
//! - A write and its [`Extra`] statement commit together or not at all.
//! - Error messages never hold a password (see [`ConnectorError`]).

mod error;
pub mod fingerprint;
mod ident;
pub mod mysql;
pub mod nodelay;
pub mod postgres;
pub mod probe;
pub mod ready;
pub mod shadow;
mod shared;
pub mod sqlite;
pub mod undo;
pub mod watch;
mod window;

use std::future::Future;

use backfill_core::plan::Window;
use backfill_core::retry::ErrorClass;
use backfill_core::spec::{SourceSpec, TargetSpec};
use backfill_core::timefmt::TimeFormat;
use backfill_core::value::{Batch, RowCounts, Value};

pub use error::ConnectorError;
pub use probe::Probe;
pub use undo::{RollbackCounts, UndoBatch, UndoTarget};
pub use watch::Watch;

/// A statement the engine runs inside a sink's write transaction, after the write: the
/// state-store checkpoint when the target database is the state store, so the batch and its
/// checkpoint commit together (design invariant 2).
#[derive(Clone, Debug, PartialEq)]
pub struct Extra {
    /// SQL in the target's dialect, with positional placeholders (`?` for SQLite).
    pub sql: String,
    /// One value per placeholder.
    pub params: Vec<Value>,
}

/// Reads the rows of one window, in key order, a batch at a time.
///
/// Protocol: the engine opens a source once per run (see [`open_source`]) with the key columns
/// of the target; for each partition it calls [`read_batch`](Source::read_batch) with
/// `after = None`, then again with the key of the last row it wrote (its checkpoint) until a
/// batch comes back shorter than `limit`. `count`, `sample` and `count_with_format` serve
/// `plan` and `check`. Every method may be called concurrently from several partitions.
///
/// Guarantees: keyset pagination returns every row of the window exactly once, in key order,
/// across batches and across a resume from a checkpoint, provided the key is unique in the
/// query's result. Rows with a NULL key are refused with [`ConnectorError::Data`], since they
/// could be neither ordered nor resumed past.
///
/// Errors: [`ConnectorError::class`] says whether retrying the same call may help.
pub trait Source {
    /// Rows of `window` whose key is strictly greater than `after` (`None`: from the start),
    /// ordered by the key columns, at most `limit` of them; a source may stop earlier at the
    /// row that reaches `backfill_core::value::BATCH_BYTES` (each connector does), so only a batch
    /// that is not [`Batch::is_full`] ends the window. `columns` is filled even when no row
    /// matches.
    fn read_batch(
        &self,
        window: &Window,
        after: Option<&[Value]>,
        limit: u32,
    ) -> impl Future<Output = Result<Batch, ConnectorError>> + Send;

    /// Positions of the key columns in `columns` (a batch's columns), in key order;
    /// [`ConnectorError::MissingColumn`] when one is absent.
    fn key_positions(&self, columns: &[String]) -> Result<Vec<usize>, ConnectorError>;

    /// Number of rows the query returns for `window`, bound with the configured time format.
    fn count(&self, window: &Window) -> impl Future<Output = Result<u64, ConnectorError>> + Send;

    /// Up to `limit` non-NULL values of `column` from the query over `window` (used by `check`
    /// to validate the time format against real data).
    fn sample(
        &self,
        window: &Window,
        column: &str,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<Value>, ConnectorError>> + Send;

    /// Like [`count`](Source::count) but binding time windows with `format`, to suggest the
    /// right `time_format` when the configured one finds nothing.
    fn count_with_format(
        &self,
        window: &Window,
        format: &TimeFormat,
    ) -> impl Future<Output = Result<u64, ConnectorError>> + Send;

    /// Closes the connections; later calls fail.
    fn close(&self) -> impl Future<Output = ()> + Send;
}

/// Writes batches into the target, idempotently.
///
/// Protocol: the engine opens a sink once per run (see [`open_sink`]) and calls
/// [`check_columns`](Sink::check_columns) with the source's columns before the first write.
/// Then, per the spec's write mode:
/// - `upsert`: [`upsert`](Sink::upsert) once per batch, each in its own transaction;
/// - `replace`: [`begin_replace`](Sink::begin_replace) once per partition, then
///   [`ReplaceTxn::insert`] per batch, then [`ReplaceTxn::commit`];
/// - `sql`: [`execute_sql`](Sink::execute_sql) once per partition.
///
/// Guarantees: a call that returns an error has written nothing (its transaction rolled back);
/// replaying a batch or a partition leaves the target as one clean run would.
///
/// Errors: [`ConnectorError::class`] says whether retrying may help. An [`Extra`] statement
/// that affects other than exactly one row fails the write with a permanent error: the
/// attempt is stale (another worker owns the partition now).
pub trait Sink {
    /// Checks that the target table exists and has every column of `columns` (and, for
    /// upsert, a PRIMARY KEY or UNIQUE index on the key); returns the table's columns.
    fn check_columns(
        &self,
        columns: &[String],
    ) -> impl Future<Output = Result<Vec<String>, ConnectorError>> + Send;

    /// Whether an index of the target table leads with `column` (the integer primary key of
    /// a SQLite rowid table counts); `None` when the spec names no table. Without one,
    /// whatever selects a partition's window by `column` (`replace`'s delete, reconciliation
    /// after each partition) scans the whole table.
    fn leads_an_index(
        &self,
        column: &str,
    ) -> impl Future<Output = Result<Option<bool>, ConnectorError>> + Send;

    /// Inserts new keys and updates changed rows of `batch` in one transaction, then runs
    /// `extra` in it. Rows identical to the target are not written. Counts are exact:
    /// `inserted + updated + unchanged == batch.len()`; `read` is left 0 (the engine counts
    /// reads).
    fn upsert(
        &self,
        batch: &Batch,
        extra: Option<&Extra>,
    ) -> impl Future<Output = Result<RowCounts, ConnectorError>> + Send;

    /// Starts a transaction that has deleted the rows of `window` from the target (by the
    /// spec's `window_column`, bound with the target time format, or as integers for key
    /// windows). Nothing is visible to others until [`ReplaceTxn::commit`].
    fn begin_replace(
        &self,
        window: &Window,
    ) -> impl Future<Output = Result<ReplaceTxn, ConnectorError>> + Send;

    /// Runs the spec's `sql` statement once with `:start` and `:end` bound to `window`;
    /// `affected` holds the rows it changed.
    fn execute_sql(
        &self,
        window: &Window,
    ) -> impl Future<Output = Result<RowCounts, ConnectorError>> + Send;

    /// Closes the connections; later calls fail.
    fn close(&self) -> impl Future<Output = ()> + Send;
}

/// A source of any registered system. Adding a system adds a variant and one arm per method.
#[derive(Debug)]
pub enum AnySource {
    /// SQLite file (`sqlite://path`).
    Sqlite(sqlite::SqliteSource),
    /// MySQL or MariaDB database (`mysql://user@host/db`).
    MySql(mysql::MySqlSource),
    /// PostgreSQL database (`postgres://user@host/db`).
    Postgres(postgres::PostgresSource),
}

/// A sink of any registered system. Adding a system adds a variant and one arm per method.
#[derive(Debug)]
pub enum AnySink {
    /// SQLite file (`sqlite://path`).
    Sqlite(sqlite::SqliteSink),
    /// MySQL or MariaDB database (`mysql://user@host/db`).
    MySql(mysql::MySqlSink),
    /// PostgreSQL database (`postgres://user@host/db`).
    Postgres(postgres::PostgresSink),
}

/// Opens the source of `spec` with a pool of at most `pool_size` connections, reading in the
/// order of the `key` columns (the target's key). Checks the query compiles, uses no
/// parameter but `:start`/`:end`, and returns every key column.
pub async fn open_source(
    spec: &SourceSpec,
    key: &[String],
    pool_size: u32,
) -> Result<AnySource, ConnectorError> {
    match spec.url.scheme().as_str() {
        "sqlite" => Ok(AnySource::Sqlite(
            sqlite::SqliteSource::open(spec, key, pool_size).await?,
        )),
        "mysql" => Ok(AnySource::MySql(
            mysql::MySqlSource::open(spec, key, pool_size).await?,
        )),
        "postgres" | "postgresql" => Ok(AnySource::Postgres(
            postgres::PostgresSource::open(spec, key, pool_size).await?,
        )),
        other => Err(unsupported(other, &spec.url)),
    }
}

/// Opens the sink of `spec` with a pool of at most `pool_size` connections. The target
/// database must exist; it is never created.
pub async fn open_sink(spec: &TargetSpec, pool_size: u32) -> Result<AnySink, ConnectorError> {
    match spec.url.scheme().as_str() {
        "sqlite" => Ok(AnySink::Sqlite(
            sqlite::SqliteSink::open(spec, pool_size).await?,
        )),
        "mysql" => Ok(AnySink::MySql(
            mysql::MySqlSink::open(spec, pool_size).await?,
        )),
        "postgres" | "postgresql" => Ok(AnySink::Postgres(
            postgres::PostgresSink::open(spec, pool_size).await?,
        )),
        other => Err(unsupported(other, &spec.url)),
    }
}

/// Opens a pushdown from `source` to `target` when both are systems that can move rows
/// between themselves (two SQLite files today) and the write mode is `upsert` or `replace`;
/// `Ok(None)` (logged at info level with the reason) when the row path must be used.
/// `extra_in_target`: the engine will hand in [`Extra`] statements that name tables of the
/// target database unqualified (the state store is the target).
///
/// Call it after [`open_source`] and [`open_sink`] succeeded (they validate the query and
/// the target file), then check [`AnyPushdown::columns`] with [`Sink::check_columns`].
pub async fn open_pushdown(
    source: &SourceSpec,
    target: &TargetSpec,
    pool_size: u32,
    extra_in_target: bool,
) -> Result<Option<AnyPushdown>, ConnectorError> {
    match (source.url.scheme().as_str(), target.url.scheme().as_str()) {
        ("sqlite", "sqlite") => {
            Ok(
                sqlite::SqlitePushdown::open(source, target, pool_size, extra_in_target)
                    .await?
                    .map(AnyPushdown::Sqlite),
            )
        }
        (s, t) => {
            tracing::info!(
                source = s,
                target = t,
                "pushdown not used: no pushdown between these systems"
            );
            Ok(None)
        }
    }
}

fn unsupported(scheme: &str, url: &backfill_core::SecretUrl) -> ConnectorError {
    ConnectorError::Connect {
        url: url.redacted(),
        message: format!("no connector for scheme `{scheme}` (supported: sqlite, mysql, postgres)"),
    }
}

/// The rows of one window in key order, read by one query and handed over a batch at a
/// time (see [`AnySource::stream`]). Dropping it stops the read.
#[derive(Debug)]
pub struct RowStream {
    columns: Vec<String>,
    rx: BatchReceiver<Vec<Vec<Value>>>,
    task: tokio::task::JoinHandle<()>,
    ended: bool,
}

impl RowStream {
    /// A stream whose task sends each batch with whether it is the window's last.
    pub(crate) fn new(
        columns: Vec<String>,
        rx: BatchReceiver<Vec<Vec<Value>>>,
        task: tokio::task::JoinHandle<()>,
    ) -> RowStream {
        RowStream {
            columns,
            rx,
            task,
            ended: false,
        }
    }

    /// The next batch (as many rows as the stream's chunk size, fewer at the end or when
    /// the rows reach `backfill_core::value::BATCH_BYTES`); empty when the window is
    /// exhausted. A reading task that stopped before the window's end (a panic) is an error,
    /// never an early end: `replace` would commit the window without its other rows.
    pub async fn next_batch(&mut self) -> Result<Batch, ConnectorError> {
        let rows = next_of(&mut self.rx, &mut self.ended)
            .await?
            .unwrap_or_default();
        Ok(Batch {
            columns: self.columns.clone(),
            rows,
        })
    }
}

/// The receiving end of a stream's channel: each batch with whether it is the window's last.
pub(crate) type BatchReceiver<T> = tokio::sync::mpsc::Receiver<Result<(T, bool), ConnectorError>>;

/// The next item of a stream's channel: `None` after the window's last batch, an error when
/// the task stopped without sending it.
async fn next_of<T>(
    rx: &mut BatchReceiver<T>,
    ended: &mut bool,
) -> Result<Option<T>, ConnectorError> {
    if *ended {
        return Ok(None);
    }
    match rx.recv().await {
        Some(item) => {
            let (batch, end) = item?;
            *ended = end;
            Ok(Some(batch))
        }
        None => Err(ConnectorError::Sql {
            context: "source query".to_owned(),
            message: "the read of the window stopped before its end".to_owned(),
            class: ErrorClass::Transient,
        }),
    }
}

impl Drop for RowStream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Rows of one batch as PostgreSQL sent them: binary `COPY` tuples of the fields' wire bytes,
/// never decoded (see [`AnySource::stream_raw`]).
#[derive(Debug)]
pub struct RawBatch {
    pub(crate) rows: usize,
    pub(crate) full: bool,
    /// Binary `COPY` tuples, without the stream's header and trailer.
    pub(crate) tuples: Vec<u8>,
}

impl RawBatch {
    /// Rows in the batch.
    pub fn len(&self) -> usize {
        self.rows
    }

    /// Whether the batch has no row (the window is exhausted).
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Whether more rows may follow: the batch holds its chunk of rows or reached
    /// `backfill_core::value::BATCH_BYTES`, as `Batch::is_full` tells of a decoded batch.
    pub fn is_full(&self) -> bool {
        self.full
    }
}

/// The rows of one window, undecoded, read by one query and handed over a batch at a time
/// (see [`AnySource::stream_raw`]). Dropping it stops the read.
#[derive(Debug)]
pub struct RawStream {
    columns: Vec<String>,
    rx: BatchReceiver<RawBatch>,
    task: tokio::task::JoinHandle<()>,
    ended: bool,
}

impl RawStream {
    /// A stream whose task sends each batch with whether it is the window's last.
    pub(crate) fn new(
        columns: Vec<String>,
        rx: BatchReceiver<RawBatch>,
        task: tokio::task::JoinHandle<()>,
    ) -> RawStream {
        RawStream {
            columns,
            rx,
            task,
            ended: false,
        }
    }

    /// The query's columns, in the order of each tuple's fields.
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// The next batch; empty when the window is exhausted. A reading task that stopped
    /// before the window's end is an error, as for [`RowStream::next_batch`].
    pub async fn next_batch(&mut self) -> Result<RawBatch, ConnectorError> {
        Ok(next_of(&mut self.rx, &mut self.ended)
            .await?
            .unwrap_or(RawBatch {
                rows: 0,
                full: false,
                tuples: Vec::new(),
            }))
    }
}

impl Drop for RawStream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl AnySource {
    /// Streams the rows of `window` after `after` (exclusive), in key order, `chunk` rows per
    /// batch, from one query, when this source can: the batches are those successive
    /// [`read_batch`](AnySource::read_batch) calls would return, but the window is read
    /// once. `None` when the source reads page by page (SQLite, MySQL).
    pub async fn stream(
        &self,
        window: &Window,
        after: Option<&[Value]>,
        chunk: u32,
    ) -> Result<Option<RowStream>, ConnectorError> {
        match self {
            AnySource::Postgres(s) => s.stream(window, after, chunk).await.map(Some),
            AnySource::Sqlite(_) | AnySource::MySql(_) => Ok(None),
        }
    }

    /// Streams every row of `window` like [`stream`](AnySource::stream) but in no particular
    /// order (no sort of the window), for a writer that takes the window whole. `None` when
    /// the source reads page by page.
    pub async fn stream_unordered(
        &self,
        window: &Window,
        chunk: u32,
    ) -> Result<Option<RowStream>, ConnectorError> {
        match self {
            AnySource::Postgres(s) => s.stream_unordered(window, chunk).await.map(Some),
            AnySource::Sqlite(_) | AnySource::MySql(_) => Ok(None),
        }
    }

    /// The query's columns and their PostgreSQL type OIDs (`None` for a column whose type
    /// the driver did not name), when this source can hand rows over undecoded
    /// ([`stream_raw`](AnySource::stream_raw)): PostgreSQL only.
    pub fn raw_types(&self) -> Option<(&[String], &[Option<u32>])> {
        match self {
            AnySource::Postgres(s) => Some(s.raw_types()),
            AnySource::Sqlite(_) | AnySource::MySql(_) => None,
        }
    }

    /// Streams every row of `window` like [`stream_unordered`](AnySource::stream_unordered),
    /// but undecoded: each batch is binary `COPY` tuples of the fields exactly as PostgreSQL
    /// sent them, for a PostgreSQL target whose columns have the same types
    /// ([`ReplaceTxn::accepts_raw`]), which stores them without the engine decoding and
    /// encoding every value. A NULL key is refused as on the row path. `None` when the
    /// source is not PostgreSQL.
    pub async fn stream_raw(
        &self,
        window: &Window,
        chunk: u32,
    ) -> Result<Option<RawStream>, ConnectorError> {
        match self {
            AnySource::Postgres(s) => s.stream_raw(window, chunk).await.map(Some),
            AnySource::Sqlite(_) | AnySource::MySql(_) => Ok(None),
        }
    }

    /// Whether `window` holds any row. PostgreSQL and SQLite ask without ordering the window
    /// (the database stops at the first row); MySQL reads a one-row page.
    pub async fn has_rows(&self, window: &Window) -> Result<bool, ConnectorError> {
        match self {
            AnySource::Postgres(s) => s.has_rows(window).await,
            AnySource::Sqlite(s) => s.has_rows(window).await,
            other => Ok(!other.read_batch(window, None, 1).await?.is_empty()),
        }
    }

    /// See [`Source::read_batch`].
    pub async fn read_batch(
        &self,
        window: &Window,
        after: Option<&[Value]>,
        limit: u32,
    ) -> Result<Batch, ConnectorError> {
        match self {
            AnySource::Sqlite(s) => s.read_batch(window, after, limit).await,
            AnySource::MySql(s) => s.read_batch(window, after, limit).await,
            AnySource::Postgres(s) => s.read_batch(window, after, limit).await,
        }
    }

    /// See [`Source::key_positions`].
    pub fn key_positions(&self, columns: &[String]) -> Result<Vec<usize>, ConnectorError> {
        match self {
            AnySource::Sqlite(s) => s.key_positions(columns),
            AnySource::MySql(s) => s.key_positions(columns),
            AnySource::Postgres(s) => s.key_positions(columns),
        }
    }

    /// See [`Source::count`].
    pub async fn count(&self, window: &Window) -> Result<u64, ConnectorError> {
        match self {
            AnySource::Sqlite(s) => s.count(window).await,
            AnySource::MySql(s) => s.count(window).await,
            AnySource::Postgres(s) => s.count(window).await,
        }
    }

    /// See [`Source::sample`].
    pub async fn sample(
        &self,
        window: &Window,
        column: &str,
        limit: u32,
    ) -> Result<Vec<Value>, ConnectorError> {
        match self {
            AnySource::Sqlite(s) => s.sample(window, column, limit).await,
            AnySource::MySql(s) => s.sample(window, column, limit).await,
            AnySource::Postgres(s) => s.sample(window, column, limit).await,
        }
    }

    /// See [`Source::count_with_format`].
    pub async fn count_with_format(
        &self,
        window: &Window,
        format: &TimeFormat,
    ) -> Result<u64, ConnectorError> {
        match self {
            AnySource::Sqlite(s) => s.count_with_format(window, format).await,
            AnySource::MySql(s) => s.count_with_format(window, format).await,
            AnySource::Postgres(s) => s.count_with_format(window, format).await,
        }
    }

    /// See [`Source::close`].
    pub async fn close(&self) {
        match self {
            AnySource::Sqlite(s) => s.close().await,
            AnySource::MySql(s) => s.close().await,
            AnySource::Postgres(s) => s.close().await,
        }
    }
}

impl AnySink {
    /// See [`Sink::check_columns`].
    pub async fn check_columns(&self, columns: &[String]) -> Result<Vec<String>, ConnectorError> {
        match self {
            AnySink::Sqlite(s) => s.check_columns(columns).await,
            AnySink::MySql(s) => s.check_columns(columns).await,
            AnySink::Postgres(s) => s.check_columns(columns).await,
        }
    }

    /// See [`Sink::leads_an_index`].
    pub async fn leads_an_index(&self, column: &str) -> Result<Option<bool>, ConnectorError> {
        match self {
            AnySink::Sqlite(s) => s.leads_an_index(column).await,
            AnySink::MySql(s) => s.leads_an_index(column).await,
            AnySink::Postgres(s) => s.leads_an_index(column).await,
        }
    }

    /// See [`Sink::upsert`].
    pub async fn upsert(
        &self,
        batch: &Batch,
        extra: Option<&Extra>,
    ) -> Result<RowCounts, ConnectorError> {
        match self {
            AnySink::Sqlite(s) => s.upsert(batch, extra).await,
            AnySink::MySql(s) => s.upsert(batch, extra).await,
            AnySink::Postgres(s) => s.upsert(batch, extra).await,
        }
    }

    /// See [`Sink::begin_replace`].
    pub async fn begin_replace(&self, window: &Window) -> Result<ReplaceTxn, ConnectorError> {
        match self {
            AnySink::Sqlite(s) => s.begin_replace(window).await,
            AnySink::MySql(s) => s.begin_replace(window).await,
            AnySink::Postgres(s) => s.begin_replace(window).await,
        }
    }

    /// [`Sink::upsert`] that also writes the batch's undo log (see [`undo`]) in its
    /// transaction when `undo` is given.
    pub async fn upsert_undo(
        &self,
        batch: &Batch,
        extra: Option<&Extra>,
        undo: Option<&UndoBatch>,
    ) -> Result<RowCounts, ConnectorError> {
        match self {
            AnySink::Sqlite(s) => s.upsert_undo(batch, extra, undo).await,
            AnySink::MySql(s) => s.upsert_undo(batch, extra, undo).await,
            AnySink::Postgres(s) => s.upsert_undo(batch, extra, undo).await,
        }
    }

    /// [`Sink::begin_replace`] that logs the window's before-images first, and each
    /// inserted batch's keys, when `undo` is given.
    pub async fn begin_replace_undo(
        &self,
        window: &Window,
        undo: Option<&UndoBatch>,
    ) -> Result<ReplaceTxn, ConnectorError> {
        match self {
            AnySink::Sqlite(s) => s.begin_replace_undo(window, undo).await,
            AnySink::MySql(s) => s.begin_replace_undo(window, undo).await,
            AnySink::Postgres(s) => s.begin_replace_undo(window, undo).await,
        }
    }

    /// `propagate_deletes` in `upsert`: in one transaction, logs as `deleted` and deletes
    /// the target rows of `window` (bounded by `column`) whose key no batch of the run
    /// wrote; returns the rows deleted. Call after the window's last batch.
    pub async fn delete_missing(
        &self,
        window: &Window,
        column: &str,
        undo: &UndoBatch,
    ) -> Result<u64, ConnectorError> {
        match self {
            AnySink::Sqlite(s) => s.delete_missing(window, column, undo).await,
            AnySink::MySql(s) => s.delete_missing(window, column, undo).await,
            AnySink::Postgres(s) => s.delete_missing(window, column, undo).await,
        }
    }

    /// See [`Sink::execute_sql`].
    pub async fn execute_sql(&self, window: &Window) -> Result<RowCounts, ConnectorError> {
        match self {
            AnySink::Sqlite(s) => s.execute_sql(window).await,
            AnySink::MySql(s) => s.execute_sql(window).await,
            AnySink::Postgres(s) => s.execute_sql(window).await,
        }
    }

    /// See [`Sink::close`].
    pub async fn close(&self) {
        match self {
            AnySink::Sqlite(s) => s.close().await,
            AnySink::MySql(s) => s.close().await,
            AnySink::Postgres(s) => s.close().await,
        }
    }
}

/// An open `replace` transaction: the window is already deleted inside it.
///
/// Protocol: [`insert`](ReplaceTxn::insert) each batch of the partition, then
/// [`commit`](ReplaceTxn::commit). Dropping it without committing rolls everything back (the
/// delete included), so a failed or cancelled partition leaves the target untouched.
#[derive(Debug)]
pub struct ReplaceTxn {
    inner: ReplaceInner,
    deleted: u64,
}

/// A step on the one savepoint of a [`ReplaceTxn`]; the same SQL on every backend.
#[derive(Clone, Copy, Debug)]
enum Savepoint {
    Set,
    RollBack,
    Release,
}

impl Savepoint {
    fn sql(self) -> &'static str {
        match self {
            Savepoint::Set => "SAVEPOINT backfill_rows",
            Savepoint::RollBack => "ROLLBACK TO SAVEPOINT backfill_rows",
            Savepoint::Release => "RELEASE SAVEPOINT backfill_rows",
        }
    }
}

#[derive(Debug)]
enum ReplaceInner {
    Sqlite(sqlite::SqliteReplace),
    MySql(mysql::MySqlReplace),
    Postgres(postgres::PostgresReplace),
}

impl ReplaceTxn {
    /// Rows of the window deleted when the transaction began.
    pub fn deleted(&self) -> u64 {
        self.deleted
    }

    /// Inserts `batch` inside the transaction; returns the rows inserted. A key that already
    /// exists outside the window is a constraint error (permanent).
    pub async fn insert(&mut self, batch: &Batch) -> Result<u64, ConnectorError> {
        match &mut self.inner {
            ReplaceInner::Sqlite(t) => t.insert(batch).await,
            ReplaceInner::MySql(t) => t.insert(batch).await,
            ReplaceInner::Postgres(t) => t.insert(batch).await,
        }
    }

    /// Inserts `batch` like [`insert`](ReplaceTxn::insert), except that rows the target
    /// rejects (a [`ErrorClass::Data`] error: constraint, range, type) do not fail it. Each
    /// part runs under a savepoint; a rejected part is rolled back and halved until every
    /// rejected row stands alone. Returns the rows inserted and, for each rejected row, its
    /// index in `batch` and the database's reason: `O(k log n)` statements for `k` rejected
    /// rows of `n`. Other errors fail the call, and the transaction is then unusable.
    ///
    /// For the second try of a partition whose plain inserts were rejected: savepoints cost
    /// a subtransaction each on PostgreSQL, so the first try goes without them.
    pub async fn insert_isolating(
        &mut self,
        batch: &Batch,
    ) -> Result<(u64, Vec<(usize, ConnectorError)>), ConnectorError> {
        let mut inserted = 0;
        let mut rejected = Vec::new();
        // Half-open ranges of `batch.rows`, taken left to right.
        let mut stack = vec![(0, batch.rows.len())];
        while let Some((from, to)) = stack.pop() {
            let part = Batch {
                columns: batch.columns.clone(),
                rows: batch.rows[from..to].to_vec(),
            };
            self.savepoint(Savepoint::Set).await?;
            match self.insert(&part).await {
                Ok(n) => {
                    inserted += n;
                    self.savepoint(Savepoint::Release).await?;
                }
                Err(e) if e.class() == ErrorClass::Data => {
                    self.savepoint(Savepoint::RollBack).await?;
                    self.savepoint(Savepoint::Release).await?;
                    if to - from > 1 {
                        let middle = from + (to - from) / 2;
                        stack.push((middle, to));
                        stack.push((from, middle));
                    } else {
                        rejected.push((from, e));
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok((inserted, rejected))
    }

    /// Whether [`insert_raw`](ReplaceTxn::insert_raw) can take batches of a source with
    /// these columns and type OIDs ([`AnySource::raw_types`]): a PostgreSQL target with every
    /// column, each of the same type, and no undo log that needs the batches' keys.
    pub fn accepts_raw(&self, columns: &[String], oids: &[Option<u32>]) -> bool {
        match &self.inner {
            ReplaceInner::Postgres(t) => t.accepts_raw(columns, oids),
            ReplaceInner::Sqlite(_) | ReplaceInner::MySql(_) => false,
        }
    }

    /// Inserts an undecoded batch of `stream` inside the transaction (binary `COPY`); returns
    /// the rows inserted. Only after [`accepts_raw`](ReplaceTxn::accepts_raw) said yes for
    /// the stream's columns.
    pub async fn insert_raw(
        &mut self,
        stream: &RawStream,
        batch: &RawBatch,
    ) -> Result<u64, ConnectorError> {
        match &mut self.inner {
            ReplaceInner::Postgres(t) => t.insert_raw(stream.columns(), batch).await,
            ReplaceInner::Sqlite(_) | ReplaceInner::MySql(_) => Err(ConnectorError::Data {
                message: "internal error: undecoded rows for a target that is not PostgreSQL"
                    .to_owned(),
            }),
        }
    }

    async fn savepoint(&mut self, step: Savepoint) -> Result<(), ConnectorError> {
        match &mut self.inner {
            ReplaceInner::Sqlite(t) => t.savepoint(step).await,
            ReplaceInner::MySql(t) => t.savepoint(step).await,
            ReplaceInner::Postgres(t) => t.savepoint(step).await,
        }
    }

    /// Runs `extra` (must affect exactly one row) and commits the delete and every insert at
    /// once. On error nothing is committed.
    pub async fn commit(self, extra: Option<&Extra>) -> Result<(), ConnectorError> {
        match self.inner {
            ReplaceInner::Sqlite(t) => t.commit(extra).await,
            ReplaceInner::MySql(t) => t.commit(extra).await,
            ReplaceInner::Postgres(t) => t.commit(extra).await,
        }
    }
}

/// Moves rows from the source to the target inside the databases, batch by batch, with the
/// guarantees of the row path: the same keyset batches, exact counts, idempotent writes, and
/// a write and its [`Extra`] committing together.
///
/// Protocol (`upsert`): per partition attempt, [`partition`](AnyPushdown::partition) counts
/// the rows after the checkpoint (nothing is written yet); then per batch,
/// [`PushedPartition::next_batch`] and [`PushedBatch::upsert`] with the checkpoint. (`replace`): per partition, [`begin_replace`](AnyPushdown::begin_replace),
/// then [`PushedReplace::commit`].
#[derive(Debug)]
pub enum AnyPushdown {
    /// SQLite file to SQLite file.
    Sqlite(sqlite::SqlitePushdown),
}

impl AnyPushdown {
    /// The columns the source query returns (all written to the target).
    pub fn columns(&self) -> &[String] {
        match self {
            AnyPushdown::Sqlite(p) => p.columns(),
        }
    }

    /// Starts a partition attempt over the rows of `window` whose key is strictly greater
    /// than `after` (`None`: from the start), handed out in key order like
    /// [`Source::read_batch`] would return them over successive calls; writes nothing. A
    /// NULL key is a [`ConnectorError::Data`] error. With `undo` (which must not ask for
    /// `every_key`), each batch's transaction also writes the undo log of the rows it
    /// inserts or changes (needs [`AnyPushdown::use_undo_log`] first).
    pub async fn partition(
        &self,
        window: &Window,
        after: Option<&[Value]>,
        undo: Option<&UndoBatch>,
    ) -> Result<PushedPartition<'_>, ConnectorError> {
        match self {
            AnyPushdown::Sqlite(p) => Ok(PushedPartition {
                inner: PushedPartitionInner::Sqlite(p.partition(window, after, undo).await?),
            }),
        }
    }

    /// `replace` mode: a transaction that has deleted the rows of `window` from the target
    /// and inserted the source's rows for it; see [`Sink::begin_replace`]. With `undo`, it
    /// also logs the rows the rewrite changed, as [`AnySink::begin_replace_undo`] does on
    /// SQLite.
    pub async fn begin_replace(
        &self,
        window: &Window,
        undo: Option<&UndoBatch>,
    ) -> Result<PushedReplace, ConnectorError> {
        match self {
            AnyPushdown::Sqlite(p) => Ok(PushedReplace {
                inner: PushedReplaceInner::Sqlite(p.begin_replace(window, undo).await?),
            }),
        }
    }

    /// Makes this pushdown write the undo log of `sink` (the same target; its undo table is
    /// created when missing), so its writes accept an [`UndoBatch`]. Fails when `sink` is
    /// not the same kind of database.
    pub async fn use_undo_log(&self, sink: &AnySink) -> Result<(), ConnectorError> {
        match (self, sink) {
            (AnyPushdown::Sqlite(p), AnySink::Sqlite(s)) => {
                p.use_undo_log(&*s.undo_log().await?, s.run_tags().await?);
                Ok(())
            }
            _ => Err(ConnectorError::Data {
                message: "the pushdown's target is not the sink's database".to_owned(),
            }),
        }
    }

    /// Closes the connections; later calls fail.
    pub async fn close(&self) {
        match self {
            AnyPushdown::Sqlite(p) => p.close().await,
        }
    }

    /// What the pushdown did so far: batches written without staging, partitions staged,
    /// commits and the syncs that made them durable.
    pub fn stats(&self) -> sqlite::PushdownStats {
        match self {
            AnyPushdown::Sqlite(p) => p.stats(),
        }
    }
}

/// A partition attempt staged by [`AnyPushdown::partition`]: batches are taken from it in
/// key order. Dropping it writes nothing.
#[derive(Debug)]
pub struct PushedPartition<'p> {
    inner: PushedPartitionInner<'p>,
}

#[derive(Debug)]
enum PushedPartitionInner<'p> {
    Sqlite(sqlite::SqlitePartition<'p>),
}

impl<'p> PushedPartition<'p> {
    /// The next batch of at most `limit` rows (the rows a keyset read after the previous
    /// batch's last key would return); empty when the partition is exhausted. The batch
    /// must be written ([`PushedBatch::upsert`]) before the next one is taken; a batch
    /// dropped unwritten is handed out again.
    pub async fn next_batch(&mut self, limit: u32) -> Result<PushedBatch<'_, 'p>, ConnectorError> {
        match &mut self.inner {
            PushedPartitionInner::Sqlite(p) => Ok(PushedBatch {
                inner: PushedBatchInner::Sqlite(p.next_batch(limit).await?),
            }),
        }
    }
}

/// A staged batch: its size and last key are known, nothing is written yet.
#[derive(Debug)]
pub struct PushedBatch<'a, 'p> {
    inner: PushedBatchInner<'a, 'p>,
}

#[derive(Debug)]
enum PushedBatchInner<'a, 'p> {
    Sqlite(sqlite::SqliteStaged<'a, 'p>),
}

impl PushedBatch<'_, '_> {
    /// Rows in the batch.
    pub fn len(&self) -> usize {
        match &self.inner {
            PushedBatchInner::Sqlite(b) => usize::try_from(b.len()).unwrap_or(usize::MAX),
        }
    }

    /// True when no row is left after the resume key.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Key of the batch's last row, in key order (the next checkpoint).
    pub fn last_key(&self) -> Option<&[Value]> {
        match &self.inner {
            PushedBatchInner::Sqlite(b) => b.last_key(),
        }
    }

    /// Writes the batch like [`Sink::upsert`]: one transaction with `extra`, exact counts,
    /// identical rows not written.
    pub async fn upsert(self, extra: Option<&Extra>) -> Result<RowCounts, ConnectorError> {
        match self.inner {
            PushedBatchInner::Sqlite(b) => b.upsert(extra).await,
        }
    }
}

/// An open pushdown `replace` transaction; dropped without commit, it rolls back.
#[derive(Debug)]
pub struct PushedReplace {
    inner: PushedReplaceInner,
}

#[derive(Debug)]
enum PushedReplaceInner {
    Sqlite(sqlite::SqlitePushedReplace),
}

impl PushedReplace {
    /// Rows read and inserted from the source, and deleted from the target window.
    pub fn counts(&self) -> RowCounts {
        match &self.inner {
            PushedReplaceInner::Sqlite(t) => t.counts(),
        }
    }

    /// Runs `extra` (must affect exactly one row) and commits; on error nothing is committed.
    pub async fn commit(self, extra: Option<&Extra>) -> Result<(), ConnectorError> {
        match self.inner {
            PushedReplaceInner::Sqlite(t) => t.commit(extra).await,
        }
    }
}
