//! SQL text for SQLite, built from validated identifiers and placeholders only.
//!
//! Pure string building, unit-tested. Invariant: no value ever appears here; every statement
//! of a given shape (table, columns, row count) is byte-identical, so sqlx's per-connection
//! statement cache prepares it once.

use std::fmt::Write as _;

pub(crate) use crate::shared::{any, insert, trim_statement, wrap};
use crate::shared::{push_list, push_tuples, quote_ident};

/// SQLite's default upper bound on bound parameters per statement (since 3.32).
const MAX_PARAMS: usize = 32_766;
/// Rows per multi-row statement: enough to amortise a statement, few enough to keep the
/// statement text and its preparation cheap.
const MAX_ROWS_PER_STMT: usize = 500;

/// Rows per multi-row statement for rows of `ncols` values, keeping parameters in bounds.
pub(crate) fn rows_per_stmt(ncols: usize) -> usize {
    (MAX_PARAMS / ncols.max(1)).clamp(1, MAX_ROWS_PER_STMT)
}

/// Quotes a validated identifier: `x` → `"x"`, `s.t` → `"s"."t"`.
pub(crate) fn quote(name: &str) -> String {
    quote_ident(name, '"')
}

/// Multi-row upsert: insert new keys, update a row only when some non-key value differs
/// (`IS NOT` treats NULLs as values), so identical rows are not written and not counted by
/// `changes()`, and, with a `guard` (quoted), only when the target row's guard is NULL or not
/// greater than the incoming one (live writes win). With no non-key column, existing keys are
/// left alone.
pub(crate) fn upsert(
    table: &str,
    columns: &[String],
    key: &[usize],
    guard: Option<&str>,
    rows: usize,
) -> String {
    let mut sql = insert(table, columns, rows);
    push_on_conflict(&mut sql, columns, key, guard);
    sql
}

/// Upsert of the rows of `from` (a quoted table) matching `filter`, in its rowid order, with
/// the same conflict clause as [`upsert`]. The `WHERE` also resolves the parsing ambiguity
/// between a join's `ON` and the upsert's `ON CONFLICT`.
pub(crate) fn upsert_select(
    table: &str,
    columns: &[String],
    key: &[usize],
    guard: Option<&str>,
    from: &str,
    filter: &str,
) -> String {
    let mut sql = format!("INSERT INTO {table} (");
    push_list(&mut sql, columns);
    sql.push_str(") SELECT ");
    push_list(&mut sql, columns);
    let _ = write!(sql, " FROM {from} WHERE {filter}");
    push_on_conflict(&mut sql, columns, key, guard);
    sql
}

/// ` ON CONFLICT (key) DO UPDATE SET … WHERE (<some non-key column differs>)`, and with a
/// guard ` AND (g IS NULL OR g <= excluded.g)`. Unqualified names in the clause are the
/// target row's values before the update.
fn push_on_conflict(sql: &mut String, columns: &[String], key: &[usize], guard: Option<&str>) {
    sql.push_str(" ON CONFLICT (");
    let keys: Vec<String> = key.iter().map(|&i| columns[i].clone()).collect();
    push_list(sql, &keys);
    sql.push(')');
    let rest: Vec<&String> = (0..columns.len())
        .filter(|i| !key.contains(i))
        .map(|i| &columns[i])
        .collect();
    if rest.is_empty() {
        sql.push_str(" DO NOTHING");
        return;
    }
    sql.push_str(" DO UPDATE SET ");
    for (i, c) in rest.iter().enumerate() {
        if i > 0 {
            sql.push_str(", ");
        }
        let _ = write!(sql, "{c} = excluded.{c}");
    }
    sql.push_str(" WHERE (");
    for (i, c) in rest.iter().enumerate() {
        if i > 0 {
            sql.push_str(" OR ");
        }
        let _ = write!(sql, "{c} IS NOT excluded.{c}");
    }
    sql.push(')');
    if let Some(g) = guard {
        let _ = write!(sql, " AND ({g} IS NULL OR {g} <= excluded.{g})");
    }
}

/// Counts the rows of `table` whose key is one of `rows` bound key tuples.
pub(crate) fn count_existing(table: &str, key: &[String], rows: usize) -> String {
    let mut sql = format!("SELECT count(*) FROM {table} WHERE ");
    if let [k] = key {
        let _ = write!(sql, "{k} IN (");
        for r in 0..rows {
            sql.push_str(if r > 0 { ",?" } else { "?" });
        }
        sql.push(')');
    } else {
        sql.push('(');
        push_list(&mut sql, key);
        sql.push_str(") IN (VALUES ");
        push_tuples(&mut sql, rows, key.len());
        sql.push(')');
    }
    sql
}

/// One page of keyset pagination: rows after the bound key (when `after`), ordered by `key`
/// (quoted), limited. Placeholders after the query's own are numbered from `first_param`.
pub(crate) fn page(query: &str, key: &[String], first_param: usize, after: bool) -> String {
    let (mut sql, n) = ordered(query, key, first_param, after);
    let _ = write!(sql, " LIMIT ?{n}");
    sql
}

/// The rows of the query after the bound key (when `after`), ordered by `key`, without a
/// limit; returns the SQL and the number of the next free placeholder.
///
/// The key columns are written `+"k"` (SQLite's no-op unary plus) in the added `WHERE` and
/// `ORDER BY`: that stops SQLite from walking the key's index to avoid the sort, which would
/// ignore the query's own window filter (say an index on `ts`) and scan the table from the
/// first key on every page, making a backfill quadratic in the table size. With `+`, SQLite
/// uses the query's own index for the window and sorts that window's rows by key.
pub(crate) fn ordered(
    query: &str,
    key: &[String],
    first_param: usize,
    after: bool,
) -> (String, usize) {
    let mut sql = wrap("*", query);
    let mut n = first_param;
    if after {
        let (cmp, next) = key_cmp(key, ">", n);
        let _ = write!(sql, " WHERE {cmp}");
        n = next;
    }
    sql.push_str(" ORDER BY ");
    push_list(&mut sql, &plus(key));
    (sql, n)
}

/// The key columns (quoted) written `+"k"`: see [`ordered`] for why.
fn plus(key: &[String]) -> Vec<String> {
    key.iter().map(|k| format!("+{k}")).collect()
}

/// `+"k" OP ?n` for one key column, `(+"a", +"b") OP (?n, ?n+1)` for several: the key compared
/// with bound values in key order; returns the SQL and the next free placeholder.
pub(crate) fn key_cmp(key: &[String], op: &str, first_param: usize) -> (String, usize) {
    let plus = plus(key);
    let mut n = first_param;
    let mut sql = String::new();
    if let [k] = plus.as_slice() {
        let _ = write!(sql, "{k} {op} ?{n}");
        return (sql, n + 1);
    }
    sql.push('(');
    push_list(&mut sql, &plus);
    let _ = write!(sql, ") {op} (");
    for i in 0..key.len() {
        if i > 0 {
            sql.push_str(", ");
        }
        let _ = write!(sql, "?{n}");
        n += 1;
    }
    sql.push(')');
    (sql, n)
}

/// Inserts the rows of `from` matching `filter` whose key is not in `table` yet, leaving
/// existing keys alone: `changes()` counts exactly the inserted rows.
pub(crate) fn insert_new_select(
    table: &str,
    columns: &[String],
    key: &[usize],
    from: &str,
    filter: &str,
) -> String {
    let mut sql = format!("INSERT INTO {table} (");
    push_list(&mut sql, columns);
    sql.push_str(") SELECT ");
    push_list(&mut sql, columns);
    let _ = write!(sql, " FROM {from} WHERE {filter} ON CONFLICT (");
    let keys: Vec<String> = key.iter().map(|&i| columns[i].clone()).collect();
    push_list(&mut sql, &keys);
    sql.push_str(") DO NOTHING");
    sql
}

/// `(a, b)` for several quoted columns, `a` for one: the left side of a key comparison.
pub(crate) fn key_tuple(key: &[String]) -> String {
    match key {
        [k] => k.clone(),
        _ => {
            let mut out = String::from("(");
            push_list(&mut out, key);
            out.push(')');
            out
        }
    }
}

/// Every column of the query (prepared, never run, to learn the query's columns).
pub(crate) fn select_all(query: &str) -> String {
    wrap("*", query)
}

/// Row count of the query.
pub(crate) fn count(query: &str) -> String {
    wrap("count(*)", query)
}

/// Non-NULL values of one (quoted) column of the query, limited by placeholder `?{limit}`.
pub(crate) fn sample(query: &str, column: &str, limit_param: usize) -> String {
    format!(
        "{} WHERE {column} IS NOT NULL LIMIT ?{limit_param}",
        wrap(column, query)
    )
}

/// Deletes a window: `column >= ?1 AND column < ?2`.
pub(crate) fn delete_window(table: &str, column: &str) -> String {
    format!("DELETE FROM {table} WHERE {column} >= ?1 AND {column} < ?2")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| quote(n)).collect()
    }

    #[test]
    fn quotes_identifiers() {
        assert_eq!(quote("t"), "\"t\"");
        assert_eq!(quote("s.t"), "\"s\".\"t\"");
    }

    #[test]
    fn chunk_sizes_respect_the_parameter_limit() {
        assert_eq!(rows_per_stmt(5), 500);
        assert_eq!(rows_per_stmt(100), 327);
        assert_eq!(rows_per_stmt(40_000), 1);
        assert_eq!(rows_per_stmt(0), 500);
    }

    #[test]
    fn builds_writes() {
        let cols = q(&["id", "a", "b"]);
        assert_eq!(
            insert("\"t\"", &cols, 2),
            "INSERT INTO \"t\" (\"id\", \"a\", \"b\") VALUES (?,?,?),(?,?,?)"
        );
        assert_eq!(
            upsert("\"t\"", &cols, &[0], None, 1),
            "INSERT INTO \"t\" (\"id\", \"a\", \"b\") VALUES (?,?,?) ON CONFLICT (\"id\") \
             DO UPDATE SET \"a\" = excluded.\"a\", \"b\" = excluded.\"b\" \
             WHERE (\"a\" IS NOT excluded.\"a\" OR \"b\" IS NOT excluded.\"b\")"
        );
        // A guard holds back rows whose target guard is newer; the OR stays grouped.
        assert_eq!(
            upsert("\"t\"", &cols, &[0], Some("\"b\""), 1),
            "INSERT INTO \"t\" (\"id\", \"a\", \"b\") VALUES (?,?,?) ON CONFLICT (\"id\") \
             DO UPDATE SET \"a\" = excluded.\"a\", \"b\" = excluded.\"b\" \
             WHERE (\"a\" IS NOT excluded.\"a\" OR \"b\" IS NOT excluded.\"b\") \
             AND (\"b\" IS NULL OR \"b\" <= excluded.\"b\")"
        );
        assert_eq!(
            upsert("\"t\"", &q(&["k"]), &[0], Some("\"k\""), 1),
            "INSERT INTO \"t\" (\"k\") VALUES (?) ON CONFLICT (\"k\") DO NOTHING"
        );
        assert_eq!(
            count_existing("\"t\"", &q(&["id"]), 3),
            "SELECT count(*) FROM \"t\" WHERE \"id\" IN (?,?,?)"
        );
        assert_eq!(
            count_existing("\"t\"", &q(&["a", "b"]), 2),
            "SELECT count(*) FROM \"t\" WHERE (\"a\", \"b\") IN (VALUES (?,?),(?,?))"
        );
        assert_eq!(
            delete_window("\"t\"", "\"ts\""),
            "DELETE FROM \"t\" WHERE \"ts\" >= ?1 AND \"ts\" < ?2"
        );
    }

    #[test]
    fn builds_reads() {
        let query = "SELECT * FROM e WHERE ts >= ?1 AND ts < ?2 -- note";
        assert_eq!(
            page(query, &q(&["id"]), 3, false),
            "SELECT * FROM (\nSELECT * FROM e WHERE ts >= ?1 AND ts < ?2 -- note\n) AS q \
             ORDER BY +\"id\" LIMIT ?3"
        );
        assert_eq!(
            page(query, &q(&["a", "b"]), 3, true),
            "SELECT * FROM (\nSELECT * FROM e WHERE ts >= ?1 AND ts < ?2 -- note\n) AS q \
             WHERE (+\"a\", +\"b\") > (?3, ?4) ORDER BY +\"a\", +\"b\" LIMIT ?5"
        );
        assert_eq!(
            page("SELECT 1 AS id", &q(&["id"]), 1, true),
            "SELECT * FROM (\nSELECT 1 AS id\n) AS q WHERE +\"id\" > ?1 ORDER BY +\"id\" LIMIT ?2"
        );
        assert_eq!(
            sample("SELECT x", "\"x\"", 3),
            "SELECT \"x\" FROM (\nSELECT x\n) AS q WHERE \"x\" IS NOT NULL LIMIT ?3"
        );
        assert_eq!(
            count("SELECT x"),
            "SELECT count(*) FROM (\nSELECT x\n) AS q"
        );
        assert_eq!(trim_statement("SELECT 1 ;\n ; "), "SELECT 1");
    }
}
