//! What is checked on the primary over the one connection `verify` opens: a marker row seen
//! by every replica, connection use, buffer cache hits, TLS, the newest backup and the WAL
//! archive since it.

use std::time::{Duration, Instant, SystemTime};

use pgha_config::PghaConfig;
use pgha_monitoring::health::ConnectionUse;
use pgha_postgres::connect_params;
use pgha_replication::status::{ClusterStatus, Role};
use sqlx::PgConnection;

use super::{check, skip, Check, Verdict};
use crate::cli::VerifyArgs;

/// Writes a marker row on the primary and waits until every streaming replica shows it.
pub(super) async fn marker(
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

/// Client backends on the primary (the query `pgha check connections` runs too).
pub(super) async fn connections(c: &mut PgConnection, ratio: f64) -> Check {
    match pgha_monitoring::health::connection_use(c).await {
        Ok(u) => judge_connections(&u, ratio),
        Err(e) => check("connections", Verdict::Fail, "-", "-", e.to_string()),
    }
}

/// Fails at `ratio` of max_connections or more.
fn judge_connections(u: &ConnectionUse, ratio: f64) -> Check {
    let limit = (f64::from(u.max_connections) * ratio).floor() as i64;
    check(
        "connections",
        if u.used < limit {
            Verdict::Pass
        } else {
            Verdict::Fail
        },
        format!("{} of {}", u.used, u.max_connections),
        format!("< {limit} ({:.0} %)", ratio * 100.0),
        "client backends on the primary",
    )
}

pub(super) async fn cache_hit(c: &mut PgConnection, min: f64) -> Check {
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

pub(super) async fn tls(config: &PghaConfig, c: &mut PgConnection) -> Check {
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

pub(super) async fn backup(config: &PghaConfig, c: &mut PgConnection, args: &VerifyArgs) -> Check {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_fail_at_the_ratio() {
        let u = |used| ConnectionUse {
            used,
            max_connections: 100,
            reserved: 3,
        };
        assert_eq!(judge_connections(&u(79), 0.8).verdict, Verdict::Pass);
        let at = judge_connections(&u(80), 0.8);
        assert_eq!(at.verdict, Verdict::Fail);
        assert_eq!(
            (at.value.as_str(), at.threshold.as_str()),
            ("80 of 100", "< 80 (80 %)")
        );
    }
}
