//! `GET|PATCH|PUT /config` (Patroni's dynamic configuration: a merge patch or the whole
//! document, validated like pgha.toml) and `POST /reload` (pgha.toml again, on this node).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::{authorized, read_allowed, ApiState};
use crate::settings::{self, Edit};
use crate::FailoverError;

fn text(code: StatusCode, body: impl std::fmt::Display) -> Response {
    (code, format!("{body}\n")).into_response()
}

pub(super) async fn get(State(s): State<Arc<ApiState>>, headers: HeaderMap) -> Response {
    if let Err(r) = read_allowed(&s, &headers, "GET /config") {
        return r;
    }
    match s.dcs.view().await {
        Ok(view) => Json(settings::document(&s.config, &view)).into_response(),
        Err(e) => text(StatusCode::BAD_GATEWAY, format!("DCS: {e}")),
    }
}

pub(super) async fn patch(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    change(s, headers, body, Edit::Patch).await
}

pub(super) async fn put(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    change(s, headers, body, Edit::Replace).await
}

async fn change(
    s: Arc<ApiState>,
    headers: HeaderMap,
    body: Bytes,
    edit: fn(serde_json::Value) -> Edit,
) -> Response {
    if let Err(r) = authorized(&s, &headers, "change /config") {
        return r;
    }
    let doc: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(d) => d,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("not a JSON document: {e}")),
    };
    match settings::edit(s.dcs.as_ref(), &s.config, &edit(doc), |_| true).await {
        Ok(Some(c)) => {
            tracing::info!(changes = ?c.diff(), "cluster settings changed through the API");
            Json(c.after).into_response()
        }
        Ok(None) => match s.dcs.view().await {
            Ok(view) => Json(settings::document(&s.config, &view)).into_response(),
            Err(e) => text(StatusCode::BAD_GATEWAY, format!("DCS: {e}")),
        },
        Err(e @ FailoverError::Settings(_)) => text(StatusCode::BAD_REQUEST, e),
        Err(e @ FailoverError::Refused { .. }) => text(StatusCode::CONFLICT, e),
        Err(e) => text(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

/// Patroni answers 202 "reload scheduled": the loop reloads before its next tick; what it
/// refused shows in `/patroni` (`pgha.reload_error`) and the log.
pub(super) async fn reload(State(s): State<Arc<ApiState>>, headers: HeaderMap) -> Response {
    if let Err(r) = authorized(&s, &headers, "reload") {
        return r;
    }
    s.shared.request_reload();
    text(StatusCode::ACCEPTED, "reload scheduled")
}
