//! MySQL and MariaDB source and sink, on sqlx's `MySqlPool`.
//!
//! Owns: connecting (session `time_zone = '+00:00'`, `sql_mode` with `STRICT_ALL_TABLES`),
//! mapping MySQL column types to [`Value`] and back, keyset-paginated reads, multi-row
//! `INSERT … ON DUPLICATE KEY UPDATE` upserts and inserts, and the classification of MySQL
//! errors ([`classify_number`]).
//!
//! Does not: change a source database (the query is wrapped as a subquery of a `SELECT`).
//!
//! Invariants:
//! - `TIMESTAMP` values are read and written in UTC (the session time zone is `+00:00`), so
//!   nothing is shifted by the server's zone; `DATETIME` is a wall-clock reading, never shifted.
//! - Strict mode: a value the target cannot hold is an error ([`ErrorClass::Data`]), never a
//!   silent truncation.
//! - A column type the connector cannot map exactly is refused when the source is opened,
//!   before anything is written, naming the column.
//! - MariaDB sends `JSON` columns as `LONGTEXT`, so they are read as [`Value::Text`]; MySQL's
//!   own `JSON` type is read as [`Value::Json`]. Both write back the same document.

mod sink;
mod source;
mod sql;

use std::str::FromStr;

use backfill_core::SecretUrl;
use backfill_core::retry::ErrorClass;
use backfill_core::secret::redact;
use backfill_core::value::{Value, uuid_text};
use chrono::{NaiveDate, NaiveDateTime, NaiveTime};
use sqlx::mysql::{
    MySql, MySqlArguments, MySqlConnectOptions, MySqlDatabaseError, MySqlPool, MySqlPoolOptions,
    MySqlRow, MySqlTypeInfo, MySqlValueRef,
};
use sqlx::{Arguments, ConnectOptions, Decode, Executor, Type, TypeInfo, ValueRef};

use crate::ConnectorError;
use crate::shared::{classify_driver, decode_row, driver_error};

pub use sink::{MySqlReplace, MySqlSink};
pub use source::MySqlSource;

/// Most placeholders one MySQL prepared statement may hold.
const MAX_PARAMS: usize = 65_535;

/// Whether a failed MySQL statement may succeed if tried again, by server error number.
///
/// The one table of MySQL error classes; see
/// <https://dev.mysql.com/doc/mysql-errors/8.0/en/server-error-reference.html>.
pub fn classify_number(number: u16) -> ErrorClass {
    use ErrorClass::{Data, Permanent, Transient};
    match number {
        1205 => Transient,                      // ER_LOCK_WAIT_TIMEOUT
        1213 => Transient,                      // ER_LOCK_DEADLOCK
        1040 => Transient,                      // ER_CON_COUNT_ERROR: too many connections
        1053 => Transient,                      // ER_SERVER_SHUTDOWN
        2002 | 2003 | 2006 | 2013 => Transient, // client: cannot connect, gone away, lost
        1062 => Data,                           // ER_DUP_ENTRY
        1048 => Data,                           // ER_BAD_NULL_ERROR
        1264 => Data,                           // ER_WARN_DATA_OUT_OF_RANGE
        1265 => Data,                           // WARN_DATA_TRUNCATED
        1366 => Data,                           // ER_TRUNCATED_WRONG_VALUE_FOR_FIELD
        1406 => Data,                           // ER_DATA_TOO_LONG
        1292 => Data,                           // ER_TRUNCATED_WRONG_VALUE (bad date/time)
        3819 | 4025 => Data,                    // check constraint violated (MySQL, MariaDB)
        1451 | 1452 => Data,                    // foreign key
        _ => Permanent, // 1064 syntax, 1146 no table, 1054 unknown column, …
    }
}

/// Whether a failed sqlx call on MySQL may succeed if tried again.
pub fn classify(err: &sqlx::Error) -> ErrorClass {
    match err {
        sqlx::Error::Database(db) => db
            .try_downcast_ref::<MySqlDatabaseError>()
            .map_or(ErrorClass::Permanent, |e| classify_number(e.number())),
        other => classify_driver(other),
    }
}

/// A failed statement, classified, with the message redacted.
pub(crate) fn sql_error(context: impl Into<String>, err: &sqlx::Error) -> ConnectorError {
    let gone = crate::error::lost_connection(err)
        || matches!(err, sqlx::Error::Database(db) if db.code().is_some_and(|c| {
            // ER_SERVER_SHUTDOWN, CR_SERVER_GONE_ERROR, CR_SERVER_LOST
            matches!(c.as_ref(), "1053" | "2006" | "2013" | "08S01")
        }));
    driver_error(context, err, gone, classify)
}

/// Opens a pool on the database of `url`: UTC session, strict SQL mode, utf8mb4.
pub(crate) async fn connect(url: &SecretUrl, pool_size: u32) -> Result<MySqlPool, ConnectorError> {
    let fail = |message: String| ConnectorError::Connect {
        url: url.redacted(),
        message: redact(&message),
    };
    let options = MySqlConnectOptions::from_str(url.expose())
        .map_err(|e| fail(format!("not a MySQL URL: {e}")))?
        .timezone(Some("+00:00".to_owned()))
        .charset("utf8mb4")
        .disable_statement_logging();
    // One direct connection first: a refused or unknown host fails at once with the driver's
    // own reason, where the pool would only say that it timed out.
    sqlx::Connection::close(
        <sqlx::MySqlConnection as sqlx::Connection>::connect_with(&options)
            .await
            .map_err(|e| fail(format!("cannot connect: {e}")))?,
    )
    .await
    .map_err(|e| fail(format!("cannot connect: {e}")))?;
    // Where the pool's TCP connections go, for the sqlx#4335 workaround (`None`: Unix socket).
    let server = match options.get_socket() {
        Some(_) => None,
        None => Some((options.get_host().to_owned(), options.get_port())),
    };
    MySqlPoolOptions::new()
        .max_connections(pool_size.max(1))
        // An unreachable server is reported within seconds; a run's retries (with backoff)
        // cover servers that are restarting.
        .acquire_timeout(std::time::Duration::from_secs(10))
        .after_connect(move |conn, _meta| {
            let server = server.clone();
            Box::pin(async move {
                conn.execute(
                    "SET SESSION sql_mode = CONCAT_WS(',', NULLIF(@@sql_mode, ''), \
                     'STRICT_ALL_TABLES', 'NO_ENGINE_SUBSTITUTION'), time_zone = '+00:00'",
                )
                .await?;
                read_committed(conn).await?;
                // Once per new connection: sqlx 0.9.0 leaves Nagle on (sqlx#4335).
                let server = server.as_ref().map(|(host, port)| (host.as_str(), *port));
                crate::nodelay::mysql(conn, server).await;
                Ok(())
            })
        })
        .connect_with(options)
        .await
        .map_err(|e| fail(format!("cannot connect: {e}")))
}

/// Makes the session's transactions `READ COMMITTED`, as PostgreSQL's are by default, unless
/// the server writes a statement-based binary log (which InnoDB refuses under it).
///
/// Under InnoDB's default `REPEATABLE READ`, a statement that scans locks every row it reads
/// until the commit, and gaps between them: concurrent partitions' undo-log statements
/// (which find a partition's entries by run and partition, reading past the others')
/// deadlocked on each other in a third of their batches. Under `READ COMMITTED` a scan keeps
/// only the locks of the rows it changes and takes no gap locks. What the engine relies on
/// holds either way: each statement reads one snapshot, and the rows a transaction writes
/// stay locked until it commits.
async fn read_committed(conn: &mut sqlx::MySqlConnection) -> Result<(), sqlx::Error> {
    let (log_bin, format): (Option<i64>, Option<String>) =
        sqlx::query_as("SELECT @@log_bin, @@binlog_format")
            .fetch_one(&mut *conn)
            .await?;
    let statement_log =
        log_bin == Some(1) && format.is_some_and(|f| f.eq_ignore_ascii_case("STATEMENT"));
    if !statement_log {
        conn.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
            .await?;
    }
    Ok(())
}

/// Adds `value` to `args` as the MySQL type that holds it exactly.
fn push_value(args: &mut MySqlArguments, value: &Value) -> Result<(), ConnectorError> {
    let added = match value {
        Value::Null => args.add(None::<i64>),
        Value::Bool(b) => args.add(*b),
        Value::Int(i) => args.add(*i),
        Value::Float(f) => args.add(*f),
        // Exact decimal text; the server converts it to DECIMAL without rounding.
        Value::Decimal(s) | Value::Text(s) | Value::Json(s) => args.add(s.as_str()),
        Value::Blob(b) => args.add(b.as_slice()),
        Value::Date(d) => args.add(*d),
        Value::Time(t) => args.add(*t),
        Value::Timestamp(t) => args.add(*t),
        // The session time zone is UTC, so a UTC wall clock is the instant.
        Value::TimestampTz(t) => args.add(t.naive_utc()),
        Value::Uuid(u) => args.add(uuid_text(u)),
    };
    added.map_err(|e| ConnectorError::Data {
        message: format!("cannot bind {}: {e}", value.preview()),
    })
}

/// Arguments holding `values`, in order.
pub(crate) fn arguments<'v>(
    values: impl IntoIterator<Item = &'v Value>,
) -> Result<MySqlArguments, ConnectorError> {
    let mut args = MySqlArguments::default();
    for v in values {
        push_value(&mut args, v)?;
    }
    Ok(args)
}

/// How a column of a given MySQL type is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Null,
    Bool,
    Int,
    UInt,
    Float,
    Decimal,
    Text,
    Blob,
    Date,
    Time,
    Timestamp,
    TimestampTz,
    Json,
}

/// The reading of a column type; `None` when the type cannot be moved exactly. String and
/// binary types are told apart by collation, not name: a `_bin` collation makes the server
/// flag a text column BINARY (sqlx then names it `BINARY`/`BLOB`), but only the `binary`
/// collation holds bytes.
fn kind(ty: &MySqlTypeInfo) -> Option<Kind> {
    match kind_by_name(ty.name())? {
        Kind::Text | Kind::Blob if <str as Type<MySql>>::compatible(ty) => Some(Kind::Text),
        Kind::Text | Kind::Blob => Some(Kind::Blob),
        other => Some(other),
    }
}

/// The reading of a column type by the name sqlx gives it.
fn kind_by_name(type_name: &str) -> Option<Kind> {
    Some(match type_name {
        "NULL" => Kind::Null,
        "BOOLEAN" => Kind::Bool,
        "TINYINT" | "SMALLINT" | "MEDIUMINT" | "INT" | "BIGINT" | "YEAR" => Kind::Int,
        "TINYINT UNSIGNED" | "SMALLINT UNSIGNED" | "MEDIUMINT UNSIGNED" | "INT UNSIGNED"
        | "BIGINT UNSIGNED" => Kind::UInt,
        "FLOAT" | "DOUBLE" => Kind::Float,
        "DECIMAL" => Kind::Decimal,
        "CHAR" | "VARCHAR" | "TINYTEXT" | "TEXT" | "MEDIUMTEXT" | "LONGTEXT" | "ENUM" | "SET" => {
            Kind::Text
        }
        "BINARY" | "VARBINARY" | "TINYBLOB" | "BLOB" | "MEDIUMBLOB" | "LONGBLOB" => Kind::Blob,
        "DATE" => Kind::Date,
        "TIME" => Kind::Time,
        "DATETIME" => Kind::Timestamp,
        "TIMESTAMP" => Kind::TimestampTz,
        "JSON" => Kind::Json,
        _ => return None,
    })
}

/// The error for a column whose type has no exact [`Value`].
fn unsupported_type(column: &str, type_name: &str) -> ConnectorError {
    ConnectorError::Data {
        message: format!(
            "column \"{column}\" has type {type_name}, which backfill cannot read exactly; \
             cast it in the query (e.g. `CAST({column} AS CHAR) AS {column}`)"
        ),
    }
}

fn decode<'r, T: Decode<'r, MySql>>(raw: MySqlValueRef<'r>) -> Result<T, String> {
    T::decode(raw).map_err(|e| e.to_string())
}

/// Reads one value by its column type.
fn decode_value(raw: MySqlValueRef<'_>) -> Result<Value, String> {
    if raw.is_null() {
        return Ok(Value::Null);
    }
    let type_info = raw.type_info();
    let type_name = type_info.name().to_owned();
    let Some(kind) = kind(&type_info) else {
        return Err(format!(
            "type {type_name} cannot be read exactly; cast it in the query"
        ));
    };
    Ok(match kind {
        Kind::Null => Value::Null,
        Kind::Bool => Value::Bool(decode::<i8>(raw)? != 0),
        Kind::Int => Value::Int(decode::<i64>(raw)?),
        Kind::UInt => {
            let u = decode::<u64>(raw)?;
            Value::Int(i64::try_from(u).map_err(|_| {
                format!("{type_name} value {u} is above the largest 64-bit signed integer")
            })?)
        }
        Kind::Float if type_name == "FLOAT" => Value::Float(f64::from(decode::<f32>(raw)?)),
        Kind::Float => Value::Float(decode::<f64>(raw)?),
        // DECIMAL travels as its exact plain text, scale kept.
        Kind::Decimal => Value::Decimal(decode::<&str>(raw)?.to_owned()),
        Kind::Text => Value::Text(decode::<String>(raw)?),
        Kind::Json => Value::Json(decode::<String>(raw)?),
        Kind::Blob => Value::Blob(decode::<Vec<u8>>(raw)?),
        Kind::Date => Value::Date(decode::<NaiveDate>(raw)?),
        Kind::Time => Value::Time(decode::<NaiveTime>(raw)?),
        Kind::Timestamp => Value::Timestamp(decode::<NaiveDateTime>(raw)?),
        Kind::TimestampTz => Value::TimestampTz(decode::<NaiveDateTime>(raw)?.and_utc()),
    })
}

/// Converts fetched rows to values, naming the column of a value that cannot be read.
pub(crate) fn decode_rows(
    rows: Vec<MySqlRow>,
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
    fn classifies_mysql_error_numbers() {
        use ErrorClass::{Data, Permanent, Transient};
        let table = [
            (1205, Transient),
            (1213, Transient),
            (1040, Transient),
            (2006, Transient),
            (2013, Transient),
            (1062, Data),
            (1048, Data),
            (1264, Data),
            (1366, Data),
            (1265, Data),
            (3819, Data),
            (1452, Data),
            (1064, Permanent),
            (1146, Permanent),
            (1054, Permanent),
        ];
        for (n, want) in table {
            assert_eq!(classify_number(n), want, "error {n}");
        }
        assert_eq!(classify(&sqlx::Error::PoolTimedOut), Transient);
        assert_eq!(classify(&sqlx::Error::RowNotFound), Permanent);
    }

    #[test]
    fn maps_type_names() {
        assert_eq!(kind_by_name("BOOLEAN"), Some(Kind::Bool));
        assert_eq!(kind_by_name("BIGINT UNSIGNED"), Some(Kind::UInt));
        assert_eq!(kind_by_name("DECIMAL"), Some(Kind::Decimal));
        assert_eq!(kind_by_name("TIMESTAMP"), Some(Kind::TimestampTz));
        assert_eq!(kind_by_name("GEOMETRY"), None);
        assert_eq!(kind_by_name("BIT"), None);
        assert_eq!(kind(&<str as Type<MySql>>::type_info()), Some(Kind::Text));
        assert_eq!(kind(&<[u8] as Type<MySql>>::type_info()), Some(Kind::Blob));
        let err = unsupported_type("shape", "GEOMETRY").to_string();
        assert!(
            err.contains("\"shape\"") && err.contains("cast it"),
            "{err}"
        );
    }
}
