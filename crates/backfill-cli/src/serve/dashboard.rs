//! The dashboard: one page, its script and its style, compiled into the binary (no CDN, no
//! network: it works offline). The script polls the JSON API every few seconds and shows the
//! runs (executive), the selected run's state, rate and why, errors and controls (on call),
//! and its heat strip, throughput and partitions (debug). The controls send the token the
//! user types; the page never holds it otherwise.

use axum::http::header;
use axum::response::IntoResponse;

const PAGE: &str = include_str!("dashboard/index.html");
const SCRIPT: &str = include_str!("dashboard/app.js");
const STYLE: &str = include_str!("dashboard/style.css");

/// `GET /`.
pub(crate) async fn page() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], PAGE)
}

/// `GET /assets/app.js`.
pub(crate) async fn script() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        SCRIPT,
    )
}

/// `GET /assets/style.css`.
pub(crate) async fn style() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE)
}
