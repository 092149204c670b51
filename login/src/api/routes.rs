//! The API's calls: one `POST /api/NAME` each, a JSON body in and out (docs/API.md). Each
//! is a thin layer over [`Admin`]: the request checked, the call made, its answer shown.

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{middleware, Json, Router};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};
use zserver::channels::{Member, Position, Publication};

use super::auth::{require_key, Gate};
use super::error::{not_found, wrong_method, ApiError, ApiJson};
use crate::server::Admin;

/// The largest request body, in bytes: room for a 64 KiB publication in base64 and a
/// broadcast's channel list.
pub const MAX_BODY: usize = 256 * 1024;

/// History's page size when the call names none.
const DEFAULT_HISTORY: usize = 100;

type Answer = Result<Json<Value>, ApiError>;

/// The API's routes (behind the key) and the admin page's, on one router.
pub(crate) fn router(admin: Admin, gate: Arc<Gate>) -> Router {
    let api = Router::new()
        .route("/api/publish", post(publish))
        .route("/api/broadcast", post(broadcast))
        .route("/api/presence", post(presence))
        .route("/api/history", post(history))
        .route("/api/unsubscribe", post(unsubscribe))
        .route("/api/disconnect", post(disconnect))
        .route("/api/sessions", post(sessions))
        .route("/api/push", post(push))
        .route("/api/users", get(users).post(users))
        .route("/api/users/add", post(add_user))
        .route("/api/users/delete", post(delete_user))
        .route("/api/info", get(info).post(info))
        .route_layer(middleware::from_fn_with_state(gate.clone(), require_key))
        .with_state(admin);
    api.merge(super::page::router(gate))
        .fallback(not_found)
        .method_not_allowed_fallback(wrong_method)
        .layer(DefaultBodyLimit::max(MAX_BODY))
}

/// What a publication carries: `data` (text, sent as its UTF-8 bytes) or `data_base64`
/// (any bytes), exactly one.
fn payload(data: Option<String>, data_base64: Option<String>) -> Result<Vec<u8>, ApiError> {
    match (data, data_base64) {
        (Some(text), None) => Ok(text.into_bytes()),
        (None, Some(b64)) => base64::engine::general_purpose::STANDARD
            .decode(b64.as_bytes())
            .map_err(|e| ApiError::bad(format!("`data_base64` is not base64: {e}"))),
        _ => Err(ApiError::bad(
            "give exactly one of `data` and `data_base64`",
        )),
    }
}

/// `bytes` as JSON: `{"data": TEXT}` if they are UTF-8, `{"data_base64": ...}` otherwise.
fn data_json(bytes: &[u8]) -> (&'static str, Value) {
    match std::str::from_utf8(bytes) {
        Ok(text) => ("data", Value::from(text)),
        Err(_) => (
            "data_base64",
            Value::from(base64::engine::general_purpose::STANDARD.encode(bytes)),
        ),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Publish {
    channel: String,
    data: Option<String>,
    data_base64: Option<String>,
}

async fn publish(State(admin): State<Admin>, ApiJson(r): ApiJson<Publish>) -> Answer {
    let position = admin
        .publish(&r.channel, payload(r.data, r.data_base64)?)
        .await?;
    Ok(Json(json!({ "position": position })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Broadcast {
    channels: Vec<String>,
    data: Option<String>,
    data_base64: Option<String>,
}

async fn broadcast(State(admin): State<Admin>, ApiJson(r): ApiJson<Broadcast>) -> Answer {
    let names = r.channels.clone();
    let outcomes = admin
        .broadcast(r.channels, payload(r.data, r.data_base64)?)
        .await?;
    let results: Vec<Value> = names
        .into_iter()
        .zip(outcomes)
        .map(|(channel, outcome)| match outcome {
            Ok(position) => json!({ "channel": channel, "position": position }),
            Err(e) => json!({ "channel": channel, "error": e.to_string() }),
        })
        .collect();
    Ok(Json(json!({ "results": results })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Channel {
    channel: String,
}

/// A member as JSON: its `info` as the JSON it is (a token's `info` claim), or as text.
fn member_json(m: Member) -> Value {
    let mut member = json!({ "client": m.client, "user": m.user });
    if !m.info.is_empty() {
        member["info"] = serde_json::from_slice(&m.info)
            .unwrap_or_else(|_| Value::from(String::from_utf8_lossy(&m.info).into_owned()));
    }
    member
}

async fn presence(State(admin): State<Admin>, ApiJson(r): ApiJson<Channel>) -> Answer {
    let members: Vec<Value> = admin
        .presence(&r.channel)?
        .into_iter()
        .map(member_json)
        .collect();
    Ok(Json(json!({ "members": members })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct History {
    channel: String,
    limit: Option<usize>,
    since: Option<Position>,
}

fn publication_json(p: Publication) -> Value {
    let (key, data) = data_json(&p.data);
    let mut publication = json!({ "offset": p.offset, "from": p.from });
    publication[key] = data;
    publication
}

async fn history(State(admin): State<Admin>, ApiJson(r): ApiJson<History>) -> Answer {
    let limit = r.limit.unwrap_or(DEFAULT_HISTORY);
    let page = admin.history(&r.channel, r.since, limit).await?;
    let publications: Vec<Value> = page
        .publications
        .into_iter()
        .map(publication_json)
        .collect();
    Ok(Json(
        json!({ "position": page.position, "publications": publications }),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Unsubscribe {
    user: String,
    channel: String,
}

async fn unsubscribe(State(admin): State<Admin>, ApiJson(r): ApiJson<Unsubscribe>) -> Answer {
    let count = admin.unsubscribe(&r.user, &r.channel).await?;
    Ok(Json(json!({ "unsubscribed": count })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Disconnect {
    user: String,
    node: Option<String>,
    connection: Option<u64>,
}

async fn disconnect(State(admin): State<Admin>, ApiJson(r): ApiJson<Disconnect>) -> Answer {
    let target = match (&r.node, r.connection) {
        (Some(node), Some(connection)) => Some((node.as_str(), connection)),
        (None, None) => None,
        _ => {
            return Err(ApiError::bad(
                "give both `node` and `connection`, or neither",
            ))
        }
    };
    let count = admin.disconnect(&r.user, target).await?;
    Ok(Json(json!({ "disconnected": count })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct User {
    user: String,
}

async fn sessions(State(admin): State<Admin>, ApiJson(r): ApiJson<User>) -> Answer {
    let sessions = admin.sessions(&r.user).await?;
    Ok(Json(json!({ "user": r.user, "sessions": sessions })))
}

/// One recipient or several.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Recipients {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Push {
    to: Recipients,
    text: String,
    from: Option<String>,
}

async fn push(State(admin): State<Admin>, ApiJson(r): ApiJson<Push>) -> Answer {
    let users = match r.to {
        Recipients::One(user) => vec![user],
        Recipients::Many(users) => users,
    };
    let report = admin.push(users, r.from.as_deref(), &r.text).await?;
    Ok(Json(json!({
        "delivered": report.delivered,
        "stored": report.stored,
        "unconfirmed": report.unconfirmed,
    })))
}

async fn users(State(admin): State<Admin>) -> Answer {
    let users = admin.users().await?;
    Ok(Json(json!({ "users": users, "online": admin.online() })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUser {
    user: String,
    password: String,
}

async fn add_user(
    State(admin): State<Admin>,
    ApiJson(r): ApiJson<NewUser>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    admin.add_user(&r.user, &r.password).await?;
    Ok((StatusCode::CREATED, Json(json!({ "added": r.user }))))
}

async fn delete_user(State(admin): State<Admin>, ApiJson(r): ApiJson<User>) -> Answer {
    admin.delete_user(&r.user).await?;
    Ok(Json(json!({ "deleted": r.user })))
}

async fn info(State(admin): State<Admin>) -> Answer {
    let info = admin.info().await;
    Ok(Json(serde_json::to_value(info).unwrap_or_default()))
}
