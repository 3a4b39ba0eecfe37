//! The API's answers about whether a run's result can be trusted: its partitions' last
//! reconciliation checks (`/checks`, e.g. the mismatched ones) and the rows the target refused
//! (`/quarantine`), each in keyset pages, so a run of a million partitions answers a page.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use backfill_store::CheckStatus;
use serde::Deserialize;
use serde_json::{Value, json};

use super::api::{find, store_error};
use super::{ApiError, AppState};

/// Items per page by default, and at most.
const PAGE_DEFAULT: usize = 100;
const PAGE_MAX: usize = 1000;

/// `?status=&after=&limit=` of a page of checks.
#[derive(Debug, Deserialize)]
pub(crate) struct ChecksQuery {
    /// `verified`, `mismatched` or `not_verified`.
    status: Option<String>,
    /// The partition id the page starts after (the previous page's `next_after`).
    after: Option<String>,
    limit: Option<usize>,
}

/// `GET /api/runs/{run}/checks`: one page of the run's partitions' last reconciliation
/// checks in partition id order, each with both sides' row counts and checksums, who checked
/// and the detail (a sample of differing keys, or why nothing was compared).
pub(crate) async fn checks(
    State(app): State<AppState>,
    Path(run): Path<String>,
    query: Result<Query<ChecksQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query.map_err(bad_query)?;
    let status = match query.status.as_deref() {
        None | Some("") => None,
        Some("verified") => Some(CheckStatus::Verified),
        Some("mismatched" | "mismatch") => Some(CheckStatus::Mismatch),
        Some("not_verified") => Some(CheckStatus::NotVerified),
        Some(other) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("`status={other}` is not a check status"),
            )
            .hint("one of: verified, mismatched, not_verified"));
        }
    };
    let limit = query.limit.unwrap_or(PAGE_DEFAULT).clamp(1, PAGE_MAX);
    let record = find(&app, &run).await?;
    let page = app
        .store
        .checks_page(&record.id, status, query.after.as_deref(), limit)
        .await
        .map_err(store_error)?;
    let next_after = (page.len() == limit)
        .then(|| page.last().map(|c| c.partition_id.clone()))
        .flatten();
    Ok(Json(json!({
        "run_id": record.id,
        "checks": page.iter().map(|c| {
            let mut check = c.to_json();
            check["partition_id"] = json!(c.partition_id);
            check["status"] = json!(status_name(c.status));
            check
        }).collect::<Vec<_>>(),
        "next_after": next_after,
    })))
}

/// A check's status as the API names it (`mismatched`, where the store says `mismatch`,
/// like `status=` and the run's reconciliation totals).
pub(super) fn status_name(status: CheckStatus) -> &'static str {
    match status {
        CheckStatus::Mismatch => "mismatched",
        other => other.as_str(),
    }
}

/// `?after_partition=&after_key=&limit=` of a page of quarantined rows.
#[derive(Debug, Deserialize)]
pub(crate) struct QuarantineQuery {
    /// The partition id and key of the previous page's last row (its `next_after`).
    after_partition: Option<String>,
    after_key: Option<String>,
    limit: Option<usize>,
}

/// `GET /api/runs/{run}/quarantine`: one page of the rows the target refused, by partition
/// and key, each with the database's reason and the row (secrets were masked when stored).
pub(crate) async fn quarantine(
    State(app): State<AppState>,
    Path(run): Path<String>,
    query: Result<Query<QuarantineQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query.map_err(bad_query)?;
    let after = match (query.after_partition.as_deref(), query.after_key.as_deref()) {
        (Some(p), Some(k)) => Some((p, k)),
        (None, None) => None,
        _ => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "`after_partition` and `after_key` go together",
            )
            .hint("pass both fields of the previous page's `next_after`"));
        }
    };
    let limit = query.limit.unwrap_or(PAGE_DEFAULT).clamp(1, PAGE_MAX);
    let record = find(&app, &run).await?;
    let page = app
        .store
        .quarantine_page(&record.id, after, limit)
        .await
        .map_err(store_error)?;
    let next_after = (page.len() == limit)
        .then(|| {
            page.last()
                .map(|q| json!({ "partition_id": q.partition_id, "key": q.key }))
        })
        .flatten();
    Ok(Json(json!({
        "run_id": record.id,
        "rows": page.iter().map(|q| json!({
            "partition_id": q.partition_id,
            "key": q.key,
            "error": q.error,
            "row": q.row,
            "attempt": q.attempt,
            "at": q.at,
        })).collect::<Vec<_>>(),
        "next_after": next_after,
    })))
}

fn bad_query(rejection: QueryRejection) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, rejection.body_text())
        .hint("a number for `limit`; `after` as the previous page's `next_after` gave it")
}
