//! Pushdown: SQLite to SQLite without the rows leaving SQLite.
//!
//! The row path decodes every value into Rust and binds it back (~13 µs of CPU per row); here
//! the same batches are moved by SQL statements on one connection that sees both files, so
//! only counts and the last key of each batch come back to the engine.
//!
//! Shape: the connections are opened on the SOURCE file (so the user's query resolves its
//! names exactly as on the row path) with the TARGET file attached as `backfill_target`
//! (not attached when both are the same file). Each connection has a TEMP table
//! `backfill_part`, kept in a temporary FILE (`temp_store = FILE`), not in memory, whose key
//! columns are NOT NULL: a NULL key fails the staging statement itself.
//!
//! - upsert, per partition attempt: [`SqlitePushdown::partition`] counts the window's rows
//!   after the checkpoint (refusing a NULL key); nothing is written.
//!   - When they fit in one batch (the common case: partitions sized to a batch),
//!     [`SqlitePartition::next_batch`] reads only their last key, and
//!     [`SqliteStaged::upsert`] writes them straight from the query in one target
//!     transaction: `INSERT … SELECT … WHERE <key after the checkpoint and up to the last key>
//!     ON CONFLICT DO NOTHING` (`changes()` = inserted), then, only when some key already
//!     existed, the same rows with the upsert clause below (`changes()` = updated: the rows
//!     just inserted are identical), the engine's [`Extra`], commit. No TEMP table, no count
//!     of existing keys: on a full copy each row is read and written once, as by one
//!     `INSERT … SELECT`. With the undo log, that insert runs under a savepoint and the keys
//!     are logged after it ([`UndoLog::sqlite_log_inserted`]), or, when some key existed,
//!     rolled back and written as a counted upsert (`write_direct_new_logged`).
//!   - Otherwise the query runs once for the rows after the checkpoint (in key order) into
//!     the TEMP table, autocommit: it reads the source only, so workers stage in parallel,
//!     and one indexed pass over the window replaces one pass per batch. Its rowids are then
//!     the key order, so a batch is a rowid range: the same rows, the same last keys, the
//!     same batch sizes as the row path's keyset pages. Per batch, one target transaction: a
//!     write to the target first (it takes the target's write lock, and only the target's),
//!     count the batch's keys that exist, `INSERT … SELECT … FROM temp.backfill_part WHERE
//!     rowid in the batch ON CONFLICT … DO UPDATE … WHERE <a column differs> [AND <the
//!     target's guard is not newer>]`, the engine's [`Extra`], commit. Counts are split
//!     exactly as on the row path: `changes()` = inserted + updated.
//! - replace, per partition: one target transaction deletes the window, checks the window has
//!   no NULL key, inserts the whole window with one `INSERT … SELECT` (SQLite streams it), runs
//!   the [`Extra`] and commits. With the undo log (and a key a UNIQUE index covers), the
//!   window's rows are kept before the delete and the rows the rewrite changed are logged
//!   after it by statements ([`UndoLog::sqlite_replace`]'s `set_wise`), not by a trigger.
//!
//! Durability (group commit, [`WalSync`]): in WAL mode the target is written with
//! `synchronous = NORMAL`, so a commit does not sync inside the writer lock; after releasing
//! it, the writer waits for an `fdatasync` of the WAL file that began after its commit. One
//! sync covers every commit before it and overlaps the next writer's statements. `upsert` and
//! `commit` return only then, so the engine's checkpoint (written after they return, or inside
//! the same transaction) never claims a batch that is not durable. A target not in WAL mode
//! keeps `synchronous = FULL`.
//!
//! Invariants: the source is only read (the query is a subquery of a `SELECT`, and no
//! transaction ever starts with a source write, so no lock but a read lock is taken on it);
//! this process's pushdown writers are serialised by an async mutex (SQLite has one writer per
//! file anyway; the mutex avoids busy-waiting on each other); a write returns only once durable
//! (see Durability); every value is bound, identifiers are validated and quoted.
//!
//! Not used (the engine falls back to the row path, logged at info level) for an in-memory
//! or parameterised URL, a target table outside `main`, a source table named like the TEMP
//! table, a query or statement that does not compile with the target attached, or when the engine's [`Extra`]
//! refers to target tables (the state store is the target file) and a table or view of the
//! same name exists in the source, where it would resolve first.

use std::collections::BTreeSet;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use backfill_core::SecretUrl;
use backfill_core::params::{self, Placeholder};
use backfill_core::plan::Window;
use backfill_core::retry::ErrorClass;
use backfill_core::spec::{SourceSpec, TargetSpec, WriteMode};
use backfill_core::timefmt::TimeFormat;
use backfill_core::value::{RowCounts, Value};
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{
    Sqlite, SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool,
    SqliteSynchronous,
};
use sqlx::{
    AssertSqlSafe, Column, ConnectOptions, Connection, Executor, Row, SqlSafeStr, Statement,
    Transaction,
};
use tokio::sync::{Mutex, OwnedMutexGuard};

use super::run_tags::RunTags;
use super::sink::{install, run_extra};
use super::{
    BUSY_TIMEOUT, SOFT_HEAP_LIMIT, arguments, decode_value, pool_options, retry_while_locked, sql,
    sql_error,
};
use crate::ident::{check_column, check_table, position};
use crate::undo::{
    Conn, SqliteCountedLog, SqliteReplaceLog, SqliteTriggers, UndoBatch, UndoLog, undo_table_name,
};
use crate::window::{bounds, check_names, named_values};
use crate::{ConnectorError, Extra};

/// Schema name of the attached target file.
const TARGET_SCHEMA: &str = "backfill_target";
/// The per-connection TEMP table holding the batch in flight.
const STAGE: &str = "backfill_part";
const STAGE_QUOTED: &str = "temp.\"backfill_part\"";
/// The rows of one batch in the TEMP table: rowids `(?1, ?2]`.
const BATCH_ROWS: &str = "rowid > ?1 AND rowid <= ?2";
/// Statement variant of a partition read from its window's start.
const FIRST: usize = 0;
/// Statement variant of a partition read after a resume key.
const AFTER: usize = 1;

/// Moves a spec's rows from a SQLite source file to a SQLite target file inside SQLite.
pub struct SqlitePushdown {
    pool: SqlitePool,
    /// Held by every target write transaction of this pushdown.
    writer: Arc<Mutex<()>>,
    /// The query's columns, as SQLite names them.
    columns: Vec<String>,
    /// Key columns as the query spells them (for messages).
    key: Vec<String>,
    /// Parameter names of the rewritten query, one per `?N`.
    names: Vec<String>,
    source_format: TimeFormat,
    target_format: TimeFormat,
    /// Quoted target table, schema-qualified (`"backfill_target"."t"` or `"main"."t"`).
    target: String,
    stmts: Statements,
    /// Makes commits durable after the writer lock is released (`None`: the target is not
    /// in WAL mode, and each commit syncs itself with `synchronous = FULL`).
    wal: Option<Arc<WalSync>>,
    /// Partitions staged in the TEMP table (more than one batch after the checkpoint).
    staged_partitions: AtomicU64,
    /// Batches written straight from the query (the direct path).
    direct_batches: AtomicU64,
    /// Whether the last direct batch found mostly new keys: the next one then inserts the new
    /// keys first and upserts only if some existed (one pass on a copy into an empty
    /// target); otherwise it counts the existing keys and upserts (one write pass where most
    /// rows exist). Either gives exact counts; this only picks the cheaper.
    expect_new: AtomicBool,
    /// The schema the target table is in on this pool's connections, and its bare name.
    target_at: (&'static str, String),
    /// `replace`: the window column, quoted.
    window_column: Option<String>,
    /// The target's undo log, with names as this pool's connections see them
    /// ([`SqlitePushdown::use_undo_log`]); unset when the run keeps none.
    undo_log: std::sync::OnceLock<Arc<UndoLog>>,
    /// The tags the undo log writes for runs (the target sink's), set with `undo_log`.
    run_tags: std::sync::OnceLock<Arc<RunTags>>,
    /// With the undo log, the statements that find a batch's new keys, as `batch_keys`
    /// orders them ([`UndoLog::sqlite_find_new`]): built once for the run.
    find_new: std::sync::OnceLock<[Arc<str>; 3]>,
}

/// What a pushdown did so far (for tests, logs and benchmarks).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PushdownStats {
    /// Partition attempts whose rows were staged in the TEMP table, to be cut into batches.
    pub staged_partitions: u64,
    /// Batches written straight from the query, without staging (the partition's rows after
    /// its checkpoint fit in one batch).
    pub direct_batches: u64,
    /// Target transactions committed without a sync of their own (`synchronous = NORMAL`).
    pub commits: u64,
    /// Syncs of the target's WAL file that made those commits durable; each covers every
    /// commit made before it started, so with concurrent writers there are fewer syncs than
    /// commits (group commit).
    pub wal_syncs: u64,
}

/// Group commit for the target's WAL: commits run with `synchronous = NORMAL` (written to the
/// WAL file, not synced), then each writer, after releasing the writer lock, waits until one
/// `fdatasync` of the WAL file that started after its commit has finished. One sync then
/// covers every commit made before it began, and it runs while the next writer already
/// writes, instead of inside the lock.
///
/// Why this is as durable as `synchronous = FULL` for a commit once [`WalSync::durable`]
/// returns: the commit's frames are either still in the WAL file (synced here) or were
/// copied into the database by a checkpoint, which with `synchronous = NORMAL` syncs the WAL
/// before copying and the database before the WAL is reused. Our open connections keep the
/// WAL file from being deleted. A power loss before the sync loses the commit as a whole
/// (SQLite recovers the WAL up to its last complete commit), never half of it.
#[derive(Debug)]
struct WalSync {
    /// The target's WAL file (`<canonical target path>-wal`).
    path: PathBuf,
    /// Commits counted so far, each counted after its commit returned.
    committed: AtomicU64,
    /// Commits known durable. Held during a sync, so writers arriving meanwhile wait for it
    /// and then find themselves covered or start the next one.
    synced: Mutex<u64>,
    /// Syncs issued.
    syncs: AtomicU64,
}

impl WalSync {
    fn new(path: PathBuf) -> WalSync {
        WalSync {
            path,
            committed: AtomicU64::new(0),
            synced: Mutex::new(0),
            syncs: AtomicU64::new(0),
        }
    }

    /// Counts a commit that just returned; its number, for [`WalSync::durable`].
    fn committed(&self) -> u64 {
        self.committed.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Returns once commit number `seq` is durable: covered by a sync that started after it.
    async fn durable(&self, seq: u64) -> Result<(), ConnectorError> {
        let mut synced = self.synced.lock().await;
        if *synced >= seq {
            return Ok(());
        }
        // Every commit counted by now has written its frames: this sync covers them all.
        let upto = self.committed.load(Ordering::SeqCst);
        let path = self.path.clone();
        let result = tokio::task::spawn_blocking(move || {
            std::fs::File::open(&path).and_then(|file| file.sync_data())
        })
        .await;
        let failed = |message: String| ConnectorError::Sql {
            context: format!("sync of {}", self.path.display()),
            message,
            class: ErrorClass::Transient,
        };
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(failed(e.to_string())),
            Err(e) => return Err(failed(e.to_string())),
        }
        self.syncs.fetch_add(1, Ordering::Relaxed);
        *synced = upto;
        Ok(())
    }
}

/// Every statement, built once from validated identifiers.
struct Statements {
    clear: Arc<str>,
    first_page: Arc<str>,
    next_page: Arc<str>,
    rowids: Arc<str>,
    last_key: Arc<str>,
    lock: Arc<str>,
    count_existing: Arc<str>,
    upsert: Arc<str>,
    /// The direct path (a partition whose rows after the checkpoint fit in one batch), per
    /// variant ([`FIRST`]: from the window's start, [`AFTER`]: after a resume key): the
    /// count of those rows with one NULL count per key column, the last key, and the writes
    /// of the rows up to a bound last key straight from the query: insert the new keys
    /// only, then (when some key existed) the upsert.
    window_count: [Arc<str>; 2],
    window_last: [Arc<str>; 2],
    direct_new: [Arc<str>; 2],
    direct_upsert: [Arc<str>; 2],
    /// The direct path's count of the batch's keys that exist in the target.
    direct_existing: [Arc<str>; 2],
    /// The keys of a staged batch (`?1`, `?2`: its rowids), then of the direct path's rows
    /// per variant: where the undo log finds the new keys ([`UndoLog::sqlite_counted_upsert`]).
    batch_keys: [Arc<str>; 3],
    /// `replace` mode's statements.
    replace: Option<ReplaceStatements>,
}

/// `replace` mode: delete the window, find a NULL key in the query, insert the query, and
/// the query's keys (read again only when the undo log must find rows the insert put
/// outside the window, [`UndoLog::sqlite_replace_outside`]).
struct ReplaceStatements {
    delete: Arc<str>,
    null_key: Arc<str>,
    insert: Arc<str>,
    keys: Arc<str>,
}

impl fmt::Debug for SqlitePushdown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqlitePushdown")
            .field("target", &self.target)
            .field("columns", &self.columns)
            .finish_non_exhaustive()
    }
}

/// Logs why the pushdown is not used and returns `None`.
fn not_used(reason: impl fmt::Display) -> Result<Option<SqlitePushdown>, ConnectorError> {
    tracing::info!(
        %reason,
        "pushdown not used: rows pass through the engine (the row path)"
    );
    Ok(None)
}

/// The canonical file of a plain `sqlite://path` URL; `None` for in-memory databases and
/// URLs with parameters (their options are not reproduced here).
fn plain_file(url: &SecretUrl) -> Result<Option<PathBuf>, ConnectorError> {
    let text = url.expose();
    if text.contains('?') || text.contains(":memory:") {
        return Ok(None);
    }
    let fail = |message: String| ConnectorError::Connect {
        url: url.redacted(),
        message,
    };
    let options =
        SqliteConnectOptions::from_str(text).map_err(|e| fail(format!("not a SQLite URL: {e}")))?;
    std::fs::canonicalize(options.get_filename())
        .map(Some)
        .map_err(|e| {
            fail(format!(
                "SQLite database file {} cannot be opened: {e}",
                options.get_filename().display()
            ))
        })
}

/// Lower-cased names of the tables and views of `schema` (internal `sqlite_*` tables left
/// out).
async fn schema_names(
    conn: &mut SqliteConnection,
    schema: &str,
) -> Result<BTreeSet<String>, sqlx::Error> {
    let text = format!(
        "SELECT lower(name) FROM \"{schema}\".sqlite_schema \
         WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'"
    );
    let names: Vec<String> = sqlx::query_scalar(AssertSqlSafe(text))
        .fetch_all(conn)
        .await?;
    Ok(names.into_iter().collect())
}

/// The staged column whose NOT NULL constraint `err` reports (a NULL key in the source), if
/// that is what failed.
fn null_stage_column(err: &sqlx::Error) -> Option<&str> {
    const NOT_NULL: &str = "1299"; // SQLITE_CONSTRAINT_NOTNULL
    let sqlx::Error::Database(db) = err else {
        return None;
    };
    if db.code().as_deref() != Some(NOT_NULL) {
        return None;
    }
    db.message()
        .rsplit_once(&format!("{STAGE}."))
        .map(|(_, column)| column.trim())
}

fn list(items: &[String]) -> String {
    items.join(", ")
}

impl SqlitePushdown {
    /// Sets up the pushdown for `source` → `target`, or returns `None` (and logs why at info
    /// level) when it cannot keep the row path's semantics. `extra_in_target`: the engine
    /// will hand in [`Extra`] statements naming target tables unqualified (the state store is
    /// the target file).
    pub async fn open(
        source: &SourceSpec,
        target: &TargetSpec,
        pool_size: u32,
        extra_in_target: bool,
    ) -> Result<Option<SqlitePushdown>, ConnectorError> {
        let window_column = match &target.mode {
            WriteMode::Upsert => None,
            WriteMode::Replace { window_column } => Some(window_column),
            WriteMode::Sql { .. } => return not_used("`sql` mode runs its own statement"),
        };
        let Some(table) = target.table.as_deref() else {
            return not_used("no target table");
        };
        check_table(table)?;
        let (schema, name) = table.split_once('.').unwrap_or(("main", table));
        if !schema.eq_ignore_ascii_case("main") {
            return not_used(format!("target table {table} is not in the `main` schema"));
        }
        if target.key.is_empty() {
            return not_used("no key columns");
        }
        for k in &target.key {
            check_column(k, "key column")?;
        }
        if let Some(c) = window_column {
            check_column(c, "window column")?;
        }
        let (Some(source_file), Some(target_file)) =
            (plain_file(&source.url)?, plain_file(&target.url)?)
        else {
            return not_used("a database is in memory or its URL has parameters");
        };
        let same_file = source_file == target_file;
        let rewritten = params::rewrite(
            sql::trim_statement(&source.query),
            Placeholder::QuestionNumbered,
        );
        check_names(&rewritten.names, "source query")?;

        let mut options = SqliteConnectOptions::new()
            .filename(&source_file)
            .create_if_missing(false)
            .busy_timeout(BUSY_TIMEOUT)
            .pragma("temp_store", "file")
            .pragma("soft_heap_limit", SOFT_HEAP_LIMIT)
            .disable_statement_logging();
        if same_file {
            options = options
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full);
        }
        let connect_error = |e: sqlx::Error| ConnectorError::Connect {
            url: source.url.redacted(),
            message: backfill_core::secret::redact(&e.to_string()),
        };

        // A probe connection checks every statement compiles before any pool exists.
        let mut probe = retry_while_locked(|| options.connect())
            .await
            .map_err(connect_error)?;
        let source_names = schema_names(&mut probe, "main")
            .await
            .map_err(|e| sql_error("pushdown setup", &e))?;
        if source_names.contains(STAGE) {
            return not_used(format!(
                "the source has a table or view named {STAGE}, the pushdown's TEMP table"
            ));
        }
        // The undo log's triggers name its table unqualified, which SQLite resolves in the
        // source (`main`) before the attached target.
        let undo_name = undo_table_name(name);
        if target.undo
            && !same_file
            && source_names
                .iter()
                .any(|n| n.eq_ignore_ascii_case(&undo_name))
        {
            return not_used(format!(
                "the source has a table named {undo_name}, the target's undo log"
            ));
        }
        let columns: Vec<String> = match probe
            .prepare(AssertSqlSafe(sql::select_all(&rewritten.sql)).into_sql_str())
            .await
        {
            Ok(statement) => statement
                .columns()
                .iter()
                .map(|c| c.name().to_owned())
                .collect(),
            Err(e) => return not_used(format!("the query does not compile: {e}")),
        };
        for (i, c) in columns.iter().enumerate() {
            if check_column(c, "source column").is_err() {
                return not_used(format!("source column `{c}` is not a plain identifier"));
            }
            if columns[..i].iter().any(|o| o.eq_ignore_ascii_case(c)) {
                return not_used(format!("the query returns column `{c}` twice"));
            }
        }
        let Some(key_positions) = target
            .key
            .iter()
            .map(|k| position(&columns, k))
            .collect::<Option<Vec<usize>>>()
        else {
            return not_used(format!(
                "the query does not return every key column ({})",
                list(&target.key)
            ));
        };
        let guard = match &target.guard {
            Some(g) => {
                check_column(g, "guard column")?;
                match position(&columns, g) {
                    Some(i) => Some(sql::quote(&columns[i])),
                    // The row path refuses the first batch with a clear error.
                    None => {
                        return not_used(format!(
                            "the query does not return the guard column `{g}`"
                        ));
                    }
                }
            }
            None => None,
        };
        let target_schema = if same_file { "main" } else { TARGET_SCHEMA };
        let mut setup: Vec<String> = Vec::new();
        if !same_file {
            sqlx::query(AssertSqlSafe(format!(
                "ATTACH DATABASE ?1 AS \"{TARGET_SCHEMA}\""
            )))
            .bind(target_file.to_string_lossy().into_owned())
            .execute(&mut probe)
            .await
            .map_err(|e| sql_error("pushdown setup: attach the target", &e))?;
            if extra_in_target {
                let target_names = schema_names(&mut probe, TARGET_SCHEMA)
                    .await
                    .map_err(|e| sql_error("pushdown setup", &e))?;
                let both: Vec<String> = source_names.intersection(&target_names).cloned().collect();
                if !both.is_empty() {
                    return not_used(format!(
                        "the source and the target (the state store) both have {}: the \
                         checkpoint statement would resolve to the source",
                        list(&both)
                    ));
                }
            }
            setup.push(format!("PRAGMA \"{TARGET_SCHEMA}\".journal_mode = WAL"));
        }
        let quoted: Vec<String> = columns.iter().map(|c| sql::quote(c)).collect();
        let key: Vec<String> = key_positions.iter().map(|&p| columns[p].clone()).collect();
        let key_quoted: Vec<String> = key_positions.iter().map(|&p| quoted[p].clone()).collect();
        // Key columns are NOT NULL: a NULL key fails the staging insert itself (named by
        // `null_key_error`), without a scan of the staged rows.
        let stage_columns: Vec<String> = quoted
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if key_positions.contains(&i) {
                    format!("{c} NOT NULL")
                } else {
                    c.clone()
                }
            })
            .collect();
        setup.push(format!(
            "CREATE TEMP TABLE IF NOT EXISTS \"{STAGE}\" ({})",
            list(&stage_columns)
        ));
        let target_quoted = format!("\"{target_schema}\".{}", sql::quote(name));
        let stmts = statements(
            &rewritten.sql,
            rewritten.names.len(),
            TargetShape {
                table: &target_quoted,
                columns: &quoted,
                key_positions: &key_positions,
                key: &key_quoted,
                guard: guard.as_deref(),
                window_column: window_column.map(|c| sql::quote(c)),
            },
        );

        for text in &setup {
            if let Err(e) = probe.execute(AssertSqlSafe(text.as_str())).await {
                return not_used(format!("setup failed ({text}): {e}"));
            }
        }
        // In WAL mode commits are made durable by a shared sync outside the writer lock
        // (`WalSync`); otherwise each commit syncs itself.
        let journal: String = sqlx::query_scalar(AssertSqlSafe(format!(
            "PRAGMA \"{target_schema}\".journal_mode"
        )))
        .fetch_one(&mut probe)
        .await
        .map_err(|e| sql_error("pushdown setup", &e))?;
        let wal = journal.eq_ignore_ascii_case("wal").then(|| {
            let mut path = target_file.clone().into_os_string();
            path.push("-wal");
            Arc::new(WalSync::new(PathBuf::from(path)))
        });
        let synchronous = if wal.is_some() { "NORMAL" } else { "FULL" };
        setup.push(format!(
            "PRAGMA \"{target_schema}\".synchronous = {synchronous}"
        ));
        let mut check: Vec<&Arc<str>> = vec![
            &stmts.first_page,
            &stmts.next_page,
            &stmts.last_key,
            &stmts.lock,
            &stmts.count_existing,
        ];
        check.extend(stmts.window_count.iter().chain(&stmts.window_last));
        if let Some(r) = &stmts.replace {
            check.extend([&r.delete, &r.null_key, &r.insert, &r.keys]);
        } else {
            check.push(&stmts.upsert);
            check.extend(
                stmts
                    .direct_new
                    .iter()
                    .chain(&stmts.direct_upsert)
                    .chain(&stmts.direct_existing),
            );
        }
        for text in check {
            if let Err(e) = probe
                .prepare(AssertSqlSafe(Arc::clone(text)).into_sql_str())
                .await
            {
                return not_used(format!("a pushdown statement does not compile: {e}"));
            }
        }
        let _ = probe.close().await;

        let attach: Option<String> =
            (!same_file).then(|| target_file.to_string_lossy().into_owned());
        let setup = Arc::new(setup);
        let pool = pool_options(pool_size)
            .after_connect(move |conn, _meta| {
                let attach = attach.clone();
                let setup = Arc::clone(&setup);
                Box::pin(async move {
                    // The undo log's digest (`backfill_undo_digest`).
                    crate::fingerprint::sqlite::register(conn).await?;
                    if let Some(path) = attach {
                        sqlx::query(AssertSqlSafe(format!(
                            "ATTACH DATABASE ?1 AS \"{TARGET_SCHEMA}\""
                        )))
                        .bind(path)
                        .execute(&mut *conn)
                        .await?;
                    }
                    for text in setup.iter() {
                        conn.execute(AssertSqlSafe(text.clone())).await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await
            .map_err(connect_error)?;
        tracing::info!(
            target_table = %target_quoted,
            same_file,
            "pushdown: rows move inside SQLite"
        );
        Ok(Some(SqlitePushdown {
            pool,
            writer: Arc::new(Mutex::new(())),
            columns,
            key,
            names: rewritten.names,
            source_format: source.time_format.clone(),
            target_format: target.time_format.clone(),
            target: target_quoted,
            stmts,
            wal,
            staged_partitions: AtomicU64::new(0),
            direct_batches: AtomicU64::new(0),
            expect_new: AtomicBool::new(true),
            target_at: (target_schema, name.to_owned()),
            window_column: window_column.map(|c| sql::quote(c)),
            undo_log: std::sync::OnceLock::new(),
            run_tags: std::sync::OnceLock::new(),
            find_new: std::sync::OnceLock::new(),
        }))
    }

    /// Writes the undo log of `log` (the target sink's, its table created) with this
    /// pushdown's writes, runs tagged by `tags` (the sink's): they then accept an
    /// [`UndoBatch`].
    pub(crate) fn use_undo_log(&self, log: &UndoLog, tags: Arc<RunTags>) {
        let _ = self.run_tags.set(tags);
        let (schema, table) = &self.target_at;
        let log = log.in_schema(schema, table);
        let _ = self.find_new.set(
            self.stmts
                .batch_keys
                .clone()
                .map(|rows| log.sqlite_find_new(&rows).into()),
        );
        let _ = self.undo_log.set(Arc::new(log));
    }

    /// `undo` with its run id replaced by the run's tag in the log (see [`RunTags`]); an
    /// error when the pushdown was not given the log.
    async fn tagged(&self, undo: Option<&UndoBatch>) -> Result<Option<UndoBatch>, ConnectorError> {
        let Some(b) = undo else {
            return Ok(None);
        };
        let tags = self.run_tags.get().ok_or_else(|| ConnectorError::Data {
            message: "the pushdown was opened without the target's undo log".to_owned(),
        })?;
        Ok(Some(tags.batch(b).await?))
    }

    /// The undo log, when a batch asks for it; an error when the pushdown was not given it.
    fn undo_log(&self, b: Option<&UndoBatch>) -> Result<Option<&UndoLog>, ConnectorError> {
        if b.is_none() {
            return Ok(None);
        }
        let log = self.undo_log.get().ok_or_else(|| ConnectorError::Data {
            message: "the pushdown was opened without the target's undo log".to_owned(),
        })?;
        Ok(Some(log))
    }

    /// The query's columns (to check against the target table).
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    fn context(&self, what: &str) -> String {
        format!("pushdown {what} {}", self.target)
    }

    /// Starts a partition attempt: counts the rows of `window` whose key is after `after`
    /// (refusing a NULL key); nothing is written to the target. Batches are then taken in key
    /// order with [`SqlitePartition::next_batch`]: when they all fit in the first batch, it is
    /// written straight from the query; otherwise the rows are staged once in this
    /// connection's TEMP table and cut into batches there.
    pub async fn partition(
        &self,
        window: &Window,
        after: Option<&[Value]>,
        undo: Option<&UndoBatch>,
    ) -> Result<SqlitePartition<'_>, ConnectorError> {
        const CONTEXT: &str = "source query";
        if undo.is_some_and(|b| b.every_key) {
            // The triggers log the rows a write changes, not every key it wrote.
            return Err(ConnectorError::Data {
                message: "the pushdown cannot log every key written (`propagate_deletes` in \
                          `upsert`); use the row path"
                    .to_owned(),
            });
        }
        let tagged = self.tagged(undo).await?;
        let undo = tagged.as_ref();
        let log = self.undo_log(undo)?.zip(undo);
        let mut values = named_values(&self.names, window, &self.source_format);
        let variant = match after {
            None => FIRST,
            Some(after) if after.len() == self.key.len() => {
                values.extend(after.iter().cloned());
                AFTER
            }
            Some(after) => {
                return Err(ConnectorError::Data {
                    message: format!(
                        "resume key has {} values but the key has {} columns ({})",
                        after.len(),
                        self.key.len(),
                        list(&self.key)
                    ),
                });
            }
        };
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(|e| sql_error(CONTEXT, &e))?;
        let row = sqlx::query_with(
            AssertSqlSafe(Arc::clone(&self.stmts.window_count[variant])),
            arguments(&values, values.len())?,
        )
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| sql_error(CONTEXT, &e))?;
        let total: i64 = row.try_get(0).map_err(|e| sql_error(CONTEXT, &e))?;
        for (i, column) in self.key.iter().enumerate() {
            let nulls: i64 = row.try_get(i + 1).map_err(|e| sql_error(CONTEXT, &e))?;
            if nulls > 0 {
                return Err(self.null_key_error(column));
            }
        }
        let last = match self.key.len() {
            1 => Some(self.read_key_at(&row, 2)?),
            _ => None,
        };
        Ok(SqlitePartition {
            owner: self,
            conn,
            last,
            total: u64::try_from(total).unwrap_or(0),
            done: 0,
            values,
            variant,
            staged: false,
            undo: log.map(|(log, b)| PartitionUndo {
                triggers: log.sqlite_triggers(b, true),
                counted: log.sqlite_counted_upsert(b),
                log_inserted: log.sqlite_log_inserted(b, &self.stmts.batch_keys[1 + variant]),
            }),
        })
    }

    /// What this pushdown did so far.
    pub fn stats(&self) -> PushdownStats {
        let (commits, wal_syncs) = self.wal.as_ref().map_or((0, 0), |w| {
            (
                w.committed.load(Ordering::SeqCst),
                w.syncs.load(Ordering::Relaxed),
            )
        });
        PushdownStats {
            staged_partitions: self.staged_partitions.load(Ordering::Relaxed),
            direct_batches: self.direct_batches.load(Ordering::Relaxed),
            commits,
            wal_syncs,
        }
    }

    /// Makes the commit that just returned durable (see [`WalSync`]); call it after the
    /// writer lock is released.
    async fn durable(&self) -> Result<(), ConnectorError> {
        match &self.wal {
            Some(wal) => wal.durable(wal.committed()).await,
            None => Ok(()),
        }
    }

    /// The key values of `row` (its first columns are the key columns, in order).
    fn read_key(&self, row: &sqlx::sqlite::SqliteRow) -> Result<Vec<Value>, ConnectorError> {
        self.read_key_at(row, 0)
    }

    /// The key values of `row` in its columns from `first` on, in key order.
    fn read_key_at(
        &self,
        row: &sqlx::sqlite::SqliteRow,
        first: usize,
    ) -> Result<Vec<Value>, ConnectorError> {
        let mut key = Vec::with_capacity(self.key.len());
        for (i, name) in self.key.iter().enumerate() {
            let raw = row
                .try_get_raw(first + i)
                .map_err(|e| sql_error("source query", &e))?;
            key.push(decode_value(raw).map_err(|e| ConnectorError::Data {
                message: format!("column \"{name}\": {e}"),
            })?);
        }
        Ok(key)
    }

    /// The first key column that is NULL in `row` (one `IS NULL` flag per key column).
    fn null_column(&self, row: &sqlx::sqlite::SqliteRow) -> &str {
        (0..self.key.len())
            .find(|&i| row.try_get::<i64, _>(i).is_ok_and(|flag| flag != 0))
            .map_or("?", |i| self.key[i].as_str())
    }

    /// A source row has NULL in key `column`.
    fn null_key_error(&self, column: &str) -> ConnectorError {
        let column = self
            .key
            .iter()
            .find(|k| k.eq_ignore_ascii_case(column))
            .map_or(column, String::as_str);
        ConnectorError::Data {
            message: format!(
                "a source row has NULL in key column \"{column}\"; key values must be \
                 non-NULL to be ordered and resumed"
            ),
        }
    }

    /// `replace` mode: in one target transaction, deletes the rows of `window` from the
    /// target and inserts the query's rows for it. Nothing is visible to others until
    /// [`SqlitePushedReplace::commit`]; dropped, it rolls back.
    pub async fn begin_replace(
        &self,
        window: &Window,
        undo: Option<&UndoBatch>,
    ) -> Result<SqlitePushedReplace, ConnectorError> {
        let context = self.context("replace in");
        let tagged = self.tagged(undo).await?;
        let undo = tagged.as_ref();
        let log = self.undo_log(undo)?;
        let Some(stmts) = &self.stmts.replace else {
            return Err(ConnectorError::Data {
                message: "the pushdown was not opened in `replace` mode".to_owned(),
            });
        };
        let guard = Arc::clone(&self.writer).lock_owned().await;
        // Deferred: the first statement, the delete (or the undo log's copy of the window's
        // rows, which writes too), locks the target only.
        let mut tx = self
            .pool
            .begin_with("BEGIN")
            .await
            .map_err(|e| sql_error(&context, &e))?;
        let window_bounds = bounds(window, &self.target_format);
        let replace_log = match (log.zip(undo), &self.window_column) {
            (Some((log, b)), Some(column)) => {
                let predicate = format!("t.{column} >= ? AND t.{column} < ?");
                Some(log.sqlite_replace(b, &predicate, &window_bounds))
            }
            _ => None,
        };
        // Logged by statements after the rewrite where the key allows: an insert trigger
        // would fire for every row of the window and make SQLite copy the rewrite's rows
        // aside first (~2x the run without the log on 1M rows, bench/undo.py).
        let set_wise = replace_log.as_ref().and_then(|r| r.set_wise.as_ref());
        if let Some(r) = &replace_log {
            // The lock first: the log's statements read the schema, which must not start a
            // snapshot before the write lock is held.
            sqlx::query(AssertSqlSafe(Arc::clone(&self.stmts.lock)))
                .execute(&mut *tx)
                .await
                .map_err(|e| sql_error(&context, &e))?;
            install(&mut tx, &r.prepare, &context).await?;
            Conn::Sqlite(&mut tx).exec(&r.keep, &context).await?;
        }
        let deleted = sqlx::query_with(
            AssertSqlSafe(Arc::clone(&stmts.delete)),
            arguments(&window_bounds, 2)?,
        )
        .execute(&mut *tx)
        .await
        .map_err(|e| sql_error(&context, &e))?
        .rows_affected();
        match (set_wise, &replace_log) {
            (Some(w), _) => install(&mut tx, &w.index, &context).await?,
            (None, Some(r)) => install(&mut tx, &r.after_delete, &context).await?,
            (None, None) => {}
        }
        let values = named_values(&self.names, window, &self.source_format);
        let null = sqlx::query_with(
            AssertSqlSafe(Arc::clone(&stmts.null_key)),
            arguments(&values, values.len())?,
        )
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| sql_error("source query", &e))?;
        if let Some(row) = null {
            return Err(self.null_key_error(self.null_column(&row)));
        }
        let inserted = sqlx::query_with(
            AssertSqlSafe(Arc::clone(&stmts.insert)),
            arguments(&values, values.len())?,
        )
        .execute(&mut *tx)
        .await
        .map_err(|e| sql_error(&context, &e))?
        .rows_affected();
        if let (Some(w), Some((log, b))) = (set_wise, log.zip(undo)) {
            let in_window: i64 = sqlx::query_scalar_with(
                AssertSqlSafe(w.count.sql.clone()),
                arguments(&w.count.params, 2)?,
            )
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| sql_error(&context, &e))?;
            if u64::try_from(in_window).ok() != Some(inserted) {
                self.log_outside_window(&mut tx, log, b, &stmts.keys, &values, &window_bounds)
                    .await?;
            }
            Conn::Sqlite(&mut tx).exec(&w.log_window, &context).await?;
        }
        Ok(SqlitePushedReplace {
            tx,
            writer: guard,
            wal: self.wal.clone(),
            undo: replace_log,
            context,
            counts: RowCounts {
                read: inserted,
                inserted,
                deleted,
                ..RowCounts::default()
            },
        })
    }

    /// Logs the rows a `replace` rewrite inserted outside its window (the query returned
    /// them for the window, with a window column outside it or NULL), which the set-wise log
    /// of the window does not see: their keys are read from the query again.
    async fn log_outside_window(
        &self,
        tx: &mut Transaction<'static, Sqlite>,
        log: &UndoLog,
        b: &UndoBatch,
        keys: &str,
        values: &[Value],
        window_bounds: &[Value],
    ) -> Result<(), ConnectorError> {
        let Some(column) = &self.window_column else {
            return Ok(());
        };
        let (lo, hi) = (values.len() + 1, values.len() + 2);
        let outside = format!("(t.{column} >= ?{lo} AND t.{column} < ?{hi}) IS NOT 1");
        let Some(text) = log.sqlite_replace_outside(b, keys, &outside) else {
            return Ok(());
        };
        let all: Vec<Value> = values.iter().chain(window_bounds).cloned().collect();
        sqlx::query_with(AssertSqlSafe(text), arguments(&all, all.len())?)
            .execute(&mut **tx)
            .await
            .map(drop)
            .map_err(|e| sql_error("undo log: rows outside their window", &e))
    }

    /// Closes the connections; later calls fail.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// What the target side of the pushdown's statements is made of, every name quoted.
struct TargetShape<'a> {
    /// The target table, schema-qualified.
    table: &'a str,
    /// The query's columns, written to the target's columns of the same names.
    columns: &'a [String],
    /// Positions of the key columns among `columns`.
    key_positions: &'a [usize],
    /// The key columns.
    key: &'a [String],
    /// The upsert guard column, if any.
    guard: Option<&'a str>,
    /// `replace` mode: the window column.
    window_column: Option<String>,
}

/// Builds every statement of the pushdown.
fn statements(query: &str, query_params: usize, shape: TargetShape<'_>) -> Statements {
    let TargetShape {
        table: target,
        columns,
        key_positions,
        key,
        guard,
        window_column,
    } = shape;
    let first_param = query_params + 1;
    let direct = Direct {
        query,
        key,
        first_param,
        after: false,
    };
    let insert_stage = |after: bool| -> Arc<str> {
        let (ordered, _) = sql::ordered(query, key, first_param, after);
        format!("INSERT INTO {STAGE_QUOTED} {ordered}").into()
    };
    let any_null = key
        .iter()
        .map(|k| format!("{k} IS NULL"))
        .collect::<Vec<_>>()
        .join(" OR ");
    let null_flags = key
        .iter()
        .map(|k| format!("{k} IS NULL"))
        .collect::<Vec<_>>()
        .join(", ");
    let target_key = sql::key_tuple(key);
    let first_key = &key[0];
    let replace = window_column.map(|column| ReplaceStatements {
        delete: Arc::from(sql::delete_window(target, &column)),
        null_key: Arc::from(format!(
            "{} WHERE {any_null} LIMIT 1",
            sql::wrap(&null_flags, query)
        )),
        insert: Arc::from(format!(
            "INSERT INTO {target} ({}) {}",
            list(columns),
            sql::select_all(query)
        )),
        keys: Arc::from(sql::wrap(&list(key), query)),
    });
    Statements {
        clear: format!("DELETE FROM {STAGE_QUOTED}").into(),
        first_page: insert_stage(false),
        next_page: insert_stage(true),
        // Two subqueries: SQLite answers a lone min() or max() from the b-tree's ends, but
        // `min(rowid), max(rowid)` together would scan every staged row.
        rowids: format!(
            "SELECT (SELECT min(rowid) FROM {STAGE_QUOTED}), (SELECT max(rowid) FROM {STAGE_QUOTED})"
        )
        .into(),
        last_key: format!("SELECT {} FROM {STAGE_QUOTED} WHERE rowid = ?1", list(key)).into(),
        lock: format!("UPDATE {target} SET {first_key} = {first_key} WHERE false").into(),
        count_existing: format!(
            "SELECT count(*) FROM {target} WHERE {target_key} IN \
             (SELECT {} FROM {STAGE_QUOTED} WHERE {BATCH_ROWS})",
            list(key)
        )
        .into(),
        upsert: sql::upsert_select(
            target,
            columns,
            key_positions,
            guard,
            STAGE_QUOTED,
            BATCH_ROWS,
        )
        .into(),
        window_count: direct.each(|d| d.count()),
        window_last: direct.each(|d| d.last()),
        direct_new: direct.each(|d| {
            let (from, filter) = d.upto();
            sql::insert_new_select(target, columns, key_positions, &from, &filter)
        }),
        direct_upsert: direct.each(|d| {
            let (from, filter) = d.upto();
            sql::upsert_select(target, columns, key_positions, guard, &from, &filter)
        }),
        direct_existing: direct.each(|d| {
            let (from, filter) = d.upto();
            format!(
                "SELECT count(*) FROM {target} WHERE {target_key} IN \
                 (SELECT {} FROM {from} WHERE {filter})",
                list(key)
            )
        }),
        batch_keys: {
            let [first, after] = direct.each(|d| {
                let (from, filter) = d.upto();
                format!("SELECT {} FROM {from} WHERE {filter}", list(key))
            });
            let staged = format!("SELECT {} FROM {STAGE_QUOTED} WHERE {BATCH_ROWS}", list(key));
            [staged.into(), first, after]
        },
        replace,
    }
}

/// Builds the direct path's statements over the query itself (no TEMP table).
struct Direct<'a> {
    query: &'a str,
    key: &'a [String],
    /// The first placeholder after the query's own.
    first_param: usize,
    /// Whether rows start after a bound resume key ([`AFTER`]).
    after: bool,
}

impl<'a> Direct<'a> {
    fn each(&self, build: impl Fn(&Direct<'a>) -> String) -> [Arc<str>; 2] {
        [FIRST, AFTER].map(|variant| {
            let d = Direct {
                after: variant == AFTER,
                ..*self
            };
            Arc::from(build(&d))
        })
    }

    fn from(&self) -> String {
        format!("(\n{}\n) AS q", self.query)
    }

    /// The rows after the resume key (all rows for [`FIRST`]) and the next placeholder.
    fn filter(&self) -> (String, usize) {
        if self.after {
            sql::key_cmp(self.key, ">", self.first_param)
        } else {
            ("true".to_owned(), self.first_param)
        }
    }

    /// `count(*)` and, per key column, its NULLs; for a one-column key also `max(key)`, the
    /// last key in key order when no key is NULL (`max` compares like `ORDER BY`, with the
    /// column's collation), so the direct path needs no second pass for it (on the demo the
    /// separate `ORDER BY … LIMIT 1` cost more CPU than the count).
    fn count(&self) -> String {
        let mut nulls: Vec<String> = self
            .key
            .iter()
            .map(|k| format!("coalesce(sum({k} IS NULL), 0)"))
            .collect();
        if let [k] = self.key {
            nulls.push(format!("max({k})"));
        }
        format!(
            "SELECT count(*), {} FROM {} WHERE {}",
            list(&nulls),
            self.from(),
            self.filter().0
        )
    }

    /// The last key in key order (the order of the staging statement, reversed).
    fn last(&self) -> String {
        let desc: Vec<String> = self.key.iter().map(|k| format!("+{k} DESC")).collect();
        format!(
            "SELECT {} FROM {} WHERE {} ORDER BY {} LIMIT 1",
            list(self.key),
            self.from(),
            self.filter().0,
            list(&desc)
        )
    }

    /// The source and the filter of the rows up to a bound last key.
    fn upto(&self) -> (String, String) {
        let (filter, next) = self.filter();
        let (upto, _) = sql::key_cmp(self.key, "<=", next);
        (self.from(), format!("{filter} AND {upto}"))
    }
}

/// A partition attempt started by [`SqlitePushdown::partition`]; dropping it writes nothing.
pub struct SqlitePartition<'a> {
    owner: &'a SqlitePushdown,
    conn: PoolConnection<Sqlite>,
    /// The last key after the checkpoint, read with the count (one-column keys only).
    last: Option<Vec<Value>>,
    /// Rows after the checkpoint: counted, then (once staged) the rows staged.
    total: u64,
    /// Rows handed out as batches and written so far.
    done: u64,
    /// The query's bound values, then the resume key's ([`AFTER`]).
    values: Vec<Value>,
    /// [`FIRST`] or [`AFTER`].
    variant: usize,
    /// Whether the rows are staged in the TEMP table.
    staged: bool,
    /// The undo log's SQL, installed in each batch's transaction, when the run keeps one.
    undo: Option<PartitionUndo>,
}

/// How a partition's batches keep the undo log.
#[derive(Debug)]
struct PartitionUndo {
    /// Insert and update triggers ([`UndoLog::sqlite_triggers`]): the direct path's insert
    /// of new keys logs through them (its rows are mostly new).
    triggers: SqliteTriggers,
    /// Batches whose new keys are found first ([`UndoLog::sqlite_counted_upsert`]): the
    /// staged batches and the direct path's counted upsert; `None` when the key has no
    /// UNIQUE index (the triggers then serve).
    counted: Option<SqliteCountedLog>,
    /// The direct path's batch expected to be all new: its keys logged after the insert
    /// ([`UndoLog::sqlite_log_inserted`]); `None` when the key has no UNIQUE index.
    log_inserted: Option<String>,
}

impl fmt::Debug for SqlitePartition<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqlitePartition")
            .field("total", &self.total)
            .field("done", &self.done)
            .field("staged", &self.staged)
            .finish_non_exhaustive()
    }
}

impl<'p> SqlitePartition<'p> {
    /// The next `limit` rows, in key order (empty when all were handed out), with the key of
    /// the last one. When every row after the checkpoint fits, the batch is the query itself
    /// up to its last key (nothing staged); otherwise the rows are staged on the first call.
    pub async fn next_batch(&mut self, limit: u32) -> Result<SqliteStaged<'_, 'p>, ConnectorError> {
        if !self.staged && self.done < self.total {
            if self.done == 0 && self.total <= u64::from(limit) {
                return self.direct_batch().await;
            }
            self.stage().await?;
        }
        let from = self.done;
        let len = u64::from(limit).min(self.total.saturating_sub(from));
        let mut last = None;
        if len > 0 {
            let to = i64::try_from(from + len).unwrap_or(i64::MAX);
            let row = sqlx::query(AssertSqlSafe(Arc::clone(&self.owner.stmts.last_key)))
                .bind(to)
                .fetch_one(&mut *self.conn)
                .await
                .map_err(|e| sql_error("source query", &e))?;
            last = Some(self.owner.read_key(&row)?);
        }
        Ok(SqliteStaged {
            part: self,
            from,
            len,
            last,
            direct: false,
        })
    }

    /// Every row after the checkpoint as one batch, read by the write itself: only its last
    /// key is read here, unless the count read it.
    async fn direct_batch(&mut self) -> Result<SqliteStaged<'_, 'p>, ConnectorError> {
        if let Some(last) = self.last.take() {
            return Ok(SqliteStaged {
                len: self.total,
                part: self,
                from: 0,
                last: Some(last),
                direct: true,
            });
        }
        let owner = self.owner;
        let row = sqlx::query_with(
            AssertSqlSafe(Arc::clone(&owner.stmts.window_last[self.variant])),
            arguments(&self.values, self.values.len())?,
        )
        .fetch_optional(&mut *self.conn)
        .await
        .map_err(|e| sql_error("source query", &e))?;
        let last = match row {
            Some(row) => Some(owner.read_key(&row)?),
            // The rows went away since they were counted.
            None => None,
        };
        let len = if last.is_some() { self.total } else { 0 };
        Ok(SqliteStaged {
            part: self,
            from: 0,
            len,
            last,
            direct: true,
        })
    }

    /// Runs the query once for the rows after the checkpoint, in key order, into the TEMP
    /// table (autocommit: it reads the source only, so workers stage in parallel).
    async fn stage(&mut self) -> Result<(), ConnectorError> {
        const CONTEXT: &str = "source query";
        let owner = self.owner;
        let text = match self.variant {
            FIRST => &owner.stmts.first_page,
            _ => &owner.stmts.next_page,
        };
        let conn: &mut SqliteConnection = &mut self.conn;
        sqlx::query(AssertSqlSafe(Arc::clone(&owner.stmts.clear)))
            .execute(&mut *conn)
            .await
            .map_err(|e| sql_error(CONTEXT, &e))?;
        let total = sqlx::query_with(
            AssertSqlSafe(Arc::clone(text)),
            arguments(&self.values, self.values.len())?,
        )
        .execute(&mut *conn)
        .await
        .map_err(|e| match null_stage_column(&e) {
            Some(column) => owner.null_key_error(column),
            None => sql_error(CONTEXT, &e),
        })?
        .rows_affected();
        if total > 0 {
            // Rows inserted into an empty rowid table are numbered 1..=total in insertion
            // (key) order; batches rely on it.
            let (min, max): (i64, i64) =
                sqlx::query_as(AssertSqlSafe(Arc::clone(&owner.stmts.rowids)))
                    .fetch_one(&mut *conn)
                    .await
                    .map_err(|e| sql_error(CONTEXT, &e))?;
            if min != 1 || u64::try_from(max).ok() != Some(total) {
                return Err(ConnectorError::Data {
                    message: format!(
                        "pushdown: staged rows are numbered {min}..{max}, expected 1..{total}"
                    ),
                });
            }
        }
        owner.staged_partitions.fetch_add(1, Ordering::Relaxed);
        self.total = total;
        self.staged = true;
        Ok(())
    }
}

/// One batch of a partition, not yet written. Dropping it writes nothing (and the next
/// batch is the same rows again).
pub struct SqliteStaged<'a, 'p> {
    part: &'a mut SqlitePartition<'p>,
    from: u64,
    len: u64,
    last: Option<Vec<Value>>,
    /// Written straight from the query (every row after the checkpoint, up to `last`).
    direct: bool,
}

impl fmt::Debug for SqliteStaged<'_, '_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStaged")
            .field("from", &self.from)
            .field("len", &self.len)
            .field("last", &self.last)
            .field("direct", &self.direct)
            .finish_non_exhaustive()
    }
}

impl SqliteStaged<'_, '_> {
    /// Rows in the batch.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when no row is left after the resume key.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The key of the batch's last row (in key order); `None` when empty.
    pub fn last_key(&self) -> Option<&[Value]> {
        self.last.as_deref()
    }

    /// Upserts the batch into the target and runs `extra`, in one transaction, and returns
    /// once that transaction is durable. Counts are exact, as on the row path:
    /// `inserted + updated + unchanged == len`.
    pub async fn upsert(self, extra: Option<&Extra>) -> Result<RowCounts, ConnectorError> {
        let part = self.part;
        let owner = part.owner;
        let context = owner.context("upsert into");
        let n = self.len;
        if n == 0 {
            return Ok(RowCounts::default());
        }
        let guard = owner.writer.lock().await;
        let (inserted, updated) = match &self.last {
            Some(last) if self.direct => {
                let mut values = part.values.clone();
                values.extend(last.iter().cloned());
                write_direct(part, &values, extra, &context).await?
            }
            _ => write_staged(part, [self.from, self.from + n], extra, &context).await?,
        };
        drop(guard);
        owner.durable().await?;
        if self.direct {
            owner.direct_batches.fetch_add(1, Ordering::Relaxed);
        }
        part.done = self.from + n;
        if part.staged && part.done == part.total {
            // The partition is written: free the staged rows now (best effort; the next
            // partition on this connection clears them anyway).
            let _ = sqlx::query(AssertSqlSafe(Arc::clone(&owner.stmts.clear)))
                .execute(&mut *part.conn)
                .await;
        }
        Ok(RowCounts {
            inserted,
            updated,
            unchanged: n.saturating_sub(inserted + updated),
            ..RowCounts::default()
        })
    }
}

/// How one batch's transaction keeps the undo log ([`PartitionUndo`]).
#[derive(Clone, Copy)]
enum Logged<'a> {
    /// Insert and update triggers.
    Triggers(&'a SqliteTriggers),
    /// New keys found before the write (by the statement given), logged after it; changed
    /// rows by a trigger.
    Counted(&'a SqliteCountedLog, &'a Arc<str>),
}

/// `batch_keys`' index of a staged batch's keys (then the direct path's, per variant).
const STAGED_KEYS: usize = 0;

impl PartitionUndo {
    /// How a batch whose new keys can be found first keeps the log: counted when the key
    /// has a UNIQUE index and the run's statements are built, else by the triggers.
    /// `keys`: the `batch_keys` index of the batch's rows.
    fn logged<'a>(&'a self, owner: &'a SqlitePushdown, keys: usize) -> Logged<'a> {
        match (&self.counted, owner.find_new.get()) {
            (Some(log), Some(find_new)) => Logged::Counted(log, &find_new[keys]),
            _ => Logged::Triggers(&self.triggers),
        }
    }
}

impl Logged<'_> {
    /// Run once the transaction holds the write lock.
    fn create(&self) -> &str {
        match self {
            Logged::Triggers(t) => &t.create,
            Logged::Counted(c, _) => &c.create,
        }
    }

    /// Run after the write, before the engine's [`Extra`] and the commit.
    fn finish(&self) -> &str {
        match self {
            Logged::Triggers(t) => &t.drop,
            Logged::Counted(c, _) => &c.log_new,
        }
    }
}

/// Writes staged rows `(range[0], range[1]]` and `extra` in one target transaction; returns
/// (inserted, updated).
async fn write_staged(
    part: &mut SqlitePartition<'_>,
    range: [u64; 2],
    extra: Option<&Extra>,
    context: &str,
) -> Result<(u64, u64), ConnectorError> {
    let owner = part.owner;
    let range = range.map(|r| i64::try_from(r).unwrap_or(i64::MAX));
    let conn: &mut SqliteConnection = &mut part.conn;
    // Deferred, so the source is never write-locked; the first statement writes (nothing) to
    // the target, which takes the target's write lock before any read, so a concurrent commit
    // cannot invalidate this transaction's snapshot.
    let mut tx: Transaction<'_, Sqlite> = conn
        .begin_with("BEGIN")
        .await
        .map_err(|e| sql_error(context, &e))?;
    sqlx::query(AssertSqlSafe(Arc::clone(&owner.stmts.lock)))
        .execute(&mut *tx)
        .await
        .map_err(|e| sql_error(context, &e))?;
    let n = u64::try_from(range[1] - range[0]).unwrap_or(0);
    let logged = part.undo.as_ref().map(|u| u.logged(owner, STAGED_KEYS));
    if let Some(logged) = logged {
        install(&mut tx, logged.create(), context).await?;
    }
    let inserted = match logged {
        Some(Logged::Counted(_, find_new)) => sqlx::query(AssertSqlSafe(Arc::clone(find_new)))
            .bind(range[0])
            .bind(range[1])
            .execute(&mut *tx)
            .await
            .map_err(|e| sql_error(context, &e))?
            .rows_affected(),
        _ => {
            let existing: i64 =
                sqlx::query_scalar(AssertSqlSafe(Arc::clone(&owner.stmts.count_existing)))
                    .bind(range[0])
                    .bind(range[1])
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(|e| sql_error(context, &e))?;
            n.saturating_sub(u64::try_from(existing).unwrap_or(0))
        }
    };
    let written = sqlx::query(AssertSqlSafe(Arc::clone(&owner.stmts.upsert)))
        .bind(range[0])
        .bind(range[1])
        .execute(&mut *tx)
        .await
        .map_err(|e| sql_error(context, &e))?
        .rows_affected();
    if let Some(logged) = logged {
        install(&mut tx, logged.finish(), context).await?;
    }
    run_extra(&mut tx, extra).await?;
    tx.commit().await.map_err(|e| sql_error(context, &e))?;
    Ok((inserted, written.saturating_sub(inserted)))
}

/// Writes the query's rows after the checkpoint up to the bound last key (`values`: the
/// query's, the resume key's, the last key's) and `extra` in one target transaction. When the
/// last batch found mostly new keys: first the new keys only (`changes()` = inserted), then,
/// only when some key already existed, the upsert, whose `changes()` are the updated rows (the
/// rows just inserted are identical). Otherwise: count the keys that exist, then the upsert
/// (`changes()` = inserted + updated). The first statement takes the target's write lock (it
/// writes, or the transaction began with the lock statement) before its snapshot could go
/// stale; the source is only read. Returns (inserted, updated).
async fn write_direct(
    part: &mut SqlitePartition<'_>,
    values: &[Value],
    extra: Option<&Extra>,
    context: &str,
) -> Result<(u64, u64), ConnectorError> {
    let owner = part.owner;
    let stmts = &owner.stmts;
    let variant = part.variant;
    let n = part.total;
    let expect_new = owner.expect_new.load(Ordering::Relaxed);
    if expect_new && part.undo.as_ref().is_some_and(|u| u.log_inserted.is_some()) {
        return write_direct_new_logged(part, values, extra, context).await;
    }
    let logged = part.undo.as_ref().map(|u| match expect_new {
        true => Logged::Triggers(&u.triggers),
        false => u.logged(owner, 1 + variant),
    });
    let conn: &mut SqliteConnection = &mut part.conn;
    let mut tx: Transaction<'_, Sqlite> = conn
        .begin_with("BEGIN")
        .await
        .map_err(|e| sql_error(context, &e))?;
    // With the undo log, the lock statement comes first: creating its triggers reads the
    // schema, which must not start a snapshot before the write lock is held.
    if let Some(logged) = logged {
        sqlx::query(AssertSqlSafe(Arc::clone(&stmts.lock)))
            .execute(&mut *tx)
            .await
            .map_err(|e| sql_error(context, &e))?;
        install(&mut tx, logged.create(), context).await?;
    }
    let run = |text: &Arc<str>| -> Result<_, ConnectorError> {
        Ok(sqlx::query_with(
            AssertSqlSafe(Arc::clone(text)),
            arguments(values, values.len())?,
        ))
    };
    let (inserted, updated) = if expect_new {
        let inserted = run(&stmts.direct_new[variant])?
            .execute(&mut *tx)
            .await
            .map_err(|e| sql_error(context, &e))?
            .rows_affected();
        let mut updated = 0;
        if inserted < n {
            if logged.is_some() {
                // Every key of these rows exists now, so the upsert only updates: without
                // the insert trigger, SQLite does not copy its rows aside first.
                install(&mut tx, &UndoLog::sqlite_drop_insert_trigger(), context).await?;
            }
            updated = run(&stmts.direct_upsert[variant])?
                .execute(&mut *tx)
                .await
                .map_err(|e| sql_error(context, &e))?
                .rows_affected();
        }
        (inserted, updated)
    } else {
        if logged.is_none() {
            sqlx::query(AssertSqlSafe(Arc::clone(&stmts.lock)))
                .execute(&mut *tx)
                .await
                .map_err(|e| sql_error(context, &e))?;
        }
        let inserted = if let Some(Logged::Counted(_, find_new)) = logged {
            sqlx::query_with(
                AssertSqlSafe(Arc::clone(find_new)),
                arguments(values, values.len())?,
            )
            .execute(&mut *tx)
            .await
            .map_err(|e| sql_error(context, &e))?
            .rows_affected()
        } else {
            let (existing,): (i64,) = sqlx::query_as_with(
                AssertSqlSafe(Arc::clone(&stmts.direct_existing[variant])),
                arguments(values, values.len())?,
            )
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| sql_error(context, &e))?;
            n.saturating_sub(u64::try_from(existing).unwrap_or(0))
        };
        let written = run(&stmts.direct_upsert[variant])?
            .execute(&mut *tx)
            .await
            .map_err(|e| sql_error(context, &e))?
            .rows_affected();
        (inserted, written.saturating_sub(inserted))
    };
    if let Some(logged) = logged {
        install(&mut tx, logged.finish(), context).await?;
    }
    run_extra(&mut tx, extra).await?;
    tx.commit().await.map_err(|e| sql_error(context, &e))?;
    owner
        .expect_new
        .store(inserted.saturating_mul(2) >= n, Ordering::Relaxed);
    Ok((inserted, updated))
}

/// [`write_direct`] of a batch expected to be all new, with the undo log: under a savepoint,
/// the insert of the new keys runs without a trigger (an insert trigger would make SQLite copy
/// every row aside first) and [`UndoLog::sqlite_log_inserted`] then logs the batch's keys.
/// When the insert inserted every key logged, that is the batch; otherwise (a key existed,
/// or the batch holds one twice; the log is not even tried when the insert inserted fewer
/// rows than counted) both are rolled back to the savepoint and the batch is written as the
/// counted upsert ([`UndoLog::sqlite_counted_upsert`]), in the same
/// transaction. Returns (inserted, updated).
async fn write_direct_new_logged(
    part: &mut SqlitePartition<'_>,
    values: &[Value],
    extra: Option<&Extra>,
    context: &str,
) -> Result<(u64, u64), ConnectorError> {
    let owner = part.owner;
    let stmts = &owner.stmts;
    let variant = part.variant;
    let n = part.total;
    let (Some(undo), Some(find_new)) = (part.undo.as_ref(), owner.find_new.get()) else {
        return Err(ConnectorError::Data {
            message: "the pushdown was opened without the target's undo log".to_owned(),
        });
    };
    let (Some(log_inserted), Some(counted)) = (&undo.log_inserted, &undo.counted) else {
        return Err(ConnectorError::Data {
            message: "the undo log cannot log a batch's new keys after its write".to_owned(),
        });
    };
    let conn: &mut SqliteConnection = &mut part.conn;
    let mut tx: Transaction<'_, Sqlite> = conn
        .begin_with("BEGIN")
        .await
        .map_err(|e| sql_error(context, &e))?;
    // The lock statement first: the target's write lock before any snapshot is read.
    sqlx::query(AssertSqlSafe(Arc::clone(&stmts.lock)))
        .execute(&mut *tx)
        .await
        .map_err(|e| sql_error(context, &e))?;
    let run = |text: &str| -> Result<_, ConnectorError> {
        Ok(sqlx::query_with(
            AssertSqlSafe(text.to_owned()),
            arguments(values, values.len())?,
        )
        .persistent(false))
    };
    install(&mut tx, "SAVEPOINT bf_undo_new", context).await?;
    let inserted = run(&stmts.direct_new[variant])?
        .persistent(true)
        .execute(&mut *tx)
        .await
        .map_err(|e| sql_error(context, &e))?
        .rows_affected();
    // Fewer than counted: some keys existed (the rows may have changed since the count, so
    // equal counts are only a hint, and the log's own count decides).
    let logged = match inserted == n {
        true => Some(
            run(log_inserted)?
                .execute(&mut *tx)
                .await
                .map_err(|e| sql_error(context, &e))?
                .rows_affected(),
        ),
        false => None,
    };
    let (inserted, updated) = if logged == Some(inserted) {
        install(&mut tx, "RELEASE bf_undo_new", context).await?;
        (inserted, 0)
    } else {
        install(
            &mut tx,
            "ROLLBACK TO bf_undo_new; RELEASE bf_undo_new",
            context,
        )
        .await?;
        install(&mut tx, &counted.create, context).await?;
        let inserted = run(&find_new[1 + variant])?
            .persistent(true)
            .execute(&mut *tx)
            .await
            .map_err(|e| sql_error(context, &e))?
            .rows_affected();
        let written = run(&stmts.direct_upsert[variant])?
            .persistent(true)
            .execute(&mut *tx)
            .await
            .map_err(|e| sql_error(context, &e))?
            .rows_affected();
        install(&mut tx, &counted.log_new, context).await?;
        (inserted, written.saturating_sub(inserted))
    };
    run_extra(&mut tx, extra).await?;
    tx.commit().await.map_err(|e| sql_error(context, &e))?;
    owner
        .expect_new
        .store(inserted.saturating_mul(2) >= n, Ordering::Relaxed);
    Ok((inserted, updated))
}

/// An open pushdown `replace` transaction: the window is deleted and re-inserted inside it.
/// Dropped without commit, it rolls back.
pub struct SqlitePushedReplace {
    tx: Transaction<'static, Sqlite>,
    writer: OwnedMutexGuard<()>,
    context: String,
    counts: RowCounts,
    wal: Option<Arc<WalSync>>,
    /// The undo log's SQL (its trigger installed), when the run keeps one.
    undo: Option<SqliteReplaceLog>,
}

impl fmt::Debug for SqlitePushedReplace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqlitePushedReplace")
            .field("counts", &self.counts)
            .finish_non_exhaustive()
    }
}

impl SqlitePushedReplace {
    /// Rows read, inserted and deleted by the transaction.
    pub fn counts(&self) -> RowCounts {
        self.counts
    }

    /// Runs `extra` (must affect exactly one row), then commits; returns once the commit is
    /// durable.
    pub async fn commit(self, extra: Option<&Extra>) -> Result<(), ConnectorError> {
        let SqlitePushedReplace {
            mut tx,
            writer,
            context,
            wal,
            undo,
            ..
        } = self;
        if let Some(r) = &undo {
            install(&mut tx, &r.commit, &context).await?;
        }
        run_extra(&mut tx, extra).await?;
        tx.commit().await.map_err(|e| sql_error(&context, &e))?;
        drop(writer);
        match wal {
            Some(wal) => wal.durable(wal.committed()).await,
            None => Ok(()),
        }
    }
}
