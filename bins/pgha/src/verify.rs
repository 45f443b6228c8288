//! `pgha verify`: the whole cluster end to end, one table of checks (pass / warn / fail / skip
//! with the measured value and its threshold) and a summary line; exit code in the Nagios
//! convention of `pgha check` (0 all passed or skipped, 1 a warning, 2 a failure, 3 unknown).
//!
//! A check whose component is not configured is skipped with the reason, never passed.

use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use pgha_config::PghaConfig;
use pgha_postgres::connect_params;
use pgha_replication::status::{ClusterStatus, Role};
use pgha_replication::table::human_bytes;
use serde::Serialize;
use sqlx::PgConnection;

use crate::cli::VerifyArgs;

/// The outcome of one check, ordered by severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Pass,
    Skip,
    Warn,
    Fail,
}

impl Verdict {
    fn label(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Skip => "skip",
            Verdict::Warn => "WARN",
            Verdict::Fail => "FAIL",
        }
    }
}

/// One row of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub verdict: Verdict,
    /// What was measured.
    pub value: String,
    /// What it was held against.
    pub threshold: String,
    pub detail: String,
}

pub(crate) fn check(
    name: impl Into<String>,
    verdict: Verdict,
    value: impl Into<String>,
    threshold: impl Into<String>,
    detail: impl Into<String>,
) -> Check {
    Check {
        name: name.into(),
        verdict,
        value: value.into(),
        threshold: threshold.into(),
        detail: detail.into(),
    }
}

pub(crate) fn skip(name: &str, why: &str) -> Check {
    check(name, Verdict::Skip, "-", "-", why)
}

/// Runs every check and prints the table (or JSON); returns the Nagios exit code.
pub async fn verify_main(config: Option<&std::path::Path>, args: &VerifyArgs) -> ExitCode {
    let loaded = match crate::load_config(config) {
        Ok(l) => l,
        Err(e) => {
            println!("VERIFY UNKNOWN - {}", crate::error_chain(&e));
            return ExitCode::from(3);
        }
    };
    let checks = verify(&loaded.config, args).await;
    let worst = checks
        .iter()
        .map(|c| c.verdict)
        .max()
        .unwrap_or(Verdict::Pass);
    let count = |v: Verdict| checks.iter().filter(|c| c.verdict == v).count();
    let summary = format!(
        "VERIFY {} - {} checks: {} passed, {} warnings, {} failed, {} skipped",
        match worst {
            Verdict::Fail => "CRITICAL",
            Verdict::Warn => "WARNING",
            _ => "OK",
        },
        checks.len(),
        count(Verdict::Pass),
        count(Verdict::Warn),
        count(Verdict::Fail),
        count(Verdict::Skip)
    );
    if args.json {
        let body = serde_json::json!({ "summary": summary, "checks": checks });
        println!(
            "{}",
            serde_json::to_string_pretty(&body).unwrap_or_default()
        );
    } else {
        print!("{}", render(&checks));
        println!("{summary}");
    }
    ExitCode::from(match worst {
        Verdict::Fail => 2,
        Verdict::Warn => 1,
        _ => 0,
    })
}

/// The checks as an aligned table.
pub fn render(checks: &[Check]) -> String {
    let w = |f: fn(&Check) -> &str, min: usize| {
        checks
            .iter()
            .map(|c| f(c).len())
            .max()
            .unwrap_or(0)
            .max(min)
    };
    let (wn, wv, wt) = (
        w(|c| &c.name, 5),
        w(|c| &c.value, 5),
        w(|c| &c.threshold, 9),
    );
    let mut out = format!(
        "{:<wn$}  {:<6} {:<wv$}  {:<wt$}  DETAIL\n",
        "CHECK", "RESULT", "VALUE", "THRESHOLD"
    );
    for c in checks {
        out.push_str(&format!(
            "{:<wn$}  {:<6} {:<wv$}  {:<wt$}  {}\n",
            c.name,
            c.verdict.label(),
            c.value,
            c.threshold,
            c.detail
        ));
    }
    out
}

/// Every check, in a fixed order.
pub async fn verify(config: &PghaConfig, args: &VerifyArgs) -> Vec<Check> {
    let mut out = Vec::new();
    // With agents, the cluster settings in the DCS win over pgha.toml (e.g. a mode switched
    // with `pgha edit-config --set synchronous_mode=..`).
    // One read serves the settings and a standby site's promotion check.
    let view = if config.dcs.is_some() || config.standby_cluster.is_some() {
        Some(dcs_view(config).await)
    } else {
        None
    };
    let overlaid;
    let config = match &view {
        Some(Ok(v)) => {
            overlaid = pgha_failover::settings::effective(config, v);
            &overlaid
        }
        Some(Err(e)) if config.dcs.is_some() => {
            tracing::warn!("cluster settings unread ({e}): checking against pgha.toml");
            config
        }
        _ => config,
    };
    let status = match ClusterStatus::collect(config).await {
        Ok(s) => s,
        Err(e) => {
            out.push(check("status", Verdict::Fail, "-", "-", e.to_string()));
            return out;
        }
    };
    if let (Some(source), Some(view)) = (&config.standby_cluster, view) {
        match view {
            Ok(view) if view.config.standby_promoted => {}
            Ok(view) => {
                let leader = view.leader.map(|l| l.name);
                standby_site(config, source, &status, leader, &mut out).await;
                out.push(exporter(config, &status).await);
                return out;
            }
            Err(e) => {
                out.push(check(
                    "dcs leader",
                    Verdict::Fail,
                    "unreachable",
                    "reachable",
                    format!("cannot tell whether this standby cluster was promoted: {e}"),
                ));
                return out;
            }
        }
    }
    nodes(&status, &mut out);
    let primary = status
        .writable
        .first()
        .cloned()
        .filter(|_| status.writable.len() == 1);
    replicas(config, &status, primary.as_deref(), &mut out);
    // One connection to the primary serves the marker and every primary-side check.
    let conn = match primary.as_deref().and_then(|p| config.node(p)) {
        Some(p) => async { anyhow::Ok(connect_params(config, p)?.connect().await?) }
            .await
            .map_err(|e| crate::error_chain(&e)),
        None => Err("no single writable primary to write the marker on".to_owned()),
    };
    match conn {
        Ok(mut c) => {
            out.push(marker(config, &mut c, &status, args.marker_timeout).await);
            out.push(connections(&mut c, args.max_connections_ratio).await);
            out.push(cache_hit(&mut c, args.min_cache_hit).await);
            out.push(tls(config, &mut c).await);
            out.push(backup(config, &mut c, args).await);
        }
        Err(why) => out.push(check("marker row", Verdict::Fail, "-", "-", why)),
    }
    out.push(crate::verify_archive::archive(config).await);
    out.push(dcs(config, primary.as_deref()).await);
    out.push(exporter(config, &status).await);
    out.push(pgbouncer(config, primary.as_deref()).await);
    out
}

/// What the agents keep in the DCS (for a standby cluster: whether `pgha promote-cluster` made
/// it the primary site, and its standby leader).
async fn dcs_view(config: &PghaConfig) -> Result<pgha_failover::dcs::ClusterView, String> {
    use pgha_failover::dcs::Dcs;
    if config.dcs.is_none() {
        return Err("no [dcs] section: a standby cluster needs its agents' DCS".into());
    }
    let r = async {
        let dcs = pgha_failover::dcs::EtcdDcs::from_config(config, "pgha-verify").await?;
        anyhow::Ok(dcs.view().await?)
    };
    r.await.map_err(|e| crate::error_chain(&e))
}

/// A standby site: every node reachable as a replica, none writable, the DCS leader streaming
/// from one of the primary site's nodes, every other node streaming from the leader, and the
/// leader's replay recent.
async fn standby_site(
    config: &PghaConfig,
    source: &pgha_config::StandbyClusterSection,
    status: &ClusterStatus,
    leader: Option<String>,
    out: &mut Vec<Check>,
) {
    for n in &status.nodes {
        let name = format!("node {}", n.name);
        out.push(match (n.reachable, n.role) {
            (true, Some(Role::Replica)) => check(
                name,
                Verdict::Pass,
                "replica",
                "reachable replica",
                n.address.clone(),
            ),
            (true, Some(Role::Primary)) => check(
                name,
                Verdict::Fail,
                "primary",
                "reachable replica",
                "a standby site takes no writes until `pgha promote-cluster`",
            ),
            _ => check(
                name,
                Verdict::Fail,
                "unreachable",
                "reachable replica",
                n.error.clone().unwrap_or_default(),
            ),
        });
    }
    out.push(if status.writable.is_empty() {
        check(
            "no writable node",
            Verdict::Pass,
            "none",
            "0 writable",
            "standby cluster",
        )
    } else {
        check(
            "no writable node",
            Verdict::Fail,
            status.writable.join(","),
            "0 writable",
            "the standby site accepts writes: split brain with the primary site?",
        )
    });
    let Some(leader) = leader else {
        out.push(check(
            "standby leader",
            Verdict::Fail,
            "none",
            "a DCS leader",
            "no leader key",
        ));
        return;
    };
    let hosts = source.hosts_and_ports().unwrap_or_default();
    let streams_from = |n: &str| {
        status
            .node(n)
            .and_then(|s| s.receiver.as_ref())
            .filter(|r| r.receiver_status.as_deref() == Some("streaming"))
            .and_then(|r| Some((r.upstream_host.clone()?, r.upstream_port? as u16)))
    };
    out.push(match streams_from(&leader) {
        Some((h, p)) if hosts.iter().any(|(hh, pp)| *hh == h && *pp == p) => check(
            "standby leader",
            Verdict::Pass,
            format!("{leader} <- {h}:{p}"),
            "streams from the primary site",
            "",
        ),
        Some((h, p)) => check(
            "standby leader",
            Verdict::Fail,
            format!("{leader} <- {h}:{p}"),
            "streams from the primary site",
            format!("not one of {}", source.primary_hosts.join(",")),
        ),
        None => check(
            "standby leader",
            Verdict::Warn,
            format!("{leader} not streaming"),
            "streams from the primary site",
            if source.restore_command.is_some() {
                "following the archive (restore_command) only, or reconnecting"
            } else {
                "no restore_command to fall back on"
            },
        ),
    });
    let leader_addr = config.node(&leader).map(|n| (n.host.clone(), n.port));
    for n in config.nodes.iter().filter(|n| n.name != leader) {
        let got = streams_from(&n.name);
        let ok = got.is_some() && got == leader_addr;
        out.push(check(
            format!("replica {}", n.name),
            if ok { Verdict::Pass } else { Verdict::Fail },
            got.map(|(h, p)| format!("<- {h}:{p}"))
                .unwrap_or_else(|| "not streaming".into()),
            format!("streams from {leader}"),
            "",
        ));
    }
    let replayed = status
        .node(&leader)
        .and_then(|s| s.receiver.as_ref())
        .and_then(|r| r.replay_lsn);
    out.push(standby_lag(config, source, replayed).await);
}

/// The standby leader's replay position against the primary site's current WAL position
/// (the primary site's writable node, reached with this config's superuser credentials).
async fn standby_lag(
    config: &PghaConfig,
    source: &pgha_config::StandbyClusterSection,
    replayed: Option<pgha_postgres::Lsn>,
) -> Check {
    let max = config.monitoring.alerts.lag_bytes.bytes();
    let threshold = format!("<= {max} B");
    let Some(replayed) = replayed else {
        return check(
            "standby lag",
            Verdict::Warn,
            "-",
            threshold,
            "the standby leader reports no replay position",
        );
    };
    if let Some((at, current)) = pgha_failover::ops::primary_site_position(config, source).await {
        let lag = current.bytes_since(replayed);
        let verdict = if lag <= max {
            Verdict::Pass
        } else {
            Verdict::Warn
        };
        return check(
            "standby lag",
            verdict,
            format!("{lag} B"),
            threshold,
            format!("primary site {at} at {current}, replayed {replayed}"),
        );
    }
    check(
        "standby lag",
        Verdict::Warn,
        "primary site unreachable",
        threshold,
        "no writable node among standby_cluster.primary_hosts: lost? (docs/RUNBOOK.md, site disaster)",
    )
}

fn nodes(status: &ClusterStatus, out: &mut Vec<Check>) {
    for n in &status.nodes {
        let name = format!("node {}", n.name);
        out.push(match (n.reachable, n.role) {
            (true, Some(Role::Primary)) => check(
                name,
                Verdict::Pass,
                "primary",
                "reachable",
                n.address.clone(),
            ),
            (true, Some(Role::Replica)) => check(
                name,
                Verdict::Pass,
                "replica",
                "reachable",
                n.address.clone(),
            ),
            _ => check(
                name,
                Verdict::Fail,
                "unreachable",
                "reachable",
                n.error.clone().unwrap_or_default(),
            ),
        });
    }
    let w = &status.writable;
    out.push(match w.len() {
        1 => check(
            "single primary",
            Verdict::Pass,
            w[0].clone(),
            "exactly 1 writable",
            "",
        ),
        0 => check(
            "single primary",
            Verdict::Fail,
            "none",
            "exactly 1 writable",
            "no node accepts writes",
        ),
        _ => check(
            "single primary",
            Verdict::Fail,
            w.join(","),
            "exactly 1 writable",
            "split brain: several nodes accept writes",
        ),
    });
}

fn replicas(
    config: &PghaConfig,
    status: &ClusterStatus,
    primary: Option<&str>,
    out: &mut Vec<Check>,
) {
    let a = &config.monitoring.alerts;
    let (max_bytes, max_secs) = (a.lag_bytes.0, a.lag_seconds);
    let primary_status = primary.and_then(|p| status.node(p));
    for n in status
        .nodes
        .iter()
        .filter(|n| n.role == Some(Role::Replica))
    {
        let name = format!("replica {}", n.name);
        if n.streaming != Some(true) {
            out.push(check(
                name,
                Verdict::Fail,
                "not streaming",
                "streaming",
                "its WAL receiver is not streaming",
            ));
            continue;
        }
        let bytes = n.lag_bytes.unwrap_or(0);
        let secs = n.lag_seconds.unwrap_or(0.0);
        let value = format!("lag {} / {secs:.1}s", human_bytes(bytes));
        let threshold = format!("<= {} / {max_secs}s", human_bytes(max_bytes));
        out.push(if bytes > max_bytes || secs > max_secs {
            check(
                name,
                Verdict::Fail,
                value,
                threshold,
                "lag above the alert thresholds",
            )
        } else {
            check(name, Verdict::Pass, value, threshold, "streaming")
        });
        if config.replication.slots {
            let slot = primary_status.and_then(|p| p.slots.iter().find(|s| s.slot_name == n.name));
            out.push(match slot {
                Some(s) if s.active => check(
                    format!("slot {}", n.name),
                    Verdict::Pass,
                    "active",
                    "active",
                    "",
                ),
                Some(_) => check(
                    format!("slot {}", n.name),
                    Verdict::Fail,
                    "inactive",
                    "active",
                    "the slot holds WAL for nobody",
                ),
                None => check(
                    format!("slot {}", n.name),
                    Verdict::Fail,
                    "missing",
                    "active",
                    "no slot on the primary",
                ),
            });
        }
    }
    if config.replication.mode.waits() {
        let sync = primary_status
            .map(|p| {
                p.standbys
                    .iter()
                    .filter(|s| matches!(s.sync_state.as_deref(), Some("sync" | "quorum")))
                    .count()
            })
            .unwrap_or(0);
        out.push(if sync > 0 {
            check("sync standby", Verdict::Pass, sync.to_string(), ">= 1", "")
        } else {
            check(
                "sync standby",
                Verdict::Fail,
                "0",
                ">= 1",
                "sync mode without a synchronous standby: commits wait",
            )
        });
    } else {
        out.push(skip("sync standby", "replication.mode is async"));
    }
}

/// Writes a marker row on the primary and waits until every streaming replica shows it.
async fn marker(
    config: &PghaConfig,
    p: &mut PgConnection,
    status: &ClusterStatus,
    timeout: Duration,
) -> Check {
    let threshold = format!("<= {:.1}s", timeout.as_secs_f64());
    let run = async {
        sqlx::query("CREATE TABLE IF NOT EXISTS pgha_verify_marker (id text PRIMARY KEY, at timestamptz NOT NULL DEFAULT now())")
            .execute(&mut *p)
            .await?;
        let id = format!(
            "{}-{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        );
        sqlx::query("INSERT INTO pgha_verify_marker (id) VALUES ($1)")
            .bind(&id)
            .execute(&mut *p)
            .await?;
        let started = Instant::now();
        let mut slowest = Duration::ZERO;
        let mut missing = Vec::new();
        for n in status
            .nodes
            .iter()
            .filter(|n| n.role == Some(Role::Replica) && n.reachable)
        {
            let Some(node) = config.node(&n.name) else {
                continue;
            };
            let mut c = connect_params(config, node)?.connect().await?;
            loop {
                let seen: Option<i32> =
                    sqlx::query_scalar("SELECT 1 FROM pgha_verify_marker WHERE id = $1")
                        .bind(&id)
                        .fetch_optional(&mut c)
                        .await
                        .unwrap_or(None);
                if seen.is_some() {
                    slowest = slowest.max(started.elapsed());
                    break;
                }
                if started.elapsed() > timeout {
                    missing.push(n.name.clone());
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        sqlx::query("DELETE FROM pgha_verify_marker WHERE id = $1")
            .bind(&id)
            .execute(&mut *p)
            .await?;
        anyhow::Ok((slowest, missing))
    };
    match run.await {
        Ok((slowest, missing)) if missing.is_empty() => check(
            "marker row",
            Verdict::Pass,
            format!("{:.3}s", slowest.as_secs_f64()),
            threshold,
            "written on the primary, read on every replica, removed",
        ),
        Ok((_, missing)) => check(
            "marker row",
            Verdict::Fail,
            "not seen",
            threshold,
            format!(
                "not on {} in time (replay paused or stuck?)",
                missing.join(", ")
            ),
        ),
        Err(e) => check(
            "marker row",
            Verdict::Fail,
            "-",
            threshold,
            crate::error_chain(&e),
        ),
    }
}

async fn connections(c: &mut PgConnection, ratio: f64) -> Check {
    let r: Result<(i64, i32), _> = sqlx::query_as("SELECT (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'), current_setting('max_connections')::int")
        .fetch_one(&mut *c)
        .await;
    match r {
        Ok((used, max)) => {
            let limit = (f64::from(max) * ratio).floor() as i64;
            let v = if used < limit {
                Verdict::Pass
            } else {
                Verdict::Fail
            };
            check(
                "connections",
                v,
                format!("{used} of {max}"),
                format!("< {limit} ({:.0} %)", ratio * 100.0),
                "client backends on the primary",
            )
        }
        Err(e) => check("connections", Verdict::Fail, "-", "-", e.to_string()),
    }
}

async fn cache_hit(c: &mut PgConnection, min: f64) -> Check {
    let r: Result<(Option<f64>, i64), _> = sqlx::query_as("SELECT sum(blks_hit)::float8 / nullif(sum(blks_hit) + sum(blks_read), 0), (sum(blks_hit) + sum(blks_read))::bigint FROM pg_stat_database")
        .fetch_one(&mut *c)
        .await;
    let threshold = format!(">= {:.0} %", min * 100.0);
    match r {
        Ok((Some(h), _)) => check(
            "buffer cache hit",
            if h >= min {
                Verdict::Pass
            } else {
                Verdict::Warn
            },
            format!("{:.1} %", h * 100.0),
            threshold,
            "pg_stat_database on the primary",
        ),
        Ok((None, _)) => check(
            "buffer cache hit",
            Verdict::Pass,
            "no reads yet",
            threshold,
            "",
        ),
        Err(e) => check(
            "buffer cache hit",
            Verdict::Fail,
            "-",
            threshold,
            e.to_string(),
        ),
    }
}

async fn tls(config: &PghaConfig, c: &mut PgConnection) -> Check {
    if config.tls.is_none() {
        return skip("tls", "no [tls] section");
    }
    let r: Result<(bool, i64, i64), _> = sqlx::query_as(
        "SELECT (SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()), \
         (SELECT count(*) FROM pg_stat_replication), \
         (SELECT count(*) FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid) WHERE s.ssl)",
    )
    .fetch_one(&mut *c)
    .await;
    match r {
        Ok((mine, repl, repl_tls)) if mine && repl == repl_tls => check(
            "tls",
            Verdict::Pass,
            format!("client + {repl_tls}/{repl} replication"),
            "all TLS",
            "",
        ),
        Ok((mine, repl, repl_tls)) => check(
            "tls",
            Verdict::Fail,
            format!(
                "client {}, {repl_tls}/{repl} replication",
                if mine { "TLS" } else { "plain" }
            ),
            "all TLS",
            "a connection without TLS",
        ),
        Err(e) => check("tls", Verdict::Fail, "-", "all TLS", e.to_string()),
    }
}

async fn backup(config: &PghaConfig, c: &mut PgConnection, args: &VerifyArgs) -> Check {
    let Some(section) = &config.backup else {
        return skip("backup", "no [backup] section");
    };
    let max_age = args
        .max_backup_age
        .unwrap_or_else(|| schedule_gap(&section.schedule));
    let threshold = format!("<= {}", humantime::format_duration(max_age));
    let newest = async {
        let storage = pgha_backup_core::storage::open(section)?;
        let repo = pgha_backup_core::Repository::new(storage);
        let mut m = repo.manifests().await?;
        m.sort_by(|a, b| a.finished_at.cmp(&b.finished_at));
        anyhow::Ok(m.pop())
    };
    let m = match newest.await {
        Ok(Some(m)) => m,
        Ok(None) => {
            return check(
                "backup",
                Verdict::Fail,
                "none",
                threshold,
                "the repository has no complete backup",
            )
        }
        Err(e) => {
            return check(
                "backup",
                Verdict::Fail,
                "-",
                threshold,
                crate::error_chain(&e),
            )
        }
    };
    let age = humantime::parse_rfc3339_weak(&m.finished_at)
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .unwrap_or(Duration::MAX);
    if age > max_age {
        return check(
            "backup",
            Verdict::Fail,
            format!(
                "{} old",
                humantime::format_duration(Duration::from_secs(age.as_secs()))
            ),
            threshold,
            format!("newest backup {} is stale", m.id),
        );
    }
    // The archive since that backup: the archiver got past its stop segment and is not failing.
    let r: Result<(Option<String>, i64, bool), _> = sqlx::query_as(
        "SELECT last_archived_wal, failed_count, \
         coalesce(last_failed_time > coalesce(last_archived_time, '-infinity'), false) FROM pg_stat_archiver",
    )
    .fetch_one(&mut *c)
    .await;
    let value = format!(
        "{} old",
        humantime::format_duration(Duration::from_secs(age.as_secs()))
    );
    match r {
        Ok((Some(last), _, false)) if last.get(8..) >= m.stop_wal.get(8..) => check(
            "backup",
            Verdict::Pass,
            value,
            threshold,
            format!("{}; WAL archived through {last}", m.id),
        ),
        Ok((last, _, failing)) => check(
            "backup",
            Verdict::Fail,
            value,
            threshold,
            format!(
                "{}: WAL archive not continuous since it (last archived {}, {})",
                m.id,
                last.unwrap_or_else(|| "none".into()),
                if failing {
                    "archiving is failing"
                } else {
                    "behind the backup's stop segment"
                }
            ),
        ),
        Err(e) => check("backup", Verdict::Fail, value, threshold, e.to_string()),
    }
}

/// The longest gap between two consecutive runs of any schedule entry, plus an hour (a backup
/// takes time); a day and an hour when the schedule cannot be read.
fn schedule_gap(schedule: &[String]) -> Duration {
    let hour = Duration::from_secs(3600);
    let now = SystemTime::now();
    let mut gap: Option<Duration> = None;
    for expr in schedule {
        let Ok(cron) = pgha_backup_core::cron::Cron::parse(expr) else {
            continue;
        };
        let mut t = now;
        // A week of runs covers weekly schedules and uneven daily ones.
        for _ in 0..16 {
            let (Some(a), Some(b)) = (
                cron.next_after(t),
                cron.next_after(t).and_then(|a| cron.next_after(a)),
            ) else {
                break;
            };
            if let Ok(d) = b.duration_since(a) {
                gap = Some(gap.map_or(d, |g| g.max(d)));
            }
            t = a;
        }
    }
    gap.unwrap_or(Duration::from_secs(24 * 3600)) + hour
}

async fn dcs(config: &PghaConfig, primary: Option<&str>) -> Check {
    if config.dcs.is_none() {
        return skip("dcs leader", "no [dcs] section");
    }
    use pgha_failover::dcs::Dcs;
    let r = async {
        let dcs = pgha_failover::dcs::EtcdDcs::from_config(config, "pgha-verify").await?;
        anyhow::Ok(dcs.view().await?)
    };
    match r.await {
        Ok(view) => {
            let leader = view.leader.map(|l| l.name);
            match (leader.as_deref(), primary) {
                (Some(l), Some(p)) if l == p => check(
                    "dcs leader",
                    Verdict::Pass,
                    l,
                    "= writable node",
                    format!("{} members registered", view.members.len()),
                ),
                (Some(l), _) => check(
                    "dcs leader",
                    Verdict::Fail,
                    l,
                    "= writable node",
                    format!("the writable node is {}", primary.unwrap_or("none")),
                ),
                (None, _) => check(
                    "dcs leader",
                    Verdict::Fail,
                    "none",
                    "= writable node",
                    "no leader key (agents down or failover in progress)",
                ),
            }
        }
        Err(e) => check(
            "dcs leader",
            Verdict::Fail,
            "unreachable",
            "reachable",
            crate::error_chain(&e),
        ),
    }
}

async fn exporter(config: &PghaConfig, status: &ClusterStatus) -> Check {
    let addr = config.monitoring.listen;
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
    {
        Ok(c) => c,
        Err(e) => return check("exporter", Verdict::Fail, "-", "-", e.to_string()),
    };
    let mut down = Vec::new();
    for n in &status.nodes {
        let url = format!("http://{addr}/probe?target={}", n.name);
        match client.get(&url).send().await {
            Ok(r) => {
                let body = r.text().await.unwrap_or_default();
                if !body.lines().any(|l| l.trim() == "pg_up 1") {
                    down.push(n.name.clone());
                }
            }
            Err(e) => {
                return check(
                    "exporter",
                    Verdict::Fail,
                    "not answering",
                    format!("pg_up 1 at {addr}"),
                    format!("{e} (monitoring.listen)"),
                );
            }
        }
    }
    if down.is_empty() {
        check(
            "exporter",
            Verdict::Pass,
            format!("pg_up 1 x{}", status.nodes.len()),
            format!("pg_up 1 at {addr}"),
            "",
        )
    } else {
        check(
            "exporter",
            Verdict::Fail,
            format!("pg_up 0: {}", down.join(",")),
            format!("pg_up 1 at {addr}"),
            "",
        )
    }
}

async fn pgbouncer(config: &PghaConfig, primary: Option<&str>) -> Check {
    let Some(pool) = &config.pooling else {
        return skip("pgbouncer", "no [pooling] section");
    };
    let Some(db) = pool.databases.first() else {
        return skip("pgbouncer", "pooling.databases is empty");
    };
    let r = async {
        let params = connect_params(config, &config.nodes[0])?;
        let mut p = params.clone();
        p.host = pool.client_host();
        p.port = pool.listen_port;
        p.database = db.clone();
        p.statement_timeout = None;
        let mut c = p.connect().await?;
        let port: i32 = sqlx::query_scalar("SELECT inet_server_port()")
            .persistent(false)
            .fetch_one(&mut c)
            .await?;
        anyhow::Ok(port)
    };
    let want = primary
        .and_then(|p| config.node(p))
        .map(|n| i32::from(n.port));
    match (r.await, want) {
        (Ok(port), Some(w)) if port == w => check(
            "pgbouncer",
            Verdict::Pass,
            format!("{db} -> :{port}"),
            "the primary",
            "",
        ),
        (Ok(port), _) => check(
            "pgbouncer",
            Verdict::Fail,
            format!("{db} -> :{port}"),
            "the primary",
            "the read-write entry does not reach the writable node",
        ),
        (Err(e), _) => check(
            "pgbouncer",
            Verdict::Fail,
            "-",
            "the primary",
            crate::error_chain(&e),
        ),
    }
}
