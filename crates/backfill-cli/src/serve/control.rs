//! Control endpoints: pause, resume, cancel, throttle, approve and promote a run from the
//! dashboard or a script, the same actions as `backfill
//! pause|resume|cancel|throttle|approve|promote` (they share their store steps).
//!
//! Each needs the server's token (`Authorization: Bearer …`): a server started without
//! `--token-file` refuses them (403), a request without the token gets 401. Each is an audit
//! event naming the caller, `api:NAME@ADDRESS`: NAME from the `X-Backfill-Actor` header
//! (letters, digits and `._-`, at most 64; `anonymous` without one), ADDRESS the peer's IP.
//! A refused action (a finished run, a run awaiting approval, a resume with no process to
//! continue it) is 409 with what to do instead. Browsers never send the `Authorization`
//! header by themselves, so another site cannot make a visitor's browser act.

use std::net::SocketAddr;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use backfill_store::{BudgetExtra, RunRecord, ThrottleChange};
use serde::Deserialize;
use serde_json::{Value, json};

use super::api::{find, store_error};
use super::{ApiError, AppState, constant_time_eq};
use crate::commands::control::{apply_cancel, apply_pause};

/// The header a caller may name itself with.
const ACTOR_HEADER: &str = "x-backfill-actor";

/// The body of `pause` and `cancel` (optional).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestBody {
    /// Why, recorded with the audit event.
    reason: Option<String>,
}

/// A rate limit in a `throttle` body: a number, or `"off"` for no limit.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Limit {
    Rate(u32),
    Word(String),
}

/// The body of `throttle`: at least one field.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ThrottleBody {
    rows_per_second: Option<Limit>,
    batches_per_second: Option<Limit>,
    concurrency: Option<u32>,
}

/// `POST /api/runs/{run}/pause`: in-flight batches finish and checkpoint, then the run waits.
pub(crate) async fn pause(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(run): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    stop(&app, peer, &headers, &run, &body, Stop::Pause).await
}

/// `POST /api/runs/{run}/cancel`: in-flight batches finish and checkpoint, the run ends
/// `cancelled`.
pub(crate) async fn cancel(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(run): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    stop(&app, peer, &headers, &run, &body, Stop::Cancel).await
}

/// The two controls that stop a run's work.
#[derive(Clone, Copy)]
enum Stop {
    Pause,
    Cancel,
}

/// A pause or a cancel, through the CLI commands' own store steps.
async fn stop(
    app: &AppState,
    peer: SocketAddr,
    headers: &HeaderMap,
    run: &str,
    body: &Bytes,
    how: Stop,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let actor = authorize(app, headers, peer)?;
    let body: RequestBody = parse_body(body)?;
    let run = find(app, run).await?;
    let reason = body.reason.as_deref();
    let (applied, name) = match how {
        Stop::Pause => (apply_pause(&app.store, &run, &actor, reason).await, "pause"),
        Stop::Cancel => (
            apply_cancel(&app.store, &run, &actor, reason).await,
            "cancel",
        ),
    };
    let (_, process) = applied.map_err(|e| ApiError::refused(&e))?;
    accepted(app, &run, name, &actor, process.is_some()).await
}

/// `POST /api/runs/{run}/approve`: lets a run waiting at its canary gate go on (`backfill
/// approve`); the waiting process continues within a second.
pub(crate) async fn approve(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(run): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let actor = authorize(&app, &headers, peer)?;
    let body: RequestBody = parse_body(&body)?;
    let run = find(&app, &run).await?;
    app.store
        .approve_run(&run.id, &actor, body.reason.as_deref())
        .await
        .map_err(|e| ApiError::refused(&e.into()))?;
    let controls = app.store.controls(&run.id).await.map_err(store_error)?;
    let process = app.process_running(&controls, &run.id);
    accepted(&app, &run, "approve", &actor, process).await
}

/// The body of `promote` (optional).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PromoteBody {
    /// Promote even though the live table changed since the shadow was seeded.
    #[serde(default)]
    force: bool,
}

/// `POST /api/runs/{run}/promote`: swaps a succeeded shadow run's table in, as `backfill
/// promote RUN [--force]` does (the same steps, the same refusals, as 409). Reads the run's
/// spec file where the run recorded it, with this server's environment for `${VAR}`s: 409
/// when it moved or its plan changed.
pub(crate) async fn promote(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(run): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let actor = authorize(&app, &headers, peer)?;
    let body: PromoteBody = parse_body(&body)?;
    let run = find(&app, &run).await?;
    let spec = crate::commands::run::spec_of(&run, None, crate::output::Output { json: true })
        .map_err(|e| ApiError::refused(&e))?;
    // In a task of its own: a client that hangs up must not stop a swap between renaming the
    // tables and recording it.
    let (store, run_id, by) = (app.store.clone(), run.id.clone(), actor.clone());
    let swap = tokio::spawn(async move {
        backfill_engine::shadow::promote(&store, &spec, &run_id, body.force, &by).await
    });
    let promoted = swap
        .await
        .map_err(|e| ApiError::from_anyhow(&anyhow::anyhow!("the promote task failed: {e}")))?
        .map_err(|e| ApiError::refused(&crate::commands::shadow::refusal(e, &run.id)))?;
    let r = &promoted.record;
    Ok((
        StatusCode::OK,
        Json(json!({
            "run_id": run.id,
            "promoted": true,
            "by": actor,
            "live_table": r.live_table,
            "old_table": r.old_table,
            "forced": promoted.forced,
            "overridden": promoted.overridden,
            "lock_ms": promoted.lock.as_secs_f64() * 1000.0,
        })),
    ))
}

/// `POST /api/runs/{run}/resume`: lifts the pause of a run whose process waits, paused (it
/// continues within a second). With no process executing the run there is nothing here to
/// continue it: 409, `backfill resume RUN` does.
pub(crate) async fn resume(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(run): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let actor = authorize(&app, &headers, peer)?;
    let _: RequestBody = parse_body(&body)?;
    let run = find(&app, &run).await?;
    let controls = app.store.controls(&run.id).await.map_err(store_error)?;
    if !app.process_running(&controls, &run.id) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "no process is executing run {}: there is nothing here to resume",
                run.id
            ),
        )
        .hint(format!(
            "`backfill resume {}` continues it from its checkpoints in that terminal",
            run.id
        )));
    }
    app.store
        .request_resume(&run.id, &actor, BudgetExtra::default(), false)
        .await
        .map_err(|e| ApiError::refused(&e.into()))?;
    accepted(&app, &run, "resume", &actor, true).await
}

/// `POST /api/runs/{run}/throttle` with `{"rows_per_second": N|"off", "batches_per_second":
/// N|"off", "concurrency": K}` (any of them): the new limits apply within a second.
pub(crate) async fn throttle(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(run): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let actor = authorize(&app, &headers, peer)?;
    let body: ThrottleBody = parse_body(&body)?;
    let change = ThrottleChange {
        rows_per_second: limit(body.rows_per_second, "rows_per_second")?,
        batches_per_second: limit(body.batches_per_second, "batches_per_second")?,
        concurrency: match body.concurrency {
            Some(0) => return Err(bad_body("`concurrency` must be at least 1")),
            other => other,
        },
    };
    if change == ThrottleChange::default() {
        return Err(bad_body("nothing to change"));
    }
    let run = find(&app, &run).await?;
    let controls = app
        .store
        .set_throttle(&run.id, change, &actor)
        .await
        .map_err(|e| ApiError::refused(&e.into()))?;
    let process = app.process_running(&controls, &run.id);
    let (status, Json(mut answer)) = accepted(&app, &run, "throttle", &actor, process).await?;
    answer["limits"] = json!({
        "rows_per_second": controls.rows_per_second,
        "batches_per_second": controls.batches_per_second,
        "concurrency": controls.concurrency,
    });
    Ok((status, Json(answer)))
}

/// The caller's name for the audit chain, once its token is checked; 403 when the server has
/// no token, 401 when the request does not carry it.
fn authorize(app: &AppState, headers: &HeaderMap, peer: SocketAddr) -> Result<String, ApiError> {
    let Some(token) = app.token.as_deref() else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "this server takes no controls: it was started without a token",
        )
        .hint("start `backfill serve --token-file FILE` to pause, resume, cancel and throttle over HTTP"));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !constant_time_eq(token.as_bytes(), given.as_bytes()) {
        return Err(
            ApiError::new(StatusCode::UNAUTHORIZED, "controls need the server's token")
                .hint("send `Authorization: Bearer TOKEN` with the token of `--token-file`"),
        );
    }
    let name: String = headers
        .get(ACTOR_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .chars()
        // No `@`: the name must not pass for the address that follows it.
        .filter(|c| c.is_ascii_alphanumeric() || "._-".contains(*c))
        .take(64)
        .collect();
    let name = if name.is_empty() {
        "anonymous".to_owned()
    } else {
        name
    };
    Ok(format!("api:{name}@{}", peer.ip()))
}

/// A JSON body, or the default for an empty one; 400 with serde's reason otherwise.
fn parse_body<T: Default + serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body)
        .map_err(|e| bad_body(&format!("the JSON body does not parse: {e}")))
}

fn bad_body(error: &str) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, error).hint(
        "pause and cancel take {\"reason\": \"…\"}; throttle takes {\"rows_per_second\": N or \
         \"off\", \"batches_per_second\": N or \"off\", \"concurrency\": K}",
    )
}

/// A limit of the throttle body as the store takes it: `Some(0)` for `"off"`.
fn limit(value: Option<Limit>, field: &str) -> Result<Option<u32>, ApiError> {
    match value {
        None => Ok(None),
        Some(Limit::Rate(0)) => Err(bad_body(&format!(
            "`{field}` must be at least 1, or \"off\" for no limit"
        ))),
        Some(Limit::Rate(n)) => Ok(Some(n)),
        Some(Limit::Word(w)) if w == "off" => Ok(Some(0)),
        Some(Limit::Word(w)) => Err(bad_body(&format!(
            "`{field}` is {w:?}: a number, or \"off\" for no limit"
        ))),
    }
}

/// 202 with what was asked, by whom, whether a process will act, and the run's state now.
async fn accepted(
    app: &AppState,
    run: &RunRecord,
    requested: &str,
    actor: &str,
    process_running: bool,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let now = app.store.get_run(&run.id).await.map_err(store_error)?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "run_id": run.id,
            "requested": requested,
            "by": actor,
            "process_running": process_running,
            "state": now.state.as_str(),
        })),
    ))
}
