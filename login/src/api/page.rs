//! The admin page at `/admin`: plain HTML, CSS and script served from the binary. Its login
//! form posts the API key to `/admin/login`, which answers with the session cookie (HttpOnly,
//! SameSite=Strict); the page then calls the API itself (`/api/...`) with that cookie. No
//! secret ever goes in a URL.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use super::auth::{session_cookie, Gate, COOKIE, SESSION_TTL};
use super::error::{ApiError, ApiJson};

const HTML: &str = include_str!("admin.html");
const SCRIPT: &str = include_str!("admin.js");
const STYLE: &str = include_str!("admin.css");

/// The page's routes.
pub(crate) fn router(gate: Arc<Gate>) -> Router {
    Router::new()
        .route(
            "/admin",
            get(|| async { asset("text/html; charset=utf-8", HTML) }),
        )
        .route(
            "/admin/admin.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/admin/admin.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
        .route("/admin/login", post(login))
        .route("/admin/logout", post(logout))
        .with_state(gate)
}

/// One of the page's files, with headers that keep it to itself: its own scripts and
/// styles only, never in a frame, never cached.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    let headers = [
        (header::CONTENT_TYPE, content_type),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; frame-ancestors 'none'; form-action 'self'",
        ),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::CACHE_CONTROL, "no-store"),
        (header::REFERRER_POLICY, "no-referrer"),
    ];
    (headers, body).into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Login {
    key: String,
}

/// `Set-Cookie` for a session `token` (`Max-Age` 0 and an empty value end it).
/// `Secure` when the listener speaks TLS (a plain one is on loopback, or behind a TLS proxy).
fn cookie(token: &str, max_age: u64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    let text =
        format!("{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age}{secure}");
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

async fn login(
    State(gate): State<Arc<Gate>>,
    ApiJson(r): ApiJson<Login>,
) -> Result<Response, ApiError> {
    if !gate.key.matches(&r.key) {
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, "wrong API key"));
    }
    let token = gate.sessions.open();
    let set = cookie(&token, SESSION_TTL.as_secs(), gate.secure);
    Ok((
        [(header::SET_COOKIE, set)],
        Json(serde_json::json!({ "ok": true })),
    )
        .into_response())
}

async fn logout(State(gate): State<Arc<Gate>>, headers: HeaderMap) -> Response {
    if let Some(token) = session_cookie(&headers) {
        gate.sessions.close(token);
    }
    let clear = cookie("", 0, gate.secure);
    (
        [(header::SET_COOKIE, clear)],
        Json(serde_json::json!({ "ok": true })),
    )
        .into_response()
}
