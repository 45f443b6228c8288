//! An axum service that routes through a `pgha_router::Router` end to end: writes to the
//! primary, reads to replicas, read-your-writes through a token header, health and metrics.
//!
//! ```sh
//! cargo xtask cluster up                       # a primary + 2 replicas; prints PGHA_CONFIG
//! export PGHA_CONFIG=$PWD/.pgha/pgha.toml      # or DATABASE_URL=postgres://u:p@h1,h2,h3/db
//! cargo run -p pgha-router --example service -- 127.0.0.1:3000
//! # or members from the agents' /cluster (nodes joining later are used without a restart):
//! ROUTER_DISCOVERY=agents cargo run -p pgha-router --example service -- 127.0.0.1:3000
//! curl -si -XPOST 'localhost:3000/notes?text=hello'   # -> id, and header x-write-token
//! curl -s -H 'x-write-token: 0/3000148' localhost:3000/notes/1
//! curl -s localhost:3000/nodes; curl -s localhost:3000/metrics
//! ```

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json};
use pgha_router::layer::{Carrier, ReadYourWritesLayer, Session};
use pgha_router::{CancellationToken, Router as DbRouter};
use serde::{Deserialize, Serialize};

const TOKEN_HEADER: &str = "x-write-token";

#[derive(Deserialize)]
struct NewNote {
    text: String,
}

#[derive(Serialize, sqlx::FromRow)]
struct Note {
    id: i64,
    text: String,
    /// Which node answered, to see the routing at work.
    served_by_replica: bool,
}

#[derive(Serialize)]
struct NodeRow {
    name: String,
    address: String,
    state: String,
    role: String,
    writer: bool,
    lag_bytes: Option<u64>,
    lag_seconds: Option<f64>,
}

struct AppError(anyhow::Error);

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        (StatusCode::SERVICE_UNAVAILABLE, format!("{:#}\n", self.0)).into_response()
    }
}

impl<E: Into<anyhow::Error>> From<E> for AppError {
    fn from(e: E) -> Self {
        AppError(e.into())
    }
}

type Db = Arc<DbRouter>;

/// The write token travels in the `x-write-token` header (ReadYourWritesLayer): a 2xx answer
/// to this POST carries it, and a request that sends it back reads the note even on a replica.
async fn create(
    Extension(s): Extension<Session>,
    Query(n): Query<NewNote>,
) -> Result<impl IntoResponse, AppError> {
    let id: i64 = sqlx::query_scalar("INSERT INTO notes (text) VALUES ($1) RETURNING id")
        .bind(&n.text)
        .fetch_one(s.router().writer())
        .await?;
    Ok((StatusCode::CREATED, Json(serde_json_id(id))))
}

fn serde_json_id(id: i64) -> std::collections::BTreeMap<&'static str, i64> {
    [("id", id)].into()
}

async fn read(Extension(s): Extension<Session>, Path(id): Path<i64>) -> Result<Response, AppError> {
    let note: Option<Note> = sqlx::query_as(
        "SELECT id, text, pg_is_in_recovery() AS served_by_replica FROM notes WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(&s.reader())
    .await?;
    Ok(match note {
        Some(n) => Json(n).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    })
}

async fn nodes(State(db): State<Db>) -> Json<Vec<NodeRow>> {
    Json(
        db.nodes()
            .into_iter()
            .map(|n| NodeRow {
                name: n.name,
                address: n.address,
                state: format!("{:?}", n.state).to_lowercase(),
                role: n
                    .role
                    .map(|r| format!("{r:?}").to_lowercase())
                    .unwrap_or_default(),
                writer: n.is_writer,
                lag_bytes: n.lag_bytes,
                lag_seconds: n.lag.map(|d| d.as_secs_f64()),
            })
            .collect(),
    )
}

/// Prometheus text: `pgha_router_*` counters and per-node state.
async fn metrics(State(db): State<Db>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            pgha_router::prometheus::CONTENT_TYPE,
        )],
        db.prometheus(),
    )
}

async fn build_router(shutdown: CancellationToken) -> anyhow::Result<DbRouter> {
    let b = DbRouter::builder().shutdown_token(shutdown);
    // DATABASE_URL (+ DATABASE_READ_URL) when set, else the pgha.toml of PGHA_CONFIG: its
    // agents' /cluster when they run (ROUTER_DISCOVERY=agents), else its [[nodes]].
    let b = if std::env::var_os("DATABASE_URL").is_some() {
        b.from_env()
    } else {
        let loaded = pgha_config::load(pgha_config::ConfigSource::locate(None))?;
        if std::env::var("ROUTER_DISCOVERY").as_deref() == Ok("agents") {
            b.agents(&loaded.config, None)
        } else {
            b.config(&loaded.config, None)
        }
    };
    Ok(b.build().await?)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sqlx=warn".into()),
        )
        .init();
    let listen = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:3000".into());
    let shutdown = CancellationToken::new();
    let db = Arc::new(build_router(shutdown.clone()).await?);
    sqlx::query("CREATE TABLE IF NOT EXISTS notes (id bigserial PRIMARY KEY, text text NOT NULL)")
        .execute(db.writer())
        .await?;
    let app = axum::Router::new()
        .route("/notes", post(create))
        .route("/notes/{id}", get(read))
        .route("/nodes", get(nodes))
        .route("/metrics", get(metrics))
        .with_state(db.clone())
        .layer(
            ReadYourWritesLayer::new(db.clone())
                .carrier(Carrier::Header(HeaderName::from_static(TOKEN_HEADER))),
        );
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    tracing::info!(%listen, primary = ?db.primary_name(), "serving");
    let stop = shutdown.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = tokio::signal::ctrl_c().await;
            stop.cancel();
        })
        .await?;
    db.close().await;
    Ok(())
}
