//! The exporter: one persistent connection per configured node, scrapes bounded by a
//! per-target timeout, postgres_exporter's metric families plus pgha's HA state.
//!
//! Every scrape asks every node for its replication status concurrently (each within the
//! timeout) so lag is derived against the live primary; only the scraped target runs the
//! full collector set. A down or slow node costs at most the timeout and shows `pg_up 0`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgha_config::PghaConfig;
use pgha_postgres::{connect_params, ConnectParams};
use pgha_replication::status::{ClusterStatus, NodeStatus};
use sqlx::PgConnection;

use crate::metrics::MetricSet;
use crate::queries::CustomQuery;
use crate::{collect, ha, process, MonitoringError, Result};

/// What one scrape asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScrapeKind {
    /// `/metrics`: the local node's metrics, the exporter's process and the cluster's `pgha_*`.
    Local,
    /// `/probe?target=`: that node's metrics only.
    Probe,
}

/// One configured node and its cached connection.
#[derive(Debug)]
struct Target {
    name: String,
    server: String,
    params: ConnectParams,
    conn: tokio::sync::Mutex<Option<PgConnection>>,
    cache: Mutex<HashMap<String, (Instant, MetricSet)>>,
    scrapes: AtomicU64,
    /// (duration seconds, error 0/1) of the last full scrape.
    last: Mutex<(f64, f64)>,
}

/// What collecting one target produced.
#[derive(Debug)]
struct Outcome {
    status: NodeStatus,
    metrics: MetricSet,
    up: bool,
    errors: Vec<String>,
}

/// The exporter state shared by every HTTP request.
#[derive(Debug)]
pub struct Exporter {
    cluster: String,
    targets: Vec<Arc<Target>>,
    local: usize,
    timeout: Duration,
    queries: Arc<Vec<CustomQuery>>,
    /// When each replica was last seen with 0 bytes of lag: the lag-in-seconds fallback for a
    /// replica that has not replayed a commit since it started (no replay timestamp).
    caught_up: Mutex<HashMap<String, Instant>>,
}

impl Exporter {
    /// `local` names the node `/metrics` reports (default: the first node).
    pub fn new(
        config: &PghaConfig,
        local: Option<&str>,
        queries: Vec<CustomQuery>,
    ) -> Result<Self> {
        let timeout = config.monitoring.target_timeout;
        let mut targets = Vec::new();
        for node in &config.nodes {
            let mut params =
                connect_params(config, node).map_err(|source| MonitoringError::Connect {
                    target: node.name.clone(),
                    source,
                })?;
            params.connect_timeout = params.connect_timeout.min(timeout);
            params.statement_timeout = Some(timeout);
            params.application_name = "pgha-exporter".into();
            targets.push(Arc::new(Target {
                name: node.name.clone(),
                server: node.address(),
                params,
                conn: tokio::sync::Mutex::new(None),
                cache: Mutex::new(HashMap::new()),
                scrapes: AtomicU64::new(0),
                last: Mutex::new((0.0, 0.0)),
            }));
        }
        let local = match local {
            Some(n) => targets
                .iter()
                .position(|t| t.name == n)
                .ok_or_else(|| MonitoringError::UnknownTarget(n.into()))?,
            None => 0,
        };
        if targets.is_empty() {
            return Err(MonitoringError::UnknownTarget(
                "(no nodes configured)".into(),
            ));
        }
        Ok(Exporter {
            cluster: config.cluster.name.clone(),
            targets,
            local,
            timeout,
            queries: Arc::new(queries),
            caught_up: Mutex::new(HashMap::new()),
        })
    }

    /// Names of the nodes this exporter can probe.
    pub fn target_names(&self) -> Vec<String> {
        self.targets.iter().map(|t| t.name.clone()).collect()
    }

    /// One scrape; `target` None means the local node. Traced as span `scrape`.
    pub async fn scrape(&self, kind: ScrapeKind, target: Option<&str>) -> Result<MetricSet> {
        use tracing::Instrument;
        let span = tracing::info_span!("scrape", target = target.unwrap_or("(local)"));
        self.scrape_inner(kind, target).instrument(span).await
    }

    async fn scrape_inner(&self, kind: ScrapeKind, target: Option<&str>) -> Result<MetricSet> {
        let idx = match target {
            None => self.local,
            Some(n) => self
                .targets
                .iter()
                .position(|t| t.name == n)
                .ok_or_else(|| MonitoringError::UnknownTarget(n.into()))?,
        };
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for (i, t) in self.targets.iter().enumerate() {
            let (t, queries, timeout) = (t.clone(), self.queries.clone(), self.timeout);
            tasks.spawn(async move { (i, t.collect(i == idx, timeout, &queries).await) });
        }
        let mut outcomes: Vec<Option<Outcome>> = (0..self.targets.len()).map(|_| None).collect();
        while let Some(joined) = tasks.join_next().await {
            if let Ok((i, o)) = joined {
                outcomes[i] = Some(o);
            }
        }
        let statuses = outcomes
            .iter()
            .zip(&self.targets)
            .map(|(o, t)| match o {
                Some(o) => o.status.clone(),
                None => NodeStatus::unreachable(
                    &t.name,
                    t.server.clone(),
                    "collector task failed".into(),
                ),
            })
            .collect();
        let mut status = ClusterStatus::derive(self.cluster.clone(), statuses);
        self.fill_unknown_lag(&mut status);
        let target = &self.targets[idx];
        let mut m = MetricSet::new();
        let (up, errors) = match outcomes[idx].take() {
            Some(o) => {
                m.merge(o.metrics);
                (o.up, o.errors)
            }
            None => (false, vec!["collector task failed".into()]),
        };
        m.gauge(
            "pg_up",
            "Whether the last scrape of metrics from PostgreSQL was able to connect to the server (1 for yes, 0 for no).",
            &[],
            if up { 1.0 } else { 0.0 },
        );
        if up {
            if let Some(node) = status.node(&target.name) {
                ha::replication(node, &target.server, &mut m);
            }
        }
        for e in &errors {
            tracing::warn!(target_node = %target.name, error = %e, "scrape error");
        }
        let scrapes = target.scrapes.fetch_add(1, Ordering::Relaxed) + 1;
        let error = if errors.is_empty() { 0.0 } else { 1.0 };
        let duration = started.elapsed().as_secs_f64();
        if let Ok(mut last) = target.last.lock() {
            *last = (duration, error);
        }
        m.gauge(
            "pg_exporter_last_scrape_duration_seconds",
            "Duration of the last scrape of metrics from PostgreSQL.",
            &[],
            duration,
        );
        m.gauge(
            "pg_exporter_last_scrape_error",
            "Whether the last scrape of metrics from PostgreSQL resulted in an error (1 for error, 0 for success).",
            &[],
            error,
        );
        m.counter(
            "pg_exporter_scrapes_total",
            "Total number of times PostgreSQL was scraped for metrics.",
            &[],
            scrapes as f64,
        );
        if kind == ScrapeKind::Local {
            ha::cluster(&status, &mut m);
            process::collect(&mut m);
            m.gauge(
                "pgha_exporter_build_info",
                "pgha-exporter version",
                &[("version", env!("CARGO_PKG_VERSION"))],
                1.0,
            );
        }
        Ok(m)
    }
}

impl Exporter {
    fn fill_unknown_lag(&self, status: &mut ClusterStatus) {
        let Ok(mut seen) = self.caught_up.lock() else {
            return;
        };
        for n in status.nodes.iter_mut() {
            match n.lag_bytes {
                Some(0) => {
                    seen.insert(n.name.clone(), Instant::now());
                }
                Some(_) if n.lag_seconds.is_none() => {
                    n.lag_seconds = seen.get(&n.name).map(|t| t.elapsed().as_secs_f64());
                }
                _ => {}
            }
        }
    }
}

impl Target {
    async fn collect(&self, full: bool, timeout: Duration, queries: &[CustomQuery]) -> Outcome {
        let fut = async {
            let mut guard = self.conn.lock().await;
            let mut conn = match guard.take() {
                Some(c) => c,
                None => self
                    .params
                    .connect()
                    .await
                    .map_err(|source| MonitoringError::Connect {
                        target: self.name.clone(),
                        source,
                    })?,
            };
            let (outcome, keep) = self.run(&mut conn, full, queries).await;
            if keep {
                *guard = Some(conn);
            }
            Ok::<_, MonitoringError>(outcome)
        };
        match tokio::time::timeout(timeout, fut).await {
            Ok(Ok(o)) => o,
            Ok(Err(e)) => self.down(e.to_string()),
            Err(_) => self.down(
                MonitoringError::Timeout {
                    target: self.name.clone(),
                    timeout,
                }
                .to_string(),
            ),
        }
    }

    fn down(&self, error: String) -> Outcome {
        Outcome {
            status: NodeStatus::unreachable(&self.name, self.server.clone(), error.clone()),
            metrics: MetricSet::new(),
            up: false,
            errors: vec![error],
        }
    }

    /// Runs the status query and, when `full`, every collector. Returns whether the
    /// connection is still good to keep.
    async fn run(
        &self,
        conn: &mut PgConnection,
        full: bool,
        queries: &[CustomQuery],
    ) -> (Outcome, bool) {
        let status = match NodeStatus::query(conn, &self.name, self.server.clone()).await {
            Ok(s) => s,
            Err(e) => return (self.down(e.to_string()), false),
        };
        let mut m = MetricSet::new();
        let mut errors = Vec::new();
        let mut keep = true;
        if full {
            let s = self.server.as_str();
            let mut note = |r: Result<()>| {
                if let Err(e) = r {
                    if let MonitoringError::Query { source, .. } = &e {
                        keep &= matches!(source, sqlx::Error::Database(_));
                    }
                    errors.push(e.to_string());
                    false
                } else {
                    true
                }
            };
            let mut timed = |m: &mut MetricSet, name: &str, started: Instant, r: Result<()>| {
                let ok = note(r);
                let l = [("collector", name)];
                m.gauge(
                    "pg_scrape_collector_duration_seconds",
                    "postgres_exporter: Duration of a collector scrape.",
                    &l,
                    started.elapsed().as_secs_f64(),
                );
                m.gauge(
                    "pg_scrape_collector_success",
                    "postgres_exporter: Whether a collector succeeded.",
                    &l,
                    if ok { 1.0 } else { 0.0 },
                );
            };
            let t = Instant::now();
            let basics = collect::basics(conn, s, &mut m).await;
            let (in_recovery, version_num) = basics
                .as_ref()
                .map(|b| (b.in_recovery, b.version_num))
                .unwrap_or((false, 0));
            timed(&mut m, "static", t, basics.map(|_| ()));
            let t = Instant::now();
            let r = collect::settings(conn, s, &mut m).await;
            timed(&mut m, "settings", t, r);
            let t = Instant::now();
            let r = collect::database(conn, s, &mut m).await;
            timed(&mut m, "database", t, r);
            let t = Instant::now();
            let r = collect::locks(conn, s, &mut m).await;
            timed(&mut m, "locks", t, r);
            let t = Instant::now();
            let r = collect::activity(conn, s, &mut m).await;
            timed(&mut m, "stat_activity", t, r);
            let t = Instant::now();
            let r = collect::stat_database(conn, s, version_num, &mut m).await;
            timed(&mut m, "stat_database", t, r);
            let t = Instant::now();
            let r = collect::bgwriter(conn, s, &mut m).await;
            timed(&mut m, "bgwriter", t, r);
            let t = Instant::now();
            let r = collect::archiver(conn, s, &mut m).await;
            timed(&mut m, "stat_archiver", t, r);
            let t = Instant::now();
            let r = collect::slots(conn, s, &mut m).await;
            timed(&mut m, "replication_slot", t, r);
            let t = Instant::now();
            let r = collect::stat_replication(conn, s, &mut m).await;
            timed(&mut m, "stat_replication", t, r);
            let mut note = |r: Result<()>| {
                if let Err(e) = r {
                    errors.push(e.to_string());
                }
            };
            for q in queries {
                if q.master && in_recovery {
                    continue;
                }
                let cached = q.cache.and_then(|ttl| {
                    let cache = self.cache.lock().ok()?;
                    let (at, set) = cache.get(&q.name)?;
                    (at.elapsed() < ttl).then(|| set.clone())
                });
                let set = match cached {
                    Some(set) => Ok(set),
                    None => q.run(conn, s).await.inspect(|set| {
                        if q.cache.is_some() {
                            if let Ok(mut cache) = self.cache.lock() {
                                cache.insert(q.name.clone(), (Instant::now(), set.clone()));
                            }
                        }
                    }),
                };
                match set {
                    Ok(set) => m.merge(set),
                    Err(e) => note(Err(e)),
                }
            }
        }
        (
            Outcome {
                status,
                metrics: m,
                up: true,
                errors,
            },
            keep,
        )
    }
}
