//! What the SQL connectors (`sqlite/`, `postgres/`, `mysql/`) do the same way, written once:
//! checking a target's settings, matching a batch's columns to the target's, resolving key
//! columns against a source query's columns, the errors all three raise, turning a driver
//! error into a [`ConnectorError`], reading a row value by value, and the bits of SQL text
//! that read the same in every dialect.
//!
//! Does not: talk to a database, or build SQL that differs between dialects. Each system's
//! module does that and passes in what differs here (its identifier quoting, its placeholder
//! style). A function belongs here only when every caller means the same thing by it.
//!
//! Invariant: an error raised here reads the same whichever system raised it.

use std::sync::Arc;

use backfill_core::params::{self, Placeholder};
use backfill_core::plan::Window;
use backfill_core::retry::ErrorClass;
use backfill_core::secret::redact;
use backfill_core::spec::{TargetSpec, WriteMode};
use backfill_core::timefmt::TimeFormat;
use backfill_core::value::{BATCH_BYTES, Batch, RowCounts, Value, row_size};
use sqlx::{Column, Row};

use crate::ConnectorError;
use crate::error::require_key;
use crate::ident::{check_column, check_table, key_positions, position, reject_null_keys};
use crate::window::{check_names, named_values};

/// Where a column of a batch handed to a sink was looked for, in `MissingColumn` errors.
const FROM_BATCH: &str = "the batch from the source";

// --- Sinks: settings and the target table ---------------------------------------------------

/// The target table, validated and quoted once.
#[derive(Clone, Debug)]
pub(crate) struct Table {
    /// As written in the spec (`t` or `s.t`).
    pub(crate) name: String,
    /// Quoted for the dialect's SQL (`"s"."t"`, `` `s`.`t` ``).
    pub(crate) quoted: String,
}

impl Table {
    /// Checks `name` is a plain identifier (optionally `schema.table`) and quotes it with the
    /// dialect's `quote`; a `Data` error otherwise.
    pub(crate) fn new(name: &str, quote: fn(&str) -> String) -> Result<Table, ConnectorError> {
        check_table(name)?;
        Ok(Table {
            name: name.to_owned(),
            quoted: quote(name),
        })
    }

    /// `(schema, table)` as written in the spec; `None` when the name has no schema part (the
    /// dialect decides what that means: `main`, the connection's database, the search path).
    pub(crate) fn parts(&self) -> (Option<&str>, &str) {
        match self.name.split_once('.') {
            Some((schema, table)) => (Some(schema), table),
            None => (None, &self.name),
        }
    }

    /// How errors name the table: `target table "t"`.
    pub(crate) fn describe(&self) -> String {
        format!("target table {}", self.quoted)
    }
}

/// What every sink takes from the spec's target settings, checked.
#[derive(Debug)]
pub(crate) struct TargetSettings {
    /// `None` only in `sql` mode.
    pub(crate) table: Option<Table>,
    /// `sql` mode: the statement with the dialect's placeholders and the name bound at each.
    pub(crate) statement: Option<(Arc<str>, Vec<String>)>,
}

/// Checks, before connecting, the target settings every sink needs, and refuses with a `Data`
/// error the first problem found in this order: the table name, the key columns, the `guard`
/// column (for sinks that support one; `None` otherwise), a mode without what it needs (a
/// table, key columns, a window column). In `sql` mode, rewrites the statement's
/// `:start`/`:end` to `placeholder` and refuses any other parameter.
pub(crate) fn check_target(
    spec: &TargetSpec,
    guard: Option<&str>,
    quote: fn(&str) -> String,
    placeholder: Placeholder,
) -> Result<TargetSettings, ConnectorError> {
    let table = spec
        .table
        .as_deref()
        .map(|name| Table::new(name, quote))
        .transpose()?;
    for k in &spec.key {
        check_column(k, "key column")?;
    }
    if let Some(g) = guard {
        check_column(g, "guard column")?;
    }
    let mut statement = None;
    match &spec.mode {
        WriteMode::Upsert | WriteMode::Replace { .. } if table.is_none() => {
            return Err(ConnectorError::Data {
                message: format!("`{}` mode needs a target table", spec.mode.name()),
            });
        }
        WriteMode::Upsert if spec.key.is_empty() => {
            return Err(ConnectorError::Data {
                message: "`upsert` mode needs key columns".to_owned(),
            });
        }
        WriteMode::Replace { window_column } => check_column(window_column, "window column")?,
        WriteMode::Sql { statement: text } => {
            let rewritten = params::rewrite(trim_statement(text), placeholder);
            check_names(&rewritten.names, "target statement")?;
            statement = Some((Arc::from(rewritten.sql), rewritten.names));
        }
        WriteMode::Upsert => {}
    }
    Ok(TargetSettings { table, statement })
}

/// The target table; a `Data` error in a mode without one (`sql`).
pub(crate) fn require_table<'t>(
    table: Option<&'t Table>,
    mode: &WriteMode,
) -> Result<&'t Table, ConnectorError> {
    table.ok_or_else(|| ConnectorError::Data {
        message: format!("`{}` mode has no target table", mode.name()),
    })
}

/// The window column of `replace` mode; a `Data` error in any other mode.
pub(crate) fn replace_column(mode: &WriteMode) -> Result<&str, ConnectorError> {
    match mode {
        WriteMode::Replace { window_column } => Ok(window_column),
        _ => Err(ConnectorError::Data {
            message: format!("`{}` mode cannot replace a window", mode.name()),
        }),
    }
}

/// The `sql` mode statement and the name bound at each placeholder; a `Data` error in any
/// other mode.
pub(crate) fn sql_statement<'s>(
    statement: Option<&'s (Arc<str>, Vec<String>)>,
    mode: &WriteMode,
) -> Result<&'s (Arc<str>, Vec<String>), ConnectorError> {
    statement.ok_or_else(|| ConnectorError::Data {
        message: format!("`{}` mode has no statement to execute", mode.name()),
    })
}

// --- Sinks: the target's columns --------------------------------------------------------------

/// Checks the target table's `existing` columns (empty: there is no such table, a `Permanent`
/// error) hold every source column, every column of `needed` (key, guard) and, in `replace`
/// mode, the window column; `MissingColumn` for the first one absent.
pub(crate) fn check_existing<'a>(
    table: &Table,
    existing: &[String],
    columns: &[String],
    needed: impl IntoIterator<Item = &'a String>,
    mode: &WriteMode,
) -> Result<(), ConnectorError> {
    if existing.is_empty() {
        return Err(ConnectorError::Sql {
            context: table.describe(),
            message: format!("no such table: {}", table.name),
            class: ErrorClass::Permanent,
        });
    }
    let missing = |column: &str| ConnectorError::MissingColumn {
        column: column.to_owned(),
        available: existing.to_vec(),
        table: table.describe(),
    };
    for c in columns {
        check_column(c, "source column")?;
        if position(existing, c).is_none() {
            return Err(missing(c));
        }
    }
    for k in needed {
        if position(existing, k).is_none() {
            return Err(missing(k));
        }
    }
    if let WriteMode::Replace { window_column } = mode
        && position(existing, window_column).is_none()
    {
        return Err(missing(window_column));
    }
    Ok(())
}

/// Whether `index` (an index's columns) is exactly the `key` columns, in any order and case.
pub(crate) fn is_key(index: &[String], key: &[String]) -> bool {
    index.len() == key.len() && key.iter().all(|k| position(index, k).is_some())
}

/// The `Permanent` error of an upsert into a table with no PRIMARY KEY or UNIQUE index on
/// exactly the `key` columns: without one, existing rows cannot be found.
pub(crate) fn no_unique_key(table: &Table, key: &[String]) -> ConnectorError {
    ConnectorError::Sql {
        context: format!("upsert into {}", table.quoted),
        message: format!(
            "{} has no PRIMARY KEY or UNIQUE index on exactly ({}); upsert needs one to find \
             existing rows",
            table.describe(),
            key.join(", ")
        ),
        class: ErrorClass::Permanent,
    }
}

// --- Sinks: batches -----------------------------------------------------------------------------

/// Refuses (`Data`) a batch with a row whose number of values is not its number of columns.
pub(crate) fn check_row_widths(batch: &Batch) -> Result<(), ConnectorError> {
    match batch
        .rows
        .iter()
        .enumerate()
        .find(|(_, r)| r.len() != batch.columns.len())
    {
        None => Ok(()),
        Some((i, row)) => Err(ConnectorError::Data {
            message: format!(
                "batch row {i} has {} values for {} columns",
                row.len(),
                batch.columns.len()
            ),
        }),
    }
}

/// Positions of the `key` columns among the batch's columns; `MissingColumn` (naming the
/// batch) for the first one absent.
pub(crate) fn batch_key_positions(
    batch: &Batch,
    key: &[String],
) -> Result<Vec<usize>, ConnectorError> {
    key_positions(key, &batch.columns, FROM_BATCH)
}

/// The batch's columns, checked to be plain identifiers and quoted with the dialect's
/// `quote`, and the positions of `key` among them; refuses a batch missing a key column or
/// with a row of the wrong width.
pub(crate) fn batch_columns(
    batch: &Batch,
    key: &[String],
    quote: fn(&str) -> String,
) -> Result<(Vec<String>, Vec<usize>), ConnectorError> {
    let mut quoted = Vec::with_capacity(batch.columns.len());
    for c in &batch.columns {
        check_column(c, "source column")?;
        quoted.push(quote(c));
    }
    let key_positions = batch_key_positions(batch, key)?;
    check_row_widths(batch)?;
    Ok((quoted, key_positions))
}

/// The `guard` column as the batch spells it, quoted with the dialect's `quote`; `None`
/// without a guard. A guard compares the incoming row's value with the target's, so a batch
/// without the column is refused (`MissingColumn`, naming the batch): the source query must
/// return it.
pub(crate) fn batch_guard(
    batch: &Batch,
    guard: Option<&str>,
    quote: fn(&str) -> String,
) -> Result<Option<String>, ConnectorError> {
    let Some(g) = guard else {
        return Ok(None);
    };
    let i = position(&batch.columns, g).ok_or_else(|| ConnectorError::MissingColumn {
        column: g.to_owned(),
        available: batch.columns.clone(),
        table: FROM_BATCH.to_owned(),
    })?;
    Ok(Some(quote(&batch.columns[i])))
}

/// The counts of an upsert of `rows` rows of which `inserted` were new and `updated` changed
/// an existing row: the rest were unchanged (identical, or held back by a guard).
pub(crate) fn upsert_counts(rows: u64, inserted: u64, updated: u64) -> RowCounts {
    RowCounts {
        inserted,
        updated,
        unchanged: rows.saturating_sub(inserted + updated),
        ..RowCounts::default()
    }
}

/// What errors of the engine's [`Extra`](crate::Extra) statement name.
pub(crate) const EXTRA_CONTEXT: &str = "checkpoint statement";

/// Accepts an [`Extra`](crate::Extra) statement that affected exactly one row. Anything else
/// means this attempt is stale (the partition's lease or checkpoint moved on): a `Permanent`
/// error, on which the caller drops its transaction, rolling the write back.
pub(crate) fn check_extra(affected: u64) -> Result<(), ConnectorError> {
    match affected {
        1 => Ok(()),
        n => Err(ConnectorError::Sql {
            context: EXTRA_CONTEXT.to_owned(),
            message: format!(
                "affected {n} rows instead of 1: this attempt is stale (the partition's lease \
                 or checkpoint moved on); the write was rolled back"
            ),
            class: ErrorClass::Permanent,
        }),
    }
}

// --- Sources ------------------------------------------------------------------------------------

/// The `key` columns spelled as the source query returns them (its `columns`);
/// `MissingColumn` (naming `context`) for the first one it does not return.
pub(crate) fn resolve_key(
    key: &[String],
    columns: &[String],
    context: &str,
) -> Result<Vec<String>, ConnectorError> {
    key_positions(key, columns, context)
        .map(|p| p.into_iter().map(|i| columns[i].clone()).collect())
}

/// The source query's spelling of `column`, checked to be a plain identifier;
/// `MissingColumn` (naming `context`) when the query does not return it.
pub(crate) fn resolve_column<'c>(
    columns: &'c [String],
    column: &str,
    context: &str,
) -> Result<&'c String, ConnectorError> {
    check_column(column, "column")?;
    match position(columns, column) {
        Some(i) => Ok(&columns[i]),
        None => Err(ConnectorError::MissingColumn {
            column: column.to_owned(),
            available: columns.to_vec(),
            table: context.to_owned(),
        }),
    }
}

/// The values bound to a keyset read of `window` in key order: the query's parameters (one
/// per name of `names`), then the resume key `after` when there is one. Refuses (`Data`) a
/// source without key columns, then a resume key whose number of values is not the key's.
pub(crate) fn page_values(
    key: &[String],
    names: &[String],
    window: &Window,
    format: &TimeFormat,
    after: Option<&[Value]>,
) -> Result<Vec<Value>, ConnectorError> {
    require_key(key)?;
    let mut values = named_values(names, window, format);
    if let Some(after) = after {
        check_resume_key(key, after)?;
        values.extend(after.iter().cloned());
    }
    Ok(values)
}

/// Refuses (`Data`) a resume key `after` whose number of values is not the key's.
fn check_resume_key(key: &[String], after: &[Value]) -> Result<(), ConnectorError> {
    if after.len() == key.len() {
        return Ok(());
    }
    Err(ConnectorError::Data {
        message: format!(
            "resume key has {} values but the key has {} columns ({})",
            after.len(),
            key.len(),
            key.join(", ")
        ),
    })
}

/// The column names of a fetched page: its first row's, or `known` (the columns learnt when
/// the query was prepared) when the page is empty.
pub(crate) fn page_columns<R: Row>(rows: &[R], known: &[String]) -> Vec<String> {
    match rows.first() {
        Some(row) => row.columns().iter().map(|c| c.name().to_owned()).collect(),
        None => known.to_vec(),
    }
}

/// A page's decoded `rows` as a batch; refused (`Data`) when a row has NULL in a key column,
/// and `MissingColumn` (naming `context`) when a key column is not among `columns`.
pub(crate) fn keyed_batch(
    key: &[String],
    columns: Vec<String>,
    rows: Vec<Vec<Value>>,
    context: &str,
) -> Result<Batch, ConnectorError> {
    let key_positions = key_positions(key, &columns, context)?;
    reject_null_keys(&rows, &key_positions, &columns)?;
    Ok(Batch { columns, rows })
}

// --- Drivers: errors and decoding -------------------------------------------------------------

/// Whether a failed sqlx call that is not the database's own answer may succeed if tried
/// again: I/O, a pool timeout, a crashed worker, a protocol error or a failed `BEGIN` are
/// `Transient`; anything else is `Permanent`. Each system classifies the database's answers
/// (`sqlx::Error::Database`) by its own table.
pub(crate) fn classify_driver(err: &sqlx::Error) -> ErrorClass {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_)
        | sqlx::Error::BeginFailed => ErrorClass::Transient,
        _ => ErrorClass::Permanent,
    }
}

/// A failed statement as the engine sees it, its message redacted: `Unavailable` when the
/// system says the database is `gone` (connection lost, server shutting down), else `Sql`
/// with the class the system's `classify` gives.
pub(crate) fn driver_error(
    context: impl Into<String>,
    err: &sqlx::Error,
    gone: bool,
    classify: fn(&sqlx::Error) -> ErrorClass,
) -> ConnectorError {
    if gone {
        return ConnectorError::Unavailable {
            context: context.into(),
            message: redact(&describe(err)),
        };
    }
    ConnectorError::Sql {
        context: context.into(),
        message: redact(&describe(err)),
        class: classify(err),
    }
}

/// A driver error for people. PostgreSQL's answer is its message followed by what the server
/// says about it (`; detail: Failing row contains (…); constraint: dst_amount_check; column:
/// amount`), not the server's C source line that sqlx appends (`… at line 2090`), which means
/// nothing to a user; other errors read as the driver prints them.
pub(crate) fn describe(err: &sqlx::Error) -> String {
    let pg = match err {
        sqlx::Error::Database(db) => db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>(),
        _ => None,
    };
    let Some(pg) = pg else {
        return err.to_string();
    };
    let mut out = pg.message().to_owned();
    let parts = [
        ("detail", pg.detail()),
        ("hint", pg.hint()),
        ("constraint", pg.constraint()),
        ("column", pg.column()),
    ];
    for (label, part) in parts {
        if let Some(part) = part.filter(|p| !p.is_empty()) {
            out.push_str(&format!("; {label}: {}", part.trim_end_matches('.')));
        }
    }
    out
}

/// One fetched row's values, each read by the system's `decode`; a value that cannot be read
/// is a `Data` error naming its column (from `columns`).
pub(crate) fn decode_row<R: Row>(
    row: &R,
    columns: &[String],
    decode: impl Fn(<R::Database as sqlx::Database>::ValueRef<'_>) -> Result<Value, String>,
) -> Result<Vec<Value>, ConnectorError>
where
    usize: sqlx::ColumnIndex<R>,
{
    let n = row.len();
    let mut values = Vec::with_capacity(n);
    for i in 0..n {
        let column = || columns.get(i).map_or("?", String::as_str).to_owned();
        let raw = row.try_get_raw(i).map_err(|e| ConnectorError::Data {
            message: format!("column \"{}\": {e}", column()),
        })?;
        values.push(decode(raw).map_err(|e| ConnectorError::Data {
            message: format!("column \"{}\": {e}", column()),
        })?);
    }
    Ok(values)
}

/// A page read from `rows` (a query's row stream): its column names (`known` when no row
/// came) and its rows, decoded as they arrive. The page stops at the row that brings it to
/// [`BATCH_BYTES`] (the engine reads on after it: `Batch::is_full`), so a page of wide rows
/// never holds its whole `LIMIT` of them.
pub(crate) async fn fetch_page<R: Row>(
    mut rows: impl futures_util::Stream<Item = Result<R, sqlx::Error>> + Unpin,
    known: &[String],
    decode: impl Fn(<R::Database as sqlx::Database>::ValueRef<'_>) -> Result<Value, String>,
    fail: impl Fn(&sqlx::Error) -> ConnectorError,
) -> Result<(Vec<String>, Vec<Vec<Value>>), ConnectorError>
where
    usize: sqlx::ColumnIndex<R>,
{
    use futures_util::TryStreamExt;
    let mut columns: Option<Vec<String>> = None;
    let mut page = Vec::new();
    let mut size = 0;
    while let Some(row) = rows.try_next().await.map_err(|e| fail(&e))? {
        let names = columns
            .get_or_insert_with(|| row.columns().iter().map(|c| c.name().to_owned()).collect());
        let values = decode_row(&row, names, &decode)?;
        size += row_size(&values);
        page.push(values);
        if size >= BATCH_BYTES {
            break;
        }
    }
    Ok((columns.unwrap_or_else(|| known.to_vec()), page))
}

// --- SQL text that reads the same in every dialect ----------------------------------------------

/// Quotes a validated identifier, each dot-separated part between `mark`s (`"` or `` ` ``):
/// `s.t` → `"s"."t"`. Validated identifiers hold no `mark`; doubling one keeps this safe
/// regardless.
pub(crate) fn quote_ident(name: &str, mark: char) -> String {
    let doubled: String = [mark, mark].iter().collect();
    let mut out = String::with_capacity(name.len() + 4);
    for (i, part) in name.split('.').enumerate() {
        if i > 0 {
            out.push('.');
        }
        out.push(mark);
        out.push_str(&part.replace(mark, &doubled));
        out.push(mark);
    }
    out
}

/// Quotes one column name between `mark`s, dots and all: `a.b` → `"a.b"`. A target table's
/// columns, read from its catalog, may be named anything; only a table name is split into
/// schema and name ([`quote_ident`]).
pub(crate) fn quote_column(name: &str, mark: char) -> String {
    let doubled: String = [mark, mark].iter().collect();
    format!("{mark}{}{mark}", name.replace(mark, &doubled))
}

/// Removes trailing semicolons and whitespace, so a query can be wrapped as a subquery.
pub(crate) fn trim_statement(sql: &str) -> &str {
    sql.trim_end_matches(|c: char| c == ';' || c.is_whitespace())
}

/// Wraps the user's query (placeholders already rewritten) as a subquery `q`. The newlines
/// keep a trailing `-- comment` in the query from swallowing the closing parenthesis.
pub(crate) fn wrap(select: &str, query: &str) -> String {
    format!("SELECT {select} FROM (\n{query}\n) AS q")
}

/// Whether the query returns any row: no order, so the database stops at the first.
pub(crate) fn any(query: &str) -> String {
    format!("SELECT EXISTS ({})", wrap("1", query))
}

/// Appends `items` separated by `, `.
pub(crate) fn push_list(out: &mut String, items: &[String]) {
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(item);
    }
}

/// Appends `(?,?,?),(?,?,?)`: `rows` tuples of `ncols` anonymous `?` placeholders.
pub(crate) fn push_tuples(out: &mut String, rows: usize, ncols: usize) {
    out.reserve(rows * (ncols * 2 + 2));
    for r in 0..rows {
        if r > 0 {
            out.push(',');
        }
        out.push('(');
        for c in 0..ncols {
            if c > 0 {
                out.push(',');
            }
            out.push('?');
        }
        out.push(')');
    }
}

/// Multi-row `INSERT INTO table (columns) VALUES (?,…),…` of `rows` rows, with `?`
/// placeholders (SQLite and MySQL); `table` and `columns` quoted.
pub(crate) fn insert(table: &str, columns: &[String], rows: usize) -> String {
    let mut sql = format!("INSERT INTO {table} (");
    push_list(&mut sql, columns);
    sql.push_str(") VALUES ");
    push_tuples(&mut sql, rows, columns.len());
    sql
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_each_part() {
        assert_eq!(quote_ident("t", '"'), "\"t\"");
        assert_eq!(quote_ident("s.t", '"'), "\"s\".\"t\"");
        assert_eq!(quote_ident("s.t", '`'), "`s`.`t`");
        assert_eq!(quote_ident("a`b", '`'), "`a``b`");
        assert_eq!(quote_column("x.y", '"'), "\"x.y\"");
        assert_eq!(quote_column("a\"b.c", '"'), "\"a\"\"b.c\"");
        assert_eq!(quote_column("x.y", '`'), "`x.y`");
    }

    #[test]
    fn builds_common_text() {
        assert_eq!(trim_statement("SELECT 1 ;\n ; "), "SELECT 1");
        assert_eq!(
            wrap("*", "SELECT 1 -- c"),
            "SELECT * FROM (\nSELECT 1 -- c\n) AS q"
        );
        let cols = vec!["\"a\"".to_owned(), "\"b\"".to_owned()];
        assert_eq!(
            insert("\"t\"", &cols, 2),
            "INSERT INTO \"t\" (\"a\", \"b\") VALUES (?,?),(?,?)"
        );
    }

    #[test]
    fn checks_batches() {
        let batch = Batch {
            columns: vec!["Id".to_owned(), "v".to_owned()],
            rows: vec![vec![Value::Int(1), Value::Null]],
        };
        let quote = |c: &str| quote_ident(c, '"');
        let (quoted, key) = batch_columns(&batch, &["id".to_owned()], quote).unwrap();
        assert_eq!(
            (quoted, key),
            (vec!["\"Id\"".into(), "\"v\"".into()], vec![0])
        );
        let err = batch_columns(&batch, &["k".to_owned()], quote).unwrap_err();
        assert!(err.to_string().contains(FROM_BATCH), "{err}");
        let short = Batch {
            columns: batch.columns.clone(),
            rows: vec![vec![Value::Int(1)]],
        };
        let err = check_row_widths(&short).unwrap_err();
        assert_eq!(err.to_string(), "batch row 0 has 1 values for 2 columns");
        assert!(check_extra(1).is_ok());
        assert!(check_extra(0).unwrap_err().to_string().contains("stale"));
    }
}
