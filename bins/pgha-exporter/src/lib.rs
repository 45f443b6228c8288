//! `pgha-exporter`: serves `/metrics` (the local node, the cluster's `pgha_*`, the process)
//! and `/probe?target=NODE` (any configured node), postgres_exporter-style, with axum (GET
//! and HEAD, keep-alive), over TLS and behind basic authentication when `--web.config.file`
//! asks for them (the exporter-toolkit format postgres_exporter reads).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use std::collections::HashMap;

use anyhow::Context;
use axum::extract::{Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use clap::Parser;
use pgha_monitoring::web_config::WebConfig;
use pgha_monitoring::{Exporter, MonitoringError, ScrapeKind};
use tokio::net::TcpListener;

/// Prometheus exporter for a pgha cluster (postgres_exporter-compatible metric names).
#[derive(Debug, Parser)]
#[command(name = "pgha-exporter", version, about)]
pub struct Cli {
    /// Cluster config file [default: $PGHA_CONFIG, else ./pgha.toml]
    #[arg(long, short = 'c', value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// The node `/metrics` reports [default: the first node in the config].
    #[arg(long)]
    pub node: Option<String>,
    /// Listen address [default: monitoring.listen, 127.0.0.1:9187].
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// More log output (-v info, -vv debug); RUST_LOG overrides.
    #[arg(long, short = 'v', action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// TLS and basic-auth settings in the Prometheus exporter-toolkit format
    /// (`tls_server_config.cert_file/key_file`, `basic_auth_users` with bcrypt hashes), as
    /// postgres_exporter's flag of the same name.
    #[arg(long = "web.config.file", value_name = "PATH")]
    pub web_config_file: Option<PathBuf>,
    /// Milliseconds between OTLP metric pushes (when monitoring.otlp_endpoint is set).
    #[arg(long, default_value_t = 15_000, hide = true)]
    pub otlp_interval_ms: u64,
}

/// Loads the config, builds the exporter and serves until interrupted.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let loaded = pgha_config::load(pgha_config::ConfigSource::locate(cli.config.as_deref()))?;
    let config = &loaded.config;
    let _otlp_guard = pgha_startup::init_logging(
        "pgha-exporter",
        pgha_startup::LogProfile::Command {
            verbose: cli.verbose,
        },
        config.monitoring.otlp_endpoint.as_deref(),
    );
    let queries = match &config.monitoring.queries_file {
        Some(path) => pgha_monitoring::queries::load(path)?,
        None => Vec::new(),
    };
    let web = match &cli.web_config_file {
        Some(path) => WebConfig::load(path)?,
        None => WebConfig::none(),
    };
    let web = Arc::new(web);
    let exporter = Arc::new(Exporter::new(config, cli.node.as_deref(), queries)?);
    let addr = cli.listen.unwrap_or(config.monitoring.listen);
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("listen on {addr}"))?;
    eprintln!(
        "pgha-exporter: serving {}://{}/metrics and /probe?target=({}){}",
        if web.tls.is_some() { "https" } else { "http" },
        listener.local_addr()?,
        exporter.target_names().join("|"),
        if web.requires_auth() {
            ", basic auth"
        } else {
            ""
        }
    );
    if let Some(ep) = &config.monitoring.otlp_endpoint {
        match pgha_telemetry::Endpoint::parse(ep) {
            Ok(ep) => {
                tokio::spawn(push_metrics(
                    exporter.clone(),
                    ep,
                    std::time::Duration::from_millis(cli.otlp_interval_ms.max(100)),
                ));
            }
            Err(e) => tracing::warn!(error = %e, "OTLP metrics export off"),
        }
    }
    serve(listener, exporter, web).await
}

/// Pushes a scrape of the local node to the OTLP endpoint every `every`, forever.
pub async fn push_metrics(
    exporter: Arc<Exporter>,
    ep: pgha_telemetry::Endpoint,
    every: std::time::Duration,
) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let Ok(m) = exporter.scrape(ScrapeKind::Local, None).await else {
            continue;
        };
        let points: Vec<pgha_telemetry::MetricPoint> = m
            .families()
            .flat_map(|(name, fam)| {
                fam.samples
                    .iter()
                    .map(move |(labels, value)| pgha_telemetry::MetricPoint {
                        name: name.clone(),
                        description: fam.help.clone(),
                        monotonic: fam.kind == pgha_monitoring::metrics::Kind::Counter,
                        labels: labels.clone(),
                        value: *value,
                    })
            })
            .collect();
        let ep = ep.clone();
        let sent = tokio::task::spawn_blocking(move || {
            pgha_telemetry::otlp::export_metrics(&ep, "pgha-exporter", &points)
        })
        .await;
        if let Ok(Err(e)) = sent {
            tracing::debug!(error = %e, "OTLP metrics export failed");
        }
    }
}

/// What the handlers share.
#[derive(Clone)]
struct App {
    exporter: Arc<Exporter>,
    web: Arc<WebConfig>,
}

/// The HTTP routes (`/metrics`, `/probe?target=NODE`, `/`; GET and HEAD, keep-alive), behind
/// basic authentication when the web config has users.
pub fn router(exporter: Arc<Exporter>, web: Arc<WebConfig>) -> axum::Router {
    let app = App { exporter, web };
    axum::Router::new()
        .route("/metrics", get(metrics))
        .route("/probe", get(probe))
        .route("/", get(index))
        .layer(axum::middleware::from_fn_with_state(app.clone(), auth))
        .with_state(app)
}

/// Serves until ctrl-c: HTTPS when the web config names a certificate, else HTTP.
pub async fn serve(
    listener: TcpListener,
    exporter: Arc<Exporter>,
    web: Arc<WebConfig>,
) -> anyhow::Result<()> {
    let tls = match &web.tls {
        Some((cert, key)) => Some(pgha_tls::server_config(cert, key)?),
        None => None,
    };
    let app = router(exporter, web);
    let stop = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot wait for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    match tls {
        Some(cfg) => {
            axum::serve(pgha_tls::TlsListener::new(listener, cfg), app)
                .with_graceful_shutdown(stop)
                .await?
        }
        None => {
            axum::serve(listener, app)
                .with_graceful_shutdown(stop)
                .await?
        }
    }
    Ok(())
}

async fn auth(State(app): State<App>, req: Request, next: Next) -> Response {
    if !app.web.requires_auth() {
        return next.run(req).await;
    }
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    // Known credentials pass at once; bcrypt (slow on purpose) runs off the async thread.
    let ok = app.web.known(header.as_deref()) || {
        let web = app.web.clone();
        tokio::task::spawn_blocking(move || web.authorized(header.as_deref()))
            .await
            .unwrap_or(false)
    };
    if ok {
        next.run(req).await
    } else {
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Basic realm=\"pgha-exporter\"")],
            "Unauthorized\n",
        )
            .into_response()
    }
}

const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

fn text(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain")], body).into_response()
}

async fn metrics(State(app): State<App>) -> Response {
    match app.exporter.scrape(ScrapeKind::Local, None).await {
        Ok(m) => ([(header::CONTENT_TYPE, TEXT_FORMAT)], m.encode()).into_response(),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    }
}

async fn probe(State(app): State<App>, Query(q): Query<HashMap<String, String>>) -> Response {
    let Some(target) = q.get("target") else {
        return text(StatusCode::BAD_REQUEST, "missing ?target=NODE\n".into());
    };
    match app.exporter.scrape(ScrapeKind::Probe, Some(target)).await {
        Ok(m) => ([(header::CONTENT_TYPE, TEXT_FORMAT)], m.encode()).into_response(),
        Err(e @ MonitoringError::UnknownTarget(_)) => {
            text(StatusCode::BAD_REQUEST, format!("{e}\n"))
        }
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    }
}

async fn index() -> Html<&'static str> {
    Html("<html><body><h1>pgha-exporter</h1><a href=\"/metrics\">/metrics</a></body></html>\n")
}
