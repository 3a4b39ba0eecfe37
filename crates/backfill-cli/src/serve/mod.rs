//! `backfill serve`: every run of a state store over HTTP, for people and for Prometheus.
//!
//! - `/api/…`: JSON (`docs/openapi.json` describes each response): the runs, one run's status
//!   (what `backfill status --json` prints), its partitions in keyset-paginated pages, and
//!   `/healthz`.
//! - `/`: the dashboard ([`dashboard`]), a page and its script and style, shipped inside the
//!   binary, working offline, reading the API.
//! - `/metrics`: the Prometheus text exposition ([`metrics`]).
//! - `POST /api/runs/{run}/pause|resume|cancel|throttle|approve`: the controls ([`control`]), which
//!   need the token and are audited with the caller.
//!
//! Everything here reads the store through its aggregates and indexed pages: no response ever
//! holds every partition of a run, so a run of a million partitions answers like one of a
//! hundred. Only the controls write, through the same store steps as the CLI's commands.
//!
//! Security: it binds to loopback unless told otherwise, where it answers only requests
//! naming it in `Host` (no DNS rebinding) and reading needs no token; any other address needs a
//! token (`--token-file`) and every request but `/healthz` and the dashboard's files must carry
//! it. A request that carries `Authorization` must match it; controls always need it. There is
//! no TLS: off loopback, put it behind a TLS proxy. Responses carry
//! no secret (store URLs are redacted) and the standard protective headers
//! ([`protective_headers`]).

mod api;
mod control;
mod dashboard;
mod metrics;
mod trust;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use backfill_store::Store;
use serde_json::json;

use crate::UserError;
use crate::args::ServeArgs;
use crate::commands::open_store;
use crate::output::Output;

/// What every handler shares.
#[derive(Clone)]
pub(crate) struct AppState {
    store: Store,
    /// The token of `--token-file`; `None` on loopback without one.
    token: Option<Arc<str>>,
    /// Where it listens: on loopback only requests naming it in `Host` are answered (against
    /// DNS rebinding); elsewhere every request but `/healthz` and the dashboard's files needs
    /// the token.
    bound: SocketAddr,
    /// The run this process executes (`run --metrics-addr`): the store's liveness check
    /// cannot tell, as it reads a heartbeat of its own pid as a stale record.
    executing_here: Option<Arc<str>>,
}

impl AppState {
    /// Whether this process executes run `run_id`.
    fn executes(&self, run_id: &str) -> bool {
        self.executing_here.as_deref() == Some(run_id)
    }

    /// Whether a live process executes run `run_id`, by its `controls`: another process
    /// (heartbeat and pid) or this one.
    fn process_running(&self, controls: &backfill_store::Controls, run_id: &str) -> bool {
        crate::commands::control::live_process(controls).is_some() || self.executes(run_id)
    }
}

/// `backfill serve`: binds, then answers until Ctrl-C or SIGTERM.
pub(crate) async fn run(args: &ServeArgs, state: &str, out: Output) -> anyhow::Result<()> {
    let token = read_token(args)?;
    if !args.bind.ip().is_loopback() && token.is_none() {
        return Err(UserError::new(format!(
            "`--bind {}` is not a loopback address: anyone who can reach it could read every \
             run of the store",
            args.bind
        ))
        .hint(
            "give a token with `--token-file FILE` (a file holding one line, readable only by \
             you), or bind to 127.0.0.1",
        )
        .into());
    }
    let store = open_store(state).await?;
    let listener = tokio::net::TcpListener::bind(args.bind)
        .await
        .map_err(|e| {
            UserError::new(format!("cannot listen on {}: {e}", args.bind))
                .hint("pick another address or port with `--bind`, e.g. --bind 127.0.0.1:8081")
        })?;
    let addr = listener.local_addr()?;
    let app = router(AppState {
        store: store.clone(),
        token,
        bound: addr,
        executing_here: None,
    });
    out.json(&json!({ "listening": format!("http://{addr}"), "state": store.url_redacted() }));
    out.note(format!(
        "backfill serve: listening on http://{addr} (state store {}); the API is under /api, \
         metrics at /metrics; Ctrl-C stops",
        store.url_redacted()
    ));
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(stop_signal())
    .await?;
    store.close().await;
    Ok(())
}

/// `run --metrics-addr ADDR`: the same routes, served from the executing process until the
/// returned task is aborted. Loopback only: this process has no token to guard another
/// address with.
pub(crate) async fn spawn_beside_run(
    store: &Store,
    run_id: &str,
    addr: SocketAddr,
    out: Output,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    if !addr.ip().is_loopback() {
        return Err(UserError::new(format!(
            "`--metrics-addr {addr}` is not a loopback address: the metrics and the run's \
             status would be open to anyone who can reach it"
        ))
        .hint(
            "use a loopback address (127.0.0.1:9464) and let Prometheus scrape it locally, or \
             run `backfill serve --bind ADDR --token-file FILE` beside the run",
        )
        .into());
    }
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        UserError::new(format!("cannot listen on {addr} (--metrics-addr): {e}"))
            .hint("pick another port, e.g. --metrics-addr 127.0.0.1:0 for any free one")
    })?;
    let local = listener.local_addr()?;
    out.note(format!(
        "metrics at http://{local}/metrics while the run executes"
    ));
    let app = router(AppState {
        store: store.clone(),
        token: None,
        bound: local,
        executing_here: Some(Arc::from(run_id)),
    });
    Ok(tokio::spawn(async move {
        let service = app.into_make_service_with_connect_info::<SocketAddr>();
        if let Err(e) = axum::serve(listener, service).await {
            tracing::warn!(error = %e, "the metrics server stopped");
        }
    }))
}

/// The routes, with the checks and headers every response gets.
pub(crate) fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(dashboard::page))
        .route("/assets/app.js", get(dashboard::script))
        .route("/assets/style.css", get(dashboard::style))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics::metrics))
        .route("/api/runs", get(api::runs))
        .route("/api/runs/{run}", get(api::run))
        .route("/api/runs/{run}/partitions", get(api::partitions))
        .route("/api/runs/{run}/audit", get(api::audit))
        .route("/api/runs/{run}/errors", get(api::errors))
        .route("/api/runs/{run}/rates", get(api::rates))
        .route("/api/runs/{run}/heat", get(api::heat))
        .route("/api/runs/{run}/progress", get(api::progress))
        .route("/api/runs/{run}/checks", get(trust::checks))
        .route("/api/runs/{run}/quarantine", get(trust::quarantine))
        .route("/api/runs/{run}/pause", post(control::pause))
        .route("/api/runs/{run}/resume", post(control::resume))
        .route("/api/runs/{run}/cancel", post(control::cancel))
        .route("/api/runs/{run}/throttle", post(control::throttle))
        .route("/api/runs/{run}/approve", post(control::approve))
        .route("/api/runs/{run}/promote", post(control::promote))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "no such path")
                .hint("the API is /api/runs and /api/runs/{run}[/partitions|audit|errors|rates|heat|progress] (docs/openapi.json); metrics are at /metrics")
        })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            guard,
        ))
        .layer(axum::middleware::map_response(protective_headers))
        .with_state(state)
}

/// The token from `--token-file`: its first line, trimmed; an empty or unreadable file is an
/// error (a server that was meant to be protected must not start open).
fn read_token(args: &ServeArgs) -> anyhow::Result<Option<Arc<str>>> {
    let Some(path) = &args.token_file else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path).map_err(|e| {
        UserError::new(format!(
            "cannot read the token file {}: {e}",
            path.display()
        ))
        .hint("`--token-file` takes a file holding the token on its first line")
    })?;
    let token = text.lines().next().unwrap_or("").trim();
    if token.len() < 16 {
        return Err(UserError::new(format!(
            "the token in {} is {}: it needs at least 16 characters",
            path.display(),
            if token.is_empty() {
                "empty".to_owned()
            } else {
                format!("{} characters long", token.len())
            }
        ))
        .hint("make one with `head -c 32 /dev/urandom | base64 > FILE`")
        .into());
    }
    Ok(Some(Arc::from(token)))
}

/// What every request passes first:
/// - on a loopback bind, its `Host` must name this server (`127.0.0.1:PORT`, `localhost:PORT`,
///   `[::1]:PORT`): a page of another site whose name was rebound to 127.0.0.1 gets nothing
///   (421);
/// - a request that carries `Authorization` must carry the server's token (`Bearer TOKEN`),
///   refused (401) rather than ignored, so a misconfigured client learns it at once;
/// - on any other bind, every request but `/healthz` and the dashboard's own files must carry
///   it: run data (checkpoints are key values, errors quote rows) is not for the network.
///   On loopback a request without it reads, as nothing but the controls writes.
async fn guard(
    axum::extract::State(state): axum::extract::State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let loopback = state.bound.ip().is_loopback();
    if loopback {
        let host = request
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        let port = state.bound.port();
        let known = [
            format!("127.0.0.1:{port}"),
            format!("localhost:{port}"),
            format!("[::1]:{port}"),
        ];
        if !known.iter().any(|k| k.eq_ignore_ascii_case(host)) {
            return ApiError::new(
                StatusCode::MISDIRECTED_REQUEST,
                "this server answers requests for its own loopback address only",
            )
            .hint(format!("open http://127.0.0.1:{port}/"))
            .into_response();
        }
    }
    let given = request.headers().get(header::AUTHORIZATION).map(|v| {
        v.to_str()
            .unwrap_or("")
            .strip_prefix("Bearer ")
            .unwrap_or("")
    });
    let open_path = matches!(request.uri().path(), "/" | "/healthz")
        || request.uri().path().starts_with("/assets/");
    let needs_token = !loopback && !open_path;
    match given {
        Some(given) => {
            let matches = state
                .token
                .as_deref()
                .is_some_and(|token| constant_time_eq(token.as_bytes(), given.as_bytes()));
            if !matches {
                return ApiError::new(StatusCode::UNAUTHORIZED, "the bearer token does not match")
                    .hint("send `Authorization: Bearer TOKEN` with the token of `--token-file`")
                    .into_response();
            }
        }
        None if needs_token => {
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "this server is not on loopback: every request needs its token",
            )
            .hint("send `Authorization: Bearer TOKEN` with the token of `--token-file` (Prometheus: `authorization: { credentials_file: … }`)")
            .into_response();
        }
        None => {}
    }
    next.run(request).await
}

/// Compares two byte strings in time that depends on their lengths only.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The headers every response carries: only this server's own script, style and API may
/// load (`Content-Security-Policy`: nothing inline, nothing from elsewhere, no framing, no
/// form posts), no MIME sniffing, no referrer, no caching of run data.
async fn protective_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
             img-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    headers.insert(
        header::HeaderName::from_static("cross-origin-resource-policy"),
        HeaderValue::from_static("same-origin"),
    );
    response
}

/// Resolves on Ctrl-C or SIGTERM.
async fn stop_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}

/// An error response: `{"error": …, "hint": …}` with its status.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    error: String,
    hint: Option<String>,
}

impl ApiError {
    fn new(status: StatusCode, error: impl Into<String>) -> ApiError {
        ApiError {
            status,
            error: error.into(),
            hint: None,
        }
    }

    fn hint(mut self, hint: impl Into<String>) -> ApiError {
        self.hint = Some(hint.into());
        self
    }

    /// A control the run's state refuses (a user error: a finished run, one awaiting
    /// approval) is 409 with its hint; anything else as [`ApiError::from_anyhow`].
    fn refused(error: &anyhow::Error) -> ApiError {
        if let Some(e @ backfill_store::StoreError::IllegalTransition { .. }) =
            error.downcast_ref::<backfill_store::StoreError>()
        {
            return ApiError::new(StatusCode::CONFLICT, e.to_string()).hint(
                "`GET /api/runs/{run}` shows the run's state; a finished run takes no control",
            );
        }
        let mut api = ApiError::from_anyhow(error);
        if api.status == StatusCode::NOT_FOUND {
            api.status = StatusCode::CONFLICT;
        }
        api
    }

    /// A failure of a handler: a user error (an unknown run) is 404 with its hint; a state
    /// store that cannot be reached or is busy for now is 503 (try again); anything else
    /// 500. Messages are redacted.
    fn from_anyhow(error: &anyhow::Error) -> ApiError {
        if let Some(user) = error.downcast_ref::<UserError>() {
            return ApiError {
                status: StatusCode::NOT_FOUND,
                error: user.message.clone(),
                hint: user.hint.clone(),
            };
        }
        let message = backfill_core::secret::redact(&format!("{error:#}"));
        match error.downcast_ref::<backfill_store::StoreError>() {
            Some(e @ backfill_store::StoreError::Unreachable { .. }) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
                    .hint("the state store's server cannot be reached; try again once it is up")
            }
            Some(e) if e.is_transient() => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message)
                .hint("the state store is busy or its connection dropped; try again"),
            _ => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": self.error, "hint": self.hint });
        (self.status, axum::Json(body)).into_response()
    }
}

/// The metrics reference, `docs/metrics.md`.
pub(crate) fn metrics_reference() -> String {
    metrics::reference_markdown()
}

/// The address `--bind` takes by default.
pub(crate) const DEFAULT_BIND: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 8080);

#[cfg(test)]
mod tests {
    use super::{ApiError, StatusCode, constant_time_eq};
    use backfill_store::StoreError;

    #[test]
    fn an_unreachable_or_busy_store_is_503_and_a_user_error_404() {
        let status = |e: anyhow::Error| ApiError::from_anyhow(&e).status;
        let down = StoreError::Unreachable {
            url: "postgres://backfill@db/state".to_owned(),
            message: "connection refused".to_owned(),
        };
        assert_eq!(status(down.into()), StatusCode::SERVICE_UNAVAILABLE);
        let busy = StoreError::Database(sqlx::Error::PoolTimedOut);
        assert_eq!(status(busy.into()), StatusCode::SERVICE_UNAVAILABLE);
        let corrupt = StoreError::Corrupt("bad row".to_owned());
        assert_eq!(status(corrupt.into()), StatusCode::INTERNAL_SERVER_ERROR);
        let user = crate::UserError::new("no run matches `abc`");
        assert_eq!(status(user.into()), StatusCode::NOT_FOUND);
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"abcdefgh", b"abcdefgh"));
        assert!(!constant_time_eq(b"abcdefgh", b"abcdefgi"));
        assert!(!constant_time_eq(b"abcdefgh", b"abcdefg"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}
