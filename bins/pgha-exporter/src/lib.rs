//! `pgha-exporter`: serves `/metrics` (the local node, the cluster's `pgha_*`, the process)
//! and `/probe?target=NODE` (any configured node), postgres_exporter-style, over a minimal
//! HTTP/1.1 server (GET only, one response per connection).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use pgha_monitoring::{Exporter, MonitoringError, ScrapeKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

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
    let exporter = Arc::new(Exporter::new(config, cli.node.as_deref(), queries)?);
    let addr = cli.listen.unwrap_or(config.monitoring.listen);
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("listen on {addr}"))?;
    eprintln!(
        "pgha-exporter: serving http://{}/metrics and /probe?target=({})",
        listener.local_addr()?,
        exporter.target_names().join("|")
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
    serve(listener, exporter).await
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

/// Accepts connections until ctrl-c.
pub async fn serve(listener: TcpListener, exporter: Arc<Exporter>) -> anyhow::Result<()> {
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        continue;
                    }
                };
                let exporter = exporter.clone();
                tokio::spawn(async move {
                    if let Err(e) = handle(stream, &exporter).await {
                        tracing::debug!(error = %e, "request failed");
                    }
                });
            }
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

async fn handle(mut stream: TcpStream, exporter: &Exporter) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    // Read the request head (bounded: 16 KiB, 10 s).
    let read = async {
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16 * 1024 {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Ok::<_, std::io::Error>(())
    };
    match tokio::time::timeout(std::time::Duration::from_secs(10), read).await {
        Ok(r) => r?,
        Err(_) => return Ok(()),
    }
    let head = String::from_utf8_lossy(&buf);
    let mut parts = head.lines().next().unwrap_or("").split_whitespace();
    let (method, uri) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
    let (path, query) = uri.split_once('?').unwrap_or((uri, ""));
    let (status, ctype, body) = if method != "GET" {
        (
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n".to_string(),
        )
    } else {
        route(exporter, path, query).await
    };
    let mut resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    resp.push_str(&body);
    // One write, no Nagle: a separate small head would wait for the client's delayed ACK.
    stream.set_nodelay(true)?;
    stream.write_all(resp.as_bytes()).await?;
    stream.shutdown().await
}

const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

async fn route(
    exporter: &Exporter,
    path: &str,
    query: &str,
) -> (&'static str, &'static str, String) {
    match path {
        "/metrics" => match exporter.scrape(ScrapeKind::Local, None).await {
            Ok(m) => ("200 OK", TEXT_FORMAT, m.encode()),
            Err(e) => ("500 Internal Server Error", "text/plain", format!("{e}\n")),
        },
        "/probe" => {
            let target = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("target="))
                .map(percent_decode);
            let Some(target) = target else {
                return (
                    "400 Bad Request",
                    "text/plain",
                    "missing ?target=NODE\n".into(),
                );
            };
            match exporter.scrape(ScrapeKind::Probe, Some(&target)).await {
                Ok(m) => ("200 OK", TEXT_FORMAT, m.encode()),
                Err(e @ MonitoringError::UnknownTarget(_)) => {
                    ("400 Bad Request", "text/plain", format!("{e}\n"))
                }
                Err(e) => ("500 Internal Server Error", "text/plain", format!("{e}\n")),
            }
        }
        "/" => (
            "200 OK",
            "text/html",
            "<html><body><h1>pgha-exporter</h1><a href=\"/metrics\">/metrics</a></body></html>\n"
                .into(),
        ),
        _ => ("404 Not Found", "text/plain", "not found\n".into()),
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
