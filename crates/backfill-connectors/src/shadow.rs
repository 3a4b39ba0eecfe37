//! Shadow tables (issue 11, `mode = "shadow"`): the DDL that makes a table like the live one,
//! seeds it, and swaps it in by renames, per dialect.
//!
//! Owns: creating `<shadow>` with the live table's columns, keys and indexes (PostgreSQL
//! `CREATE TABLE … (LIKE live INCLUDING ALL)`; MySQL `CREATE TABLE … LIKE live`; SQLite: the
//! live table's DDL and its indexes' DDL from `sqlite_master`, renamed), copying the live rows
//! outside a range into it, fingerprinting a table (or a range of it) with the pushed-down
//! fingerprint of [`crate::fingerprint`], and the atomic exchange of two names: PostgreSQL and
//! SQLite rename both tables in one transaction, MySQL in one `RENAME TABLE a TO b, c TO a`.
//!
//! Does not: decide names, when to swap or whether it is safe (the engine's `shadow` module
//! and the state store do), nor copy triggers, views or SQLite foreign keys pointing at the
//! table (renames carry them with the renamed table, as each database does).
//!
//! Invariants:
//! - Every table name reaching SQL is a validated identifier, quoted; every value is bound.
//! - The exchange is all or nothing: after an error neither name moved (a transaction rolled
//!   back, or MySQL's single atomic `RENAME TABLE`). Its lock is held only between the first
//!   rename and the commit, which is what [`exchange`] measures.

use std::time::{Duration, Instant};

use backfill_core::fingerprint::{Fingerprint, Kind};
use backfill_core::value::Value;
use sqlx::{AssertSqlSafe, Row};

use crate::ConnectorError;
use crate::fingerprint::{Column, Db, Scan};
use crate::ident::{check_column, check_table};
use crate::shared::quote_ident;

/// The quoted name of `table` in `db`'s dialect.
fn quoted(db: &Db, table: &str) -> String {
    match db {
        Db::MySql(_) => quote_ident(table, '`'),
        Db::Sqlite(_) | Db::Postgres(_) => quote_ident(table, '"'),
    }
}

/// `table` without its schema: the name a rename gives (PostgreSQL and SQLite keep the
/// schema).
fn bare(table: &str) -> &str {
    table.rsplit_once('.').map_or(table, |(_, name)| name)
}

/// `(schema, name)` of `table` (schema `None` when unqualified).
fn split(table: &str) -> (Option<&str>, &str) {
    match table.split_once('.') {
        Some((schema, name)) => (Some(schema), name),
        None => (None, table),
    }
}

/// Runs one statement with `params` on any system; returns the rows it affected.
async fn execute(
    db: &Db,
    sql: &str,
    params: &[Value],
    context: &str,
) -> Result<u64, ConnectorError> {
    match db {
        Db::Postgres(pool) => sqlx::query_with(
            AssertSqlSafe(sql.to_owned()),
            crate::postgres::arguments(params)?,
        )
        .execute(pool)
        .await
        .map(|r| r.rows_affected())
        .map_err(|e| crate::postgres::sql_error(context, &e)),
        Db::MySql(pool) => sqlx::query_with(
            AssertSqlSafe(sql.to_owned()),
            crate::mysql::arguments(params)?,
        )
        .execute(pool)
        .await
        .map(|r| r.rows_affected())
        .map_err(|e| crate::mysql::sql_error(context, &e)),
        Db::Sqlite(pool) => sqlx::query_with(
            AssertSqlSafe(sql.to_owned()),
            crate::sqlite::arguments(params, params.len())?,
        )
        .execute(pool)
        .await
        .map(|r| r.rows_affected())
        .map_err(|e| crate::sqlite::sql_error(context, &e)),
    }
}

/// Whether `table` exists in `db`.
pub async fn table_exists(db: &Db, table: &str) -> Result<bool, ConnectorError> {
    check_table(table)?;
    let context = format!("looking up table {table}");
    let (schema, name) = split(table);
    match db {
        Db::Postgres(pool) => sqlx::query("SELECT to_regclass($1) IS NOT NULL")
            .bind(quote_ident(table, '"'))
            .fetch_one(pool)
            .await
            .and_then(|row| row.try_get::<bool, _>(0))
            .map_err(|e| crate::postgres::sql_error(context, &e)),
        Db::MySql(pool) => sqlx::query(
            "SELECT COUNT(*) FROM information_schema.tables \
             WHERE table_schema = COALESCE(?, DATABASE()) AND table_name = ?",
        )
        .bind(schema)
        .bind(name)
        .fetch_one(pool)
        .await
        .and_then(|row| row.try_get::<i64, _>(0))
        .map(|n| n > 0)
        .map_err(|e| crate::mysql::sql_error(context, &e)),
        Db::Sqlite(pool) => {
            let master = sqlite_master(schema);
            sqlx::query(AssertSqlSafe(format!(
                "SELECT count(*) FROM {master} WHERE type = 'table' AND name = ?"
            )))
            .bind(name)
            .fetch_one(pool)
            .await
            .and_then(|row| row.try_get::<i64, _>(0))
            .map(|n| n > 0)
            .map_err(|e| crate::sqlite::sql_error(context, &e))
        }
    }
}

/// The `sqlite_master` of `schema` (`main` when `None`), quoted.
fn sqlite_master(schema: Option<&str>) -> String {
    match schema {
        Some(s) => format!("{}.sqlite_master", quote_ident(s, '"')),
        None => "sqlite_master".to_owned(),
    }
}

/// Drops `table` when it exists.
pub async fn drop_table(db: &Db, table: &str) -> Result<(), ConnectorError> {
    check_table(table)?;
    let sql = format!("DROP TABLE IF EXISTS {}", quoted(db, table));
    execute(db, &sql, &[], &format!("dropping table {table}")).await?;
    Ok(())
}

/// Creates `shadow`, empty, with `live`'s columns, primary key, unique keys and indexes.
/// Fails when `shadow` exists (the caller drops a leftover first).
pub async fn create_like(db: &Db, live: &str, shadow: &str) -> Result<(), ConnectorError> {
    check_table(live)?;
    check_table(shadow)?;
    let context = format!("creating shadow table {shadow} like {live}");
    match db {
        Db::Postgres(_) => {
            let sql = format!(
                "CREATE TABLE {} (LIKE {} INCLUDING ALL)",
                quoted(db, shadow),
                quoted(db, live)
            );
            execute(db, &sql, &[], &context).await?;
        }
        Db::MySql(_) => {
            let sql = format!(
                "CREATE TABLE {} LIKE {}",
                quoted(db, shadow),
                quoted(db, live)
            );
            execute(db, &sql, &[], &context).await?;
        }
        Db::Sqlite(pool) => create_like_sqlite(pool, live, shadow, &context).await?,
    }
    Ok(())
}

/// SQLite: the live table's `CREATE TABLE` and `CREATE INDEX` statements, renamed to the
/// shadow (indexes get the shadow's suffix, index names being global), run in one
/// transaction.
async fn create_like_sqlite(
    pool: &sqlx::SqlitePool,
    live: &str,
    shadow: &str,
    context: &str,
) -> Result<(), ConnectorError> {
    let fail = |e: sqlx::Error| crate::sqlite::sql_error(context, &e);
    let (schema, name) = split(live);
    let master = sqlite_master(schema);
    let rows = sqlx::query(AssertSqlSafe(format!(
        "SELECT type, name, sql FROM {master} WHERE tbl_name = ? AND sql IS NOT NULL \
         AND type IN ('table', 'index') ORDER BY type = 'index', name"
    )))
    .bind(name)
    .fetch_all(pool)
    .await
    .map_err(fail)?;
    let mut statements = Vec::new();
    for row in &rows {
        let kind: String = row.try_get(0).map_err(fail)?;
        let object: String = row.try_get(1).map_err(fail)?;
        let ddl: String = row.try_get(2).map_err(fail)?;
        statements.push(rename_ddl(&kind, &object, &ddl, shadow).ok_or_else(|| {
            ConnectorError::Data {
                message: format!(
                    "cannot copy the definition of {kind} `{object}` of table {live} for the \
                     shadow table: {ddl}"
                ),
            }
        })?);
    }
    if statements.is_empty() {
        return Err(ConnectorError::Data {
            message: format!("table {live} does not exist, so no shadow can be made like it"),
        });
    }
    let mut tx = pool.begin().await.map_err(fail)?;
    for sql in statements {
        sqlx::query(AssertSqlSafe(sql))
            .execute(&mut *tx)
            .await
            .map_err(fail)?;
    }
    tx.commit().await.map_err(fail)
}

/// `ddl` of a table or an index of the live table, made for `shadow`: everything from the
/// first `(` is kept (columns, constraints, `WITHOUT ROWID`, an index's columns and `WHERE`);
/// the head is rewritten. `None` when the statement has no `(`.
fn rename_ddl(kind: &str, object: &str, ddl: &str, shadow: &str) -> Option<String> {
    let open = ddl.find('(')?;
    let rest = &ddl[open..];
    let (schema, shadow_name) = split(shadow);
    let target = quote_ident(shadow, '"');
    if kind == "table" {
        return Some(format!("CREATE TABLE {target} {rest}"));
    }
    let head = ddl[..open].to_ascii_uppercase();
    let unique = if head.contains("UNIQUE") {
        "UNIQUE "
    } else {
        ""
    };
    // An index of a table promoted earlier already carries a suffix: replace it.
    let base = object.split("__bf_").next().unwrap_or(object);
    let suffix = shadow_name.rsplit("__bf_").next().unwrap_or(shadow_name);
    let index = match schema {
        Some(s) => format!("{s}.{base}__bf_{suffix}"),
        None => format!("{base}__bf_{suffix}"),
    };
    // `ON` takes the bare table name (the index lives in the table's schema).
    Some(format!(
        "CREATE {unique}INDEX {} ON {} {rest}",
        quote_ident(&index, '"'),
        quote_ident(shadow_name, '"')
    ))
}

/// Copies every row of `live` outside `[start, end)` of `column` (a NULL `column` is
/// outside) into `shadow`, which has the same columns; returns how many.
pub async fn seed_outside(
    db: &Db,
    live: &str,
    shadow: &str,
    column: &str,
    start: &Value,
    end: &Value,
) -> Result<u64, ConnectorError> {
    check_table(live)?;
    check_table(shadow)?;
    check_column(column, "window column")?;
    let col = quoted(db, column);
    let (a, b) = match db {
        Db::Postgres(_) => ("$1", "$2"),
        Db::MySql(_) | Db::Sqlite(_) => ("?", "?"),
    };
    let sql = format!(
        "INSERT INTO {} SELECT * FROM {} WHERE NOT ({col} >= {a} AND {col} < {b}) OR {col} IS NULL",
        quoted(db, shadow),
        quoted(db, live),
    );
    let context = format!("seeding shadow table {shadow} from {live}");
    execute(db, &sql, &[start.clone(), end.clone()], &context).await
}

/// The columns of `table` whose values have a fingerprint in `db` (JSON only in SQLite),
/// in table order: what [`fingerprint`] hashes. Columns without one (floats, JSON elsewhere)
/// are left out, so a change only there goes unseen.
pub async fn fingerprint_columns(db: &Db, table: &str) -> Result<Vec<Column>, ConnectorError> {
    let json_ok = matches!(db, Db::Sqlite(_));
    Ok(db
        .catalog(table)
        .await?
        .into_iter()
        .filter_map(|c| match c.kind {
            Some(Kind::Json) if !json_ok => None,
            Some(kind) => Some(Column::new(c.name, kind)),
            None => None,
        })
        .collect())
}

/// The fingerprint of `scan`, pushed down into `db`.
pub async fn fingerprint(db: &Db, scan: &Scan<'_>) -> Result<Fingerprint, ConnectorError> {
    match db {
        Db::Sqlite(p) => crate::fingerprint::sqlite::fingerprint(p, scan).await,
        Db::MySql(p) => crate::fingerprint::mysql::fingerprint(p, scan).await,
        Db::Postgres(p) => crate::fingerprint::postgres::fingerprint(p, scan).await,
    }
}

/// Atomically renames `live` to `retire_as` and `incoming` to `live` (all in one schema):
/// readers see the old table or the new one, never neither. Returns how long the tables were
/// locked (first rename to commit). PostgreSQL waits at most `lock_wait` for the lock, so a
/// long transaction on the live table fails the swap rather than queueing every reader
/// behind it.
pub async fn exchange(
    db: &Db,
    live: &str,
    incoming: &str,
    retire_as: &str,
    lock_wait: Duration,
) -> Result<Duration, ConnectorError> {
    for t in [live, incoming, retire_as] {
        check_table(t)?;
    }
    let context = format!("swapping {incoming} in as {live} (old table kept as {retire_as})");
    match db {
        Db::Postgres(pool) => {
            let fail = |e: sqlx::Error| crate::postgres::sql_error(&context, &e);
            let mut tx = pool.begin().await.map_err(fail)?;
            let wait = format!("SET LOCAL lock_timeout = '{}ms'", lock_wait.as_millis());
            sqlx::query(AssertSqlSafe(wait))
                .execute(&mut *tx)
                .await
                .map_err(fail)?;
            let started = Instant::now();
            move_owned_sequences(&mut tx, live, incoming)
                .await
                .map_err(fail)?;
            for (from, to) in [(live, retire_as), (incoming, live)] {
                let sql = format!(
                    "ALTER TABLE {} RENAME TO {}",
                    quote_ident(from, '"'),
                    quote_ident(bare(to), '"')
                );
                sqlx::query(AssertSqlSafe(sql))
                    .execute(&mut *tx)
                    .await
                    .map_err(fail)?;
            }
            tx.commit().await.map_err(fail)?;
            Ok(started.elapsed())
        }
        Db::MySql(_) => {
            let sql = format!(
                "RENAME TABLE {} TO {}, {} TO {}",
                quoted(db, live),
                quoted(db, retire_as),
                quoted(db, incoming),
                quoted(db, live)
            );
            let started = Instant::now();
            execute(db, &sql, &[], &context).await?;
            Ok(started.elapsed())
        }
        Db::Sqlite(pool) => exchange_sqlite(pool, live, incoming, retire_as, &context).await,
    }
}

/// PostgreSQL: the sequences owned by `live`'s columns (`serial`) are handed to the same
/// columns of `incoming`, whose defaults (copied by `LIKE … INCLUDING ALL`) already use them:
/// the sequence then follows the table that goes live, and dropping the retired one later
/// does not take it along. Identity columns continue numbering (see `continue_identities`).
async fn move_owned_sequences(
    tx: &mut sqlx::PgConnection,
    live: &str,
    incoming: &str,
) -> Result<(), sqlx::Error> {
    let owned = sqlx::query(
        "SELECT d.objid::regclass::text, a.attname::text FROM pg_depend d \
         JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S' \
         JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid \
         WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass \
         AND d.refobjid = $1::regclass AND d.deptype = 'a'",
    )
    .bind(quote_ident(live, '"'))
    .fetch_all(&mut *tx)
    .await?;
    for row in owned {
        let sequence: String = row.try_get(0)?;
        let column: String = row.try_get(1)?;
        // `sequence` is the catalog's own quoted, qualified-as-needed name.
        let sql = format!(
            "ALTER SEQUENCE {sequence} OWNED BY {}.{}",
            quote_ident(incoming, '"'),
            quote_ident(&column, '"')
        );
        sqlx::query(AssertSqlSafe(sql)).execute(&mut *tx).await?;
    }
    continue_identities(tx, live, incoming).await
}

/// PostgreSQL: each identity column of `incoming` (which `LIKE … INCLUDING ALL` gave its own
/// sequence, starting over) restarts past both `live`'s sequence and `incoming`'s largest
/// value, so rows inserted after the swap never reuse a number.
async fn continue_identities(
    tx: &mut sqlx::PgConnection,
    live: &str,
    incoming: &str,
) -> Result<(), sqlx::Error> {
    let columns = sqlx::query(
        "SELECT attname::text FROM pg_attribute WHERE attrelid = $1::regclass \
         AND attidentity IN ('a', 'd') AND NOT attisdropped",
    )
    .bind(quote_ident(incoming, '"'))
    .fetch_all(&mut *tx)
    .await?;
    for row in columns {
        let column: String = row.try_get(0)?;
        let next: i64 = sqlx::query(AssertSqlSafe(format!(
            "SELECT GREATEST(COALESCE((SELECT max({col}) FROM {table}), 0)::bigint, \
             COALESCE(pg_sequence_last_value(pg_get_serial_sequence($1, $2)::regclass), 0)) + 1",
            col = quote_ident(&column, '"'),
            table = quote_ident(incoming, '"'),
        )))
        .bind(quote_ident(live, '"'))
        .bind(&column)
        .fetch_one(&mut *tx)
        .await?
        .try_get(0)?;
        let sql = format!(
            "ALTER TABLE {} ALTER COLUMN {} RESTART WITH {next}",
            quote_ident(incoming, '"'),
            quote_ident(&column, '"')
        );
        sqlx::query(AssertSqlSafe(sql)).execute(&mut *tx).await?;
    }
    Ok(())
}

/// SQLite: both renames in one `BEGIN IMMEDIATE` transaction (the write lock is taken first,
/// so the transaction cannot fail half-way on a busy database).
async fn exchange_sqlite(
    pool: &sqlx::SqlitePool,
    live: &str,
    incoming: &str,
    retire_as: &str,
    context: &str,
) -> Result<Duration, ConnectorError> {
    let fail = |e: sqlx::Error| crate::sqlite::sql_error(context, &e);
    let mut conn = pool.acquire().await.map_err(fail)?;
    let started = Instant::now();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut *conn)
        .await
        .map_err(fail)?;
    let mut result = Ok(());
    for (from, to) in [(live, retire_as), (incoming, live)] {
        let sql = format!(
            "ALTER TABLE {} RENAME TO {}",
            quote_ident(from, '"'),
            quote_ident(bare(to), '"')
        );
        result = sqlx::query(AssertSqlSafe(sql))
            .execute(&mut *conn)
            .await
            .map(drop);
        if result.is_err() {
            break;
        }
    }
    let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
    let ended = sqlx::query(end).execute(&mut *conn).await.map(drop);
    result.and(ended).map_err(fail)?;
    Ok(started.elapsed())
}

#[cfg(test)]
mod tests {
    use super::rename_ddl;

    #[test]
    fn sqlite_ddl_is_renamed_for_the_shadow() {
        let table = rename_ddl(
            "table",
            "t",
            "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT) WITHOUT ROWID",
            "t__bf_0a1b2c3d",
        );
        assert_eq!(
            table.as_deref(),
            Some(r#"CREATE TABLE "t__bf_0a1b2c3d" (id INTEGER PRIMARY KEY, v TEXT) WITHOUT ROWID"#)
        );
        let index = rename_ddl(
            "index",
            "t_v__bf_99999999",
            "CREATE UNIQUE INDEX \"t_v__bf_99999999\" ON \"t\" (v) WHERE v IS NOT NULL",
            "t__bf_0a1b2c3d",
        );
        assert_eq!(
            index.as_deref(),
            Some(
                r#"CREATE UNIQUE INDEX "t_v__bf_0a1b2c3d" ON "t__bf_0a1b2c3d" (v) WHERE v IS NOT NULL"#
            )
        );
        assert_eq!(
            rename_ddl("table", "t", "CREATE TABLE t AS SELECT 1", "s"),
            None
        );
    }
}
