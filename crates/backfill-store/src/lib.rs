//! Durable truth of backfill runs: runs, partitions, checkpoints and the audit chain.
//!
//! Owns: the state store schema and its migrations, every SQL statement that touches it, the
//! fencing of partition attempts and the hash-chained audit log. The store is a SQLite file
//! (`sqlite://path`, the default) or a schema in a PostgreSQL database (`postgres://…`,
//! schema `backfill` unless `?schema=NAME`), opened with [`Store::open`]; both behave the
//! same.
//!
//! Every statement is written once, with `?` placeholders, and runs on either backend through
//! the small internal layer in `db.rs` (placeholder rewriting, row locks, neutral arguments and
//! rows). Both schemas have the same tables and columns (integers are 64-bit, timestamps the
//! same RFC 3339 text), migrated by one versioned migrator (`migrations/` and
//! `migrations/postgres/`).
//!
//! Deliberately does not: decide *which* transition to make (the engine does, using
//! [`backfill_core::state`]), talk to sources or sinks, or run partitions. It only refuses what
//! the state machines forbid and records what happened.
//!
//! Invariants:
//! - A stale attempt can never move a checkpoint or finish a partition: every attempt-scoped
//!   write is fenced by the attempt number returned from [`Store::start_attempt`], and a write
//!   carrying an older number fails with [`StoreError::StaleAttempt`] having changed nothing.
//! - Every state change of a run or partition is an audit event appended in the same
//!   transaction as the change, so neither exists without the other.
//! - The audit chain breaks ([`Store::verify_audit`]) if any event is edited, removed from the
//!   middle or reordered: each event's hash covers its content and the previous event's hash.
//! - Several processes may share one store. State-changing transactions are serialised (SQLite:
//!   `BEGIN IMMEDIATE`; PostgreSQL: a transaction-scoped advisory lock per store schema, taken
//!   first), so the audit chain stays one chain; rows read to be updated are locked
//!   (`FOR UPDATE` on PostgreSQL).
//! - Passwords in error texts and audit details are masked with [`backfill_core::secret::redact`]
//!   before they are stored.
//! - A store written by a newer build is refused rather than misread.

mod actions;
mod anchor;
mod audit;
mod codec;
mod controls;
mod db;
mod error;
mod gates;
mod leases;
mod migrate;
mod partitions;
mod quarantine;
mod runs;
mod shadows;
mod skips;
mod verify;
mod views;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, ConnectOptions, Connection, Sqlite};

pub use audit::{AuditCheck, AuditEvent};
pub use controls::{BudgetExtra, ControlRequest, Controls, RateChangeRecord, ThrottleChange};
pub use error::StoreError;
pub use gates::SourceWaitEnd;
pub use leases::{Claim, Lease, LeaseHolder, LeaseOwner, run_resource};
pub use partitions::{Outcome, PartitionRecord, PartitionTotals, Split, is_failing};
pub use quarantine::{QuarantineRecord, Rejected};
pub use runs::{NewRun, PartitionSource, RunRecord};
pub use shadows::{NewShadow, ShadowRecord, ShadowState};
pub use skips::{Differing, GapFindings, GapRecord, GapsRecorded, WouldChange};
pub use verify::{CheckStatus, CheckTotals, PartitionCheck, checksum};
pub use views::{Bucket, ErrorGroup, HeatBin, PartitionSort, ProgressBucket};

use db::{Conn, Dialect, WriteTxn};

/// A handle on one state store. Cheap to clone; every clone shares the connection pool.
///
/// On SQLite, all writes that change a state run in `BEGIN IMMEDIATE` transactions, so
/// concurrent writers queue on SQLite's write lock (waiting up to 30 s) instead of failing with
/// a lock-upgrade deadlock. On PostgreSQL, every write transaction that changes a state first
/// takes the store's transaction-scoped advisory lock (one per schema), so writers of every
/// process append to the audit chain one after another; rows read in order to be updated are
/// locked `FOR UPDATE`.
#[derive(Clone, Debug)]
pub struct Store {
    pool: Pool,
    url_redacted: String,
    location: Location,
    /// Serialises this process's SQLite writers before they reach SQLite's write lock.
    /// Without it, concurrent workers collide on `BEGIN IMMEDIATE` and SQLite's busy handler
    /// makes the losers sleep for whole milliseconds; queueing here costs microseconds. Other
    /// processes still queue on SQLite's lock. Unused on PostgreSQL.
    ///
    /// Behind it waits the connection that wrote last (file stores): every write of this
    /// process goes through it, so its page cache stays valid from one write to the next
    /// (another connection would re-read the pages another one changed) and no write pays
    /// for taking a connection from the pool and giving it back.
    write_gate: db::WriteGate,
    /// Set on a handle made by [`Store::fenced`]: the lease every write of this handle must
    /// still hold.
    fence: Option<std::sync::Arc<leases::Fence>>,
}

#[derive(Clone, Debug)]
enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Where the store lives, to answer [`Store::same_database`].
#[derive(Clone, Debug)]
enum Location {
    /// The canonical file, `None` in memory.
    Sqlite(Option<PathBuf>),
    Postgres {
        server: PgServer,
        /// The validated schema name (also the `search_path` of every pooled connection).
        schema: String,
        /// The advisory lock every write transaction takes first.
        lock_key: i64,
    },
}

/// How long a connection waits for SQLite's write lock before reporting `SQLITE_BUSY`, and
/// how long anyone waits for a free pooled connection.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Connections per PostgreSQL store handle: a few workers' writes queue on the advisory lock
/// anyway, so more connections would only hold server slots.
const PG_POOL_SIZE: u32 = 8;

/// The schema a PostgreSQL store lives in when the URL has no `schema=` parameter.
pub const DEFAULT_PG_SCHEMA: &str = "backfill";

impl Store {
    /// Opens (creating if missing) the state store at `url` and brings its schema up to date.
    ///
    /// SQLite: `sqlite://path`, `sqlite:path`, a bare file path (parent directories are
    /// created), or `sqlite::memory:` (one connection, gone on close; for tests). The file is
    /// put in WAL mode with foreign keys on.
    ///
    /// PostgreSQL: `postgres://…` or `postgresql://…`. The store lives in its own schema,
    /// [`DEFAULT_PG_SCHEMA`] unless the URL has a `schema=NAME` query parameter (lower-case
    /// letters, digits and `_`, not starting with a digit, at most 63 characters); the schema
    /// is created when missing and is the `search_path` of every pooled connection. Every other
    /// URL parameter goes to the driver.
    ///
    /// Fails, the URL redacted in every error, with:
    /// - [`StoreError::InvalidUrl`] when `url` names no store this build can open (another
    ///   scheme, no file name, a bad `schema=`, a malformed PostgreSQL URL): the user's input;
    /// - [`StoreError::Unreachable`] when the PostgreSQL server cannot be reached (connection
    ///   refused, unknown host, timed out);
    /// - [`StoreError::Open`] when the store is reachable but cannot be opened (login refused,
    ///   unknown database, an unwritable directory, a file that is not a database);
    /// - [`StoreError::NewerSchema`] when the store was written by a newer build.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        let url_redacted = backfill_core::secret::redact(url);
        let failed = |failure: OpenFailure| failure.into_error(&url_redacted);
        let target = parse_url(url).map_err(|message| StoreError::InvalidUrl {
            url: url_redacted.clone(),
            message: backfill_core::secret::redact(&message),
        })?;
        let (pool, location) = match target {
            Target::Postgres { options, schema } => {
                open_postgres(*options, schema).await.map_err(failed)?
            }
            target => open_sqlite(target)
                .await
                .map_err(|m| failed(OpenFailure::Other(m)))?,
        };
        let store = Store {
            pool,
            url_redacted,
            location,
            write_gate: Default::default(),
            fence: None,
        };
        if let Err(e) = migrate::run(&store).await {
            store.close().await;
            return Err(e);
        }
        Ok(store)
    }

    /// The URL this store was opened with, any password masked. Safe to log.
    pub fn url_redacted(&self) -> String {
        self.url_redacted.clone()
    }

    /// The canonical path of the SQLite file, or `None` for an in-memory or PostgreSQL store.
    /// See [`Store::same_database`] for the backend-neutral question "is the target the state
    /// store's database?".
    pub fn sqlite_path(&self) -> Option<PathBuf> {
        match &self.location {
            Location::Sqlite(path) => path.clone(),
            Location::Postgres { .. } => None,
        }
    }

    /// The PostgreSQL schema the store lives in, `None` on SQLite.
    pub fn pg_schema(&self) -> Option<&str> {
        match &self.location {
            Location::Sqlite(_) => None,
            Location::Postgres { schema, .. } => Some(schema),
        }
    }

    /// Whether a target `url` names the database this store lives in, where a batch and its
    /// checkpoint must commit in one transaction ([`Store::checkpoint_statement`]).
    ///
    /// SQLite: both name the same existing file (canonical paths compared; never for an
    /// in-memory store). PostgreSQL: same host (case-insensitive; `localhost`, `127.0.0.1` and
    /// `::1` count as one), port and database name (the user name when none is given);
    /// schemas do not matter, since the checkpoint statement names the store's schema. A URL of
    /// the other backend, or one that cannot be parsed, is `false`.
    pub fn same_database(&self, url: &str) -> bool {
        match (&self.location, parse_url(url)) {
            (Location::Sqlite(Some(path)), Ok(Target::File(file))) => {
                std::fs::canonicalize(file).is_ok_and(|f| f == *path)
            }
            (Location::Postgres { server, .. }, Ok(Target::Postgres { options, .. })) => {
                PgServer::of(&options) == *server
            }
            _ => false,
        }
    }

    /// Waits for in-flight statements and closes every connection. Later calls fail.
    pub async fn close(&self) {
        match &self.pool {
            Pool::Sqlite(pool) => {
                // The writer waiting behind the gate goes back first: the pool waits for it.
                drop(self.write_gate.lock().await.take());
                pool.close().await
            }
            Pool::Postgres(pool) => pool.close().await,
        }
    }

    /// Starts a write transaction that changes state. SQLite: holds this process's write gate
    /// and SQLite's write lock from its first statement (`BEGIN IMMEDIATE`). PostgreSQL: takes
    /// the store's advisory lock first, so state changes (and their audit events) of every
    /// process are serialised; it is released at commit or rollback.
    ///
    /// On a handle made by [`Store::fenced`], the transaction first checks the lease's fence
    /// and fails with [`StoreError::LeaseLost`] when another claim replaced it.
    pub(crate) async fn begin_write(&self) -> Result<WriteTxn, StoreError> {
        let mut tx = self.begin_write_unfenced().await?;
        if let Some(fence) = self.fence() {
            leases::check_fence(&mut tx, &fence.resource, fence.number).await?;
        }
        Ok(tx)
    }

    /// [`Store::begin_write`] for a transaction that inserts many rows whose foreign keys it
    /// makes itself: a large run's partitions, inserted with their run. On SQLite its
    /// connection checks no foreign key: each row's check costs a look-up, and it makes
    /// every multi-row `INSERT` keep a statement journal, a copy of each page the statement
    /// changes (~25% of inserting a million partitions). That connection is closed after
    /// the transaction, never returned to the pool, so no pooled connection runs without
    /// the checks. PostgreSQL and an in-memory SQLite store: [`Store::begin_write`].
    pub(crate) async fn begin_write_bulk(&self) -> Result<WriteTxn, StoreError> {
        // In memory, the database is its one connection: closing it would lose the store.
        let (Pool::Sqlite(pool), Location::Sqlite(Some(_))) = (&self.pool, &self.location) else {
            return self.begin_write().await;
        };
        let gate = self.write_gate.clone().lock_owned().await;
        let mut conn = pool.acquire().await?;
        conn.close_on_drop();
        sqlx::query("PRAGMA foreign_keys = OFF")
            .execute(&mut *conn)
            .await?;
        let mut tx = WriteTxn::sqlite(conn, gate, false);
        if let Some(fence) = self.fence() {
            leases::check_fence(&mut tx, &fence.resource, fence.number).await?;
        }
        Ok(tx)
    }

    /// [`Store::begin_write`] without the fence check, for the lease operations themselves.
    pub(crate) async fn begin_write_unfenced(&self) -> Result<WriteTxn, StoreError> {
        match (&self.pool, &self.location) {
            (Pool::Sqlite(pool), _) => {
                let mut gate = self.write_gate.clone().lock_owned().await;
                let conn = sqlite_writer(&mut gate, pool).await?;
                Ok(WriteTxn::sqlite(conn, gate, self.keeps_writer()))
            }
            (Pool::Postgres(pool), Location::Postgres { lock_key, .. }) => {
                // The lock travels with the `BEGIN` (one simple query, one round trip); the
                // key is a number of ours, not input.
                let begin = format!("BEGIN; SELECT pg_advisory_xact_lock({lock_key})");
                let tx = pool.begin_with(AssertSqlSafe(begin)).await?;
                Ok(WriteTxn::postgres(tx))
            }
            (Pool::Postgres(_), Location::Sqlite(_)) => unreachable!("a PostgreSQL pool"),
        }
    }

    /// Runs a single-statement write outside a transaction (autocommit) and returns the rows
    /// it changed. On SQLite through this process's write gate and its writer connection;
    /// on PostgreSQL on a pooled connection, where row locks do the queueing.
    pub(crate) async fn write_one(&self, statement: db::Stmt) -> Result<u64, StoreError> {
        match &self.pool {
            Pool::Sqlite(pool) => {
                let mut gate = self.write_gate.lock().await;
                let mut conn = Conn::Sqlite(sqlite_writer(&mut gate, pool).await?);
                // Autocommit: the connection is out of any transaction whatever the result.
                let done = statement.execute(&mut conn).await;
                if let Conn::Sqlite(conn) = conn
                    && self.keeps_writer()
                {
                    *gate = Some(conn);
                }
                Ok(done?)
            }
            Pool::Postgres(_) => Ok(statement.execute(&mut self.conn().await?).await?),
        }
    }

    /// Whether the writer connection waits behind the write gate between writes: for file
    /// stores; an in-memory store's one connection must go back to the pool.
    fn keeps_writer(&self) -> bool {
        matches!(self.location, Location::Sqlite(Some(_)))
    }

    /// A pooled connection, for reads and single-statement writes.
    pub(crate) async fn conn(&self) -> Result<Conn, StoreError> {
        Ok(match &self.pool {
            Pool::Sqlite(pool) => Conn::Sqlite(pool.acquire().await?),
            Pool::Postgres(pool) => Conn::Postgres(pool.acquire().await?),
        })
    }

    pub(crate) fn dialect(&self) -> Dialect {
        match self.pool {
            Pool::Sqlite(_) => Dialect::Sqlite,
            Pool::Postgres(_) => Dialect::Postgres,
        }
    }
}

/// The writer connection waiting behind the write gate (`gate`, held by the caller), or one
/// from the pool when none waits.
async fn sqlite_writer(
    gate: &mut Option<PoolConnection<Sqlite>>,
    pool: &SqlitePool,
) -> Result<PoolConnection<Sqlite>, sqlx::Error> {
    match gate.take() {
        Some(conn) => Ok(conn),
        None => pool.acquire().await,
    }
}

async fn open_sqlite(target: Target) -> Result<(Pool, Location), String> {
    // WAL with `synchronous = NORMAL`: a commit survives a killed process (SIGKILL, OOM)
    // without waiting for an fsync; only a power loss or OS crash can drop the last
    // commits, and then the state change and its audit event go together (same
    // transaction) and a lost checkpoint only means an idempotent batch is replayed. The
    // target keeps `synchronous = FULL`, so a checkpoint is never ahead of the target.
    let base = SqliteConnectOptions::new()
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(BUSY_TIMEOUT)
        .foreign_keys(true)
        // Statement journals in memory: a multi-row INSERT of a run's partitions otherwise
        // spills each statement's undo pages to a temporary file (a fifth of the time of
        // creating a run of a million partitions). The store's temporary data is small.
        .pragma("temp_store", "memory")
        .create_if_missing(true)
        // Driver logs are not the user's output: no statement or slow-statement lines.
        .disable_statement_logging();
    let (options, pool_options, path) = match target {
        Target::File(file) => {
            if let Some(parent) = file.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)
                    .map_err(|e| format!("cannot create directory {}: {e}", parent.display()))?;
            }
            (
                base.filename(&file),
                SqlitePoolOptions::new().max_connections(8),
                Some(file),
            )
        }
        // An in-memory database lives and dies with its one connection. (`open` routes
        // PostgreSQL targets elsewhere.)
        Target::Memory | Target::Postgres { .. } => (
            base.in_memory(true),
            SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None),
            None,
        ),
    };
    // No ping before handing out a pooled connection: a SQLite connection is a file handle
    // that cannot go stale like a socket, and each ping is a round trip to the connection's
    // thread (two thread switches) on every store call.
    let pool_options = pool_options
        .acquire_timeout(BUSY_TIMEOUT)
        .test_before_acquire(false);
    let pool = connect_sqlite(pool_options, options).await?;
    // Canonicalise once the file exists, so two spellings of one file compare equal.
    let path = path.map(|p| std::fs::canonicalize(&p).unwrap_or(p));
    Ok((Pool::Sqlite(pool), Location::Sqlite(path)))
}

/// Connects the pool, retrying while another process holds the lock that switching a new file
/// to WAL needs. That switch needs an exclusive lock SQLite's busy timeout does not wait for,
/// so processes opening one new store at the same moment would otherwise fail at once with
/// "database is locked". Gives up after [`BUSY_TIMEOUT`].
async fn connect_sqlite(
    pool_options: SqlitePoolOptions,
    options: SqliteConnectOptions,
) -> Result<SqlitePool, String> {
    let deadline = tokio::time::Instant::now() + BUSY_TIMEOUT;
    let mut pause = Duration::from_millis(2);
    loop {
        match pool_options.clone().connect_with(options.clone()).await {
            Ok(pool) => return Ok(pool),
            Err(e) if error::is_sqlite_busy(&e) && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(100));
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Why a store that was named correctly could not be opened, before the URL is attached.
enum OpenFailure {
    /// The server could not be reached at all.
    Unreachable(String),
    /// Anything else: login refused, unknown database, unwritable file.
    Other(String),
}

impl OpenFailure {
    /// A PostgreSQL connection error, classified: I/O (refused, unknown host, reset) and
    /// timeouts mean the server is unreachable; an answer from the server is not.
    fn postgres(e: &sqlx::Error) -> OpenFailure {
        let message = format!("cannot connect to PostgreSQL: {}", error::describe(e));
        match e {
            sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::WorkerCrashed => {
                OpenFailure::Unreachable(message)
            }
            _ => OpenFailure::Other(message),
        }
    }

    fn into_error(self, url: &str) -> StoreError {
        let url = url.to_owned();
        match self {
            OpenFailure::Unreachable(m) => StoreError::Unreachable {
                url,
                message: backfill_core::secret::redact(&m),
            },
            OpenFailure::Other(m) => StoreError::Open {
                url,
                message: backfill_core::secret::redact(&m),
            },
        }
    }
}

async fn open_postgres(
    options: PgConnectOptions,
    schema: String,
) -> Result<(Pool, Location), OpenFailure> {
    // One direct connection first: an unreachable server is reported at once, where the
    // pool would keep retrying a refused connection until its acquire timeout.
    let options = options.disable_statement_logging();
    // Named like the connectors' sessions (`backfill_connectors::watch::APPLICATION_NAME`),
    // so the adaptive throttle's watch leaves the store's statements out of live traffic when
    // the store lives in the watched database; a URL that names its own keeps it.
    let options = match options.get_application_name() {
        Some(_) => options,
        None => options.application_name("backfill"),
    };
    let probe = options
        .connect()
        .await
        .map_err(|e| OpenFailure::postgres(&e))?;
    let _ = probe.close().await;
    let set_path = format!("SET search_path TO \"{schema}\"");
    let pool = PgPoolOptions::new()
        .max_connections(PG_POOL_SIZE)
        .acquire_timeout(BUSY_TIMEOUT)
        .after_connect(move |conn, _meta| {
            let sql = set_path.clone();
            Box::pin(async move {
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                    .execute(conn)
                    .await
                    .map(drop)
            })
        })
        .connect_with(options.clone())
        .await
        .map_err(|e| OpenFailure::postgres(&e))?;
    let lock_key = advisory_lock_key(&schema);
    Ok((
        Pool::Postgres(pool),
        Location::Postgres {
            server: PgServer::of(&options),
            schema,
            lock_key,
        },
    ))
}

/// The advisory lock of one store: derived from its schema, so stores in different schemas of
/// one database do not wait for each other.
fn advisory_lock_key(schema: &str) -> i64 {
    let hash = blake3::hash(format!("backfill.store.audit:{schema}").as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&hash.as_bytes()[..8]);
    i64::from_le_bytes(bytes)
}

/// What identifies a PostgreSQL database for [`Store::same_database`].
#[derive(Clone, Debug, PartialEq, Eq)]
struct PgServer {
    host: String,
    port: u16,
    database: String,
}

impl PgServer {
    fn of(options: &PgConnectOptions) -> PgServer {
        let host = options.get_host().to_ascii_lowercase();
        let host = match host.as_str() {
            "127.0.0.1" | "::1" | "[::1]" => "localhost".to_owned(),
            _ => host,
        };
        PgServer {
            host,
            port: options.get_port(),
            database: options
                .get_database()
                .unwrap_or(options.get_username())
                .to_owned(),
        }
    }
}

enum Target {
    Memory,
    File(PathBuf),
    Postgres {
        options: Box<PgConnectOptions>,
        schema: String,
    },
}

/// Whether a target `url` names the database a store at `store_url` lives in, without
/// opening or creating anything: the rules of [`Store::same_database`], for `plan`, which
/// states a run's guarantee before any store exists. (A SQLite store file that does not
/// exist yet cannot be an existing target file.)
pub fn same_database_urls(store_url: &str, url: &str) -> bool {
    match (parse_url(store_url), parse_url(url)) {
        (Ok(Target::File(store)), Ok(Target::File(file))) => {
            match (std::fs::canonicalize(store), std::fs::canonicalize(file)) {
                (Ok(store), Ok(file)) => store == file,
                _ => false,
            }
        }
        (Ok(Target::Postgres { options: a, .. }), Ok(Target::Postgres { options: b, .. })) => {
            PgServer::of(&a) == PgServer::of(&b)
        }
        _ => false,
    }
}

fn parse_url(url: &str) -> Result<Target, String> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let (url, schema) = split_schema(url)?;
        let options = Box::new(PgConnectOptions::from_str(&url).map_err(|e| e.to_string())?);
        return Ok(Target::Postgres { options, schema });
    }
    let rest = if let Some(rest) = url.strip_prefix("sqlite://") {
        rest
    } else if let Some(rest) = url.strip_prefix("sqlite:") {
        rest
    } else if url.contains("://") {
        return Err(
            "the state store must be a SQLite file (`sqlite://path` or a path) or a \
                    PostgreSQL database (`postgres://…`)"
                .into(),
        );
    } else {
        url
    };
    // Connection parameters (`?mode=rwc`) are ours to choose; ignore any given.
    let rest = rest.split('?').next().unwrap_or_default();
    if rest == ":memory:" {
        return Ok(Target::Memory);
    }
    if rest.is_empty() {
        return Err("the state store URL names no file".into());
    }
    Ok(Target::File(Path::new(rest).to_path_buf()))
}

/// Takes the `schema=NAME` parameter out of a PostgreSQL URL (the driver does not know it)
/// and validates it; [`DEFAULT_PG_SCHEMA`] when absent.
fn split_schema(url: &str) -> Result<(String, String), String> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), DEFAULT_PG_SCHEMA.to_owned()));
    };
    let mut schema = None;
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.strip_prefix("schema=") {
            Some(name) => schema = Some(name.to_owned()),
            None => kept.push(pair),
        }
    }
    let schema = schema.unwrap_or_else(|| DEFAULT_PG_SCHEMA.to_owned());
    let valid = !schema.is_empty()
        && schema.len() <= 63
        && !schema.starts_with(|c: char| c.is_ascii_digit())
        && !schema.starts_with("pg_")
        && schema
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !valid {
        return Err(format!(
            "`schema={schema}` is not a valid schema name (lower-case letters, digits and `_`, \
             not starting with a digit or `pg_`, at most 63 characters)"
        ));
    }
    let url = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((url, schema))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_forms() {
        let file = |u: &str| match parse_url(u) {
            Ok(Target::File(p)) => p.display().to_string(),
            Ok(Target::Memory) => ":memory:".into(),
            Ok(Target::Postgres { schema, .. }) => format!("postgres:{schema}"),
            Err(e) => format!("error: {e}"),
        };
        assert_eq!(file("sqlite://a/b.db"), "a/b.db");
        assert_eq!(file("sqlite:///abs/b.db"), "/abs/b.db");
        assert_eq!(file("sqlite:b.db?mode=rwc"), "b.db");
        assert_eq!(file(".backfill/state.db"), ".backfill/state.db");
        assert_eq!(file("sqlite::memory:"), ":memory:");
        assert_eq!(file("postgres://u:p@h/db"), "postgres:backfill");
        assert_eq!(
            file("postgresql://h/db?schema=bf_1&sslmode=disable"),
            "postgres:bf_1"
        );
        assert!(file("postgres://h/db?schema=Bad").starts_with("error:"));
        assert!(file("postgres://h/db?schema=x;drop").starts_with("error:"));
        assert!(file("postgres://h/db?schema=").starts_with("error:"));
        assert!(file("mysql://h/db").starts_with("error:"));
        assert!(file("sqlite://").starts_with("error:"));
    }

    #[test]
    fn schema_parameter_is_stripped() {
        assert_eq!(
            split_schema("postgres://h/db?sslmode=disable&schema=s1&application_name=x").unwrap(),
            (
                "postgres://h/db?sslmode=disable&application_name=x".to_owned(),
                "s1".to_owned()
            )
        );
        assert_eq!(
            split_schema("postgres://h/db?schema=s1").unwrap(),
            ("postgres://h/db".to_owned(), "s1".to_owned())
        );
        assert_eq!(
            split_schema("postgres://h/db").unwrap().1,
            DEFAULT_PG_SCHEMA
        );
        assert!(split_schema("postgres://h/db?schema=pg_catalog").is_err());
        assert_ne!(advisory_lock_key("a"), advisory_lock_key("b"));
    }

    /// A PostgreSQL write transaction holds the store's advisory lock from its `BEGIN` (which
    /// carries the lock) to its end.
    #[tokio::test]
    async fn a_postgres_write_transaction_holds_the_advisory_lock() {
        let server = backfill_testkit::postgres_url();
        let mut outsider = match sqlx::PgConnection::connect(&server).await {
            Ok(c) => c,
            Err(e) => {
                return backfill_testkit::unreachable("PostgreSQL", &server, &e).unwrap_or(());
            }
        };
        let schema = format!("bf_lock_{}", uuid::Uuid::now_v7().simple());
        let sep = if server.contains('?') { '&' } else { '?' };
        let store = Store::open(&format!("{server}{sep}schema={schema}"))
            .await
            .unwrap();
        let key = advisory_lock_key(&schema) as u64;
        let held = async |c: &mut sqlx::PgConnection| -> i64 {
            sqlx::query_scalar(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted \
                 AND classid = $1::bigint::oid AND objid = $2::bigint::oid AND objsubid = 1",
            )
            .bind((key >> 32) as i64)
            .bind((key & 0xffff_ffff) as i64)
            .fetch_one(c)
            .await
            .unwrap()
        };
        assert_eq!(held(&mut outsider).await, 0);
        let tx = store.begin_write().await.unwrap();
        assert_eq!(
            held(&mut outsider).await,
            1,
            "the lock is taken with the BEGIN"
        );
        tx.commit().await.unwrap();
        assert_eq!(held(&mut outsider).await, 0, "and released at the commit");
        store.close().await;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA \"{schema}\" CASCADE"
        )))
        .execute(&mut outsider)
        .await
        .unwrap();
    }
}
