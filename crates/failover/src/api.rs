//! The agent's HTTP API, with Patroni's health-check semantics so HAProxy configurations written
//! for Patroni work unchanged:
//! `GET /primary` (`/master`, `/read-write`): 200 only on the writable leaseholder;
//! `GET /replica[?lag=10MB]`: 200 on a streaming replica within the lag; `GET /read-only`: 200 on
//! any running node; `GET /health`: 200 when PostgreSQL runs; `GET /cluster`: JSON topology;
//! `GET /metrics`: Prometheus text. `POST /switchover|/failover|/pause|/resume|/failsafe` need
//! `Authorization: Bearer <failover.api_token>`; with `failover.api_restrict_reads` so do
//! `GET /`, `/cluster` and `/metrics`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use pgha_config::{ByteSize, PghaConfig, Secret};

use crate::agent::Shared;
use crate::dcs::{Dcs, MemberRole, PgState, RequestKind};
use crate::ops;

/// What the handlers need.
#[derive(Debug)]
pub struct ApiState {
    pub shared: Arc<Shared>,
    pub dcs: Arc<dyn Dcs>,
    pub config: Arc<PghaConfig>,
    pub token: Option<Secret>,
}

pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/", get(status))
        .route("/primary", get(primary))
        .route("/master", get(primary))
        .route("/read-write", get(primary))
        .route("/replica", get(replica))
        .route("/standby-leader", get(standby_leader))
        .route("/read-only", get(read_only))
        .route("/health", get(health))
        .route("/cluster", get(cluster))
        .route("/metrics", get(metrics))
        .route("/switchover", post(switchover))
        .route("/failover", post(failover))
        .route("/pause", post(pause))
        .route("/resume", post(resume))
        .route("/failsafe", post(failsafe))
        .with_state(state)
}

/// Serves the API on `addr` until `cancel`; HTTPS when `tls` is given.
pub async fn serve(
    addr: SocketAddr,
    state: Arc<ApiState>,
    cancel: CancellationToken,
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let shutdown = async move { cancel.cancelled().await };
    match tls {
        Some(cfg) => {
            axum::serve(pgha_tls::TlsListener::new(listener, cfg), router(state))
                .with_graceful_shutdown(shutdown)
                .await
        }
        None => {
            axum::serve(listener, router(state))
                .with_graceful_shutdown(shutdown)
                .await
        }
    }
}

fn code(ok: bool) -> StatusCode {
    if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

fn status_body(s: &ApiState) -> serde_json::Value {
    let snap = s.shared.snapshot();
    serde_json::json!({
        "name": snap.name,
        "is_leader": snap.is_leader,
        "dcs_reachable": snap.dcs_reachable,
        "paused": snap.paused,
        "member": snap.member,
    })
}

async fn status(State(s): State<Arc<ApiState>>, headers: HeaderMap) -> Response {
    if let Err(r) = read_allowed(&s, &headers, "GET /") {
        return r;
    }
    (StatusCode::OK, Json(status_body(&s))).into_response()
}

/// With `failover.api_restrict_reads`, informational reads need the token too.
#[allow(
    clippy::result_large_err,
    reason = "the refusal is sent as-is; boxing buys nothing here"
)]
fn read_allowed(s: &ApiState, headers: &HeaderMap, what: &str) -> Result<(), Response> {
    if s.config.failover.api_restrict_reads {
        authorized(s, headers, what)
    } else {
        Ok(())
    }
}

async fn primary(State(s): State<Arc<ApiState>>) -> Response {
    let ok = leads_as(&s, MemberRole::Primary);
    (code(ok), Json(status_body(&s))).into_response()
}

/// This agent holds the lease and its PostgreSQL runs in `role` (a standby leader is a replica).
fn leads_as(s: &ApiState, role: MemberRole) -> bool {
    let snap = s.shared.snapshot();
    snap.is_leader
        && snap
            .member
            .as_ref()
            .is_some_and(|m| m.pg_state == PgState::Running && m.role == role)
}

/// 200 on the leader of a standby cluster (holds the site's lease, streams from the other
/// site); what a load balancer in the standby site points its "replication entry" at.
async fn standby_leader(State(s): State<Arc<ApiState>>) -> Response {
    let ok = leads_as(&s, MemberRole::Replica);
    (code(ok), Json(status_body(&s))).into_response()
}

async fn replica(
    State(s): State<Arc<ApiState>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let snap = s.shared.snapshot();
    let max_lag = match q.get("lag").map(|l| l.parse::<ByteSize>()) {
        Some(Ok(b)) => Some(b.bytes()),
        Some(Err(e)) => return (StatusCode::BAD_REQUEST, format!("lag: {e}\n")).into_response(),
        None => None,
    };
    let leader_lsn = snap
        .view
        .as_ref()
        .and_then(|v| v.status.as_ref())
        .map(|s| s.lsn);
    let ok = !snap.is_leader
        && snap.member.as_ref().is_some_and(|m| {
            let lag_ok = match (max_lag, leader_lsn, m.lsn) {
                (Some(max), Some(l), Some(mine)) => l.bytes_since(mine) <= max,
                (Some(_), _, _) => false,
                (None, _, _) => true,
            };
            m.pg_state == PgState::Running && m.role == MemberRole::Replica && m.streaming && lag_ok
        });
    (code(ok), Json(status_body(&s))).into_response()
}

async fn read_only(State(s): State<Arc<ApiState>>) -> Response {
    let snap = s.shared.snapshot();
    let ok = snap
        .member
        .as_ref()
        .is_some_and(|m| m.pg_state == PgState::Running);
    (code(ok), Json(status_body(&s))).into_response()
}

async fn health(State(s): State<Arc<ApiState>>) -> Response {
    read_only(State(s)).await
}

async fn cluster(State(s): State<Arc<ApiState>>, headers: HeaderMap) -> Response {
    if let Err(r) = read_allowed(&s, &headers, "GET /cluster") {
        return r;
    }
    let snap = s.shared.snapshot();
    (StatusCode::OK, Json(serde_json::json!({ "reported_by": snap.name, "dcs_reachable": snap.dcs_reachable, "view": snap.view }))).into_response()
}

async fn metrics(State(s): State<Arc<ApiState>>, headers: HeaderMap) -> Response {
    if let Err(r) = read_allowed(&s, &headers, "GET /metrics") {
        return r;
    }
    let snap = s.shared.snapshot();
    let name = &snap.name;
    let b = |v: bool| if v { 1 } else { 0 };
    let m = snap.member.as_ref();
    let mut out = String::new();
    let mut metric = |n: &str, help: &str, kind: &str, v: String| {
        out.push_str(&format!(
            "# HELP {n} {help}\n# TYPE {n} {kind}\n{n}{{node=\"{name}\"}} {v}\n"
        ));
    };
    metric(
        "pgha_agent_is_leader",
        "1 when this node holds the leader lease.",
        "gauge",
        b(snap.is_leader).to_string(),
    );
    metric(
        "pgha_agent_dcs_reachable",
        "1 when the last DCS round-trip succeeded.",
        "gauge",
        b(snap.dcs_reachable).to_string(),
    );
    metric(
        "pgha_agent_paused",
        "1 while automatic failover is paused.",
        "gauge",
        b(snap.paused).to_string(),
    );
    metric(
        "pgha_postgres_running",
        "1 when the local PostgreSQL runs.",
        "gauge",
        b(m.is_some_and(|m| m.pg_state == PgState::Running)).to_string(),
    );
    metric(
        "pgha_replica_streaming",
        "1 when the local replica's WAL receiver streams.",
        "gauge",
        b(m.is_some_and(|m| m.streaming)).to_string(),
    );
    metric(
        "pgha_promotions_total",
        "Promotions done by this agent.",
        "counter",
        s.shared.promotions.load(Ordering::Relaxed).to_string(),
    );
    metric(
        "pgha_fencings_total",
        "Times this agent stopped its PostgreSQL to fence it.",
        "counter",
        s.shared.fencings.load(Ordering::Relaxed).to_string(),
    );
    (
        StatusCode::OK,
        [("content-type", "text/plain; version=0.0.4")],
        out,
    )
        .into_response()
}

/// Constant-time token comparison; refusals are logged without the token.
#[allow(
    clippy::result_large_err,
    reason = "the refusal is sent as-is; boxing buys nothing here"
)]
fn authorized(s: &ApiState, headers: &HeaderMap, what: &str) -> Result<(), Response> {
    let Some(token) = &s.token else { return Ok(()) };
    let given = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let (a, b) = (given.as_bytes(), token.expose().as_bytes());
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        diff |= usize::from(a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0));
    }
    if diff == 0 {
        Ok(())
    } else {
        tracing::warn!("refused unauthenticated {what} request");
        Err((StatusCode::UNAUTHORIZED, "missing or wrong bearer token\n").into_response())
    }
}

#[derive(Debug, Deserialize)]
pub struct SwitchoverBody {
    pub to: String,
    /// Not before this time (ms since epoch).
    pub at_ms: Option<u64>,
}

async fn do_request(
    s: Arc<ApiState>,
    headers: HeaderMap,
    kind: RequestKind,
    body: SwitchoverBody,
) -> Response {
    if let Err(r) = authorized(&s, &headers, "switchover/failover") {
        return r;
    }
    match ops::request(s.dcs.as_ref(), &s.config, kind, &body.to, body.at_ms).await {
        Ok(req) => {
            s.shared.wake.notify_one();
            (StatusCode::ACCEPTED, Json(req)).into_response()
        }
        Err(e) => (StatusCode::CONFLICT, format!("{e}\n")).into_response(),
    }
}

async fn switchover(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    Json(body): Json<SwitchoverBody>,
) -> Response {
    do_request(s, headers, RequestKind::Switchover, body).await
}

async fn failover(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    Json(body): Json<SwitchoverBody>,
) -> Response {
    do_request(s, headers, RequestKind::Failover, body).await
}

async fn pause(State(s): State<Arc<ApiState>>, headers: HeaderMap) -> Response {
    set_paused(s, headers, true).await
}

async fn resume(State(s): State<Arc<ApiState>>, headers: HeaderMap) -> Response {
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
}

/// The leader, cut off from the DCS, asks whether it may keep serving. Yes only when this node
/// cannot reach the DCS either; then this node also promises not to take the lease for one TTL.
async fn failsafe(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    Json(body): Json<FailsafeBody>,
) -> Response {
    if let Err(r) = authorized(&s, &headers, "failsafe") {
        return r;
    }
    match s.shared.confirm_failsafe(&body.leader) {
        Ok(()) => {}
        Err(why) => return (StatusCode::CONFLICT, format!("{why}\n")).into_response(),
    }
    (StatusCode::OK, "ok\n").into_response()
}
