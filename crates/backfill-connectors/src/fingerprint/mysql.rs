//! Fingerprints inside MySQL and MariaDB: canonical texts with `DATE_FORMAT`, `HEX` and
//! string trimming, the digest with `MD5`, the sums as `DECIMAL` (exact, reduced modulo 2^64
//! by the caller).
//!
//! Every statement runs on a connection set to `time_zone = '+00:00'` first, so `TIMESTAMP`
//! values print in UTC (the connectors' own connections are already). `TINYINT(1)` is a
//! boolean (any non-zero value is `1`). JSON columns are refused; on MariaDB, whose `JSON` is
//! `LONGTEXT` with a check, the catalog reports them as text and they are hashed as stored.

use backfill_core::fingerprint::{Fingerprint, Kind, RowHash};
use sqlx::mysql::{MySqlPool, MySqlRow};
use sqlx::{AssertSqlSafe, Row};

use super::{Buckets, Column, Scan, SqlDialect, Statement};
use crate::ConnectorError;
use crate::mysql::{arguments, sql_error};

const DIALECT: SqlDialect = SqlDialect {
    quote: '`',
    numbered: false,
    canonical,
    field: |x| format!("COALESCE(CONCAT('V', LENGTH({x}), ':', {x}), 'N')"),
    digest: |fields| format!("MD5(CONCAT({}))", fields.join(", ")),
    halves: |m| m.to_owned(),
    half_sum: |m, from| {
        format!(
            "CAST(COALESCE(SUM(CAST(CONV(SUBSTR({m}, {from}, 16), 16, 10) AS UNSIGNED)), 0) \
             AS CHAR)"
        )
    },
    int64: |x| format!("CAST({x} AS SIGNED)"),
    // A `LIMIT` fence would make MariaDB materialise the derived table: no faster there.
    fence: "",
};

/// The canonical text of `x` (a quoted column) by kind; NULL stays NULL.
fn canonical(column: &Column, x: &str) -> Result<String, ConnectorError> {
    Ok(match column.kind {
        Kind::Int => format!("CAST({x} AS CHAR)"),
        // Trailing fractional zeros and a trailing point go; zero (also `-0.00`) is `0`.
        Kind::Decimal => format!(
            "IF({x} = 0, '0', IF(LOCATE('.', CAST({x} AS CHAR)) > 0, \
             TRIM(TRAILING '.' FROM TRIM(TRAILING '0' FROM CAST({x} AS CHAR))), \
             CAST({x} AS CHAR)))"
        ),
        Kind::Bool => {
            format!("CASE WHEN {x} IS NULL THEN NULL WHEN {x} <> 0 THEN '1' ELSE '0' END")
        }
        Kind::Text => format!("CONVERT({x} USING utf8mb4)"),
        Kind::Bytes => format!("LOWER(HEX({x}))"),
        Kind::Date => format!("DATE_FORMAT({x}, '%Y-%m-%d')"),
        Kind::Time => format!("TIME_FORMAT({x}, '%H:%i:%s.%f')"),
        Kind::Timestamp => format!("DATE_FORMAT({x}, '%Y-%m-%d %H:%i:%s.%f')"),
        Kind::Uuid => format!("LOWER(CAST({x} AS CHAR))"),
        Kind::Json => return Err(super::json_not_pushable(&column.name, "MySQL")),
    })
}

/// The row digest expression over `alias`'s `columns` (see `super::row_digest_expr`).
pub(crate) fn row_digest(columns: &[Column], alias: &str) -> Result<String, ConnectorError> {
    super::row_digest_expr(columns, alias, &DIALECT)
}

/// The statement giving one row: `count, sum, check` of the whole scan.
pub fn fingerprint_sql(scan: &Scan<'_>) -> Result<Statement, ConnectorError> {
    super::aggregate_sql(scan, None, &DIALECT)
}

/// The statement giving `count, sum, check, bucket` per non-empty bucket.
pub fn buckets_sql(scan: &Scan<'_>, buckets: &Buckets<'_>) -> Result<Statement, ConnectorError> {
    super::aggregate_sql(scan, Some(buckets), &DIALECT)
}

/// The statement giving each row's hex digest, ordered by `order_by`.
pub fn row_hashes_sql(scan: &Scan<'_>, order_by: &[&str]) -> Result<Statement, ConnectorError> {
    super::row_hashes_sql(scan, order_by, &DIALECT)
}

/// Runs `statement` on one connection set to UTC.
async fn fetch(pool: &MySqlPool, statement: Statement) -> Result<Vec<MySqlRow>, ConnectorError> {
    let context = "fingerprint query";
    let mut conn = pool.acquire().await.map_err(|e| sql_error(context, &e))?;
    sqlx::query("SET time_zone = '+00:00'")
        .execute(&mut *conn)
        .await
        .map_err(|e| sql_error(context, &e))?;
    sqlx::query_with(AssertSqlSafe(statement.sql), arguments(&statement.params)?)
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| sql_error(context, &e))
}

/// Reads `count, sum, check` from the first columns of `row`.
fn read_fingerprint(row: &MySqlRow) -> Result<Fingerprint, ConnectorError> {
    let read = |e: sqlx::Error| sql_error("reading a fingerprint", &e);
    let rows: i64 = row.try_get(0).map_err(read)?;
    let sum: String = row.try_get(1).map_err(read)?;
    let check: String = row.try_get(2).map_err(read)?;
    Fingerprint::from_sums(rows, Some(&sum), Some(&check))
        .ok_or_else(|| super::bad_sums(&format!("{sum}, {check}")))
}

/// The fingerprint of the scan, computed in the database.
pub async fn fingerprint(pool: &MySqlPool, scan: &Scan<'_>) -> Result<Fingerprint, ConnectorError> {
    let rows = fetch(pool, fingerprint_sql(scan)?).await?;
    rows.first()
        .map_or(Ok(Fingerprint::default()), read_fingerprint)
}

/// The fingerprint of each bucket (in bucket order; empty buckets are empty fingerprints),
/// in one query.
pub async fn fingerprint_buckets(
    pool: &MySqlPool,
    scan: &Scan<'_>,
    buckets: &Buckets<'_>,
) -> Result<Vec<Fingerprint>, ConnectorError> {
    let rows = fetch(pool, buckets_sql(scan, buckets)?).await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        let bucket: i64 = row
            .try_get(3)
            .map_err(|e| sql_error("reading a fingerprint", &e))?;
        out.push((bucket, read_fingerprint(row)?));
    }
    super::per_bucket(buckets.len(), out)
}

/// The statement giving each row's canonical texts, one column per scan column.
pub fn canonical_rows_sql(scan: &Scan<'_>) -> Result<Statement, ConnectorError> {
    super::canonical_rows_sql(scan, &DIALECT)
}

/// Each row's canonical texts (NULL as `None`), in no particular order.
pub async fn canonical_rows(
    pool: &MySqlPool,
    scan: &Scan<'_>,
) -> Result<Vec<Vec<Option<String>>>, ConnectorError> {
    let rows = fetch(pool, canonical_rows_sql(scan)?).await?;
    rows.iter()
        .map(|r| {
            (0..scan.columns.len())
                .map(|i| {
                    r.try_get::<Option<Vec<u8>>, _>(i)
                        .map(|v| v.map(|b| String::from_utf8_lossy(&b).into_owned()))
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| sql_error("reading canonical rows", &e))
}

/// Each row's hash, ordered by `order_by`.
pub async fn row_hashes(
    pool: &MySqlPool,
    scan: &Scan<'_>,
    order_by: &[&str],
) -> Result<Vec<RowHash>, ConnectorError> {
    let rows = fetch(pool, row_hashes_sql(scan, order_by)?).await?;
    let digests = rows
        .iter()
        .map(|r| r.try_get::<String, _>(0))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| sql_error("reading a row hash", &e))?;
    super::parse_digests(digests)
}

/// The kind of a MySQL column from `information_schema.COLUMNS` (`DATA_TYPE`, `COLUMN_TYPE`);
/// `None` when it has no fingerprint.
pub fn kind_of(data_type: &str, column_type: &str) -> Option<Kind> {
    let data_type = data_type.to_ascii_lowercase();
    Some(match data_type.as_str() {
        "tinyint" if column_type.to_ascii_lowercase().starts_with("tinyint(1)") => Kind::Bool,
        "tinyint" | "smallint" | "mediumint" | "int" | "integer" | "bigint" | "year" => Kind::Int,
        "decimal" | "numeric" => Kind::Decimal,
        "char" | "varchar" | "tinytext" | "text" | "mediumtext" | "longtext" | "enum" | "set" => {
            Kind::Text
        }
        "binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob" => Kind::Bytes,
        "date" => Kind::Date,
        "time" => Kind::Time,
        "datetime" | "timestamp" => Kind::Timestamp,
        "json" => Kind::Json,
        "uuid" => Kind::Uuid,
        _ => return None,
    })
}

/// The columns of `table` (`table` or `database.table`; without a database, the
/// connection's) in table order, with their kinds from the catalog. A column whose type has
/// no fingerprint (`FLOAT`, `DOUBLE`, `BIT`, spatial types…) is an error naming it; a
/// missing table is an error too.
pub async fn columns(pool: &MySqlPool, table: &str) -> Result<Vec<Column>, ConnectorError> {
    super::require_kinds(catalog(pool, table).await?)
}

/// Every column of `table` in table order with its type and kind (`None` when it has no
/// fingerprint); a missing table is an error.
pub async fn catalog(
    pool: &MySqlPool,
    table: &str,
) -> Result<Vec<super::Catalogued>, ConnectorError> {
    crate::ident::check_table(table)?;
    let (schema, name) = match table.split_once('.') {
        Some((schema, name)) => (Some(schema), name),
        None => (None, table),
    };
    let rows = sqlx::query(
        "SELECT CAST(COLUMN_NAME AS CHAR), CAST(DATA_TYPE AS CHAR), CAST(COLUMN_TYPE AS CHAR) \
         FROM information_schema.COLUMNS \
         WHERE TABLE_SCHEMA = COALESCE(?, DATABASE()) AND TABLE_NAME = ? \
         ORDER BY ORDINAL_POSITION",
    )
    .bind(schema)
    .bind(name)
    .fetch_all(pool)
    .await
    .map_err(|e| sql_error("reading the table's columns", &e))?;
    if rows.is_empty() {
        return Err(ConnectorError::Data {
            message: format!("table {table} not found (or it has no columns)"),
        });
    }
    rows.iter()
        .map(|row| {
            let read = |i: usize| {
                row.try_get::<String, _>(i)
                    .map_err(|e| sql_error("reading the table's columns", &e))
            };
            let (name, data_type, column_type) = (read(0)?, read(1)?, read(2)?);
            let kind = kind_of(&data_type, &column_type);
            Ok(super::Catalogued {
                name,
                type_name: column_type,
                kind,
            })
        })
        .collect()
}

/// The first row of `statement` (a reconciliation check query, issue 11) as values, read
/// like a source's rows; `None` when it returns no row.
pub async fn check_row(
    pool: &MySqlPool,
    statement: Statement,
) -> Result<Option<Vec<backfill_core::value::Value>>, ConnectorError> {
    let rows = fetch(pool, statement).await?;
    Ok(
        crate::mysql::decode_rows(rows.into_iter().take(1).collect(), &[])?
            .into_iter()
            .next(),
    )
}
