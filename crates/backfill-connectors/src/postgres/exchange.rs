//! `[target] partition_exchange` (issue 11): `replace` of a window that is exactly one
//! partition of a declared-partitioned PostgreSQL table, by loading a standalone table made
//! like the partition and exchanging the two, instead of deleting and inserting in place.
//!
//! Owns: finding the partition whose range is the window ([`find`]), creating the standalone
//! table in the window's transaction ([`Exchange::begin`]) and the exchange itself at commit
//! ([`Exchange::finish`]): a `CHECK` constraint matching the partition's range (so `ATTACH`
//! skips its validation scan under the parent's lock), detach the old partition, attach the
//! new table with the old one's bounds, drop the old one, take its name, drop the `CHECK`.
//! All of it is the window's one transaction: a failure or a kill at any point leaves the
//! live partition as it was, and no stray table.
//!
//! Does not: decide whether to exchange (the sink does, when the spec asks and a partition
//! matches), or handle multi-column or list/hash partitioning, sub-partitioned partitions
//! or `MINVALUE`/`MAXVALUE` bounds (those windows are replaced in place); nor carry over
//! privileges granted on the partition itself or triggers defined on it alone (`LIKE …
//! INCLUDING ALL` copies columns, defaults, constraints and indexes; `ATTACH` adds the
//! parent's triggers).
//!
//! Other sessions: the live partition is locked `SHARE` for the whole window, so a writer of
//! it waits (or a deadlock is detected and one side retried) rather than writing a row the
//! exchange would drop with the old partition; readers are not blocked until the swap. An
//! advisory lock on the partition serialises two exchanges of it (two runs on one target).
//!
//! Invariants: the bounds written into DDL are the catalog's own literals
//! (`pg_get_expr(relpartbound)`), accepted only when they are one quoted string or one
//! number; every name is quoted. The transaction waits at most [`LOCK_TIMEOUT`] for a lock,
//! so a long reader of the parent makes the attempt fail (and be retried) rather than queue
//! every other session behind the exchange's `ACCESS EXCLUSIVE` lock.

use backfill_core::value::Value;
use sqlx::postgres::PgConnection;
use sqlx::{AssertSqlSafe, Row};

use super::{arguments, sql_error};
use crate::ConnectorError;
use crate::shared::Table;

/// How long the window's transaction waits for any lock (`SET LOCAL lock_timeout`).
pub(crate) const LOCK_TIMEOUT: &str = "10s";

/// A catalog name (one part, may hold dots or quotes) quoted for SQL.
fn quote_part(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The first key of the advisory lock that serialises exchanges of one partition (the second
/// is the partition's oid): an arbitrary constant of ours.
const EXCHANGE_LOCK_CLASS: i32 = 0x0bf0_e8c8;

/// The name of the `CHECK` constraint that lets `ATTACH` skip its scan.
const BOUND_CHECK: &str = "\"bf_exchange_bound\"";

/// One window's exchange: the live partition, the table that replaces it and the bounds.
#[derive(Debug)]
pub(crate) struct Exchange {
    /// The partitioned table, quoted.
    parent: String,
    /// The live partition, quoted.
    old: String,
    /// Its name without schema (the new table takes it).
    old_name: String,
    /// The schema of both.
    schema: String,
    /// The standalone table the window is loaded into.
    new: Table,
    /// The partition key column, quoted.
    column: String,
    /// The partition's bounds as SQL literals, as the catalog prints them.
    lo: String,
    hi: String,
}

/// The partition of `parent` whose range is exactly the window `bounds` on `column` (of SQL
/// type `ty`), when `parent` is range-partitioned by that column alone; `None` otherwise.
pub(crate) async fn find(
    conn: &mut PgConnection,
    parent: &Table,
    column: &str,
    ty: &str,
    bounds: &[Value],
) -> Result<Option<Exchange>, ConnectorError> {
    let context = format!("find the partition of {} for the window", parent.quoted);
    let key: Option<String> = sqlx::query_scalar("SELECT pg_get_partkeydef(to_regclass($1))")
        .bind(&parent.quoted)
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| sql_error(&context, &e))?;
    let Some(key) = key else {
        return Ok(None);
    };
    if !range_key_is(&key, column) {
        return Ok(None);
    }
    let rows = sqlx::query(
        "SELECT n.nspname::text, c.relname::text, pg_get_expr(c.relpartbound, c.oid) \
         FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE i.inhparent = to_regclass($1) AND c.relkind = 'r'",
    )
    .bind(&parent.quoted)
    .fetch_all(&mut *conn)
    .await
    .map_err(|e| sql_error(&context, &e))?;
    let mut candidates = Vec::new();
    for row in &rows {
        let schema: String = row.try_get(0).map_err(|e| sql_error(&context, &e))?;
        let name: String = row.try_get(1).map_err(|e| sql_error(&context, &e))?;
        // NULL for a partition another window is exchanging right now.
        let bound: Option<String> = row.try_get(2).map_err(|e| sql_error(&context, &e))?;
        if let Some((lo, hi)) = bound.as_deref().and_then(range_bounds) {
            candidates.push((schema, name, lo, hi));
        }
    }
    if candidates.is_empty() {
        return Ok(None);
    }
    // Which partition's bounds equal the window's, compared as the column's type.
    let cast = |p: &str| match bounds.first() {
        Some(Value::Text(_)) => format!("CAST({p} AS {ty})"),
        _ => p.to_owned(),
    };
    let text = format!(
        "SELECT p.i FROM unnest($3::text[], $4::text[]) WITH ORDINALITY AS p(lo, hi, i) \
         WHERE CAST(p.lo AS {ty}) = {} AND CAST(p.hi AS {ty}) = {}",
        cast("$1"),
        cast("$2")
    );
    let los: Vec<String> = candidates.iter().map(|c| literal_value(&c.2)).collect();
    let his: Vec<String> = candidates.iter().map(|c| literal_value(&c.3)).collect();
    // The window's bounds as every other window statement binds them ($1, $2), then the
    // partitions' bounds as text ($3, $4).
    let mut args = arguments(bounds)?;
    sqlx::Arguments::add(&mut args, &los).map_err(|e| bind_error(&e))?;
    sqlx::Arguments::add(&mut args, &his).map_err(|e| bind_error(&e))?;
    let found: Option<i64> = sqlx::query_scalar_with(AssertSqlSafe(text), args)
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| sql_error(&context, &e))?;
    let Some(index) = found.and_then(|i| usize::try_from(i - 1).ok()) else {
        return Ok(None);
    };
    let Some((schema, name, lo, hi)) = candidates.into_iter().nth(index) else {
        return Ok(None);
    };
    let new_name = format!("{}__bf_x", truncate(&name, 55));
    Ok(Some(Exchange {
        parent: parent.quoted.clone(),
        old: format!("{}.{}", quote_part(&schema), quote_part(&name)),
        old_name: name,
        schema: schema.clone(),
        new: Table {
            name: format!("{schema}.{new_name}"),
            quoted: format!("{}.{}", quote_part(&schema), quote_part(&new_name)),
        },
        column: quote_part(column),
        lo,
        hi,
    }))
}

fn bind_error(e: &sqlx::error::BoxDynError) -> ConnectorError {
    ConnectorError::Data {
        message: format!("cannot bind the partition bounds: {e}"),
    }
}

impl Exchange {
    /// The table the window's rows are written into.
    pub(crate) fn table(&self) -> &Table {
        &self.new
    }

    /// In the window's transaction: the lock timeout, the standalone table made like the
    /// live partition; returns the live partition's rows (what the exchange replaces).
    pub(crate) async fn begin(&self, conn: &mut PgConnection) -> Result<u64, ConnectorError> {
        let context = format!("load a table to exchange for partition {}", self.old);
        // One exchange of a partition at a time (two runs on the same target would otherwise
        // deadlock on the loaded table's name), then writers of the live partition wait for
        // the exchange instead of writing rows it would drop with the old partition.
        let statements = [
            format!("SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"),
            format!(
                "SELECT pg_advisory_xact_lock({EXCHANGE_LOCK_CLASS}, \
                 to_regclass('{}')::oid::int)",
                self.old.replace('\'', "''")
            ),
            format!("LOCK TABLE {} IN SHARE MODE", self.old),
            format!(
                "CREATE TABLE {} (LIKE {} INCLUDING ALL)",
                self.new.quoted, self.old
            ),
        ];
        run(conn, &context, &statements).await?;
        let rows: i64 =
            sqlx::query_scalar(AssertSqlSafe(format!("SELECT count(*) FROM {}", self.old)))
                .fetch_one(&mut *conn)
                .await
                .map_err(|e| sql_error(&context, &e))?;
        Ok(u64::try_from(rows).unwrap_or(0))
    }

    /// At the window's commit, before it: the exchange (see the module doc). The new
    /// partition's indexes take the old one's names too (matched by the parent index each is
    /// attached to), so nothing but the relation changes.
    pub(crate) async fn finish(&self, conn: &mut PgConnection) -> Result<(), ConnectorError> {
        let context = format!("exchange partition {} of {}", self.old, self.parent);
        let (new, col) = (&self.new.quoted, &self.column);
        let check = format!(
            "ALTER TABLE {new} ADD CONSTRAINT {BOUND_CHECK} CHECK ({col} IS NOT NULL AND \
             {col} >= {lo} AND {col} < {hi})",
            lo = self.lo,
            hi = self.hi
        );
        run(conn, &context, &[check]).await?;
        let old_indexes = attached_indexes(conn, &self.old, &context).await?;
        let swap = [
            format!("ALTER TABLE {} DETACH PARTITION {}", self.parent, self.old),
            format!(
                "ALTER TABLE {} ATTACH PARTITION {new} FOR VALUES FROM ({}) TO ({})",
                self.parent, self.lo, self.hi
            ),
        ];
        run(conn, &context, &swap).await?;
        let new_indexes = attached_indexes(conn, new, &context).await?;
        let mut statements = vec![
            format!("DROP TABLE {}", self.old),
            format!("ALTER TABLE {new} RENAME TO {}", quote_part(&self.old_name)),
            format!("ALTER TABLE {} DROP CONSTRAINT {BOUND_CHECK}", self.old),
        ];
        for (parent_index, name) in &new_indexes {
            if let Some((_, old_name)) = old_indexes.iter().find(|(p, _)| p == parent_index) {
                statements.push(format!(
                    "ALTER INDEX {}.{} RENAME TO {}",
                    quote_part(&self.schema),
                    quote_part(name),
                    quote_part(old_name)
                ));
            }
        }
        run(conn, &context, &statements).await
    }
}

/// Runs each of `statements` in order.
async fn run(
    conn: &mut PgConnection,
    context: &str,
    statements: &[String],
) -> Result<(), ConnectorError> {
    for statement in statements {
        sqlx::raw_sql(AssertSqlSafe(statement.clone()))
            .execute(&mut *conn)
            .await
            .map_err(|e| sql_error(context, &e))?;
    }
    Ok(())
}

/// The indexes of `table` (quoted) attached to an index of its parent: (parent index oid,
/// index name).
async fn attached_indexes(
    conn: &mut PgConnection,
    table: &str,
    context: &str,
) -> Result<Vec<(i64, String)>, ConnectorError> {
    let rows = sqlx::query(
        "SELECT i.inhparent::int8, c.relname::text FROM pg_index x \
         JOIN pg_class c ON c.oid = x.indexrelid \
         JOIN pg_inherits i ON i.inhrelid = x.indexrelid \
         WHERE x.indrelid = to_regclass($1)",
    )
    .bind(table)
    .fetch_all(&mut *conn)
    .await
    .map_err(|e| sql_error(context, &e))?;
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get(0).map_err(|e| sql_error(context, &e))?,
                r.try_get(1).map_err(|e| sql_error(context, &e))?,
            ))
        })
        .collect()
}

/// True when `key` (`pg_get_partkeydef`: `RANGE (ts)`) is a range key on `column` alone,
/// `column` spelled as the catalog spells it.
fn range_key_is(key: &str, column: &str) -> bool {
    let Some(inner) = key
        .strip_prefix("RANGE (")
        .and_then(|k| k.strip_suffix(')'))
    else {
        return false;
    };
    let inner = inner.trim();
    let unquoted = inner
        .strip_prefix('"')
        .and_then(|k| k.strip_suffix('"'))
        .map_or_else(|| inner.to_owned(), |k| k.replace("\"\"", "\""));
    unquoted == column
}

/// The two literals of `FOR VALUES FROM (lo) TO (hi)`, each one quoted string or number.
fn range_bounds(bound: &str) -> Option<(String, String)> {
    let rest = bound.strip_prefix("FOR VALUES FROM (")?;
    let (lo, hi) = rest.split_once(") TO (")?;
    let hi = hi.strip_suffix(')')?;
    (is_literal(lo) && is_literal(hi)).then(|| (lo.to_owned(), hi.to_owned()))
}

/// One SQL string literal (`'…'`, quotes inside doubled) or one plain number.
fn is_literal(s: &str) -> bool {
    if let Some(inner) = s.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')) {
        return !inner.replace("''", "").contains('\'');
    }
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_digit() || c == '-' || c == '.')
        && s.chars().any(|c| c.is_ascii_digit())
}

/// The value of a literal accepted by [`is_literal`], as text.
fn literal_value(s: &str) -> String {
    match s.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')) {
        Some(inner) => inner.replace("''", "'"),
        None => s.to_owned(),
    }
}

/// `s` cut to at most `max` bytes, on a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_range_keys_and_bounds_and_refuses_the_rest() {
        assert!(range_key_is("RANGE (ts)", "ts"));
        assert!(range_key_is("RANGE (\"Created At\")", "Created At"));
        assert!(!range_key_is("RANGE (ts)", "TS"));
        assert!(!range_key_is("RANGE (ts, id)", "ts"));
        assert!(!range_key_is("LIST (ts)", "ts"));
        assert!(!range_key_is("RANGE (day)", "ts"));
        assert_eq!(
            range_bounds(
                "FOR VALUES FROM ('2026-01-01 00:00:00+00') TO ('2026-01-02 00:00:00+00')"
            ),
            Some((
                "'2026-01-01 00:00:00+00'".to_owned(),
                "'2026-01-02 00:00:00+00'".to_owned()
            ))
        );
        assert_eq!(
            range_bounds("FOR VALUES FROM (100) TO (200)"),
            Some(("100".to_owned(), "200".to_owned()))
        );
        assert_eq!(range_bounds("FOR VALUES FROM (MINVALUE) TO (100)"), None);
        assert_eq!(range_bounds("FOR VALUES FROM ('a', 1) TO ('b', 2)"), None);
        assert_eq!(range_bounds("DEFAULT"), None);
        assert_eq!(literal_value("'it''s'"), "it's");
        assert!(!is_literal("'a' || 'b'"));
        assert_eq!(truncate("ééé", 3), "é");
    }
}
