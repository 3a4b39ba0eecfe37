//! Fingerprints inside PostgreSQL: canonical texts with `to_char`, `trim_scale` and `encode`,
//! the digest with `md5` (parsed once per row into a `bit(128)` whose halves are summed), the
//! sums as `numeric` (exact, reduced modulo 2^64 by the caller).
//!
//! Needs PostgreSQL 13 or later (`trim_scale`). Every statement runs in a transaction with
//! the time zone set to UTC (`SET LOCAL`), so `timestamptz` values print in UTC whatever the session's
//! zone, and `SET LOCAL jit = off` (compiling the bucket `CASE` tree cost more than the
//! scan). `json`/`jsonb` columns are refused (see the parent module).

use backfill_core::fingerprint::{Fingerprint, Kind, RowHash};
use sqlx::postgres::PgPool;
use sqlx::{AssertSqlSafe, Row};

use super::{Buckets, Column, Scan, SqlDialect, Statement};
use crate::ConnectorError;
use crate::postgres::{arguments, sql_error};

const DIALECT: SqlDialect = SqlDialect {
    quote: '"',
    numbered: true,
    canonical,
    // Only `text || text` (`textcat`): PostgreSQL 15's `concat` and `text || integer` look
    // up each argument's output function on every row, which cost ~7% of W1's fingerprint
    // time against this chain (same digests).
    field: |x| format!("coalesce('V' || octet_length({x})::text || ':' || {x}, 'N')"),
    digest: |fields| format!("md5({})", fields.join(" || ")),
    // `bit(128)` to `bit(64)` keeps the first 64 bits; shifting left first, the last 64.
    halves: |m| format!("('x' || {m})::bit(128)"),
    half_sum: |m, from| {
        let half = if from == 1 {
            m.to_owned()
        } else {
            format!("({m} << 64)")
        };
        format!("coalesce(sum({half}::bit(64)::bigint), 0)::text")
    },
    int64: |x| format!("({x})::bigint"),
    fence: " OFFSET 0",
};

/// PostgreSQL's own row hash, for comparing two PostgreSQL databases (`diff`'s fast path):
/// the row's text as the server prints a record (`ROW(…)::text`, every column through its
/// type's output function; `numeric` through `trim_scale` so a value's scale does not count)
/// hashed with `hashtextextended`, and its sum. About 3.7x cheaper per row than the portable
/// fingerprint on W1 (3.9 s against 14.3 s for 5M rows on one core), because it skips the
/// canonical texts, the length prefixes, `md5` and the hex parse.
///
/// Only equality means anything, and only between two PostgreSQL servers whose compared
/// columns have the same types (see [`native_comparable`]): the same values print the same
/// record text. The record text is injective (NULL is empty, an empty text is `""`, a value
/// holding a delimiter is quoted), so equal sums of different rows need a 64-bit collision;
/// different texts of values the portable fingerprint calls equal make the native sums
/// differ, never agree, so a caller re-checks a difference with the portable fingerprint.
/// `check` is always 0.
const NATIVE: SqlDialect = SqlDialect {
    quote: '"',
    numbered: true,
    canonical: native_value,
    field: |x| x.to_owned(),
    digest: |fields| format!("hashtextextended(ROW({})::text, 0)", fields.join(", ")),
    halves: |m| m.to_owned(),
    half_sum: |m, from| {
        if from == 1 {
            format!("coalesce(sum({m}), 0)::text")
        } else {
            "'0'".to_owned()
        }
    },
    int64: |x| format!("({x})::bigint"),
    fence: " OFFSET 0",
};

/// A column's value as the native row hash prints it: the value itself, `numeric` without
/// trailing zeros. JSON is refused as in the portable fingerprint (its callers refuse it).
fn native_value(column: &Column, x: &str) -> Result<String, ConnectorError> {
    Ok(match column.kind {
        Kind::Decimal => format!("trim_scale({x})"),
        Kind::Json => return Err(super::json_not_pushable(&column.name, "PostgreSQL")),
        _ => x.to_owned(),
    })
}

/// True when a column of type `source` (a source query's result column) and one of type
/// `target` print equal values alike in a record, so [`native_fingerprint_buckets`] may
/// compare them: the same type, two integer types, or two unpadded text types. Type names
/// are `pg_type.typname`s, any case.
pub fn native_comparable(source: &str, target: &str) -> bool {
    if source.is_empty() {
        return false;
    }
    let (s, t) = (source.to_ascii_lowercase(), target.to_ascii_lowercase());
    let family = |n: &str| match n {
        "int2" | "int4" | "int8" => Some("integer"),
        "text" | "varchar" => Some("text"),
        _ => None,
    };
    s == t || family(&s).is_some_and(|f| family(&t) == Some(f))
}

/// The result columns of `sql` (a source query, not run: only prepared) as
/// `(name, pg_type.typname)`, in order; a column of a type without an OID has an empty name.
pub async fn query_column_types(
    pool: &PgPool,
    sql: &str,
) -> Result<Vec<(String, String)>, ConnectorError> {
    use sqlx::{Column as _, Executor as _, SqlSafeStr as _, Statement as _};
    let context = "describing the source query";
    let statement = pool
        .prepare(AssertSqlSafe(sql.to_owned()).into_sql_str())
        .await
        .map_err(|e| sql_error(context, &e))?;
    let columns: Vec<(String, i64)> = statement
        .columns()
        .iter()
        .map(|c| {
            let oid = c.type_info().oid().map_or(0, |o| i64::from(o.0));
            (c.name().to_owned(), oid)
        })
        .collect();
    // sqlx names some types its own way (`bpchar` is `CHAR`): ask the catalog.
    let oids: Vec<i64> = columns.iter().map(|(_, oid)| *oid).collect();
    let names: Vec<(i64, String)> =
        sqlx::query_as("SELECT oid::int8, typname::text FROM pg_type WHERE oid = ANY($1::oid[])")
            .bind(&oids)
            .fetch_all(pool)
            .await
            .map_err(|e| sql_error(context, &e))?;
    Ok(columns
        .into_iter()
        .map(|(name, oid)| {
            let type_name = names
                .iter()
                .find(|(o, _)| *o == oid)
                .map(|(_, n)| n.clone())
                .unwrap_or_default();
            (name, type_name)
        })
        .collect())
}

/// The statement giving `count, sum, 0, bucket` per non-empty bucket with the native row
/// hash (see [`NATIVE`]).
pub fn native_buckets_sql(
    scan: &Scan<'_>,
    buckets: &Buckets<'_>,
) -> Result<Statement, ConnectorError> {
    super::aggregate_sql(scan, Some(buckets), &NATIVE)
}

/// The native fingerprint of each bucket (in bucket order), in one query: comparable only
/// with another PostgreSQL's native fingerprints over columns of comparable types.
pub async fn native_fingerprint_buckets(
    pool: &PgPool,
    scan: &Scan<'_>,
    buckets: &Buckets<'_>,
) -> Result<Vec<Fingerprint>, ConnectorError> {
    let rows = fetch(pool, native_buckets_sql(scan, buckets)?).await?;
    read_buckets(buckets, &rows)
}

/// The canonical text of `x` (a quoted column) by kind; NULL stays NULL.
fn canonical(column: &Column, x: &str) -> Result<String, ConnectorError> {
    Ok(match column.kind {
        Kind::Int | Kind::Text | Kind::Uuid => format!("({x})::text"),
        Kind::Decimal => format!("trim_scale(({x})::numeric)::text"),
        Kind::Bool => format!("CASE {x} WHEN true THEN '1' WHEN false THEN '0' END"),
        Kind::Bytes => format!("encode({x}, 'hex')"),
        Kind::Date => format!("to_char({x}, 'YYYY-MM-DD')"),
        Kind::Time => format!("to_char({x}, 'HH24:MI:SS.US')"),
        Kind::Timestamp => format!("to_char({x}, 'YYYY-MM-DD HH24:MI:SS.US')"),
        Kind::Json => return Err(super::json_not_pushable(&column.name, "PostgreSQL")),
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

/// Runs `statement` in a read transaction with the session in UTC.
async fn fetch(
    pool: &PgPool,
    statement: Statement,
) -> Result<Vec<sqlx::postgres::PgRow>, ConnectorError> {
    let context = "fingerprint query";
    let mut tx = pool.begin().await.map_err(|e| sql_error(context, &e))?;
    // The settings in one round trip (`set_config(…, true)` is `SET LOCAL`). JIT off: a
    // bucket query's `CASE` tree (a branch per partition) made PostgreSQL spend ~10 s
    // compiling it on W1's 365 partitions, a sixth of the whole query's time.
    // `DateStyle` and `bytea_output` fix how the native row hash prints dates and bytes.
    sqlx::query(
        "SELECT set_config('TimeZone', 'UTC', true), set_config('jit', 'off', true), \
         set_config('DateStyle', 'ISO', true), set_config('bytea_output', 'hex', true)",
    )
    .execute(&mut *tx)
    .await
    .map_err(|e| sql_error(context, &e))?;
    let rows = sqlx::query_with(AssertSqlSafe(statement.sql), arguments(&statement.params)?)
        .fetch_all(&mut *tx)
        .await
        .map_err(|e| sql_error(context, &e))?;
    tx.commit().await.map_err(|e| sql_error(context, &e))?;
    Ok(rows)
}

/// Reads `count, sum, check` from the first columns of `row`.
fn read_fingerprint(row: &sqlx::postgres::PgRow) -> Result<Fingerprint, ConnectorError> {
    let read = |e: sqlx::Error| sql_error("reading a fingerprint", &e);
    let rows: i64 = row.try_get(0).map_err(read)?;
    let sum: String = row.try_get(1).map_err(read)?;
    let check: String = row.try_get(2).map_err(read)?;
    Fingerprint::from_sums(rows, Some(&sum), Some(&check))
        .ok_or_else(|| super::bad_sums(&format!("{sum}, {check}")))
}

/// The fingerprint of the scan, computed in the database.
pub async fn fingerprint(pool: &PgPool, scan: &Scan<'_>) -> Result<Fingerprint, ConnectorError> {
    let rows = fetch(pool, fingerprint_sql(scan)?).await?;
    rows.first()
        .map_or(Ok(Fingerprint::default()), read_fingerprint)
}

/// The fingerprint of each bucket (in bucket order; empty buckets are empty fingerprints),
/// in one query.
pub async fn fingerprint_buckets(
    pool: &PgPool,
    scan: &Scan<'_>,
    buckets: &Buckets<'_>,
) -> Result<Vec<Fingerprint>, ConnectorError> {
    let rows = fetch(pool, buckets_sql(scan, buckets)?).await?;
    read_buckets(buckets, &rows)
}

/// Each bucket's fingerprint from rows of `count, sum, check, bucket`.
fn read_buckets(
    buckets: &Buckets<'_>,
    rows: &[sqlx::postgres::PgRow],
) -> Result<Vec<Fingerprint>, ConnectorError> {
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
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
    pool: &PgPool,
    scan: &Scan<'_>,
) -> Result<Vec<Vec<Option<String>>>, ConnectorError> {
    let rows = fetch(pool, canonical_rows_sql(scan)?).await?;
    rows.iter()
        .map(|r| {
            (0..scan.columns.len())
                .map(|i| r.try_get::<Option<String>, _>(i))
                .collect::<Result<Vec<_>, _>>()
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| sql_error("reading canonical rows", &e))
}

/// Each row's hash, ordered by `order_by`.
pub async fn row_hashes(
    pool: &PgPool,
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

/// The kind of a PostgreSQL type (`pg_type.typname`); `None` when it has no fingerprint.
pub fn kind_of(type_name: &str) -> Option<Kind> {
    Some(match type_name {
        "int2" | "int4" | "int8" => Kind::Int,
        "numeric" => Kind::Decimal,
        "bool" => Kind::Bool,
        "text" | "varchar" | "bpchar" | "name" | "char" => Kind::Text,
        "bytea" => Kind::Bytes,
        "date" => Kind::Date,
        "time" => Kind::Time,
        "timestamp" | "timestamptz" => Kind::Timestamp,
        "json" | "jsonb" => Kind::Json,
        "uuid" => Kind::Uuid,
        _ => return None,
    })
}

/// The columns of `table` (`table` or `schema.table`; without a schema, the first on the
/// search path that has it) in table order, with their kinds from the catalog. A column
/// whose type has no fingerprint (floats, intervals, arrays…) is an error naming it; a
/// missing table is an error too.
pub async fn columns(pool: &PgPool, table: &str) -> Result<Vec<Column>, ConnectorError> {
    super::require_kinds(catalog(pool, table).await?)
}

/// Every column of `table` in table order with its type and kind (`None` when it has no
/// fingerprint); a missing table is an error.
pub async fn catalog(pool: &PgPool, table: &str) -> Result<Vec<super::Catalogued>, ConnectorError> {
    crate::ident::check_table(table)?;
    let sql = "SELECT a.attname::text, t.typname::text FROM pg_attribute a \
               JOIN pg_type t ON t.oid = a.atttypid \
               WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped \
               ORDER BY a.attnum";
    let rows = sqlx::query(sql)
        .bind(crate::shared::quote_ident(table, '"'))
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
            let name: String = row.get(0);
            let type_name: String = row.get(1);
            let kind = kind_of(&type_name);
            Ok(super::Catalogued {
                name,
                type_name,
                kind,
            })
        })
        .collect()
}

/// The first row of `statement` (a reconciliation check query, issue 11) as values, read
/// like a source's rows; `None` when it returns no row.
pub async fn check_row(
    pool: &PgPool,
    statement: Statement,
) -> Result<Option<Vec<backfill_core::value::Value>>, ConnectorError> {
    let rows = fetch(pool, statement).await?;
    Ok(
        crate::postgres::decode_rows(rows.into_iter().take(1).collect(), &[])?
            .into_iter()
            .next(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fingerprint::Relation;
    use backfill_core::value::Value;

    /// Each row's canonical texts and digest are computed once: both subqueries are fenced
    /// (without the second fence PostgreSQL inlined the digest into each sum and hashed every
    /// row twice), and the hex digest is parsed once into the `bit(128)` both sums read.
    #[test]
    fn the_aggregate_hashes_and_parses_each_row_once() {
        let columns = [
            Column::new("id", Kind::Int),
            Column::new("ts", Kind::Timestamp),
            Column::new("note", Kind::Text),
        ];
        let scan = Scan {
            relation: Relation::Table("t"),
            columns: &columns,
            range: None,
        };
        let sql = fingerprint_sql(&scan).unwrap().sql;
        assert_eq!(sql.matches("md5(").count(), 1, "{sql}");
        assert_eq!(sql.matches("::bit(128)").count(), 1, "{sql}");
        assert_eq!(sql.matches(" OFFSET 0").count(), 2, "{sql}");
        assert!(!sql.contains("concat("), "{sql}");
    }

    /// The native hash prints each row once as a record (a `numeric` without its trailing
    /// zeros) and sums one hash of it per bucket: no canonical texts, no `md5`.
    #[test]
    fn the_native_aggregate_hashes_the_record_text_once() {
        let columns = [
            Column::new("id", Kind::Int),
            Column::new("amount", Kind::Decimal),
            Column::new("ts", Kind::Timestamp),
        ];
        let scan = Scan {
            relation: Relation::Table("t"),
            columns: &columns,
            range: None,
        };
        let bounds = [Value::Int(0), Value::Int(10), Value::Int(20)];
        let buckets = Buckets {
            column: "id",
            bounds: &bounds,
        };
        let sql = native_buckets_sql(&scan, &buckets).unwrap().sql;
        assert_eq!(sql.matches("hashtextextended(ROW(").count(), 1, "{sql}");
        assert!(sql.contains("trim_scale(t.\"amount\") AS c1"), "{sql}");
        assert!(sql.contains("t.\"ts\" AS c2"), "{sql}");
        assert!(!sql.contains("md5("), "{sql}");
        assert!(!sql.contains("to_char("), "{sql}");
    }

    /// Types print alike when they are the same or of one family; padded `char` and
    /// timestamps with and without a zone do not.
    #[test]
    fn comparable_types_print_alike() {
        assert!(native_comparable("int4", "int8"));
        assert!(native_comparable("VARCHAR", "text"));
        assert!(native_comparable("bpchar", "bpchar"));
        assert!(native_comparable("numeric", "numeric"));
        assert!(!native_comparable("bpchar", "text"));
        assert!(!native_comparable("timestamp", "timestamptz"));
        assert!(!native_comparable("numeric", "int8"));
        assert!(!native_comparable("", "int8"));
    }
}
