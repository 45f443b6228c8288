//! The API's mutations, with Patroni's request bodies and status codes: POST `/switchover`
//! and `/failover` (`leader`, `candidate`, `scheduled_at`), DELETE `/switchover`, and pgha's
//! POST `/pause`, `/resume`, `/failsafe`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::{authorized, ApiState};
use crate::dcs::RequestKind;
use crate::{now_ms, ops, FailoverError};

/// RFC 3339 (ISO 8601) in UTC for a time in ms since the epoch.
pub fn iso8601(ms: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| ms.to_string())
}

/// Patroni's `parse_schedule`: ms since the epoch, or the code and message to refuse with.
pub(super) fn parse_schedule(
    at: &str,
    action: &str,
    now: u64,
) -> Result<u64, (StatusCode, String)> {
    let rfc = time::format_description::well_known::Rfc3339;
    let parsed = match time::OffsetDateTime::parse(at, &rfc) {
        Ok(t) => t,
        Err(_) => {
            let local = time::macros::format_description!(
                "[year]-[month]-[day][first [T][ ]][hour]:[minute]:[second]"
            );
            return Err(if time::PrimitiveDateTime::parse(at, &local).is_ok() {
                (
                    StatusCode::BAD_REQUEST,
                    format!("Timezone information is mandatory for the scheduled {action}"),
                )
            } else {
                (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!(
                        "Unable to parse scheduled timestamp `{at}`. It should be in an unambiguous format, e.g. ISO 8601 (2026-12-01T02:00:00+00:00)"
                    ),
                )
            });
        }
    };
    let ms = parsed.unix_timestamp_nanos() / 1_000_000;
    if ms < i128::from(now) {
        return Err((
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("Cannot schedule {action} in the past"),
        ));
    }
    Ok(u64::try_from(ms).unwrap_or(u64::MAX))
}

/// Patroni's switchover/failover body (`member` is its older name of `candidate`).
#[derive(Debug, Default, Deserialize)]
struct ManualBody {
    leader: Option<String>,
    candidate: Option<String>,
    member: Option<String>,
    scheduled_at: Option<String>,
}

fn text(code: StatusCode, msg: impl Into<String>) -> Response {
    (code, msg.into()).into_response()
}

/// How long an immediate switchover is awaited (Patroni polls for 20 s too).
const POLL_FOR: Duration = Duration::from_secs(20);

async fn manual(s: Arc<ApiState>, headers: HeaderMap, kind: RequestKind, body: Bytes) -> Response {
    if let Err(r) = authorized(&s, &headers, "switchover/failover") {
        return r;
    }
    let body: ManualBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("request body: {e}")),
    };
    let leader = body.leader.filter(|l| !l.is_empty());
    let candidate = body.candidate.or(body.member).filter(|c| !c.is_empty());
    tracing::info!(
        ?kind, leader = ?leader, candidate = ?candidate, scheduled_at = ?body.scheduled_at,
        "API {kind:?} request"
    );
    let (mut kind, mut action) = match kind {
        RequestKind::Switchover => (kind, "switchover"),
        RequestKind::Failover => (kind, "failover"),
    };
    if kind == RequestKind::Failover && candidate.is_none() {
        return text(
            StatusCode::BAD_REQUEST,
            "Failover could be performed only to a specific candidate",
        );
    }
    if kind == RequestKind::Switchover && leader.is_none() {
        return text(
            StatusCode::BAD_REQUEST,
            "Switchover could be performed only from a specific leader",
        );
    }
    let view = match s.dcs.view().await {
        Ok(v) => v,
        Err(e) => return text(StatusCode::SERVICE_UNAVAILABLE, format!("DCS: {e}")),
    };
    let mut at_ms = None;
    if let Some(at) = body.scheduled_at.as_deref().filter(|a| !a.is_empty()) {
        if kind == RequestKind::Failover {
            return text(StatusCode::BAD_REQUEST, "Failover can't be scheduled");
        }
        if view.config.paused {
            return text(
                StatusCode::BAD_REQUEST,
                "Can't schedule switchover in the paused state",
            );
        }
        match parse_schedule(at, action, now_ms()) {
            Ok(ms) => at_ms = Some(ms),
            Err((code, msg)) => return text(code, msg),
        }
    }
    if kind == RequestKind::Failover && leader.is_some() {
        // Patroni: a failover naming the leader is a switchover.
        (kind, action) = (RequestKind::Switchover, "switchover");
    }
    if leader.is_some() && leader == candidate {
        return text(
            StatusCode::BAD_REQUEST,
            "Switchover target and source are the same",
        );
    }
    let current = view.leader.as_ref().map(|l| l.name.clone());
    if leader.is_some() && leader != current {
        return text(
            StatusCode::PRECONDITION_FAILED,
            "leader name does not match",
        );
    }
    let Some(to) = candidate.or_else(|| ops::pick_candidate(&s.config, &view)) else {
        return text(
            StatusCode::PRECONDITION_FAILED,
            format!("{action} is not possible: no good candidates have been found"),
        );
    };
    match ops::request(s.dcs.as_ref(), &s.config, kind, &to, at_ms).await {
        Ok(_) => {}
        Err(FailoverError::Refused { reason, .. }) => {
            return text(StatusCode::PRECONDITION_FAILED, reason)
        }
        Err(e) => {
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("failed to write failover key into DCS: {e}"),
            )
        }
    }
    s.shared.wake.notify_one();
    if at_ms.is_some() {
        let title = if action == "switchover" {
            "Switchover"
        } else {
            "Failover"
        };
        return text(StatusCode::ACCEPTED, format!("{title} scheduled"));
    }
    poll(&s, current, &to, action).await
}

/// Waits for the outcome, as Patroni's `poll_failover_result`.
async fn poll(s: &ApiState, old: Option<String>, to: &str, action: &str) -> Response {
    let (past, title) = if action == "switchover" {
        ("switched", "Switchover")
    } else {
        ("failed", "Failover")
    };
    let deadline = tokio::time::Instant::now() + POLL_FOR;
    let mut unchanged_without_request = 0;
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let view = match s.dcs.view().await {
            Ok(v) => v,
            Err(e) => {
                tracing::debug!("polling the {action} result: {e}");
                continue;
            }
        };
        let now = view.leader.as_ref().map(|l| l.name.clone());
        if let Some(new) = now.as_ref().filter(|n| Some(*n) != old.as_ref()) {
            return if new == to {
                text(
                    StatusCode::OK,
                    format!("Successfully {past} over to \"{new}\""),
                )
            } else {
                let cap = if action == "switchover" {
                    "Switched"
                } else {
                    "Failed"
                };
                text(
                    StatusCode::OK,
                    format!("{cap} over to \"{new}\" instead of \"{to}\""),
                )
            };
        }
        // The request is gone and the leader is the same: the agents dropped it. Two polls,
        // so a request taken between the leader's hand-over steps is not misread.
        if view.switchover.is_none() && now == old {
            unchanged_without_request += 1;
            if unchanged_without_request >= 2 {
                return text(StatusCode::SERVICE_UNAVAILABLE, format!("{title} failed"));
            }
        } else {
            unchanged_without_request = 0;
        }
    }
    text(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("{title} status unknown"),
    )
}

pub(super) async fn switchover(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    manual(s, headers, RequestKind::Switchover, body).await
}

pub(super) async fn failover(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    manual(s, headers, RequestKind::Failover, body).await
}

/// DELETE `/switchover`: 200 when a scheduled switchover was removed, 404 when none was.
pub(super) async fn cancel_switchover(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = authorized(&s, &headers, "switchover cancel") {
        return r;
    }
    match ops::cancel_switchover(s.dcs.as_ref()).await {
        Ok(true) => text(StatusCode::OK, "scheduled switchover deleted"),
        Ok(false) => text(StatusCode::NOT_FOUND, "no switchover is scheduled"),
        Err(e) => text(StatusCode::CONFLICT, format!("{e}")),
    }
}

pub(super) async fn pause(State(s): State<Arc<ApiState>>, headers: HeaderMap) -> Response {
    set_paused(s, headers, true).await
}

pub(super) async fn resume(State(s): State<Arc<ApiState>>, headers: HeaderMap) -> Response {
    set_paused(s, headers, false).await
}

async fn set_paused(s: Arc<ApiState>, headers: HeaderMap, paused: bool) -> Response {
    if let Err(r) = authorized(&s, &headers, "pause/resume") {
        return r;
    }
    match ops::set_paused(s.dcs.as_ref(), paused).await {
        Ok(()) => (StatusCode::OK, format!("paused={paused}\n")).into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response(),
    }
}

#[derive(Debug, Deserialize)]
pub struct FailsafeBody {
    pub leader: String,
    /// How long the leader needs the promise to hold (its lease's TTL and a second); older
    /// agents send none: our own quarantine.
    #[serde(default)]
    pub promise_ms: Option<u64>,
}

/// The leader, cut off from the DCS, asks whether it may keep serving. Yes only when this node
/// cannot reach the DCS either; then this node also promises not to take the lease for one TTL.
pub(super) async fn failsafe(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    Json(body): Json<FailsafeBody>,
) -> Response {
    if let Err(r) = authorized(&s, &headers, "failsafe") {
        return r;
    }
    let promise = body.promise_ms.map(std::time::Duration::from_millis);
    match s.shared.confirm_failsafe(&body.leader, promise) {
        Ok(_) => (StatusCode::OK, "ok\n").into_response(),
        Err(why) => (StatusCode::CONFLICT, format!("{why}\n")).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_parse_as_patroni_does() {
        let now = 1_800_000_000_000; // 2027-01-15T08:00:00Z
        assert_eq!(
            parse_schedule("2027-01-15T09:00:00+00:00", "switchover", now),
            Ok(now + 3_600_000)
        );
        assert_eq!(
            parse_schedule("2027-01-15T10:00:00+01:00", "switchover", now),
            Ok(now + 3_600_000)
        );
        assert_eq!(
            parse_schedule("2027-01-15T09:00:00", "restart", now)
                .unwrap_err()
                .0,
            StatusCode::BAD_REQUEST
        );
        let past = parse_schedule("2020-01-01T00:00:00Z", "switchover", now).unwrap_err();
        assert_eq!(past.0, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(past.1, "Cannot schedule switchover in the past");
        assert_eq!(
            parse_schedule("tomorrow", "switchover", now).unwrap_err().0,
            StatusCode::UNPROCESSABLE_ENTITY
        );
        assert_eq!(iso8601(now), "2027-01-15T08:00:00Z");
    }
}
