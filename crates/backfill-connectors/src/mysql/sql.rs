//! SQL text for MySQL, built from validated identifiers and `?` placeholders only.
//!
//! Pure string building, unit-tested. Invariant: no value ever appears here; every statement
//! of a given shape is byte-identical, so sqlx's statement cache prepares it once.

use std::fmt::Write as _;

pub(crate) use crate::shared::{insert, trim_statement, wrap};
use crate::shared::{push_list, push_tuples, quote_ident};

/// Quotes a validated identifier: `x` → `` `x` ``, `s.t` → `` `s`.`t` ``.
pub(crate) fn quote(name: &str) -> String {
    quote_ident(name, '`')
}

/// One page of keyset pagination: rows after the bound key (when `after`), ordered by the
/// quoted `key`, limited by a trailing `?`.
pub(crate) fn page(query: &str, key: &[String], after: bool) -> String {
    let mut sql = wrap("*", query);
    if after {
        let marks = vec!["?"; key.len()].join(", ");
        let _ = write!(sql, " WHERE ({}) > ({marks})", key.join(", "));
    }
    sql.push_str(" ORDER BY ");
    push_list(&mut sql, key);
    sql.push_str(" LIMIT ?");
    sql
}

/// Row count of the query.
pub(crate) fn count(query: &str) -> String {
    wrap("COUNT(*)", query)
}

/// Non-NULL values of one quoted column of the query, limited by a trailing `?`.
pub(crate) fn sample(query: &str, column: &str) -> String {
    format!("{} WHERE {column} IS NOT NULL LIMIT ?", wrap(column, query))
}

/// Multi-row upsert. Non-key columns take the incoming values; with a `guard` column, a
/// target row whose guard is greater than the incoming one keeps every value (the guard is
/// assigned last, since MySQL assigns left to right and later expressions see new values).
/// With no non-key column, the key is assigned to itself (a no-op).
pub(crate) fn upsert(
    table: &str,
    columns: &[String],
    key: &[usize],
    guard: Option<&str>,
    rows: usize,
) -> String {
    let mut sql = insert(table, columns, rows);
    on_duplicate(&mut sql, "", columns, key, guard);
    sql
}

/// [`upsert`] of every row of the table `stage` (whose columns are `columns`, by name), in
/// the order of its column `order`. The target's columns are qualified by its name:
/// unqualified, a name the stage has too is ambiguous in the `UPDATE` part.
pub(crate) fn upsert_from(
    table: &str,
    columns: &[String],
    key: &[usize],
    guard: Option<&str>,
    (stage, order): (&str, &str),
) -> String {
    let mut sql = format!("INSERT INTO {table} (");
    push_list(&mut sql, columns);
    sql.push_str(") SELECT ");
    push_list(&mut sql, columns);
    let _ = write!(sql, " FROM {stage} ORDER BY {order}");
    on_duplicate(&mut sql, &format!("{table}."), columns, key, guard);
    sql
}

/// Appends ` ON DUPLICATE KEY UPDATE …` (see [`upsert`]), the target's columns prefixed by
/// `own` (`` `t`. `` or nothing).
fn on_duplicate(
    sql: &mut String,
    own: &str,
    columns: &[String],
    key: &[usize],
    guard: Option<&str>,
) {
    sql.push_str(" ON DUPLICATE KEY UPDATE ");
    let mut rest: Vec<&String> = (0..columns.len())
        .filter(|i| !key.contains(i))
        .map(|i| &columns[i])
        .collect();
    if let Some(g) = guard {
        rest.sort_by_key(|c| c.as_str() == g);
    }
    if rest.is_empty() {
        let k = &columns[key[0]];
        let _ = write!(sql, "{own}{k} = {own}{k}");
        return;
    }
    let sets: Vec<String> = rest
        .iter()
        .map(|c| match guard {
            Some(g) => {
                format!("{own}{c} = IF({own}{g} > VALUES({g}), {own}{c}, VALUES({c}))")
            }
            None => format!("{own}{c} = VALUES({c})"),
        })
        .collect();
    push_list(sql, &sets);
}

/// Counts the rows of `table` whose key is one of `rows` bound key tuples.
pub(crate) fn count_existing(table: &str, key: &[String], rows: usize) -> String {
    let mut sql = format!("SELECT COUNT(*) FROM {table} WHERE ");
    if let [k] = key {
        let _ = write!(sql, "{k} IN ({})", vec!["?"; rows].join(","));
    } else {
        sql.push('(');
        push_list(&mut sql, key);
        sql.push_str(") IN (");
        push_tuples(&mut sql, rows, key.len());
        sql.push(')');
    }
    sql
}

/// Deletes a window: `column >= ? AND column < ?`.
pub(crate) fn delete_window(table: &str, column: &str) -> String {
    format!("DELETE FROM {table} WHERE {column} >= ? AND {column} < ?")
}

/// Rows per multi-row statement: under the placeholder limit, under the packet budget for
/// rows of about `row_bytes` bytes, and at most `max_rows`.
pub(crate) fn rows_per_stmt(
    width: usize,
    row_bytes: usize,
    packet_budget: usize,
    max_rows: usize,
) -> usize {
    let by_params = super::MAX_PARAMS / width.max(1);
    let by_bytes = packet_budget / row_bytes.max(1);
    by_params.min(by_bytes).min(max_rows).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| quote(n)).collect()
    }

    #[test]
    fn builds_reads() {
        assert_eq!(quote("s.t"), "`s`.`t`");
        assert_eq!(
            page("SELECT 1 AS id", &q(&["a", "b"]), true),
            "SELECT * FROM (\nSELECT 1 AS id\n) AS q WHERE (`a`, `b`) > (?, ?) \
             ORDER BY `a`, `b` LIMIT ?"
        );
        assert_eq!(
            page("SELECT 1 AS id", &q(&["id"]), false),
            "SELECT * FROM (\nSELECT 1 AS id\n) AS q ORDER BY `id` LIMIT ?"
        );
        assert_eq!(
            sample("SELECT x", "`x`"),
            "SELECT `x` FROM (\nSELECT x\n) AS q WHERE `x` IS NOT NULL LIMIT ?"
        );
        assert_eq!(trim_statement("SELECT 1 ;\n"), "SELECT 1");
    }

    #[test]
    fn builds_writes() {
        let cols = q(&["id", "u", "a"]);
        assert_eq!(
            upsert("`t`", &cols, &[0], None, 2),
            "INSERT INTO `t` (`id`, `u`, `a`) VALUES (?,?,?),(?,?,?) ON DUPLICATE KEY UPDATE \
             `u` = VALUES(`u`), `a` = VALUES(`a`)"
        );
        assert_eq!(
            upsert("`t`", &cols, &[0], Some("`u`"), 1),
            "INSERT INTO `t` (`id`, `u`, `a`) VALUES (?,?,?) ON DUPLICATE KEY UPDATE \
             `a` = IF(`u` > VALUES(`u`), `a`, VALUES(`a`)), \
             `u` = IF(`u` > VALUES(`u`), `u`, VALUES(`u`))"
        );
        assert_eq!(
            upsert("`t`", &q(&["k"]), &[0], None, 1),
            "INSERT INTO `t` (`k`) VALUES (?) ON DUPLICATE KEY UPDATE `k` = `k`"
        );
        assert_eq!(
            upsert_from("`s`.`t`", &cols, &[0], Some("`u`"), ("`st`", "seq")),
            "INSERT INTO `s`.`t` (`id`, `u`, `a`) SELECT `id`, `u`, `a` FROM `st` ORDER BY seq \
             ON DUPLICATE KEY UPDATE `s`.`t`.`a` = IF(`s`.`t`.`u` > VALUES(`u`), `s`.`t`.`a`, VALUES(`a`)), \
             `s`.`t`.`u` = IF(`s`.`t`.`u` > VALUES(`u`), `s`.`t`.`u`, VALUES(`u`))"
        );
        assert_eq!(
            count_existing("`t`", &q(&["a", "b"]), 2),
            "SELECT COUNT(*) FROM `t` WHERE (`a`, `b`) IN ((?,?),(?,?))"
        );
        assert_eq!(
            count_existing("`t`", &q(&["id"]), 3),
            "SELECT COUNT(*) FROM `t` WHERE `id` IN (?,?,?)"
        );
        assert_eq!(rows_per_stmt(10, 100, 1_000_000, 1000), 1000);
        assert_eq!(rows_per_stmt(10, 100_000, 1_000_000, 1000), 10);
        assert_eq!(rows_per_stmt(70_000, 1, 1_000_000, 1000), 1);
        assert_eq!(rows_per_stmt(1000, 1, usize::MAX, usize::MAX), 65);
    }
}
