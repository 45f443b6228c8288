//! One node's operator requests, with Patroni's bodies and messages: `POST /restart`
//! (`schedule`, `restart_pending`, `role`), `DELETE /restart`, `POST /reinitialize`. The
//! agent loop carries them out between jobs, also while the cluster is paused.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::{actions::parse_schedule, authorized, ApiState};
use crate::dcs::MemberRole;
use crate::now_ms;
use pgha_agent_core::inputs::Event;

/// How long an immediate restart is awaited.
const RESTART_WAIT: Duration = Duration::from_secs(60);

fn text(code: StatusCode, msg: impl Into<String>) -> Response {
    (code, msg.into()).into_response()
}

#[derive(Debug, Default, Deserialize)]
struct RestartBody {
    schedule: Option<String>,
    #[serde(default)]
    restart_pending: bool,
    role: Option<String>,
}

pub(super) async fn restart(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = authorized(&s, &headers, "restart") {
        return r;
    }
    let b: RestartBody = if body.iter().all(u8::is_ascii_whitespace) {
        RestartBody::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(b) => b,
            Err(e) => return text(StatusCode::BAD_REQUEST, format!("Bad restart body: {e}")),
        }
    };
    let snap = s.shared.snapshot();
    let member = snap.member.as_ref();
    let role_ok = match b.role.as_deref() {
        None => true,
        Some("primary" | "master") => member.is_some_and(|m| m.role == MemberRole::Primary),
        Some("replica") => member.is_some_and(|m| m.role == MemberRole::Replica),
        Some(other) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("PostgreSQL role should be either primary or replica, not `{other}`"),
            )
        }
    };
    let pending_ok = !b.restart_pending || member.is_some_and(|m| !m.pending_restart.is_empty());
    if !role_ok || !pending_ok {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "restart conditions are not satisfied",
        );
    }
    if let Some(at) = &b.schedule {
        let at_ms = match parse_schedule(at, "restart", now_ms()) {
            Ok(ms) => ms,
            Err((code, msg)) => return text(code, msg),
        };
        s.shared.request(Event::RestartRequested {
            at_ms: Some(at_ms),
            pending_only: b.restart_pending,
        });
        return text(StatusCode::ACCEPTED, "Restart scheduled");
    }
    let before = s.shared.restarts.load(Ordering::Relaxed);
    s.shared.request(Event::RestartRequested {
        at_ms: None,
        pending_only: b.restart_pending,
    });
    let deadline = tokio::time::Instant::now() + RESTART_WAIT;
    while tokio::time::Instant::now() < deadline {
        if s.shared.restarts.load(Ordering::Relaxed) > before {
            return text(StatusCode::OK, "restarted successfully");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let why = s.shared.snapshot().reason;
    text(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("restart failed: {why}"),
    )
}

pub(super) async fn cancel_restart(State(s): State<Arc<ApiState>>, headers: HeaderMap) -> Response {
    if let Err(r) = authorized(&s, &headers, "cancel restart") {
        return r;
    }
    // Sent either way: a restart asked for since the last tick is cancelled too.
    let scheduled = s.shared.snapshot().scheduled_restart_ms.is_some();
    s.shared.request(Event::RestartCancelled);
    if scheduled {
        text(StatusCode::OK, "scheduled restart deleted")
    } else {
        // Patroni's answer when nothing is scheduled.
        text(StatusCode::NOT_FOUND, "no restarts are scheduled")
    }
}

pub(super) async fn reinitialize(State(s): State<Arc<ApiState>>, headers: HeaderMap) -> Response {
    if let Err(r) = authorized(&s, &headers, "reinitialize") {
        return r;
    }
    if s.shared.snapshot().is_leader {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "I am the leader, can not reinitialize",
        );
    }
    s.shared.request(Event::ReinitRequested);
    text(StatusCode::OK, "reinitialize started")
}
