//! The JSON API: runs, one run's status, pages of its partitions and audit events, its errors
//! grouped, its rate changes, a heat strip of its states and its progress over time.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use backfill_core::{PartitionState, Window};
use backfill_store::{Bucket, PartitionRecord, PartitionSort};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, AppState};
use crate::commands::status::{StatusView, UndoRows, run_line_json};

/// Runs listed by default, and at most.
const RUNS_DEFAULT: u32 = 100;
const RUNS_MAX: u32 = 1000;
/// Partitions per page by default, and at most.
const PAGE_DEFAULT: usize = 100;
const PAGE_MAX: usize = 1000;

/// `?limit=`: how many runs, newest first.
#[derive(Debug, Deserialize)]
pub(crate) struct RunsQuery {
    limit: Option<u32>,
}

/// `GET /api/runs`: the newest runs, what `backfill runs --json` prints.
pub(crate) async fn runs(
    State(app): State<AppState>,
    query: Result<Query<RunsQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query.map_err(bad_query)?;
    let limit = query.limit.unwrap_or(RUNS_DEFAULT).clamp(1, RUNS_MAX);
    let runs = app.store.list_runs(limit).await.map_err(store_error)?;
    Ok(Json(json!({
        "runs": runs.iter().map(run_line_json).collect::<Vec<_>>(),
    })))
}

/// `GET /api/runs/{run}`: what `backfill status RUN --json` prints (a unique prefix of the id
/// works as on the command line), without the undo rows, which would mean connecting to the
/// target on every request (`undo_rows` is null).
pub(crate) async fn run(
    State(app): State<AppState>,
    Path(run): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let record = find(&app, &run).await?;
    let view = StatusView::load(&app.store, record, UndoRows::Skip)
        .await
        .map_err(|e| ApiError::from_anyhow(&e))?;
    let mut status = view.to_json();
    if app.executes(&view.run.id) {
        status["control"]["process_running"] = Value::Bool(true);
    }
    Ok(Json(status))
}

/// `?state=&sort=&after=&cursor=&limit=` of a page of partitions.
#[derive(Debug, Deserialize)]
pub(crate) struct PartitionsQuery {
    /// Only partitions in this state.
    state: Option<String>,
    /// `index` (plan order, the default), `duration`, `attempts` or `rows` (largest first).
    sort: Option<String>,
    /// In plan order: the plan index the page starts after (the previous page's
    /// `next_after`).
    after: Option<u64>,
    /// In another order: the previous page's `next_cursor`.
    cursor: Option<String>,
    limit: Option<usize>,
}

/// `GET /api/runs/{run}/partitions`: one page of the run's partitions, each with its window,
/// state, attempts, checkpoint, rows and last error. In plan order `next_after` is the
/// `after` of the next page; sorted by duration, attempts or rows (largest first, ties in
/// plan order) `next_cursor` is its `cursor`; both null on the last page.
pub(crate) async fn partitions(
    State(app): State<AppState>,
    Path(run): Path<String>,
    query: Result<Query<PartitionsQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query.map_err(bad_query)?;
    let state = match query.state.as_deref() {
        None | Some("") => None,
        Some(name) => Some(name.parse::<PartitionState>().map_err(|_| {
            let names: Vec<&str> = PartitionState::ALL.iter().map(|s| s.as_str()).collect();
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("`state={name}` is not a partition state"),
            )
            .hint(format!("one of: {}", names.join(", ")))
        })?),
    };
    let limit = query.limit.unwrap_or(PAGE_DEFAULT).clamp(1, PAGE_MAX);
    let sort = sort_of(query.sort.as_deref())?;
    let record = find(&app, &run).await?;
    let Some(sort) = sort else {
        let page = app
            .store
            .partitions_page(&record.id, state, query.after, limit)
            .await
            .map_err(store_error)?;
        let next_after = (page.len() == limit)
            .then(|| page.last().map(|p| p.index))
            .flatten();
        let partitions = with_checks(&app, &record.id, &page).await?;
        return Ok(Json(json!({
            "run_id": record.id,
            "state": state.map(|s| s.as_str()),
            "sort": "index",
            "after": query.after,
            "partitions": partitions,
            "next_after": next_after,
            "next_cursor": null,
        })));
    };
    let after = query.cursor.as_deref().map(cursor_of).transpose()?;
    let page = app
        .store
        .partitions_sorted(&record.id, state, sort, after, limit)
        .await
        .map_err(store_error)?;
    let next_cursor = (page.len() == limit)
        .then(|| {
            page.last()
                .map(|p| format!("{}:{}", sort.value_of(p), p.index))
        })
        .flatten();
    let partitions = with_checks(&app, &record.id, &page).await?;
    Ok(Json(json!({
        "run_id": record.id,
        "state": state.map(|s| s.as_str()),
        "sort": query.sort,
        "after": null,
        "partitions": partitions,
        "next_after": null,
        "next_cursor": next_cursor,
    })))
}

/// The partitions of a page as JSON, each with its last reconciliation check (`check`: its
/// status and both sides' row counts, null when never checked): one more query per page.
async fn with_checks(
    app: &AppState,
    run_id: &str,
    page: &[PartitionRecord],
) -> Result<Vec<Value>, ApiError> {
    let ids: Vec<&str> = page.iter().map(|p| p.partition_id.as_str()).collect();
    let checks = app
        .store
        .checks_of(run_id, &ids)
        .await
        .map_err(store_error)?;
    Ok(page
        .iter()
        .map(|p| {
            let mut json = partition_json(p);
            json["check"] = checks
                .iter()
                .find(|c| c.partition_id == p.partition_id)
                .map_or(Value::Null, |c| {
                    let (source, target) = (c.source.map(|f| f.rows), c.target.map(|f| f.rows));
                    json!({
                        "status": super::trust::status_name(c.status),
                        "source_rows": source,
                        "target_rows": target,
                        "row_delta": source.zip(target).map(|(s, t)| t as i64 - s as i64),
                    })
                });
            json
        })
        .collect())
}

/// `?sort=`: `None` for plan order.
fn sort_of(name: Option<&str>) -> Result<Option<PartitionSort>, ApiError> {
    Ok(match name {
        None | Some("" | "index") => None,
        Some("duration") => Some(PartitionSort::Duration),
        Some("attempts") => Some(PartitionSort::Attempts),
        Some("rows") => Some(PartitionSort::Rows),
        Some(other) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("`sort={other}` is not an order of partitions"),
            )
            .hint("one of: index, duration, attempts, rows"));
        }
    })
}

/// `?cursor=VALUE:INDEX`, as a previous page's `next_cursor` gave it.
fn cursor_of(text: &str) -> Result<(u64, u64), ApiError> {
    text.split_once(':')
        .and_then(|(v, i)| Some((v.parse().ok()?, i.parse().ok()?)))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("`cursor={text}` is not a cursor of this API"),
            )
            .hint("pass the `next_cursor` of the previous page as it is")
        })
}

/// One partition in the API.
fn partition_json(p: &PartitionRecord) -> Value {
    let (kind, start, end) = match &p.window {
        Window::Time { start, end } => ("time", json!(start.to_rfc3339()), json!(end.to_rfc3339())),
        Window::Key { start, end } => ("key", json!(start), json!(end)),
    };
    json!({
        "partition_id": p.partition_id,
        "index": p.index,
        "window": { "kind": kind, "start": start, "end": end, "text": p.window.to_string() },
        "state": p.state.as_str(),
        "attempts": p.attempts,
        "errors": p.errors,
        // The key as stored: a JSON array of typed values.
        "checkpoint": p.checkpoint.as_deref().map(|key| {
            let text = backfill_core::encode_key(key);
            serde_json::from_str::<Value>(&text).unwrap_or(Value::String(text))
        }),
        "rows": {
            "read": p.counts.read,
            "inserted": p.counts.inserted,
            "updated": p.counts.updated,
            "unchanged": p.counts.unchanged,
            "deleted": p.counts.deleted,
            "affected": p.counts.affected,
        },
        "last_error": p.last_error,
        "started_at": p.started_at.map(|t| t.to_rfc3339()),
        "finished_at": p.finished_at.map(|t| t.to_rfc3339()),
        "elapsed_ms": p.elapsed_ms,
        "parent_id": p.parent_id,
    })
}

/// A query string that does not parse: 400 with what was wrong.
fn bad_query(rejection: QueryRejection) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, rejection.body_text())
        .hint("numbers for `limit` and `after`, a partition state for `state`")
}

/// `?after=&limit=` of a page of audit events.
#[derive(Debug, Deserialize)]
pub(crate) struct AuditQuery {
    /// The sequence number the page starts after (the previous page's `next_after`).
    after: Option<i64>,
    limit: Option<usize>,
}

/// `GET /api/runs/{run}/audit`: one page of the run's audit events in chain order (who did
/// what, when and why); `next_after` is the `after` of the next page, null on the last one.
pub(crate) async fn audit(
    State(app): State<AppState>,
    Path(run): Path<String>,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query.map_err(bad_query)?;
    let limit = query.limit.unwrap_or(PAGE_DEFAULT).clamp(1, PAGE_MAX);
    let record = find(&app, &run).await?;
    let events = app
        .store
        .audit_page(&record.id, query.after, limit)
        .await
        .map_err(store_error)?;
    let next_after = (events.len() == limit)
        .then(|| events.last().map(|e| e.seq))
        .flatten();
    Ok(Json(json!({
        "run_id": record.id,
        "events": events.iter().map(|e| json!({
            "seq": e.seq,
            "at": e.at.to_rfc3339(),
            "actor": e.actor,
            "action": e.action,
            "partition_id": e.partition_id,
            "detail": e.detail,
        })).collect::<Vec<_>>(),
        "next_after": next_after,
    })))
}

/// `GET /api/runs/{run}/errors`: the failing partitions grouped by their last error's class
/// and message, the
/// largest groups first (at most 100), with the total of failing partitions.
pub(crate) async fn errors(
    State(app): State<AppState>,
    Path(run): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let record = find(&app, &run).await?;
    let groups = app
        .store
        .error_groups(&record.id, 100)
        .await
        .map_err(store_error)?;
    Ok(Json(json!({
        "run_id": record.id,
        "groups": groups.iter().map(backfill_store::ErrorGroup::to_json).collect::<Vec<_>>(),
    })))
}

/// `GET /api/runs/{run}/rates`: the run's last 1,000 rate changes, oldest first: each new
/// limit (null: none), its cause and what the engine measured.
pub(crate) async fn rates(
    State(app): State<AppState>,
    Path(run): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let record = find(&app, &run).await?;
    let changes = app
        .store
        .rate_changes(&record.id, 1000)
        .await
        .map_err(store_error)?;
    Ok(Json(json!({
        "run_id": record.id,
        "changes": changes.iter().map(|c| json!({
            "seq": c.seq,
            "at": c.at,
            "rows_per_second": c.rate,
            "cause": c.cause,
            "detail": c.detail,
        })).collect::<Vec<_>>(),
    })))
}

/// `?bins=` of the heat strip.
#[derive(Debug, Deserialize)]
pub(crate) struct HeatQuery {
    bins: Option<u64>,
}

/// `GET /api/runs/{run}/heat?bins=N`: the partitions' states in N equal slices of the plan
/// (default 200, at most 2,000), binned in the store: a strip of the scope coloured by state.
pub(crate) async fn heat(
    State(app): State<AppState>,
    Path(run): Path<String>,
    query: Result<Query<HeatQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query.map_err(bad_query)?;
    let bins = query.bins.unwrap_or(200).clamp(1, 2000);
    let record = find(&app, &run).await?;
    let strip = app
        .store
        .state_bins(&record.id, bins)
        .await
        .map_err(store_error)?;
    Ok(Json(json!({
        "run_id": record.id,
        "partitions": record.partitions_total,
        "bins": strip.iter().map(|b| json!({
            "start": b.start,
            "states": b.states.iter().map(|(s, n)| (s.as_str().to_owned(), json!(n))).collect::<serde_json::Map<_, _>>(),
        })).collect::<Vec<_>>(),
    })))
}

/// `?bucket=minute|hour` of the progress series.
#[derive(Debug, Deserialize)]
pub(crate) struct ProgressQuery {
    bucket: Option<String>,
}

/// `GET /api/runs/{run}/progress?bucket=minute|hour`: partitions finished and rows read per
/// minute (default) or hour, oldest first: the throughput over time.
pub(crate) async fn progress(
    State(app): State<AppState>,
    Path(run): Path<String>,
    query: Result<Query<ProgressQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query.map_err(bad_query)?;
    let bucket = match query.bucket.as_deref() {
        None | Some("minute") => Bucket::Minute,
        Some("hour") => Bucket::Hour,
        Some(other) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("`bucket={other}` is not a bucket"),
            )
            .hint("minute or hour"));
        }
    };
    let record = find(&app, &run).await?;
    let series = app
        .store
        .progress(&record.id, bucket)
        .await
        .map_err(store_error)?;
    Ok(Json(json!({
        "run_id": record.id,
        "bucket": if bucket == Bucket::Hour { "hour" } else { "minute" },
        "points": series.iter().map(|p| json!({
            "at": p.at,
            "partitions": p.partitions,
            "rows": p.rows,
        })).collect::<Vec<_>>(),
    })))
}

/// The run a request names (a unique prefix works): 404 when there is none, 400 when the
/// prefix names several.
pub(super) async fn find(app: &AppState, run: &str) -> Result<backfill_store::RunRecord, ApiError> {
    use backfill_store::StoreError;
    match app.store.get_run(run).await {
        Ok(record) => Ok(record),
        Err(e @ StoreError::NotFound(_)) => {
            Err(ApiError::new(StatusCode::NOT_FOUND, e.to_string())
                .hint("`GET /api/runs` (or `backfill runs`) lists runs and their ids"))
        }
        Err(e @ StoreError::Ambiguous(_)) => {
            Err(ApiError::new(StatusCode::BAD_REQUEST, e.to_string())
                .hint("give more characters of the run id, or all of it"))
        }
        Err(e) => Err(store_error(e)),
    }
}

/// A store failure as a 500.
pub(super) fn store_error(e: backfill_store::StoreError) -> ApiError {
    ApiError::from_anyhow(&e.into())
}
