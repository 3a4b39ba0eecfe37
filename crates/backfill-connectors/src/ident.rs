//! Validation of the identifiers that reach SQL text: tables, key columns and batch columns.
//!
//! Invariant: a name is checked here before any dialect quotes it, so quoting never has to
//! escape anything and a column name can never smuggle SQL into a statement; the one
//! exception, a column read from a table's catalog ([`check_catalog_column`]), is quoted
//! whole with its marks doubled.

use backfill_core::spec::is_identifier;

use crate::ConnectorError;

/// Checks a table name (`table` or `schema.table`).
pub(crate) fn check_table(name: &str) -> Result<(), ConnectorError> {
    if is_identifier(name) {
        Ok(())
    } else {
        Err(ConnectorError::Data {
            message: format!(
                "table name `{name}` is not a plain identifier (letters, digits, `_`, `$`, \
                 optionally `schema.table`)"
            ),
        })
    }
}

/// Checks a column name: an identifier without a schema part.
pub(crate) fn check_column(name: &str, role: &str) -> Result<(), ConnectorError> {
    if is_identifier(name) && !name.contains('.') {
        Ok(())
    } else {
        Err(ConnectorError::Data {
            message: format!(
                "{role} `{name}` is not a plain identifier (letters, digits, `_`, `$`); \
                 give it an alias in the source query, e.g. `... AS {}`",
                suggest(name)
            ),
        })
    }
}

/// Checks a column name read from a table's catalog, which may be named anything (a dot, a
/// space): quoted whole, its marks doubled ([`crate::shared::quote_column`]), any name is
/// safe but an empty one or one holding a NUL, which no database accepts.
pub(crate) fn check_catalog_column(name: &str, role: &str) -> Result<(), ConnectorError> {
    if name.is_empty() || name.contains('\0') {
        Err(ConnectorError::Data {
            message: format!("{role} `{}` is not a column name", name.escape_debug()),
        })
    } else {
        Ok(())
    }
}

/// Finds `name` in `columns`: exactly, else ignoring ASCII case (SQL identifiers are
/// case-insensitive in SQLite, MySQL and unquoted PostgreSQL).
pub(crate) fn position(columns: &[String], name: &str) -> Option<usize> {
    columns
        .iter()
        .position(|c| c == name)
        .or_else(|| columns.iter().position(|c| c.eq_ignore_ascii_case(name)))
}

fn suggest(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() || s.starts_with(|c: char| c.is_ascii_digit()) {
        s.insert(0, 'c');
    }
    s
}

/// Positions of the `key` columns in `columns`; `MissingColumn` (naming `context`) for the
/// first key column that is absent.
pub(crate) fn key_positions(
    key: &[String],
    columns: &[String],
    context: &str,
) -> Result<Vec<usize>, ConnectorError> {
    key.iter()
        .map(|k| {
            position(columns, k).ok_or_else(|| ConnectorError::MissingColumn {
                column: k.clone(),
                available: columns.to_vec(),
                table: context.to_owned(),
            })
        })
        .collect()
}

/// Refuses a batch with a NULL in a key column: such rows cannot be ordered or resumed past.
/// The error names the column and the previous key in the batch.
pub(crate) fn reject_null_keys(
    rows: &[Vec<backfill_core::Value>],
    key_positions: &[usize],
    columns: &[String],
) -> Result<(), ConnectorError> {
    use backfill_core::Value;
    for (i, row) in rows.iter().enumerate() {
        if let Some(&p) = key_positions.iter().find(|&&p| row[p] == Value::Null) {
            let previous = match i.checked_sub(1) {
                Some(prev) => key_positions
                    .iter()
                    .map(|&p| rows[prev][p].preview())
                    .collect::<Vec<_>>()
                    .join(", "),
                None => "none in this batch".to_owned(),
            };
            return Err(ConnectorError::Data {
                message: format!(
                    "a source row has NULL in key column \"{}\" (previous key: {previous}); \
                     key values must be non-NULL to be ordered and resumed",
                    columns[p]
                ),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_names_and_rejects_the_rest() {
        assert!(check_table("main.orders").is_ok());
        assert!(check_table("a.b.c").is_err());
        assert!(check_column("amount_cents", "column").is_ok());
        assert!(check_column("t.id", "column").is_err());
        let err = check_column("count(*)", "source column").unwrap_err();
        assert!(err.to_string().contains("AS count___"), "{err}");
        assert_eq!(position(&["Id".into(), "id".into()], "id"), Some(1));
        assert_eq!(position(&["ID".into()], "id"), Some(0));
        assert_eq!(position(&["x".into()], "id"), None);
    }
}
