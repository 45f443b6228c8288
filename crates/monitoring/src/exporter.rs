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
use crate::{collect, ha, process, tables, MonitoringError, Result};

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
    /// Connections for the two slow collectors of a full scrape (database, settings).
    side_conns: [tokio::sync::Mutex<Option<PgConnection>>; 2],
    cache: Mutex<HashMap<String, (Instant, MetricSet)>>,
    /// pg_settings metrics and the pg_conf_load_time() they were read at: settings change only
    /// when the configuration is (re)loaded, so they are re-read only then.
    settings: Mutex<Option<(f64, MetricSet)>>,
    scrapes: AtomicU64,
    /// (duration seconds, error 0/1) of the last full scrape.
    last: Mutex<(f64, f64)>,
    /// The node's latest status and when it was taken.
    last_status: Mutex<Option<(Instant, NodeStatus)>>,
}

/// How long a scrape waits for the other nodes' status after the scraped node answered.
const OTHERS_GRACE: Duration = Duration::from_millis(100);

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
                side_conns: [tokio::sync::Mutex::new(None), tokio::sync::Mutex::new(None)],
                cache: Mutex::new(HashMap::new()),
                settings: Mutex::new(None),
                scrapes: AtomicU64::new(0),
                last: Mutex::new((0.0, 0.0)),
                last_status: Mutex::new(None),
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
        // Every node's task runs detached and records its status on its target; this scrape
        // waits for the scraped node (bounded by the timeout) and gives the others a short
        // grace after that, then uses their latest known status: a slow node never delays
        // another node's scrape.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Outcome)>();
        for (i, t) in self.targets.iter().enumerate() {
            let (t, queries, timeout, tx) =
                (t.clone(), self.queries.clone(), self.timeout, tx.clone());
            tokio::spawn(async move {
                let o = t.collect(i == idx, timeout, &queries).await;
                if let Ok(mut last) = t.last_status.lock() {
                    *last = Some((Instant::now(), o.status.clone()));
                }
                let _ = tx.send((i, o));
            });
        }
        drop(tx);
        let mut outcomes: Vec<Option<Outcome>> = (0..self.targets.len()).map(|_| None).collect();
        let mut grace_until: Option<tokio::time::Instant> = None;
        let mut pending = self.targets.len();
        while pending > 0 {
            let next = match grace_until {
                None => rx.recv().await,
                Some(until) => match tokio::time::timeout_at(until, rx.recv()).await {
                    Ok(n) => n,
                    Err(_) => break,
                },
            };
            let Some((i, o)) = next else { break };
            outcomes[i] = Some(o);
            pending -= 1;
            if i == idx {
                grace_until = Some(tokio::time::Instant::now() + OTHERS_GRACE.min(self.timeout));
            }
        }
        let statuses = outcomes
            .iter()
            .zip(&self.targets)
            .map(|(o, t)| match o {
                Some(o) => o.status.clone(),
                None => t.recent_status(self.timeout * 3).unwrap_or_else(|| {
                    NodeStatus::unreachable(
                        &t.name,
                        t.server.clone(),
                        "no status within the scrape".into(),
                    )
                }),
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
    /// The latest status if taken within `max_age`.
    fn recent_status(&self, max_age: Duration) -> Option<NodeStatus> {
        let last = self.last_status.lock().ok()?;
        let (at, st) = last.as_ref()?;
        (at.elapsed() <= max_age).then(|| st.clone())
    }

    async fn collect(&self, full: bool, timeout: Duration, queries: &[CustomQuery]) -> Outcome {
        let fut = async {
            let mut guard = self.conn.lock().await;
            let mut conn = match guard.take() {
                Some(c) => c,
                None => self.connect().await?,
            };
            // A full scrape runs the slow collectors on two more connections in parallel.
            let mut side_guards = Vec::new();
            let mut sides: [Option<PgConnection>; 2] = [None, None];
            if full {
                for (i, m) in self.side_conns.iter().enumerate() {
                    let mut g = m.lock().await;
                    sides[i] = match g.take() {
                        Some(c) => Some(c),
                        None => self.connect().await.ok(),
                    };
                    side_guards.push(g);
                }
            }
            let (outcome, keep, keep_sides) = self.run(&mut conn, &mut sides, full, queries).await;
            if keep {
                *guard = Some(conn);
            }
            for ((g, c), k) in side_guards.iter_mut().zip(sides).zip(keep_sides) {
                if k {
                    **g = c;
                }
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

    async fn connect(&self) -> Result<PgConnection> {
        self.params
            .connect()
            .await
            .map_err(|source| MonitoringError::Connect {
                target: self.name.clone(),
                source,
            })
    }

    fn down(&self, error: String) -> Outcome {
        Outcome {
            status: NodeStatus::unreachable(&self.name, self.server.clone(), error.clone()),
            metrics: MetricSet::new(),
            up: false,
            errors: vec![error],
        }
    }

    /// Runs the status query and, when `full`, every collector (the slow ones on `side` in
    /// parallel when there is one). Returns whether each connection is still good to keep.
    async fn run(
        &self,
        conn: &mut PgConnection,
        sides: &mut [Option<PgConnection>; 2],
        full: bool,
        queries: &[CustomQuery],
    ) -> (Outcome, bool, [bool; 2]) {
        let s = self.server.as_str();
        let main = async {
            let t = Instant::now();
            let status = NodeStatus::query(conn, &self.name, self.server.clone())
                .await
                .map_err(|e| e.to_string())?;
            let mut m = MetricSet::new();
            let mut timed: Timed = vec![("pgha_status", t.elapsed(), Ok(()))];
            if !full {
                return Ok((status, m, timed, 0));
            }
            let t = Instant::now();
            let basics = collect::basics(conn, s, &mut m).await;
            let version_num = basics.as_ref().map(|b| b.version_num).unwrap_or(0);
            timed.push(("static", t.elapsed(), basics.map(|_| ())));
            let t = Instant::now();
            let r = collect::activity(conn, s, &mut m).await;
            timed.push(("stat_activity", t.elapsed(), r));
            let t = Instant::now();
            let r = collect::stat_database(conn, s, version_num, &mut m).await;
            timed.push(("stat_database", t.elapsed(), r));
            Ok::<_, String>((status, m, timed, version_num))
        };
        let [side_db, side_settings] = sides;
        let (has_db, has_settings) = (side_db.is_some(), side_settings.is_some());
        let db_work = async {
            let mut m = MetricSet::new();
            let mut timed: Timed = Vec::new();
            if let (Some(c), true) = (side_db.as_mut(), full) {
                database_collector(c, s, &mut m, &mut timed).await;
            }
            (m, timed)
        };
        let settings_work = async {
            let mut m = MetricSet::new();
            let mut timed: Timed = Vec::new();
            if let (Some(c), true) = (side_settings.as_mut(), full) {
                self.settings_collector(c, &mut m, &mut timed).await;
            }
            (m, timed)
        };
        let (main, (db_m, db_timed), (set_m, set_timed)) =
            tokio::join!(main, db_work, settings_work);
        let (status, mut m, mut timed, version_num) = match main {
            Ok(v) => v,
            Err(e) => return (self.down(e), false, [true, true]),
        };
        if full && !has_db {
            database_collector(conn, s, &mut m, &mut timed).await;
        }
        if full && !has_settings {
            self.settings_collector(conn, &mut m, &mut timed).await;
        }
        m.merge(db_m);
        m.merge(set_m);
        let mut errors = Vec::new();
        let is_fatal = |r: &Result<()>| match r {
            Err(MonitoringError::Query { source, .. }) => {
                !matches!(source, sqlx::Error::Database(_))
            }
            _ => false,
        };
        let keep = !timed.iter().any(|(_, _, r)| is_fatal(r));
        let keep_sides = [
            !db_timed.iter().any(|(_, _, r)| is_fatal(r)),
            !set_timed.iter().any(|(_, _, r)| is_fatal(r)),
        ];
        for (name, took, r) in timed.into_iter().chain(db_timed).chain(set_timed) {
            let l = [("collector", name)];
            m.gauge(
                "pg_scrape_collector_duration_seconds",
                "postgres_exporter: Duration of a collector scrape.",
                &l,
                took.as_secs_f64(),
            );
            m.gauge(
                "pg_scrape_collector_success",
                "postgres_exporter: Whether a collector succeeded.",
                &l,
                if r.is_ok() { 1.0 } else { 0.0 },
            );
            if let Err(e) = r {
                errors.push(e.to_string());
            }
        }
        if full {
            for q in queries {
                if !q.runs_on(version_num) {
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
                    Ok(set) => {
                        // A queries.yml from postgres_exporter's days (its example defines
                        // pg_stat_user_tables, now a built-in collector) must not double
                        // the series: the built-in one stays, the query says why it is left out.
                        for name in m.merge_absent(set) {
                            errors.push(format!(
                                "queries.yml `{}`: {name} is already exported by a built-in collector; its samples are left out (remove the query)",
                                q.name
                            ));
                        }
                    }
                    Err(e) => errors.push(e.to_string()),
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
            keep_sides,
        )
    }
}

/// Collector name, duration and result.
type Timed = Vec<(&'static str, Duration, Result<()>)>;

/// pg_database_size walks every database's files: the slowest collector, alone on its lane.
async fn database_collector(
    conn: &mut PgConnection,
    s: &str,
    m: &mut MetricSet,
    timed: &mut Timed,
) {
    let t = Instant::now();
    let r = collect::database(conn, s, m).await;
    timed.push(("database", t.elapsed(), r));
}

impl Target {
    /// pg_settings (hundreds of rows, re-read only after a configuration reload) and the small
    /// single-purpose collectors: the third lane.
    async fn settings_collector(
        &self,
        conn: &mut PgConnection,
        m: &mut MetricSet,
        timed: &mut Timed,
    ) {
        let s = self.server.as_str();
        let t = Instant::now();
        let r = self.settings_cached(conn, m).await;
        timed.push(("settings", t.elapsed(), r));
        collect_small(conn, s, m, timed).await;
    }

    async fn settings_cached(&self, conn: &mut PgConnection, m: &mut MetricSet) -> Result<()> {
        let loaded: f64 =
            sqlx::query_scalar("SELECT extract(epoch FROM pg_conf_load_time())::float8")
                .fetch_one(&mut *conn)
                .await
                .map_err(MonitoringError::query(&self.server, "pg_conf_load_time"))?;
        let cached = self.settings.lock().ok().and_then(|c| {
            c.as_ref()
                .filter(|(at, _)| *at == loaded)
                .map(|(_, set)| set.clone())
        });
        let set = match cached {
            Some(set) => set,
            None => {
                let mut set = MetricSet::new();
                collect::settings(conn, &self.server, &mut set).await?;
                if let Ok(mut c) = self.settings.lock() {
                    *c = Some((loaded, set.clone()));
                }
                set
            }
        };
        m.merge(set);
        Ok(())
    }
}

async fn collect_small(conn: &mut PgConnection, s: &str, m: &mut MetricSet, timed: &mut Timed) {
    let t = Instant::now();
    let r = collect::locks(conn, s, m).await;
    timed.push(("locks", t.elapsed(), r));
    let t = Instant::now();
    let r = collect::bgwriter(conn, s, m).await;
    timed.push(("bgwriter", t.elapsed(), r));
    let t = Instant::now();
    let r = collect::archiver(conn, s, m).await;
    timed.push(("stat_archiver", t.elapsed(), r));
    let t = Instant::now();
    let r = collect::slots(conn, s, m).await;
    timed.push(("replication_slot", t.elapsed(), r));
    let t = Instant::now();
    let r = collect::stat_replication(conn, s, m).await;
    timed.push(("stat_replication", t.elapsed(), r));
    let t = Instant::now();
    let r = tables::server_ages(conn, s, m).await;
    timed.push((tables::SERVER_AGES, t.elapsed(), r));
    let t = Instant::now();
    let r = tables::user_tables(conn, s, m).await;
    timed.push(("stat_user_tables", t.elapsed(), r));
}
