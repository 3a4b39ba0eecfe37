//! Reading windows from MySQL with keyset pagination.
//!
//! The user's query (`:start`/`:end` rewritten to one `?` per occurrence) becomes a subquery
//! `q`; a page is `SELECT * FROM (query) AS q WHERE (k1, k2) > (?, ?) ORDER BY k1, k2 LIMIT ?`.
//! Invariant: the query's columns, their types and the key columns are checked when the
//! source is opened, so an unreadable type fails before any write.

use std::sync::Arc;

use backfill_core::params::{self, Placeholder};
use backfill_core::plan::Window;
use backfill_core::spec::SourceSpec;
use backfill_core::timefmt::TimeFormat;
use backfill_core::value::{Batch, Value};
use sqlx::mysql::MySqlPool;
use sqlx::{AssertSqlSafe, Column, Executor, Row, SqlSafeStr, Statement, TypeInfo};

use super::{
    arguments, connect, decode_rows, decode_value, kind, sql, sql_error, unsupported_type,
};
use crate::ident::check_column;
use crate::shared::{fetch_page, keyed_batch, page_values, resolve_column, resolve_key};
use crate::window::{check_names, named_values};
use crate::{ConnectorError, Source};

const CONTEXT: &str = "source query";

/// A MySQL source: the spec's query, read in key order.
#[derive(Debug)]
pub struct MySqlSource {
    pool: MySqlPool,
    /// Parameter name bound at each `?` of the rewritten query, in order.
    names: Vec<String>,
    columns: Vec<String>,
    key: Vec<String>,
    time_format: TimeFormat,
    query: String,
    first_page: Arc<str>,
    next_page: Arc<str>,
    count_sql: Arc<str>,
}

impl MySqlSource {
    /// Connects to `spec.url`, prepares the query to learn its columns and their types, and
    /// checks that every `key` column is among them.
    pub async fn open(
        spec: &SourceSpec,
        key: &[String],
        pool_size: u32,
    ) -> Result<MySqlSource, ConnectorError> {
        // No key is fine for `sql` mode, which reads no rows; reading in order needs one
        // (checked where rows are read, by `require_key`).
        for k in key {
            check_column(k, "key column")?;
        }
        let rewritten = params::rewrite(sql::trim_statement(&spec.query), Placeholder::Question);
        check_names(&rewritten.names, CONTEXT)?;
        let pool = connect(&spec.url, pool_size).await?;

        let probe = AssertSqlSafe(sql::wrap("*", &rewritten.sql));
        let statement = (&pool)
            .prepare(probe.into_sql_str())
            .await
            .map_err(|e| sql_error(CONTEXT, &e))?;
        let mut columns = Vec::with_capacity(statement.columns().len());
        for c in statement.columns() {
            if kind(c.type_info()).is_none() {
                return Err(unsupported_type(c.name(), c.type_info().name()));
            }
            columns.push(c.name().to_owned());
        }
        let key = resolve_key(key, &columns, CONTEXT)?;
        for k in &key {
            check_column(k, "key column")?;
        }
        let quoted: Vec<String> = key.iter().map(|k| sql::quote(k)).collect();
        Ok(MySqlSource {
            pool,
            first_page: sql::page(&rewritten.sql, &quoted, false).into(),
            next_page: sql::page(&rewritten.sql, &quoted, true).into(),
            count_sql: sql::count(&rewritten.sql).into(),
            names: rewritten.names,
            query: rewritten.sql,
            columns,
            key,
            time_format: spec.time_format.clone(),
        })
    }

    async fn count_as(&self, window: &Window, format: &TimeFormat) -> Result<u64, ConnectorError> {
        let values = named_values(&self.names, window, format);
        let row = sqlx::query_with(
            AssertSqlSafe(Arc::clone(&self.count_sql)),
            arguments(&values)?,
        )
        .fetch_one(&self.pool)
        .await
        .map_err(|e| sql_error(CONTEXT, &e))?;
        let n: i64 = row.try_get(0).map_err(|e| sql_error(CONTEXT, &e))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }
}

impl Source for MySqlSource {
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
        let stream =
            sqlx::query_with(AssertSqlSafe(Arc::clone(sql)), arguments(&values)?).fetch(&self.pool);
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
        let text = sql::sample(&self.query, &sql::quote(column));
        let rows = sqlx::query_with(AssertSqlSafe(text), arguments(&values)?)
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

impl MySqlSource {
    /// The first value of the first row `source.ready` returns for `window` (bound like the
    /// source query), `None` for no row. See `crate::ready`.
    pub(crate) async fn ready_value(
        &self,
        ready_sql: &str,
        window: &Window,
    ) -> Result<Option<Value>, ConnectorError> {
        let rewritten = params::rewrite(sql::trim_statement(ready_sql), Placeholder::Question);
        check_names(&rewritten.names, READY_CONTEXT)?;
        let values = named_values(&rewritten.names, window, &self.time_format);
        let row = sqlx::query_with(AssertSqlSafe(rewritten.sql), arguments(&values)?)
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
