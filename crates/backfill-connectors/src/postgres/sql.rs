//! SQL text for PostgreSQL, built from validated identifiers and `$n` placeholders only.
//!
//! Pure string building, unit-tested. Invariant: no value ever appears here.

use std::fmt::Write as _;

use crate::shared::quote_ident;
pub(crate) use crate::shared::{any, trim_statement, wrap};

/// Quotes a validated identifier: `x` → `"x"`, `s.t` → `"s"."t"`.
pub(crate) fn quote(name: &str) -> String {
    quote_ident(name, '"')
}

pub(crate) fn list(items: &[String]) -> String {
    items.join(", ")
}

/// One page of keyset pagination: rows after the bound key (when `after`), ordered by `key`
/// (quoted), limited. Placeholders after the query's own are numbered from `first_param`.
pub(crate) fn page(query: &str, key: &[String], first_param: usize, after: bool) -> String {
    let n = first_param + if after { key.len() } else { 0 };
    format!("{} LIMIT ${n}", ordered(query, key, first_param, after))
}

/// Every row after the bound key (when `after`), ordered by `key` (quoted): a page without
/// its limit, to stream a whole window from one query.
pub(crate) fn ordered(query: &str, key: &[String], first_param: usize, after: bool) -> String {
    let mut sql = wrap("*", query);
    if after {
        let params: Vec<String> = (0..key.len())
            .map(|i| format!("${}", first_param + i))
            .collect();
        let _ = write!(sql, " WHERE ({}) > ({})", list(key), list(&params));
    }
    let _ = write!(sql, " ORDER BY {}", list(key));
    sql
}

/// Row count of the query.
pub(crate) fn count(query: &str) -> String {
    wrap("count(*)", query)
}

/// Non-NULL values of one (quoted) column of the query, limited by placeholder `$limit`.
pub(crate) fn sample(query: &str, column: &str, limit_param: usize) -> String {
    format!(
        "{} WHERE {column} IS NOT NULL LIMIT ${limit_param}",
        wrap(column, query)
    )
}

/// Deletes a window: `column >= $1 AND column < $2`, the bounds cast to `cast` (a type
/// name from the catalog) when given.
pub(crate) fn delete_window(table: &str, column: &str, cast: Option<&str>) -> String {
    let (start, end) = match cast {
        Some(t) => (format!("CAST($1 AS {t})"), format!("CAST($2 AS {t})")),
        None => ("$1".to_owned(), "$2".to_owned()),
    };
    format!("DELETE FROM {table} WHERE {column} >= {start} AND {column} < {end}")
}

/// The temporary staging table of one upsert transaction.
pub(crate) const STAGE: &str = "\"backfill_stage\"";

/// An empty temporary table with the target's types for `columns`, dropped at commit.
pub(crate) fn create_stage(table: &str, columns: &[String]) -> String {
    format!(
        "CREATE TEMP TABLE {STAGE} ON COMMIT DROP AS SELECT {} FROM {table} WITH NO DATA",
        list(columns)
    )
}

/// `COPY table (columns) FROM STDIN` in text format.
pub(crate) fn copy_in(table: &str, columns: &[String]) -> String {
    format!("COPY {table} ({}) FROM STDIN", list(columns))
}

/// `COPY` of `columns` of `table` from binary data (`copy_binary`).
pub(crate) fn copy_in_binary(table: &str, columns: &[String]) -> String {
    format!(
        "COPY {table} ({}) FROM STDIN (FORMAT binary)",
        list(columns)
    )
}

/// Where an upsert reads its rows from.
#[derive(Clone, Copy, Debug)]
pub(crate) enum UpsertFrom<'a> {
    /// The staging table ([`STAGE`]) filled by `COPY`.
    Stage,
    /// One array parameter per column, `$1` … `$n`, cast to these array types
    /// (`unnest($1::int8[], $2::text[])` zips them into rows).
    Arrays(&'a [&'a str]),
}

/// Upsert of the rows read `from`; returns the number of inserted and updated rows. A row is
/// updated only when some non-key value differs (`IS DISTINCT FROM`, NULL-aware; columns
/// in `as_text` have no equality operator and are compared as text) and, with a `guard`, only
/// when the target's guard is NULL or not newer.
pub(crate) fn upsert(upsert: &Upsert<'_>, from: UpsertFrom<'_>) -> String {
    let select = match from {
        UpsertFrom::Stage => format!("SELECT {} FROM {STAGE}", list(upsert.columns)),
        UpsertFrom::Arrays(types) => format!("SELECT * FROM unnest({})", unnest_params(types)),
    };
    format!(
        "WITH w AS ({} RETURNING (xmax = 0) AS inserted) \
         SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM w",
        insert(upsert, &select)
    )
}

/// [`upsert`] that also logs, in the same statement, the before-image of every row it
/// inserts or changes (rows it leaves as they are are not logged): the batch is `s`, the
/// caller's `before` CTE is `b` (the target as it was: every part of a statement sees the same
/// snapshot) and its `log` CTE writes from `w` (the rows as written, with `bf_undo_inserted`)
/// joined to `b`. Returns the same two counts and a third, the value of `unlogged` (a count).
pub(crate) fn upsert_logged(
    upsert: &Upsert<'_>,
    from: UpsertFrom<'_>,
    before: &str,
    log: &str,
    unlogged: &str,
) -> String {
    let columns = upsert.columns;
    let source = match from {
        UpsertFrom::Stage => format!("SELECT {} FROM {STAGE}", list(columns)),
        UpsertFrom::Arrays(types) => format!(
            "SELECT * FROM unnest({}) AS s({})",
            unnest_params(types),
            list(columns)
        ),
    };
    let write = insert(upsert, &format!("SELECT {} FROM s", list(columns)));
    format!(
        "WITH s AS ({source}), b AS ({before}), \
         w AS ({write} RETURNING (xmax = 0) AS bf_undo_inserted, t.*), l AS ({log}) \
         SELECT count(*) FILTER (WHERE bf_undo_inserted), \
         count(*) FILTER (WHERE NOT bf_undo_inserted), {unlogged} FROM w"
    )
}

/// What an upsert writes: the target, the batch's columns (quoted), the key's positions among
/// them, which columns compare as text, and the guard column.
#[derive(Clone, Copy)]
pub(crate) struct Upsert<'a> {
    pub(crate) table: &'a str,
    pub(crate) columns: &'a [String],
    pub(crate) key: &'a [usize],
    pub(crate) as_text: &'a [bool],
    pub(crate) guard: Option<&'a str>,
}

/// `$1::t1, $2::t2, …`.
fn unnest_params(types: &[&str]) -> String {
    types
        .iter()
        .enumerate()
        .map(|(i, t)| format!("${}::{t}", i + 1))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `INSERT INTO table AS t (columns) select ON CONFLICT (key) DO …` (see [`upsert`]).
fn insert(upsert: &Upsert<'_>, select: &str) -> String {
    let Upsert {
        table,
        columns,
        key,
        as_text,
        guard,
    } = *upsert;
    let keys: Vec<String> = key.iter().map(|&i| columns[i].clone()).collect();
    let rest: Vec<usize> = (0..columns.len()).filter(|i| !key.contains(i)).collect();
    let mut sql = format!(
        "INSERT INTO {table} AS t ({cols}) {select} ON CONFLICT ({keys}) ",
        cols = list(columns),
        keys = list(&keys)
    );
    if rest.is_empty() {
        sql.push_str("DO NOTHING");
        return sql;
    }
    let set: Vec<String> = rest
        .iter()
        .map(|&i| format!("{c} = EXCLUDED.{c}", c = columns[i]))
        .collect();
    let side = |prefix: &str| -> String {
        rest.iter()
            .map(|&i| {
                if as_text[i] {
                    format!("{prefix}.{}::text", columns[i])
                } else {
                    format!("{prefix}.{}", columns[i])
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = write!(
        sql,
        "DO UPDATE SET {} WHERE ROW({}) IS DISTINCT FROM ROW({})",
        list(&set),
        side("t"),
        side("EXCLUDED")
    );
    if let Some(g) = guard {
        let _ = write!(sql, " AND (t.{g} IS NULL OR t.{g} <= EXCLUDED.{g})");
    }
    sql
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| quote(n)).collect()
    }

    #[test]
    fn logged_upsert_reads_the_batch_once_and_logs_what_the_write_returned() {
        let columns = q(&["id", "v"]);
        let upsert = Upsert {
            table: "\"t\"",
            columns: &columns,
            key: &[0],
            as_text: &[false, false],
            guard: None,
        };
        let sql = upsert_logged(
            &upsert,
            UpsertFrom::Arrays(&["int8[]", "text[]"]),
            "SELECT t.* FROM \"t\" AS t",
            "INSERT INTO log SELECT $3, $4 FROM w",
            "(SELECT 0)",
        );
        assert_eq!(
            sql,
            "WITH s AS (SELECT * FROM unnest($1::int8[], $2::text[]) AS s(\"id\", \"v\")), \
             b AS (SELECT t.* FROM \"t\" AS t), w AS (INSERT INTO \"t\" AS t (\"id\", \"v\") \
             SELECT \"id\", \"v\" FROM s ON CONFLICT (\"id\") DO UPDATE SET \"v\" = \
             EXCLUDED.\"v\" WHERE ROW(t.\"v\") IS DISTINCT FROM ROW(EXCLUDED.\"v\") \
             RETURNING (xmax = 0) AS bf_undo_inserted, t.*), l AS (INSERT INTO log SELECT $3, \
             $4 FROM w) SELECT count(*) FILTER (WHERE bf_undo_inserted), count(*) FILTER \
             (WHERE NOT bf_undo_inserted), (SELECT 0) FROM w"
        );
    }

    #[test]
    fn builds_reads() {
        assert_eq!(quote("s.t"), "\"s\".\"t\"");
        assert_eq!(
            page("SELECT 1 AS id", &q(&["a", "b"]), 3, true),
            "SELECT * FROM (\nSELECT 1 AS id\n) AS q WHERE (\"a\", \"b\") > ($3, $4) \
             ORDER BY \"a\", \"b\" LIMIT $5"
        );
        assert_eq!(
            page("SELECT 1 AS id", &q(&["id"]), 1, false),
            "SELECT * FROM (\nSELECT 1 AS id\n) AS q ORDER BY \"id\" LIMIT $1"
        );
        assert_eq!(
            sample("SELECT x", "\"x\"", 3),
            "SELECT \"x\" FROM (\nSELECT x\n) AS q WHERE \"x\" IS NOT NULL LIMIT $3"
        );
        assert_eq!(trim_statement("SELECT 1 ;\n ; "), "SELECT 1");
        assert_eq!(
            delete_window("\"t\"", "\"ts\"", Some("timestamp with time zone")),
            "DELETE FROM \"t\" WHERE \"ts\" >= CAST($1 AS timestamp with time zone) AND \
             \"ts\" < CAST($2 AS timestamp with time zone)"
        );
    }

    #[test]
    fn builds_upserts() {
        let cols = q(&["id", "a", "j"]);
        assert_eq!(
            upsert(
                &Upsert {
                    table: "\"t\"",
                    columns: &cols,
                    key: &[0],
                    as_text: &[false, false, true],
                    guard: Some("\"a\""),
                },
                UpsertFrom::Stage
            ),
            "WITH w AS (INSERT INTO \"t\" AS t (\"id\", \"a\", \"j\") SELECT \"id\", \"a\", \"j\" \
             FROM \"backfill_stage\" ON CONFLICT (\"id\") DO UPDATE SET \"a\" = EXCLUDED.\"a\", \
             \"j\" = EXCLUDED.\"j\" WHERE ROW(t.\"a\", t.\"j\"::text) IS DISTINCT FROM \
             ROW(EXCLUDED.\"a\", EXCLUDED.\"j\"::text) AND (t.\"a\" IS NULL OR t.\"a\" <= \
             EXCLUDED.\"a\") RETURNING (xmax = 0) AS inserted) SELECT count(*) FILTER (WHERE \
             inserted), count(*) FILTER (WHERE NOT inserted) FROM w"
        );
        assert_eq!(
            upsert(
                &Upsert {
                    table: "\"t\"",
                    columns: &q(&["id", "v"]),
                    key: &[0],
                    as_text: &[false, false],
                    guard: None,
                },
                UpsertFrom::Arrays(&["int8[]", "text[]"])
            ),
            "WITH w AS (INSERT INTO \"t\" AS t (\"id\", \"v\") SELECT * FROM \
             unnest($1::int8[], $2::text[]) ON CONFLICT (\"id\") DO UPDATE SET \"v\" = \
             EXCLUDED.\"v\" WHERE ROW(t.\"v\") IS DISTINCT FROM ROW(EXCLUDED.\"v\") \
             RETURNING (xmax = 0) AS inserted) SELECT count(*) FILTER (WHERE inserted), \
             count(*) FILTER (WHERE NOT inserted) FROM w"
        );
        assert_eq!(
            create_stage("\"t\"", &q(&["id"])),
            "CREATE TEMP TABLE \"backfill_stage\" ON COMMIT DROP AS SELECT \"id\" FROM \"t\" \
             WITH NO DATA"
        );
    }
}
