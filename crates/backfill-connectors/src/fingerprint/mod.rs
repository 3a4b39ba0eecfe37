//! Fingerprints computed inside each database: the SQL of `backfill_core::fingerprint`'s
//! contract, per dialect, and the catalog readers that give each column its [`Kind`].
//!
//! Owns: building and running, for PostgreSQL ([`postgres`]), MySQL/MariaDB ([`mysql`]) and
//! SQLite ([`sqlite`], through functions registered on every connection), three statements
//! over a [`Scan`] (a table or a query, optionally restricted to a half-open range of one
//! column):
//! - the fingerprint of the whole scan (`fingerprint`: one row, count and two sums);
//! - the fingerprints of many adjacent ranges at once (`fingerprint_buckets`: one `GROUP BY`
//!   over a bucket number computed by a binary `CASE` tree over the [`Buckets`] bounds, so
//!   `diff` needs one query per side for a whole set of partitions, and each row costs
//!   `log2(buckets)` comparisons);
//! - the row hashes in key order (`row_hashes`: what a small slice is compared with, row by
//!   row);
//! - each row's canonical texts (`canonical_rows`: what `diff` compares key by key and
//!   column by column once a slice is small);
//! - PostgreSQL only, bucket fingerprints with its own row hash
//!   (`native_fingerprint_buckets`), comparable only with another PostgreSQL's where
//!   [`native_comparable`] says the columns print alike: `diff`'s cheap first look.
//!
//! [`Db`] opens any of the three systems from a URL and dispatches these calls, so the
//! engine's `diff` sees one type; [`query_relation`] turns a spec's source query and a window
//! into a [`Relation::Query`] in the database's placeholder style.
//!
//! Does not: decide which columns are hashed or in which order (the caller passes
//! [`Column`]s, usually from the dialect's `columns` catalog reader), compare fingerprints or
//! fetch rows for the engine-side computation (`Fingerprint::of_rows` over decoded rows).
//!
//! Invariants:
//! - On the same rows, every dialect's `fingerprint`, `fingerprint_buckets` and `row_hashes`
//!   give exactly what `backfill_core::fingerprint` computes over the rows the connectors
//!   decode (tested on edge values in all three systems).
//! - Every value (range bounds, bucket bounds, a query's parameters) is bound; column and
//!   table names are validated identifiers, quoted. The one literal pasted into SQL is the
//!   SQLite kind-code string, built from [`Kind::code`] letters only.
//! - A kind a dialect cannot canonicalise in SQL is refused before anything runs, naming the
//!   column: JSON in PostgreSQL and MySQL (their JSON text forms differ from each other and
//!   from the contract's), where the caller must hash decoded rows in the engine instead.

pub mod mysql;
pub mod postgres;
pub mod sqlite;

use backfill_core::fingerprint::{Fingerprint, Kind, RowHash};
use backfill_core::value::Value;

use backfill_core::params::{Placeholder, rewrite};
use backfill_core::plan::Window;
use backfill_core::secret::SecretUrl;
use backfill_core::timefmt::TimeFormat;

use crate::ConnectorError;
use crate::ident::{check_column, check_table};
use crate::shared::{quote_column, quote_ident};

/// A database opened for fingerprints: one pool of any registered system.
///
/// Guarantees: every call only reads (SELECTs in a read transaction or on a plain
/// connection); nothing is ever written.
#[derive(Debug)]
pub enum Db {
    /// SQLite file, with the fingerprint functions registered on every connection.
    Sqlite(sqlx::SqlitePool),
    /// MySQL or MariaDB.
    MySql(sqlx::MySqlPool),
    /// PostgreSQL.
    Postgres(sqlx::PgPool),
}

impl Db {
    /// Opens `url` with a pool of at most `pool_size` connections; `target` decides which
    /// side a missing SQLite file is reported as (it is never created).
    pub async fn open(url: &SecretUrl, pool_size: u32, target: bool) -> Result<Db, ConnectorError> {
        match url.scheme().as_str() {
            "sqlite" => {
                let role = if target {
                    crate::sqlite::Role::Target
                } else {
                    crate::sqlite::Role::Source
                };
                Ok(Db::Sqlite(
                    crate::sqlite::connect(url, pool_size, role).await?,
                ))
            }
            "mysql" => Ok(Db::MySql(crate::mysql::connect(url, pool_size).await?)),
            "postgres" | "postgresql" => Ok(Db::Postgres(
                crate::postgres::connect(url, pool_size).await?,
            )),
            other => Err(crate::unsupported(other, url)),
        }
    }

    /// The system's name, for messages.
    pub fn system(&self) -> &'static str {
        match self {
            Db::Sqlite(_) => "SQLite",
            Db::MySql(_) => "MySQL",
            Db::Postgres(_) => "PostgreSQL",
        }
    }

    /// How a [`Relation::Query`]'s own placeholders must be written for this database.
    pub fn placeholder(&self) -> Placeholder {
        match self {
            Db::Postgres(_) => Placeholder::DollarNumbered,
            Db::Sqlite(_) | Db::MySql(_) => Placeholder::Question,
        }
    }

    /// The names of the columns `query` (a spec's source query, `:start`/`:end` and all)
    /// returns, read by preparing it: nothing runs.
    pub async fn query_columns(&self, query: &str) -> Result<Vec<String>, ConnectorError> {
        use sqlx::{Executor as _, SqlSafeStr as _, Statement as _};
        fn names<C: sqlx::Column>(columns: &[C]) -> Vec<String> {
            columns.iter().map(|c| c.name().to_owned()).collect()
        }
        let sql = sqlx::AssertSqlSafe(rewrite(query, self.placeholder()).sql).into_sql_str();
        let context = "describing the source query";
        Ok(match self {
            Db::Sqlite(p) => names(
                p.prepare(sql)
                    .await
                    .map_err(|e| crate::sqlite::sql_error(context, &e))?
                    .columns(),
            ),
            Db::MySql(p) => names(
                p.prepare(sql)
                    .await
                    .map_err(|e| crate::mysql::sql_error(context, &e))?
                    .columns(),
            ),
            Db::Postgres(p) => names(
                p.prepare(sql)
                    .await
                    .map_err(|e| crate::postgres::sql_error(context, &e))?
                    .columns(),
            ),
        })
    }

    /// Every column of `table` with its type and kind (see each dialect's `catalog`).
    pub async fn catalog(&self, table: &str) -> Result<Vec<Catalogued>, ConnectorError> {
        match self {
            Db::Sqlite(p) => sqlite::catalog(p, table).await,
            Db::MySql(p) => mysql::catalog(p, table).await,
            Db::Postgres(p) => postgres::catalog(p, table).await,
        }
    }

    /// The fingerprint of each bucket, in one query (see `fingerprint_buckets`).
    pub async fn fingerprint_buckets(
        &self,
        scan: &Scan<'_>,
        buckets: &Buckets<'_>,
    ) -> Result<Vec<Fingerprint>, ConnectorError> {
        match self {
            Db::Sqlite(p) => sqlite::fingerprint_buckets(p, scan, buckets).await,
            Db::MySql(p) => mysql::fingerprint_buckets(p, scan, buckets).await,
            Db::Postgres(p) => postgres::fingerprint_buckets(p, scan, buckets).await,
        }
    }

    /// The fingerprint of each bucket with the database's own row hash, in one query (see
    /// `postgres::native_fingerprint_buckets`): comparable only with the same system's native
    /// fingerprints, where [`native_comparable`] says so. An error on a system without one.
    pub async fn native_fingerprint_buckets(
        &self,
        scan: &Scan<'_>,
        buckets: &Buckets<'_>,
    ) -> Result<Vec<Fingerprint>, ConnectorError> {
        match self {
            Db::Postgres(p) => postgres::native_fingerprint_buckets(p, scan, buckets).await,
            Db::Sqlite(_) | Db::MySql(_) => Err(ConnectorError::Data {
                message: format!("{} has no native row hash", self.system()),
            }),
        }
    }

    /// Each row's canonical texts, one per scan column (NULL as `None`), in no order.
    pub async fn canonical_rows(
        &self,
        scan: &Scan<'_>,
    ) -> Result<Vec<Vec<Option<String>>>, ConnectorError> {
        match self {
            Db::Sqlite(p) => sqlite::canonical_rows(p, scan).await,
            Db::MySql(p) => mysql::canonical_rows(p, scan).await,
            Db::Postgres(p) => postgres::canonical_rows(p, scan).await,
        }
    }

    /// The first row of `sql` (in this database's placeholder style, see
    /// [`query_relation`]) bound to `params`, as values; `None` when it returns no row. For
    /// `sql` mode's reconciliation checks (`validate.source_check`, `target_check`).
    pub async fn check_row(
        &self,
        sql: &str,
        params: &[Value],
    ) -> Result<Option<Vec<Value>>, ConnectorError> {
        let statement = Statement {
            sql: sql.to_owned(),
            params: params.to_vec(),
        };
        match self {
            Db::Sqlite(p) => sqlite::check_row(p, statement).await,
            Db::MySql(p) => mysql::check_row(p, statement).await,
            Db::Postgres(p) => postgres::check_row(p, statement).await,
        }
    }

    /// Closes the pool.
    pub async fn close(&self) {
        match self {
            Db::Sqlite(p) => p.close().await,
            Db::MySql(p) => p.close().await,
            Db::Postgres(p) => p.close().await,
        }
    }
}

/// True when `source` (running the spec's source `query`, with its `:name` parameters) and
/// `target` (whose `catalog` this is) can be compared with their native row hashes over
/// `columns`: both are PostgreSQL, and each compared column is in the query's result with a
/// type that prints like the target column's (`postgres::native_comparable`). Anything else,
/// a query PostgreSQL cannot describe without its parameters' values included, is `false`:
/// the portable fingerprint then compares them (and reports any real error).
pub async fn native_comparable(
    source: &Db,
    query: &str,
    target: &Db,
    catalog: &[Catalogued],
    columns: &[Column],
) -> bool {
    let (Db::Postgres(pool), Db::Postgres(_)) = (source, target) else {
        return false;
    };
    let sql = rewrite(query, Placeholder::DollarNumbered).sql;
    let Ok(result) = postgres::query_column_types(pool, &sql).await else {
        return false;
    };
    columns.iter().all(|c| {
        let target_type = catalog.iter().find(|t| t.name == c.name);
        let source_type = result.iter().find(|(name, _)| name == &c.name);
        match (source_type, target_type) {
            (Some((_, s)), Some(t)) => postgres::native_comparable(s, &t.type_name),
            _ => false,
        }
    })
}

/// A spec's source `query` over `window` as the SQL and parameters of a
/// [`Relation::Query`] for `db`: `:start` and `:end` rewritten into the database's
/// placeholders and bound with `format` (key windows as integers). Any other named
/// parameter is refused.
pub fn query_relation(
    db: &Db,
    query: &str,
    window: &Window,
    format: &TimeFormat,
) -> Result<(String, Vec<Value>), ConnectorError> {
    let rewritten = rewrite(query, db.placeholder());
    crate::window::check_names(&rewritten.names, "source query")?;
    let params = crate::window::named_values(&rewritten.names, window, format);
    Ok((rewritten.sql, params))
}

/// The bounds of `window` as values bound in a database using `format` for time windows.
pub fn window_bounds(window: &Window, format: &TimeFormat) -> [Value; 2] {
    crate::window::bounds(window, format)
}

/// A hashed column: its name in the relation and the kind its values are read as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    /// The column's name (a plain identifier).
    pub name: String,
    /// How its values are canonicalised.
    pub kind: Kind,
}

impl Column {
    /// A column named `name` of `kind`.
    pub fn new(name: impl Into<String>, kind: Kind) -> Column {
        Column {
            name: name.into(),
            kind,
        }
    }
}

/// A column as the catalog describes it, fingerprintable or not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Catalogued {
    /// The column's name.
    pub name: String,
    /// Its type as the catalog names it (for messages).
    pub type_name: String,
    /// Its kind; `None` when the type has no fingerprint (floats, intervals, arrays…).
    pub kind: Option<Kind>,
}

impl Catalogued {
    /// The hashed column, or the error naming it when its type has no fingerprint.
    pub fn column(&self) -> Result<Column, ConnectorError> {
        self.kind
            .map(|kind| Column::new(self.name.clone(), kind))
            .ok_or_else(|| unsupported(&self.name, &self.type_name))
    }
}

/// Every column as a hashed [`Column`], or the error naming the first that cannot be.
fn require_kinds(catalog: Vec<Catalogued>) -> Result<Vec<Column>, ConnectorError> {
    catalog.iter().map(Catalogued::column).collect()
}

/// What rows are scanned.
#[derive(Clone, Copy, Debug)]
pub enum Relation<'a> {
    /// A table (`table` or `schema.table`).
    Table(&'a str),
    /// A query wrapped as a subquery, with its own parameters: already in the dialect's
    /// placeholder style (`$1…$n` for PostgreSQL, numbered from 1; `?` otherwise), bound
    /// before any parameter of the fingerprint statement.
    Query {
        /// The query text.
        sql: &'a str,
        /// One value per placeholder of `sql`.
        params: &'a [Value],
    },
}

/// Rows whose `column` lies in `[start, end)`.
#[derive(Clone, Copy, Debug)]
pub struct Range<'a> {
    /// The range column (a plain identifier of the relation).
    pub column: &'a str,
    /// Inclusive start, bound as the connectors bind window bounds.
    pub start: &'a Value,
    /// Exclusive end.
    pub end: &'a Value,
}

/// The rows to fingerprint: a relation, the hashed columns in order, and optionally a range.
#[derive(Clone, Copy, Debug)]
pub struct Scan<'a> {
    /// Where the rows come from.
    pub relation: Relation<'a>,
    /// The hashed columns, in hashing order (at least one).
    pub columns: &'a [Column],
    /// Only rows in this range, when given.
    pub range: Option<Range<'a>>,
}

/// Adjacent half-open ranges of one column: `bounds` `b0 < b1 < … < bn` make `n` buckets,
/// bucket `i` holding `b(i) <= column < b(i+1)`; rows outside `[b0, bn)` are not counted.
#[derive(Clone, Copy, Debug)]
pub struct Buckets<'a> {
    /// The bucketing column (a plain identifier of the relation).
    pub column: &'a str,
    /// At least two strictly increasing bounds.
    pub bounds: &'a [Value],
}

impl Buckets<'_> {
    /// Number of buckets.
    pub fn len(&self) -> usize {
        self.bounds.len().saturating_sub(1)
    }

    /// True when there is no bucket (fewer than two bounds).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A statement and its parameters, in placeholder order.
#[derive(Clone, Debug, PartialEq)]
pub struct Statement {
    /// SQL text in the dialect.
    pub sql: String,
    /// One value per placeholder.
    pub params: Vec<Value>,
}

/// Placeholders in the dialect's style, with their values in binding order.
struct Binder {
    numbered: bool,
    params: Vec<Value>,
}

impl Binder {
    /// A binder; with numbered placeholders the relation's own parameters come first
    /// (`$1…$n` in its text), so they are taken now.
    fn new(numbered: bool, relation: &Relation<'_>) -> Binder {
        let mut params = Vec::new();
        if let (true, Relation::Query { params: own, .. }) = (numbered, relation) {
            params.extend_from_slice(own);
        }
        Binder { numbered, params }
    }

    /// The placeholder of `value`, bound next.
    fn bind(&mut self, value: &Value) -> String {
        self.params.push(value.clone());
        if self.numbered {
            format!("${}", self.params.len())
        } else {
            "?".to_owned()
        }
    }

    /// The relation as a `FROM` item aliased `t`; with `?` placeholders its parameters are
    /// bound here, in text order.
    fn relation(&mut self, relation: &Relation<'_>, quote: char) -> String {
        match relation {
            Relation::Table(table) => format!("{} AS t", quote_ident(table, quote)),
            Relation::Query { sql, params } => {
                if !self.numbered {
                    self.params.extend_from_slice(params);
                }
                format!("(\n{}\n) AS t", crate::shared::trim_statement(sql))
            }
        }
    }

    fn finish(self, sql: String) -> Statement {
        Statement {
            sql,
            params: self.params,
        }
    }
}

/// Checks the scan's names before any reaches SQL text.
fn check_scan(scan: &Scan<'_>) -> Result<(), ConnectorError> {
    if scan.columns.is_empty() {
        return Err(ConnectorError::Data {
            message: "a fingerprint needs at least one column".to_owned(),
        });
    }
    if let Relation::Table(table) = scan.relation {
        check_table(table)?;
    }
    for column in scan.columns {
        // Quoted whole (`quote_column`): a target's column may hold a dot.
        crate::ident::check_catalog_column(&column.name, "fingerprint column")?;
    }
    if let Some(range) = scan.range {
        check_column(range.column, "range column")?;
    }
    Ok(())
}

/// Checks the bucket column and bounds.
fn check_buckets(buckets: &Buckets<'_>) -> Result<(), ConnectorError> {
    check_column(buckets.column, "bucket column")?;
    if buckets.is_empty() {
        return Err(ConnectorError::Data {
            message: "bucketed fingerprints need at least two bounds".to_owned(),
        });
    }
    Ok(())
}

/// `WHERE …` for the scan's range and the buckets' outer bounds (empty when neither).
fn where_clause(
    binder: &mut Binder,
    scan: &Scan<'_>,
    buckets: Option<&Buckets<'_>>,
    quote: char,
) -> String {
    let mut conditions = Vec::new();
    if let Some(range) = scan.range {
        let column = format!("t.{}", quote_ident(range.column, quote));
        conditions.push(format!("{column} >= {}", binder.bind(range.start)));
        conditions.push(format!("{column} < {}", binder.bind(range.end)));
    }
    if let Some(b) = buckets {
        let column = format!("t.{}", quote_ident(b.column, quote));
        let (first, last) = (&b.bounds[0], &b.bounds[b.bounds.len() - 1]);
        conditions.push(format!("{column} >= {}", binder.bind(first)));
        conditions.push(format!("{column} < {}", binder.bind(last)));
    }
    if conditions.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conditions.join(" AND "))
    }
}

/// The bucket number of a row as a binary `CASE` tree over the inner bounds: bucket `i` for
/// `b(i) <= column < b(i+1)`, rows already restricted to `[b0, bn)`.
fn bucket_expr(binder: &mut Binder, buckets: &Buckets<'_>, quote: char) -> String {
    let column = format!("t.{}", quote_ident(buckets.column, quote));
    let mut out = String::new();
    push_bucket_tree(&mut out, binder, &column, buckets.bounds, 0, buckets.len());
    out
}

/// Appends the tree for buckets `lo..hi` (non-empty).
fn push_bucket_tree(
    out: &mut String,
    binder: &mut Binder,
    column: &str,
    bounds: &[Value],
    lo: usize,
    hi: usize,
) {
    if hi - lo == 1 {
        out.push_str(&lo.to_string());
        return;
    }
    let mid = lo + (hi - lo) / 2;
    out.push_str("CASE WHEN ");
    out.push_str(column);
    out.push_str(" < ");
    out.push_str(&binder.bind(&bounds[mid]));
    out.push_str(" THEN ");
    push_bucket_tree(out, binder, column, bounds, lo, mid);
    out.push_str(" ELSE ");
    push_bucket_tree(out, binder, column, bounds, mid, hi);
    out.push_str(" END");
}

/// One fingerprint per bucket from `(bucket, fingerprint)` rows: buckets without rows are
/// empty fingerprints; a bucket number out of range is an error.
fn per_bucket(
    n: usize,
    rows: impl IntoIterator<Item = (i64, Fingerprint)>,
) -> Result<Vec<Fingerprint>, ConnectorError> {
    let mut out = vec![Fingerprint::default(); n];
    for (bucket, fp) in rows {
        let slot = usize::try_from(bucket)
            .ok()
            .and_then(|b| out.get_mut(b))
            .ok_or_else(|| ConnectorError::Data {
                message: format!("fingerprint query returned bucket {bucket} of {n}"),
            })?;
        *slot = fp;
    }
    Ok(out)
}

/// The error for sums a database returned that are not integers (never expected).
fn bad_sums(what: &str) -> ConnectorError {
    ConnectorError::Data {
        message: format!("fingerprint query returned a non-integer sum: {what}"),
    }
}

/// The error for a column whose catalog type has no canonical form in SQL.
fn unsupported(column: &str, type_name: &str) -> ConnectorError {
    ConnectorError::Data {
        message: format!(
            "column \"{column}\" has type {type_name}, which has no fingerprint that every \
             database computes alike; leave it out of the checksum columns"
        ),
    }
}

/// The error for a JSON column in a dialect that cannot canonicalise JSON in SQL.
fn json_not_pushable(column: &str, system: &str) -> ConnectorError {
    ConnectorError::Data {
        message: format!(
            "column \"{column}\" is JSON, which {system} cannot canonicalise in SQL; hash its \
             rows in the engine (Fingerprint::of_rows) or leave it out of the checksum columns"
        ),
    }
}

/// What differs between the SQL dialects that canonicalise values in SQL (PostgreSQL,
/// MySQL); the statements' shape is shared.
pub(crate) struct SqlDialect {
    /// Identifier quote character.
    quote: char,
    /// `$n` placeholders (PostgreSQL) rather than `?`.
    numbered: bool,
    /// The canonical text of a column's value (`x`, a quoted `t.col`), NULL for NULL.
    canonical: fn(&Column, &str) -> Result<String, ConnectorError>,
    /// One encoded field (`N`, or `V<len>:<text>`) of a canonical text expression, as
    /// `digest` takes it.
    field: fn(&str) -> String,
    /// The 32 hex digits of the MD5 of the concatenated fields.
    digest: fn(&[String]) -> String,
    /// The per-row value the sums read, made from the hex digest `m` once per row
    /// (PostgreSQL parses it into a `bit(128)` once instead of once per half: ~8% of W1's
    /// fingerprint time; MySQL keeps the hex).
    halves: fn(&str) -> String,
    /// The exact sum, as text, over the group, of the 64-bit half starting at 1-based hex
    /// position `from` (1 or 17) of `m`, a [`halves`](SqlDialect::halves) value.
    half_sum: fn(&str, usize) -> String,
    /// `expr` as a 64-bit integer column.
    int64: fn(&str) -> String,
    /// Appended to the innermost query and to the hashing query so the planner evaluates
    /// each canonical text and each digest once per row: PostgreSQL pulls a plain subquery
    /// up into its parent and would compute every canonical expression (and the source
    /// query's own expressions) twice, once for the field's length and once for its text,
    /// and the digest once per sum (`OFFSET 0` keeps it a subquery; the second fence took
    /// W1's target-side fingerprint from 16.5 s to 10.8 s).
    fence: &'static str,
}

/// `SELECT <canonical texts as c0…> [, extra] FROM rel WHERE …`, the innermost query.
fn canonical_select(
    binder: &mut Binder,
    scan: &Scan<'_>,
    buckets: Option<&Buckets<'_>>,
    extra: &[String],
    d: &SqlDialect,
) -> Result<String, ConnectorError> {
    let mut select = Vec::with_capacity(scan.columns.len() + extra.len());
    for (i, column) in scan.columns.iter().enumerate() {
        let x = format!("t.{}", quote_column(&column.name, d.quote));
        select.push(format!("{} AS c{i}", (d.canonical)(column, &x)?));
    }
    select.extend_from_slice(extra);
    if let Some(b) = buckets {
        let expr = bucket_expr(binder, b, d.quote);
        select.push(format!("{} AS bk", (d.int64)(&expr)));
    }
    let from = binder.relation(&scan.relation, d.quote);
    let filter = where_clause(binder, scan, buckets, d.quote);
    Ok(format!(
        "SELECT {} FROM {from}{filter}{}",
        select.join(", "),
        d.fence
    ))
}

/// The digest expression over the inner query's `c0…` columns (alias `f`).
fn digest_expr(scan: &Scan<'_>, d: &SqlDialect) -> String {
    let fields: Vec<String> = (0..scan.columns.len())
        .map(|i| (d.field)(&format!("f.c{i}")))
        .collect();
    (d.digest)(&fields)
}

/// The aggregate statement: `count, sum, check` (and `bucket`, grouped, with `buckets`).
pub(crate) fn aggregate_sql(
    scan: &Scan<'_>,
    buckets: Option<&Buckets<'_>>,
    d: &SqlDialect,
) -> Result<Statement, ConnectorError> {
    check_scan(scan)?;
    if let Some(b) = buckets {
        check_buckets(b)?;
    }
    let mut binder = Binder::new(d.numbered, &scan.relation);
    let inner = canonical_select(&mut binder, scan, buckets, &[], d)?;
    let bucket = if buckets.is_some() { ", f.bk" } else { "" };
    let hashed = format!(
        "SELECT {} AS m{bucket} FROM (\n{inner}\n) AS f{}",
        (d.halves)(&digest_expr(scan, d)),
        d.fence
    );
    let (group_select, group_by) = if buckets.is_some() {
        (", h.bk", " GROUP BY h.bk")
    } else {
        ("", "")
    };
    let sql = format!(
        "SELECT {}, {}, {}{group_select} FROM (\n{hashed}\n) AS h{group_by}",
        (d.int64)("count(*)"),
        (d.half_sum)("h.m", 1),
        (d.half_sum)("h.m", 17),
    );
    Ok(binder.finish(sql))
}

/// The row-hash statement: one hex digest per row, in `order_by` order.
pub(crate) fn row_hashes_sql(
    scan: &Scan<'_>,
    order_by: &[&str],
    d: &SqlDialect,
) -> Result<Statement, ConnectorError> {
    check_scan(scan)?;
    let mut extra = Vec::new();
    for (i, key) in order_by.iter().enumerate() {
        check_column(key, "order column")?;
        extra.push(format!("t.{} AS k{i}", quote_ident(key, d.quote)));
    }
    let mut binder = Binder::new(d.numbered, &scan.relation);
    let inner = canonical_select(&mut binder, scan, None, &extra, d)?;
    let order: Vec<String> = (0..order_by.len()).map(|i| format!("f.k{i}")).collect();
    let order = if order.is_empty() {
        String::new()
    } else {
        format!(" ORDER BY {}", order.join(", "))
    };
    let sql = format!(
        "SELECT {} AS m FROM (\n{inner}\n) AS f{order}",
        digest_expr(scan, d)
    );
    Ok(binder.finish(sql))
}

/// The hex digest of one row of `alias` over `columns` (columns the dialect cannot
/// canonicalise, JSON, are left out), as an SQL expression: the undo log's after-image hash.
pub(crate) fn row_digest_expr(
    columns: &[Column],
    alias: &str,
    d: &SqlDialect,
) -> Result<String, ConnectorError> {
    let mut fields = Vec::new();
    for column in columns.iter().filter(|c| c.kind != Kind::Json) {
        let x = format!("{alias}.{}", quote_column(&column.name, d.quote));
        fields.push((d.field)(&(d.canonical)(column, &x)?));
    }
    if fields.is_empty() {
        return Ok("'-'".to_owned());
    }
    Ok((d.digest)(&fields))
}

/// The canonical-rows statement: one canonical text per scan column.
pub(crate) fn canonical_rows_sql(
    scan: &Scan<'_>,
    d: &SqlDialect,
) -> Result<Statement, ConnectorError> {
    check_scan(scan)?;
    let mut binder = Binder::new(d.numbered, &scan.relation);
    let inner = canonical_select(&mut binder, scan, None, &[], d)?;
    Ok(binder.finish(inner))
}

/// Parses digests read back from a row-hash statement.
fn parse_digests(digests: Vec<String>) -> Result<Vec<RowHash>, ConnectorError> {
    digests
        .iter()
        .map(|m| {
            RowHash::from_hex(m).ok_or_else(|| ConnectorError::Data {
                message: format!("fingerprint query returned {m:?}, not an MD5 digest"),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_tree_is_binary_and_binds_inner_bounds_in_text_order() {
        let bounds: Vec<Value> = (0..6).map(|i| Value::Int(i * 10)).collect();
        let buckets = Buckets {
            column: "k",
            bounds: &bounds,
        };
        let mut binder = Binder::new(false, &Relation::Table("t"));
        let expr = bucket_expr(&mut binder, &buckets, '"');
        assert_eq!(
            expr,
            "CASE WHEN t.\"k\" < ? THEN CASE WHEN t.\"k\" < ? THEN 0 ELSE 1 END \
             ELSE CASE WHEN t.\"k\" < ? THEN 2 ELSE CASE WHEN t.\"k\" < ? THEN 3 ELSE 4 END END END"
        );
        assert_eq!(
            binder.params,
            vec![
                Value::Int(20),
                Value::Int(10),
                Value::Int(30),
                Value::Int(40)
            ]
        );
        // A single bucket needs no comparison.
        let one = Buckets {
            column: "k",
            bounds: &bounds[..2],
        };
        assert_eq!(bucket_expr(&mut binder, &one, '"'), "0");
    }

    #[test]
    fn numbered_placeholders_follow_the_querys_own() {
        let own = [Value::Int(1), Value::Int(2)];
        let relation = Relation::Query {
            sql: "SELECT * FROM x WHERE a >= $1 AND a < $2;",
            params: &own,
        };
        let mut binder = Binder::new(true, &relation);
        assert_eq!(binder.bind(&Value::Int(3)), "$3");
        assert_eq!(
            binder.relation(&relation, '"'),
            "(\nSELECT * FROM x WHERE a >= $1 AND a < $2\n) AS t"
        );
        assert_eq!(binder.params.len(), 3);
    }

    #[test]
    fn names_are_checked_before_sql_is_built() {
        // A catalog's column may be named anything: quoted whole, marks doubled.
        let odd = [Column::new("x.y \"z\"; DROP TABLE x", Kind::Int)];
        let scan = Scan {
            relation: Relation::Table("t"),
            columns: &odd,
            range: None,
        };
        assert!(check_scan(&scan).is_ok());
        assert_eq!(
            quote_column(&odd[0].name, '"'),
            "\"x.y \"\"z\"\"; DROP TABLE x\""
        );
        for bad in ["", "a\0b"] {
            let columns = [Column::new(bad, Kind::Int)];
            let scan = Scan {
                columns: &columns,
                ..scan
            };
            assert!(check_scan(&scan).is_err(), "{bad:?}");
        }
        // A table name is still a plain identifier.
        let table = Scan {
            relation: Relation::Table("t; DROP TABLE x"),
            ..scan
        };
        assert!(check_scan(&table).is_err());
        let none = Scan {
            columns: &[],
            ..scan
        };
        assert!(check_scan(&none).is_err());
        assert!(
            check_buckets(&Buckets {
                column: "k",
                bounds: &[Value::Int(1)]
            })
            .is_err()
        );
        let fp = Fingerprint {
            rows: 1,
            sum: 2,
            check: 3,
        };
        assert_eq!(
            per_bucket(3, [(1, fp)]).unwrap(),
            vec![Fingerprint::default(), fp, Fingerprint::default()]
        );
        assert!(per_bucket(3, [(3, fp)]).is_err());
    }
}
