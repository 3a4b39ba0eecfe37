//! The short tag SQLite's undo log writes for a run (`#1`, `#2`, …) instead of its id.
//!
//! The run's 36-character id was in every logged row and in every entry of the log's unique
//! `(key, run)` index: a third of the bytes the log wrote, and on SQLite the log's cost is
//! mostly the bytes it writes (bench/undo.py). A tag is two to four bytes.
//!
//! Owns: the table `<table>__bf_undo_runs` (`n`, `run`, `tag`) beside the undo table, which
//! maps each run id to its tag; giving a run its tag for writes ([`RunTags`], created on the
//! run's first logged write) and reading it for rollback, cleanup and status ([`read_tag`]).
//!
//! Invariants: a run has one tag for its whole life, given by one autocommit statement, so
//! two processes resolving it at once get the same one, and two runs never share one (`n` is
//! the key, `tag` unique); a run whose rows were logged under its id (before tags existed)
//! keeps its id as its tag, so its log is never split in two; a tag starts with `#`, which a
//! run id never does; a run with no mapping is read under its id. A log written with tags
//! (and blob digests) is read by this version and later ones: an older binary would find no
//! row of a tagged run, so downgrading while such a log is kept is not supported.

use std::collections::HashMap;

use sqlx::sqlite::SqlitePool;

use crate::ConnectorError;
use crate::sqlite::sql_error;
use crate::undo::{CONTEXT, UndoBatch, undo_table_name};

/// The name of the tags table of `table`'s undo log (`t` → `t__bf_undo_runs`).
pub(crate) fn runs_table_name(table: &str) -> String {
    format!("{}_runs", undo_table_name(table))
}

/// The run tags of one target table's undo log, given on the target's own pool and kept
/// for the life of the sink.
#[derive(Debug)]
pub(crate) struct RunTags {
    pool: SqlitePool,
    /// The tags table, quoted.
    runs: String,
    /// The undo table, quoted.
    undo: String,
    /// Tags given so far, by run id. The lock also makes one task at a time ask the target.
    tags: tokio::sync::Mutex<HashMap<String, String>>,
}

impl RunTags {
    /// The tags of the undo log of `table` (as the sink names it, bare), on `pool`.
    pub(crate) fn new(pool: SqlitePool, table: &str) -> RunTags {
        RunTags {
            pool,
            runs: crate::sqlite::sql::quote(&runs_table_name(table)),
            undo: crate::sqlite::sql::quote(&undo_table_name(table)),
            tags: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    /// `b` with its run id replaced by the run's tag, which the log's SQL then writes.
    pub(crate) async fn batch(&self, b: &UndoBatch) -> Result<UndoBatch, ConnectorError> {
        Ok(UndoBatch {
            run_id: self.tag(&b.run_id).await?,
            ..b.clone()
        })
    }

    /// The tag of `run`, given on its first call for the run (its table created when
    /// missing).
    pub(crate) async fn tag(&self, run: &str) -> Result<String, ConnectorError> {
        let mut tags = self.tags.lock().await;
        if let Some(tag) = tags.get(run) {
            return Ok(tag.clone());
        }
        let err = |e: sqlx::Error| sql_error(CONTEXT, &e);
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE TABLE IF NOT EXISTS {} (n INTEGER PRIMARY KEY, run TEXT NOT NULL UNIQUE, \
             tag TEXT NOT NULL UNIQUE)",
            self.runs
        )))
        .execute(&self.pool)
        .await
        .map_err(err)?;
        let known: Option<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT tag FROM {} WHERE run = ?1",
            self.runs
        )))
        .bind(run)
        .fetch_optional(&self.pool)
        .await
        .map_err(err)?;
        let tag = match known {
            Some(tag) => tag,
            None => {
                // Rows under the run's id were logged before tags existed (only an older
                // binary writes them, so this read cannot race with a tag being given). It
                // reads the whole log (the index leads with the key), once per run, and
                // outside the write lock.
                let (logged,): (bool,) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "SELECT EXISTS (SELECT 1 FROM {} WHERE bf_undo_run = ?1)",
                    self.undo
                )))
                .bind(run)
                .fetch_one(&self.pool)
                .await
                .map_err(err)?;
                // One statement: the next number, or the id for a run logged under it. A run
                // resolved by another process meanwhile conflicts on `run` and returns that
                // process's tag.
                sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                    "INSERT INTO {runs} (n, run, tag) SELECT m, ?1, CASE WHEN ?2 THEN ?1 \
                     ELSE '#' || m END FROM (SELECT ifnull(max(n), 0) + 1 AS m FROM {runs}) \
                     WHERE true ON CONFLICT (run) DO UPDATE SET run = excluded.run \
                     RETURNING tag",
                    runs = self.runs,
                )))
                .bind(run)
                .bind(logged)
                .fetch_one(&self.pool)
                .await
                .map_err(err)?
            }
        };
        tags.insert(run.to_owned(), tag.clone());
        Ok(tag)
    }
}

/// The tag `run`'s undo rows carry in the log whose tags table is `runs` (quoted): its
/// mapping, else its id (a run logged before tags existed, or never logged; also when the
/// table does not exist). Writes nothing.
pub(crate) async fn read_tag(
    pool: &SqlitePool,
    runs: &str,
    run: &str,
) -> Result<String, ConnectorError> {
    let tag: Result<Option<String>, sqlx::Error> = sqlx::query_scalar(sqlx::AssertSqlSafe(
        format!("SELECT tag FROM {runs} WHERE run = ?1"),
    ))
    .bind(run)
    .fetch_optional(pool)
    .await;
    match tag {
        Ok(tag) => Ok(tag.unwrap_or_else(|| run.to_owned())),
        Err(e) if e.to_string().contains("no such table") => Ok(run.to_owned()),
        Err(e) => Err(sql_error(CONTEXT, &e)),
    }
}
