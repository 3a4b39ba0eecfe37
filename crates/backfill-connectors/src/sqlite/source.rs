//! Reading windows from SQLite with keyset pagination.
//!
//! The user's query (`:start`/`:end` rewritten to `?1`/`?2`) becomes a subquery `q`; a page is
//! `SELECT * FROM (query) AS q WHERE (k1, k2) > (?, ?) ORDER BY k1, k2 LIMIT ?`, a row-value
//! comparison that resumes exactly after the last key whatever the number of key columns.
//! Invariant: the key columns are checked against the query's real columns when the source is
//! opened, since SQLite would silently read an unknown `"name"` as a string literal.

use std::sync::Arc;

use backfill_core::params::{self, Placeholder};
use backfill_core::plan::Window;
use backfill_core::spec::SourceSpec;
use backfill_core::timefmt::TimeFormat;
use backfill_core::value::{Batch, Value};
use sqlx::sqlite::SqlitePool;
use sqlx::{AssertSqlSafe, Column, Executor, Row, SqlSafeStr, Statement};

use super::{Role, arguments, connect, decode_rows, decode_value, sql, sql_error};
use crate::ident::check_column;
use crate::shared::{fetch_page, keyed_batch, page_values, resolve_column, resolve_key};
use crate::window::{check_names, named_values};
use crate::{ConnectorError, Source};

const CONTEXT: &str = "source query";

/// A SQLite source: the spec's query over one database file, read in key order.
#[derive(Debug)]
pub struct SqliteSource {
    pool: SqlitePool,
    /// Parameter names of the rewritten query, one per `?N`.
    names: Vec<String>,
    /// The query's columns, as SQLite names them.
    columns: Vec<String>,
    /// Key columns, spelled as the query returns them.
    key: Vec<String>,
    time_format: TimeFormat,
    /// The query as a subquery, placeholders rewritten.
    query: String,
    first_page: Arc<str>,
    next_page: Arc<str>,
    count_sql: Arc<str>,
    /// `SELECT EXISTS (…)` of the query: stops at the first row, never sorts the window.
    any_sql: Arc<str>,
}

impl SqliteSource {
    /// Opens the file of `spec.url` (never creating it), prepares the query to learn its
    /// columns and checks that every `key` column is among them.
    pub async fn open(
        spec: &SourceSpec,
        key: &[String],
        pool_size: u32,
    ) -> Result<SqliteSource, ConnectorError> {
        // No key is fine for `sql` mode, which reads no rows; reading in order needs one
        // (checked where rows are read, by `require_key`).
        for k in key {
            check_column(k, "key column")?;
        }
        let rewritten = params::rewrite(
            sql::trim_statement(&spec.query),
            Placeholder::QuestionNumbered,
        );
        check_names(&rewritten.names, CONTEXT)?;
        let pool = connect(&spec.url, pool_size, Role::Source).await?;

        // Prepare without running: compiles the query and lists its columns.
        let probe = AssertSqlSafe(sql::select_all(&rewritten.sql));
        let statement = (&pool)
            .prepare(probe.into_sql_str())
            .await
            .map_err(|e| sql_error(CONTEXT, &e))?;
        let columns: Vec<String> = statement
            .columns()
            .iter()
            .map(|c| c.name().to_owned())
            .collect();
        let key = resolve_key(key, &columns, CONTEXT)?;

        let quoted: Vec<String> = key.iter().map(|k| sql::quote(k)).collect();
        let first_param = rewritten.names.len() + 1;
        Ok(SqliteSource {
            pool,
            first_page: sql::page(&rewritten.sql, &quoted, first_param, false).into(),
            next_page: sql::page(&rewritten.sql, &quoted, first_param, true).into(),
            count_sql: sql::count(&rewritten.sql).into(),
            any_sql: sql::any(&rewritten.sql).into(),
            names: rewritten.names,
            query: rewritten.sql,
            columns,
            key,
            time_format: spec.time_format.clone(),
        })
    }

    async fn count_as(&self, window: &Window, format: &TimeFormat) -> Result<u64, ConnectorError> {
        let values = named_values(&self.names, window, format);
        let args = arguments(&values, values.len())?;
        let row = sqlx::query_with(AssertSqlSafe(Arc::clone(&self.count_sql)), args)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| sql_error(CONTEXT, &e))?;
        let n: i64 = row.try_get(0).map_err(|e| sql_error(CONTEXT, &e))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }
}

impl SqliteSource {
    /// Whether `window` holds any row, without ordering the window: SQLite stops at the
    /// first row (a one-row page would read and sort the whole window).
    pub(crate) async fn has_rows(&self, window: &Window) -> Result<bool, ConnectorError> {
        let values = named_values(&self.names, window, &self.time_format);
        sqlx::query_scalar_with(
            AssertSqlSafe(Arc::clone(&self.any_sql)),
            arguments(&values, values.len())?,
        )
        .fetch_one(&self.pool)
        .await
        .map_err(|e| sql_error(CONTEXT, &e))
    }
}

impl Source for SqliteSource {
    async fn read_batch(
        &self,
        window: &Window,
        after: Option<&[Value]>,
        limit: u32,
    ) -> Result<Batch, ConnectorError> {
        let mut values = page_values(&self.key, &self.names, window, &self.time_format, after)?;
        values.push(Value::Int(i64::from(limit)));
        let sql = match after {
            None => &self.first_page,
            Some(_) => &self.next_page,
        };
        let args = arguments(&values, values.len())?;
        let stream = sqlx::query_with(AssertSqlSafe(Arc::clone(sql)), args).fetch(&self.pool);
        let (columns, rows) = fetch_page(stream, &self.columns, decode_value, |e| {
            sql_error(CONTEXT, e)
        })
        .await?;
        keyed_batch(&self.key, columns, rows, CONTEXT)
    }

    fn key_positions(&self, columns: &[String]) -> Result<Vec<usize>, ConnectorError> {
        crate::ident::key_positions(&self.key, columns, CONTEXT)
    }

    async fn count(&self, window: &Window) -> Result<u64, ConnectorError> {
        self.count_as(window, &self.time_format).await
    }

    async fn sample(
        &self,
        window: &Window,
        column: &str,
        limit: u32,
    ) -> Result<Vec<Value>, ConnectorError> {
        let column = resolve_column(&self.columns, column, CONTEXT)?;
        let mut values = named_values(&self.names, window, &self.time_format);
        values.push(Value::Int(i64::from(limit)));
        let text = sql::sample(&self.query, &sql::quote(column), values.len());
        let args = arguments(&values, values.len())?;
        let rows = sqlx::query_with(AssertSqlSafe(text), args)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| sql_error(CONTEXT, &e))?;
        let rows = decode_rows(rows, std::slice::from_ref(column))?;
        Ok(rows
            .into_iter()
            .filter_map(|r| r.into_iter().next())
            .collect())
    }

    async fn count_with_format(
        &self,
        window: &Window,
        format: &TimeFormat,
    ) -> Result<u64, ConnectorError> {
        self.count_as(window, format).await
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}

/// What `source.ready` says is read in its own context, so its errors name it.
const READY_CONTEXT: &str = "source.ready query";

impl SqliteSource {
    /// The first value of the first row `source.ready` returns for `window` (bound like the
    /// source query), `None` for no row. See `crate::ready`.
    pub(crate) async fn ready_value(
        &self,
        ready_sql: &str,
        window: &Window,
    ) -> Result<Option<Value>, ConnectorError> {
        let rewritten = params::rewrite(
            sql::trim_statement(ready_sql),
            Placeholder::QuestionNumbered,
        );
        check_names(&rewritten.names, READY_CONTEXT)?;
        let values = named_values(&rewritten.names, window, &self.time_format);
        let row = sqlx::query_with(
            AssertSqlSafe(rewritten.sql),
            arguments(&values, values.len())?,
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| sql_error(READY_CONTEXT, &e))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let values = crate::shared::decode_row(&row, &["ready".to_owned()], decode_value)?;
        Ok(values.into_iter().next())
    }
}
