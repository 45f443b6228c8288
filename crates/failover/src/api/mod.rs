//! The agent's HTTP API, with Patroni's semantics so HAProxy configurations, Kubernetes probes
//! and scripts written for Patroni work unchanged (docs/FAILOVER.md lists every endpoint).
//!
//! - Health checks ([`health::PATHS`]: `/` = `/primary`, `/replica?lag=&tag_k=v`, `/sync`,
//!   `/liveness`, `/readiness`, ...) answer GET (with the `/patroni` document), HEAD and
//!   OPTIONS (status only: HAProxy's `option httpchk` sends `OPTIONS / HTTP/1.0`), 200 or 503.
//! - `GET /patroni`, `/cluster`, `/history`, `/metrics`: Patroni's documents and metric names,
//!   plus pgha's.
//! - `POST /switchover|/failover` (Patroni's body), `DELETE /switchover`, `POST /pause|/resume`
//!   need `Authorization: Bearer <failover.api_token>`; with `failover.api_restrict_reads`
//!   so do the documents (`GET /patroni`, `/cluster`, `/metrics`, and GET bodies of checks).
//! - `GET|PATCH|PUT /config`: the cluster settings in the DCS; `POST /reload`: pgha.toml
//!   again (both need the token to change anything).
//! - `POST /failsafe`: the agents' failsafe round (token too); `GET /failsafe`: the last
//!   leader's failsafe topology (Patroni's `/failsafe` key), 502 while failsafe is off.

mod actions;
mod config;
pub mod health;
mod requests;
mod status;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, on, post, MethodFilter};
use axum::{Json, Router};
use tokio_util::sync::CancellationToken;

use pgha_config::{PghaConfig, Secret};

use crate::agent::Shared;
use crate::dcs::Dcs;
pub use actions::FailsafeBody;
pub use status::PATRONI_API_VERSION;

/// What the handlers need.
#[derive(Debug)]
pub struct ApiState {
    pub shared: Arc<Shared>,
    pub dcs: Arc<dyn Dcs>,
    pub config: Arc<PghaConfig>,
    pub token: Option<Secret>,
}

pub fn router(state: Arc<ApiState>) -> Router {
    let check = MethodFilter::GET
        .or(MethodFilter::HEAD)
        .or(MethodFilter::OPTIONS);
    let mut r = Router::new();
    for p in health::PATHS {
        r = r.route(p, on(check, health_check));
    }
    r.route("/patroni", on(check, patroni))
        .route("/cluster", on(check, cluster))
        .route("/history", on(check, history))
        .route("/metrics", get(metrics))
        .route(
            "/switchover",
            post(actions::switchover).delete(actions::cancel_switchover),
        )
        .route("/failover", post(actions::failover))
        .route("/pause", post(actions::pause))
        .route("/resume", post(actions::resume))
        .route("/failsafe", get(failsafe_topology).post(actions::failsafe))
        .route(
            "/config",
            get(config::get).patch(config::patch).put(config::put),
        )
        .route("/reload", post(config::reload))
        .route(
            "/restart",
            post(requests::restart).delete(requests::cancel_restart),
        )
        .route("/reinitialize", post(requests::reinitialize))
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
    serve_on(listener, state, cancel, tls).await
}

/// [`serve`] on a bound listener.
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    state: Arc<ApiState>,
    cancel: CancellationToken,
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
) -> std::io::Result<()> {
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

/// The config the agent loop runs with (pgha.toml with the cluster settings over it).
fn running_config<'a>(s: &'a ApiState, snap: &'a crate::agent::Snapshot) -> &'a PghaConfig {
    snap.config.as_deref().unwrap_or(&s.config)
}

fn code(ok: bool) -> StatusCode {
    if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

/// GET, HEAD or OPTIONS on a health path: 200 or 503; a GET also carries the `/patroni`
/// document (unless reads are restricted and no token came: the code alone then).
async fn health_check(
    State(s): State<Arc<ApiState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let snap = s.shared.snapshot();
    let facts = health::Facts::from_snapshot(
        &snap,
        running_config(&s, &snap),
        tokio::time::Instant::now(),
    );
    let ok = match health::answer(uri.path(), &q, &facts) {
        Some(Ok(ok)) => ok,
        Some(Err(bad)) => return (StatusCode::BAD_REQUEST, format!("{}\n", bad.0)).into_response(),
        None => return StatusCode::NOT_FOUND.into_response(),
    };
    let status_only = method != Method::GET
        || matches!(uri.path(), "/liveness" | "/readiness")
        || (s.config.failover.api_restrict_reads && authorized_quietly(&s, &headers).is_err());
    if status_only {
        return code(ok).into_response();
    }
    (code(ok), Json(status::patroni(&s, &snap, &facts))).into_response()
}

async fn patroni(State(s): State<Arc<ApiState>>, method: Method, headers: HeaderMap) -> Response {
    if let Err(r) = read_allowed(&s, &headers, "GET /patroni") {
        return r;
    }
    if method == Method::OPTIONS {
        return StatusCode::OK.into_response();
    }
    let snap = s.shared.snapshot();
    let facts = health::Facts::from_snapshot(
        &snap,
        running_config(&s, &snap),
        tokio::time::Instant::now(),
    );
    (StatusCode::OK, Json(status::patroni(&s, &snap, &facts))).into_response()
}

async fn cluster(State(s): State<Arc<ApiState>>, method: Method, headers: HeaderMap) -> Response {
    if let Err(r) = read_allowed(&s, &headers, "GET /cluster") {
        return r;
    }
    if method == Method::OPTIONS {
        return StatusCode::OK.into_response();
    }
    let snap = s.shared.snapshot();
    (StatusCode::OK, Json(status::cluster(&s, &snap))).into_response()
}

async fn history(State(s): State<Arc<ApiState>>, method: Method, headers: HeaderMap) -> Response {
    if let Err(r) = read_allowed(&s, &headers, "GET /history") {
        return r;
    }
    if method == Method::OPTIONS {
        return StatusCode::OK.into_response();
    }
    (StatusCode::OK, Json(status::history(&s.shared.snapshot()))).into_response()
}

/// Patroni's `GET /failsafe`: `{node: its /patroni URL}` for every node the last leader's
/// failsafe round asks (only those may be elected), 502 while the last leader runs with
/// failsafe off (or none published one yet).
async fn failsafe_topology(State(s): State<Arc<ApiState>>, headers: HeaderMap) -> Response {
    if let Err(r) = read_allowed(&s, &headers, "GET /failsafe") {
        return r;
    }
    let snap = s.shared.snapshot();
    let status = snap.view.as_ref().and_then(|v| v.status.as_ref());
    match crate::election::Rules::failsafe_topology(status) {
        Some(t) => (StatusCode::OK, Json(t.clone())).into_response(),
        None => StatusCode::BAD_GATEWAY.into_response(),
    }
}

async fn metrics(State(s): State<Arc<ApiState>>, headers: HeaderMap) -> Response {
    if let Err(r) = read_allowed(&s, &headers, "GET /metrics") {
        return r;
    }
    let snap = s.shared.snapshot();
    let facts = health::Facts::from_snapshot(
        &snap,
        running_config(&s, &snap),
        tokio::time::Instant::now(),
    );
    (
        StatusCode::OK,
        [("content-type", "text/plain; version=0.0.4")],
        status::metrics(&s, &snap, &facts),
    )
        .into_response()
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

/// The bearer token matches (constant-time), or no token is configured.
fn authorized_quietly(s: &ApiState, headers: &HeaderMap) -> Result<(), ()> {
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
        Err(())
    }
}

/// [`authorized_quietly`], with the refusal logged (without the token) and answered 401.
#[allow(
    clippy::result_large_err,
    reason = "the refusal is sent as-is; boxing buys nothing here"
)]
fn authorized(s: &ApiState, headers: &HeaderMap, what: &str) -> Result<(), Response> {
    authorized_quietly(s, headers).map_err(|()| {
        tracing::warn!("refused unauthenticated {what} request");
        (StatusCode::UNAUTHORIZED, "missing or wrong bearer token\n").into_response()
    })
}

#[cfg(test)]
mod tests;
