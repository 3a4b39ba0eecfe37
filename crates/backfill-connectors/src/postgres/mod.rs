//! PostgreSQL source and sink, on sqlx's `PgPool`.
//!
//! Owns: connecting to PostgreSQL, mapping column types to [`Value`] and back, keyset-paginated
//! and streamed reads, upserts from batches bound as binary arrays (or, for values that need
//! the server's casts, through a `COPY`-filled temporary table), and the classification of
//! PostgreSQL errors by SQLSTATE ([`classify_sqlstate`]).
//!
//! Does not: change a source database (queries are wrapped as subqueries of a `SELECT`), or
//! convert a column type that has no faithful [`Value`]: such a column is refused when the
//! source is opened, naming the column and its type, before anything is written.
//!
//! Invariants: batches reach the target in the exact binary form of each target column's type
//! (arrays or binary `COPY`) or, when some value needs a cast, as `COPY` text parsed by
//! PostgreSQL's input functions, so a value is never cast lossily on the way; numerics are
//! read from their binary form with their display scale kept.

mod copy_binary;
mod exchange;
mod sink;
mod source;
mod sql;

use std::str::FromStr;

use backfill_core::SecretUrl;
use backfill_core::retry::ErrorClass;
use backfill_core::secret::redact;
use backfill_core::value::{Value, uuid_text};
use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, Utc};
use sqlx::postgres::{
    PgArguments, PgConnectOptions, PgPool, PgPoolOptions, PgRow, PgValueFormat, PgValueRef,
};
use sqlx::{Arguments, ConnectOptions, Decode, Postgres, TypeInfo, ValueRef};

use crate::ConnectorError;
use crate::shared::{classify_driver, describe, driver_error};

pub use sink::{PostgresReplace, PostgresSink};
pub use source::PostgresSource;

/// Whether a failed statement may succeed if tried again, by SQLSTATE.
///
/// The one table of PostgreSQL error classes; see
/// <https://www.postgresql.org/docs/current/errcodes-appendix.html>.
pub fn classify_sqlstate(code: &str) -> ErrorClass {
    use ErrorClass::{Data, Permanent, Transient};
    match code {
        // connection exceptions
        c if c.starts_with("08") => Transient,
        "40001" => Transient,                     // serialization_failure
        "40P01" => Transient,                     // deadlock_detected
        "53300" => Transient,                     // too_many_connections
        "57P01" | "57P02" | "57P03" => Transient, // admin/crash shutdown, cannot connect now
        "55P03" => Transient,                     // lock_not_available
        // data exceptions (out of range, bad text for a type) and integrity violations
        // (unique, not null, check, foreign key): the target rejects the row.
        c if c.starts_with("22") || c.starts_with("23") => Data,
        _ => Permanent,
    }
}

/// Whether a failed sqlx call on PostgreSQL may succeed if tried again.
pub fn classify(err: &sqlx::Error) -> ErrorClass {
    match err {
        sqlx::Error::Database(db) => db
            .code()
            .map_or(ErrorClass::Permanent, |c| classify_sqlstate(&c)),
        other => classify_driver(other),
    }
}

/// A failed statement, classified, with the message redacted.
pub(crate) fn sql_error(context: impl Into<String>, err: &sqlx::Error) -> ConnectorError {
    let gone = crate::error::lost_connection(err)
        || matches!(err, sqlx::Error::Database(db) if db.code().is_some_and(|c| {
            // connection_exception, admin_shutdown, crash_shutdown, cannot_connect_now
            c.starts_with("08") || matches!(c.as_ref(), "57P01" | "57P02" | "57P03")
        }));
    driver_error(context, err, gone, classify)
}

/// Opens a pool of at most `pool_size` connections; failures name the redacted URL.
pub(crate) async fn connect(url: &SecretUrl, pool_size: u32) -> Result<PgPool, ConnectorError> {
    let fail = |message: String| ConnectorError::Connect {
        url: url.redacted(),
        message: redact(&message),
    };
    let options = PgConnectOptions::from_str(url.expose())
        .map_err(|e| fail(format!("not a PostgreSQL URL: {e}")))?
        .disable_statement_logging();
    // Names our sessions, so the adaptive throttle's watch (`crate::watch`) leaves them out
    // of live traffic; a URL that sets `application_name` keeps its own.
    let options = match options.get_application_name() {
        Some(_) => options,
        None => options.application_name(crate::watch::APPLICATION_NAME),
    };
    // One direct connection first: a refused or unknown host fails at once with the driver's
    // own reason, where the pool would only say that it timed out.
    sqlx::Connection::close(
        <sqlx::PgConnection as sqlx::Connection>::connect_with(&options)
            .await
            .map_err(|e| fail(format!("cannot connect to PostgreSQL: {}", describe(&e))))?,
    )
    .await
    .map_err(|e| fail(format!("cannot connect to PostgreSQL: {}", describe(&e))))?;
    PgPoolOptions::new()
        .max_connections(pool_size.max(1))
        // An unreachable server is reported within seconds; a run's retries (with backoff)
        // cover servers that are restarting.
        .acquire_timeout(std::time::Duration::from_secs(10))
        // Once per new connection: sqlx 0.9.0 leaves Nagle on (sqlx#4335), which stalls
        // every COPY by ~40 ms.
        .after_connect(|conn, _meta| {
            Box::pin(async move {
                crate::nodelay::postgres(conn).await;
                Ok(())
            })
        })
        .connect_with(options)
        .await
        .map_err(|e| fail(format!("cannot connect to PostgreSQL: {}", describe(&e))))
}

/// Adds `value` to `args` with its natural PostgreSQL type (window bounds, resume keys and
/// extra statements; batches travel by `COPY`).
fn push_value(args: &mut PgArguments, value: &Value) -> Result<(), ConnectorError> {
    let added = match value {
        Value::Null => args.add(None::<String>),
        Value::Bool(b) => args.add(*b),
        Value::Int(i) => args.add(*i),
        Value::Float(f) => args.add(*f),
        Value::Decimal(d) => match sqlx::types::BigDecimal::from_str(d) {
            Ok(n) => args.add(n),
            Err(e) => {
                return Err(ConnectorError::Data {
                    message: format!("cannot bind decimal {}: {e}", value.preview()),
                });
            }
        },
        Value::Text(s) => args.add(s.as_str()),
        Value::Json(s) => args.add(s.as_str()),
        Value::Blob(b) => args.add(b.as_slice()),
        Value::Date(d) => args.add(*d),
        Value::Time(t) => args.add(*t),
        Value::Timestamp(t) => args.add(*t),
        Value::TimestampTz(t) => args.add(*t),
        Value::Uuid(u) => args.add(sqlx::types::Uuid::from_bytes(*u)),
    };
    added.map_err(|e| ConnectorError::Data {
        message: format!("cannot bind {}: {e}", value.preview()),
    })
}

/// Arguments holding `values`, in order.
pub(crate) fn arguments<'v>(
    values: impl IntoIterator<Item = &'v Value>,
) -> Result<PgArguments, ConnectorError> {
    let mut args = PgArguments::default();
    for v in values {
        push_value(&mut args, v)?;
    }
    Ok(args)
}

/// The column types the source can read (sqlx type names).
const SUPPORTED: &[&str] = &[
    "INT2",
    "INT4",
    "INT8",
    "FLOAT4",
    "FLOAT8",
    "NUMERIC",
    "TEXT",
    "VARCHAR",
    "BPCHAR",
    "CHAR",
    "NAME",
    "BYTEA",
    "BOOL",
    "DATE",
    "TIME",
    "TIMESTAMP",
    "TIMESTAMPTZ",
    "JSON",
    "JSONB",
    "UUID",
];

/// Refuses a column whose type has no faithful [`Value`].
fn check_type(column: &str, type_name: &str) -> Result<(), ConnectorError> {
    if SUPPORTED.contains(&type_name) {
        Ok(())
    } else {
        Err(ConnectorError::Data {
            message: format!(
                "unsupported type {type_name} of column \"{column}\"; cast it in the query, \
                 e.g. {column}::text"
            ),
        })
    }
}

fn decode_as<'r, T: Decode<'r, Postgres>>(raw: PgValueRef<'r>) -> Result<T, String> {
    T::decode(raw).map_err(|e| e.to_string())
}

/// Reads one value by its column type.
fn decode_value(raw: PgValueRef<'_>) -> Result<Value, String> {
    if raw.is_null() {
        return Ok(Value::Null);
    }
    let type_name = raw.type_info().name().to_owned();
    let value = match type_name.as_str() {
        "INT2" => Value::Int(i64::from(decode_as::<i16>(raw)?)),
        "INT4" => Value::Int(i64::from(decode_as::<i32>(raw)?)),
        "INT8" => Value::Int(decode_as::<i64>(raw)?),
        "FLOAT4" => Value::Float(f64::from(decode_as::<f32>(raw)?)),
        "FLOAT8" => Value::Float(decode_as::<f64>(raw)?),
        "NUMERIC" => Value::Decimal(decode_numeric(raw)?),
        "TEXT" | "VARCHAR" | "BPCHAR" | "CHAR" | "NAME" => Value::Text(decode_as::<String>(raw)?),
        "BYTEA" => Value::Blob(decode_as::<Vec<u8>>(raw)?),
        "BOOL" => Value::Bool(decode_as::<bool>(raw)?),
        "DATE" => Value::Date(decode_as::<NaiveDate>(raw)?),
        "TIME" => Value::Time(decode_as::<NaiveTime>(raw)?),
        "TIMESTAMP" => Value::Timestamp(decode_as::<NaiveDateTime>(raw)?),
        "TIMESTAMPTZ" => Value::TimestampTz(decode_as::<DateTime<Utc>>(raw)?),
        "JSON" | "JSONB" => Value::Json(decode_json(raw)?),
        "UUID" => Value::Uuid(*decode_as::<sqlx::types::Uuid>(raw)?.as_bytes()),
        other => return Err(format!("unsupported type {other}")),
    };
    Ok(value)
}

/// The JSON document's text exactly as the database returns it (`json` keeps the text as
/// written; `jsonb` its normalised form).
fn decode_json(raw: PgValueRef<'_>) -> Result<String, String> {
    let jsonb = raw.type_info().name() == "JSONB";
    let format = raw.format();
    let bytes = raw.as_bytes().map_err(|e| e.to_string())?;
    let bytes = match (format, jsonb) {
        (PgValueFormat::Binary, true) => match bytes.split_first() {
            Some((1, rest)) => rest,
            _ => return Err("unknown jsonb binary version".to_owned()),
        },
        _ => bytes,
    };
    String::from_utf8(bytes.to_vec()).map_err(|e| e.to_string())
}

/// A numeric in plain notation with its display scale, from PostgreSQL's binary form
/// (base-10000 digits, weight, sign, dscale); NaN and infinities are refused.
fn decode_numeric(raw: PgValueRef<'_>) -> Result<String, String> {
    if raw.format() == PgValueFormat::Text {
        return raw.as_str().map(str::to_owned).map_err(|e| e.to_string());
    }
    let bytes = raw.as_bytes().map_err(|e| e.to_string())?;
    numeric_text(bytes)
}

fn numeric_text(bytes: &[u8]) -> Result<String, String> {
    let word = |i: usize| -> Result<u16, String> {
        bytes
            .get(2 * i..2 * i + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(|| "truncated numeric".to_owned())
    };
    let ndigits = usize::from(word(0)?);
    let weight = i64::from(word(1)? as i16);
    let sign = word(2)?;
    let dscale = usize::from(word(3)?);
    match sign {
        0x0000 | 0x4000 => {}
        0xC000 => return Err("numeric NaN has no exact decimal value".to_owned()),
        0xD000 | 0xF000 => return Err("numeric infinity has no exact decimal value".to_owned()),
        other => return Err(format!("unknown numeric sign {other:#x}")),
    }
    let digits = (0..ndigits)
        .map(|i| word(4 + i))
        .collect::<Result<Vec<u16>, String>>()?;
    // Digit group g (0-based) stands for 10000^(weight - g).
    let group = |g: i64| -> u16 {
        usize::try_from(g)
            .ok()
            .and_then(|g| digits.get(g).copied())
            .unwrap_or(0)
    };
    let mut out = String::new();
    if sign == 0x4000 {
        out.push('-');
    }
    // Integer part: groups 0..=weight.
    if weight < 0 {
        out.push('0');
    } else {
        for g in 0..=weight {
            let d = group(g);
            if g == 0 {
                out.push_str(&d.to_string());
            } else {
                out.push_str(&format!("{d:04}"));
            }
        }
    }
    if dscale > 0 {
        out.push('.');
        let mut frac = String::with_capacity(dscale + 4);
        let mut g = weight + 1;
        while frac.len() < dscale {
            frac.push_str(&format!("{:04}", group(g)));
            g += 1;
        }
        frac.truncate(dscale);
        out.push_str(&frac);
    }
    Ok(out)
}

/// Converts fetched rows to values, naming the column of a value that cannot be read.
pub(crate) fn decode_rows(
    rows: Vec<PgRow>,
    columns: &[String],
) -> Result<Vec<Vec<Value>>, ConnectorError> {
    rows.iter().map(|row| decode_row(row, columns)).collect()
}

/// One row's values; `columns` names them in errors.
fn decode_row(row: &PgRow, columns: &[String]) -> Result<Vec<Value>, ConnectorError> {
    crate::shared::decode_row(row, columns, decode_value)
}

/// Appends `value` as one field of `COPY … FROM STDIN` text format.
fn push_copy_field(out: &mut String, value: &Value) -> Result<(), ConnectorError> {
    match value {
        Value::Null => out.push_str("\\N"),
        Value::Bool(b) => out.push(if *b { 't' } else { 'f' }),
        Value::Int(i) => out.push_str(&i.to_string()),
        Value::Float(f) if f.is_nan() => out.push_str("NaN"),
        Value::Float(f) if f.is_infinite() => {
            out.push_str(if *f > 0.0 { "Infinity" } else { "-Infinity" });
        }
        // Rust prints the shortest text that reads back as the same bits.
        Value::Float(f) => out.push_str(&format!("{f:?}")),
        Value::Blob(b) => {
            out.push_str("\\\\x");
            for byte in b {
                out.push_str(&format!("{byte:02x}"));
            }
        }
        Value::Uuid(u) => out.push_str(&uuid_text(u)),
        Value::TimestampTz(t) => {
            out.push_str(&t.format("%Y-%m-%d %H:%M:%S%.f+00").to_string());
        }
        Value::Timestamp(t) => out.push_str(&t.format("%Y-%m-%d %H:%M:%S%.f").to_string()),
        Value::Date(d) => out.push_str(&d.format("%Y-%m-%d").to_string()),
        Value::Time(t) => out.push_str(&t.format("%H:%M:%S%.f").to_string()),
        Value::Decimal(s) | Value::Text(s) | Value::Json(s) => {
            if s.contains('\0') {
                return Err(ConnectorError::Data {
                    message: format!(
                        "text {} holds a NUL character, which PostgreSQL cannot store",
                        value.preview()
                    ),
                });
            }
            for c in s.chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    '\t' => out.push_str("\\t"),
                    c => out.push(c),
                }
            }
        }
    }
    Ok(())
}

/// The rows as `COPY` text: tab-separated fields, one line per row.
fn copy_text(rows: &[Vec<Value>]) -> Result<String, ConnectorError> {
    let mut out = String::with_capacity(rows.len() * 64);
    for row in rows {
        for (i, v) in row.iter().enumerate() {
            if i > 0 {
                out.push('\t');
            }
            push_copy_field(&mut out, v)?;
        }
        out.push('\n');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_sqlstates() {
        use ErrorClass::{Data, Permanent, Transient};
        let table = [
            ("08006", Transient),
            ("08001", Transient),
            ("40001", Transient),
            ("40P01", Transient),
            ("53300", Transient),
            ("57P01", Transient),
            ("57P03", Transient),
            ("55P03", Transient),
            ("22003", Data),
            ("22P02", Data),
            ("23505", Data),
            ("23502", Data),
            ("23514", Data),
            ("23503", Data),
            ("42601", Permanent),
            ("42P01", Permanent),
            ("42703", Permanent),
            ("XX000", Permanent),
        ];
        for (code, want) in table {
            assert_eq!(classify_sqlstate(code), want, "{code}");
        }
        assert_eq!(classify(&sqlx::Error::PoolTimedOut), Transient);
        assert_eq!(classify(&sqlx::Error::RowNotFound), Permanent);
    }

    fn numeric(ndigits: u16, weight: i16, sign: u16, dscale: u16, digits: &[u16]) -> Vec<u8> {
        let mut b = Vec::new();
        for w in [ndigits, weight as u16, sign, dscale].iter().chain(digits) {
            b.extend_from_slice(&w.to_be_bytes());
        }
        b
    }

    #[test]
    fn reads_numerics_with_their_scale() {
        assert_eq!(
            numeric_text(&numeric(2, 0, 0, 2, &[1, 5000])).unwrap(),
            "1.50"
        );
        assert_eq!(numeric_text(&numeric(0, 0, 0, 3, &[])).unwrap(), "0.000");
        assert_eq!(numeric_text(&numeric(0, 0, 0, 0, &[])).unwrap(), "0");
        assert_eq!(
            numeric_text(&numeric(1, -1, 0x4000, 5, &[1200])).unwrap(),
            "-0.12000"
        );
        assert_eq!(numeric_text(&numeric(1, 1, 0, 0, &[12])).unwrap(), "120000");
        assert_eq!(
            numeric_text(&numeric(2, 1, 0, 1, &[12, 3])).unwrap(),
            "120003.0"
        );
        assert!(numeric_text(&numeric(0, 0, 0xC000, 0, &[])).is_err());
    }

    #[test]
    fn escapes_copy_text() {
        let rows = vec![vec![
            Value::Null,
            Value::Text("a\tb\\c\nd".into()),
            Value::Blob(vec![0, 255]),
            Value::Float(0.1),
        ]];
        assert_eq!(
            copy_text(&rows).unwrap(),
            "\\N\ta\\tb\\\\c\\nd\t\\\\x00ff\t0.1\n"
        );
        assert!(copy_text(&[vec![Value::Text("a\0".into())]]).is_err());
    }
}
