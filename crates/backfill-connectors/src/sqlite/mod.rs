//! SQLite source and sink, on sqlx's `SqlitePool`.
//!
//! Owns: opening SQLite files (never creating them), mapping SQLite's dynamic storage classes
//! to [`Value`] and back, keyset-paginated reads, multi-row upserts and inserts, and the
//! classification of SQLite errors ([`classify_code`]).
//!
//! Does not: change a source database. Source queries are wrapped as subqueries of a
//! `SELECT`, so only reads can run, and the source's journal mode is left as it is (switching
//! a live database to WAL is a permanent change that needs an exclusive lock).
//!
//! Invariants: write transactions start with `BEGIN IMMEDIATE`, so a write never fails half-way
//! on a lock upgrade; a committed batch (and a checkpoint committed with it) is durable before
//! the call returns: the row path's target runs in WAL with `synchronous = FULL`, the
//! pushdown's commits with `synchronous = NORMAL` and then wait for a shared sync of the WAL
//! file (group commit, see `pushdown`).

mod pushdown;
pub(crate) mod run_tags;
mod sink;
mod source;
mod sql;

use std::str::FromStr;
use std::time::Duration;

use backfill_core::SecretUrl;
use backfill_core::retry::ErrorClass;
use backfill_core::secret::redact;
use backfill_core::value::Value;
use sqlx::sqlite::{
    SqliteArguments, SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous, SqliteValueRef,
};
use sqlx::{Arguments, ConnectOptions, Decode, TypeInfo, ValueRef};

use crate::ConnectorError;
use crate::shared::{classify_driver, decode_row, driver_error};

pub use pushdown::{
    PushdownStats, SqlitePartition, SqlitePushdown, SqlitePushedReplace, SqliteStaged,
};
pub use sink::{SqliteReplace, SqliteSink};
pub use source::SqliteSource;

/// How long a statement waits for another connection's lock before failing with BUSY.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);
/// Rows buffered between SQLite's worker thread and the reading task.
const ROW_BUFFER: usize = 1024;
/// SQLite's soft heap limit in bytes, set on every connection the connectors open. It is one
/// limit for the whole process (every connection of every pool, the state store's too):
/// above it SQLite recycles page-cache memory instead of allocating more, so peak memory no
/// longer grows with the number of connections (each had up to 2 MiB of cache per attached
/// file, and sorter memory). Measured on the demo's full copy of 1,000,000 rows: peak RSS
/// 38 → 28 MiB, no slower (bench/RESULTS.md).
const SOFT_HEAP_LIMIT: &str = "4194304";

/// Whether a failed SQLite call may succeed if tried again, by (extended) result code.
///
/// The one table of SQLite error classes; see <https://www.sqlite.org/rescode.html>.
pub fn classify_code(code: i32) -> ErrorClass {
    use ErrorClass::{Data, Permanent, Transient};
    // Extended codes keep the primary code in the low byte (SQLITE_BUSY_SNAPSHOT = 517 → 5).
    match code & 0xff {
        4 => Transient,  // ABORT: the statement was rolled back by another
        5 => Transient,  // BUSY: another connection holds the lock beyond busy_timeout
        6 => Transient,  // LOCKED: a conflict inside this process
        7 => Transient,  // NOMEM
        9 => Transient,  // INTERRUPT
        10 => Transient, // IOERR
        13 => Transient, // FULL: the disk may be freed
        15 => Transient, // PROTOCOL: WAL lock race
        17 => Transient, // SCHEMA: schema changed under a prepared statement
        1 => Permanent,  // ERROR: syntax, no such table or column
        3 => Permanent,  // PERM
        8 => Permanent,  // READONLY
        11 => Permanent, // CORRUPT
        14 => Permanent, // CANTOPEN
        18 => Data,      // TOOBIG: a row's value exceeds SQLite's limits
        19 => Data,      // CONSTRAINT: the target rejects the row (unique, not null, check, fk)
        20 => Data,      // MISMATCH: e.g. text into an INTEGER PRIMARY KEY
        21 => Permanent, // MISUSE
        23 => Permanent, // AUTH
        25 => Permanent, // RANGE: parameter index out of range
        26 => Permanent, // NOTADB
        _ => Permanent,
    }
}

/// Whether a failed sqlx call on SQLite may succeed if tried again.
pub fn classify(err: &sqlx::Error) -> ErrorClass {
    match err {
        sqlx::Error::Database(db) => db
            .code()
            .and_then(|c| c.parse::<i32>().ok())
            .map_or(ErrorClass::Permanent, classify_code),
        other => classify_driver(other),
    }
}

/// A failed statement, classified, with the message redacted.
pub(crate) fn sql_error(context: impl Into<String>, err: &sqlx::Error) -> ConnectorError {
    driver_error(context, err, crate::error::lost_connection(err), classify)
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Source,
    Target,
}

/// Opens a pool on an existing SQLite file; a missing file is a `Connect` error naming it.
pub(crate) async fn connect(
    url: &SecretUrl,
    pool_size: u32,
    role: Role,
) -> Result<SqlitePool, ConnectorError> {
    let fail = |message: String| ConnectorError::Connect {
        url: url.redacted(),
        message: redact(&message),
    };
    let mut options = SqliteConnectOptions::from_str(url.expose())
        .map_err(|e| fail(format!("not a SQLite URL: {e}")))?
        .create_if_missing(false)
        .busy_timeout(BUSY_TIMEOUT)
        .row_buffer_size(ROW_BUFFER)
        .pragma("soft_heap_limit", SOFT_HEAP_LIMIT)
        .disable_statement_logging();
    if role == Role::Target {
        options = options
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full);
    }
    let path = options.get_filename().to_path_buf();
    let in_memory = url.expose().contains(":memory:") || url.expose().contains("mode=memory");
    if !in_memory && !path.exists() {
        let what = match role {
            Role::Source => "source",
            Role::Target => "target",
        };
        return Err(fail(format!(
            "SQLite {what} database file {} does not exist (it is never created)",
            path.display()
        )));
    }
    let pool_options = pool_options(pool_size);
    retry_while_locked(|| pool_options.clone().connect_with(options.clone()))
        .await
        .map_err(|e| {
            fail(format!(
                "cannot open SQLite database {}: {e}",
                path.display()
            ))
        })
}

/// Options of every SQLite pool of the connectors: at most `size` connections, handed out
/// without a ping (a SQLite connection is a file handle that cannot go stale like a socket,
/// and each ping is a round trip to the connection's thread on every statement's acquire).
fn pool_options(size: u32) -> SqlitePoolOptions {
    SqlitePoolOptions::new()
        .max_connections(size.max(1))
        .test_before_acquire(false)
        // The fingerprint functions (`backfill_row_md5`, `backfill_fingerprint`).
        .after_connect(|conn, _| Box::pin(crate::fingerprint::sqlite::register(conn)))
}

/// Runs `connect` again while it fails because another process holds a lock, for up to
/// [`BUSY_TIMEOUT`]. Switching a file to WAL needs an exclusive lock that SQLite's busy
/// timeout does not wait for, so processes opening one target at the same moment would
/// otherwise fail at once with "database is locked".
async fn retry_while_locked<T, F, Fut>(mut connect: F) -> Result<T, sqlx::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, sqlx::Error>>,
{
    let deadline = tokio::time::Instant::now() + BUSY_TIMEOUT;
    let mut pause = Duration::from_millis(2);
    loop {
        match connect().await {
            Err(sqlx::Error::Database(e))
                if e.code()
                    .and_then(|c| c.parse::<i32>().ok())
                    .is_some_and(|c| {
                        matches!(c & 0xff, 5 | 6) // BUSY, LOCKED
                    })
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(100));
            }
            result => return result,
        }
    }
}

/// Adds `value` to `args` as its SQLite storage class.
fn push_value(args: &mut SqliteArguments, value: &Value) -> Result<(), ConnectorError> {
    let added = match value {
        Value::Null => args.add(None::<i64>),
        Value::Int(i) => args.add(*i),
        Value::Float(f) => args.add(*f),
        Value::Text(s) => args.add(s.as_str()),
        Value::Blob(b) => args.add(b.as_slice()),
        Value::Bool(b) => args.add(i64::from(*b)),
        // SQLite has no decimal, date, time, JSON or UUID type: store their portable text
        // (plain decimals, ISO dates, RFC 3339 instants), which round-trips exactly.
        other => args.add(other.as_portable_text().unwrap_or_default()),
    };
    added.map_err(|e| ConnectorError::Data {
        message: format!("cannot bind {}: {e}", value.preview()),
    })
}

/// Arguments holding `values`, in order.
pub(crate) fn arguments<'v>(
    values: impl IntoIterator<Item = &'v Value>,
    capacity: usize,
) -> Result<SqliteArguments, ConnectorError> {
    let mut args = SqliteArguments::default();
    args.reserve(capacity, 0);
    for v in values {
        push_value(&mut args, v)?;
    }
    Ok(args)
}

/// Reads one value by its dynamic storage class (SQLite columns have no fixed type).
fn decode_value(raw: SqliteValueRef<'_>) -> Result<Value, String> {
    if raw.is_null() {
        return Ok(Value::Null);
    }
    // The storage class of this value, not the column's declared type.
    let class = match raw.type_info().name() {
        "INTEGER" => "INTEGER",
        "REAL" => "REAL",
        "TEXT" => "TEXT",
        "BLOB" => "BLOB",
        other => return Err(format!("unexpected storage class {other}")),
    };
    let decoded = match class {
        "INTEGER" => <i64 as Decode<'_, sqlx::Sqlite>>::decode(raw).map(Value::Int),
        "REAL" => <f64 as Decode<'_, sqlx::Sqlite>>::decode(raw).map(Value::Float),
        "TEXT" => <String as Decode<'_, sqlx::Sqlite>>::decode(raw).map(Value::Text),
        _ => <Vec<u8> as Decode<'_, sqlx::Sqlite>>::decode(raw).map(Value::Blob),
    };
    decoded.map_err(|e| format!("cannot read {class} value: {e}"))
}

/// Converts fetched rows to values, naming the column of a value that cannot be read.
pub(crate) fn decode_rows(
    rows: Vec<SqliteRow>,
    columns: &[String],
) -> Result<Vec<Vec<Value>>, ConnectorError> {
    rows.iter()
        .map(|row| decode_row(row, columns, decode_value))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_sqlite_result_codes() {
        use ErrorClass::{Data, Permanent, Transient};
        let table = [
            (5, Transient),   // BUSY
            (517, Transient), // BUSY_SNAPSHOT
            (6, Transient),   // LOCKED
            (10, Transient),  // IOERR
            (522, Transient), // IOERR_SHORT_READ
            (15, Transient),  // PROTOCOL
            (1, Permanent),   // ERROR (syntax, no such table/column)
            (18, Data),       // TOOBIG
            (19, Data),       // CONSTRAINT
            (1555, Data),     // CONSTRAINT_PRIMARYKEY
            (2067, Data),     // CONSTRAINT_UNIQUE
            (20, Data),       // MISMATCH
            (26, Permanent),  // NOTADB
            (999, Permanent), // unknown
        ];
        for (code, want) in table {
            assert_eq!(classify_code(code), want, "code {code}");
        }
        assert_eq!(classify(&sqlx::Error::PoolTimedOut), Transient);
        assert_eq!(
            classify(&sqlx::Error::Io(std::io::Error::other("reset"))),
            Transient
        );
        assert_eq!(classify(&sqlx::Error::RowNotFound), Permanent);
        assert_eq!(classify(&sqlx::Error::PoolClosed), Permanent);
    }
}
