//! `pgha verify`: the whole cluster end to end, one table of checks (pass / warn / fail / skip
//! with the measured value and its threshold) and a summary line; exit code in the Nagios
//! convention of `pgha check` (0 all passed or skipped, 1 a warning, 2 a failure, 3 unknown).
//!
//! A check whose component is not configured is skipped with the reason, never passed.
//!
//! [`verify`] gathers (the cluster status, the DCS view, one connection to the primary) and
//! hands each part to the checks of one file: `cluster` judges the status snapshot (pure),
//! `site` a standby site, `primary` what is read on the primary, `services` the DCS, exporter
//! and PgBouncer.

mod cluster;
mod primary;
mod services;
mod site;

use std::process::ExitCode;

use pgha_config::PghaConfig;
use pgha_monitoring::health::Level;
use pgha_postgres::connect_params;
use pgha_replication::status::ClusterStatus;
use serde::Serialize;

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
    /// The Nagios level a row counts as in the summary and the exit code (a skipped check
    /// counts as passed: its component is not configured).
    pub fn level(self) -> Level {
        match self {
            Verdict::Pass | Verdict::Skip => Level::Ok,
            Verdict::Warn => Level::Warning,
            Verdict::Fail => Level::Critical,
        }
    }

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
            return ExitCode::from(Level::Unknown.exit_code());
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
        worst.level().label(),
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
    ExitCode::from(worst.level().exit_code())
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
                site::standby_site(config, source, &status, leader, &mut out).await;
                out.push(services::exporter(config, &status).await);
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
    cluster::nodes(&status, &mut out);
    let primary = status
        .writable
        .first()
        .cloned()
        .filter(|_| status.writable.len() == 1);
    cluster::replicas(config, &status, primary.as_deref(), &mut out);
    // One connection to the primary serves the marker and every primary-side check.
    let conn = match primary.as_deref().and_then(|p| config.node(p)) {
        Some(p) => async { anyhow::Ok(connect_params(config, p)?.connect().await?) }
            .await
            .map_err(|e| crate::error_chain(&e)),
        None => Err("no single writable primary to write the marker on".to_owned()),
    };
    match conn {
        Ok(mut c) => {
            out.push(primary::marker(config, &mut c, &status, args.marker_timeout).await);
            out.push(primary::connections(&mut c, args.max_connections_ratio).await);
            out.push(primary::cache_hit(&mut c, args.min_cache_hit).await);
            out.push(primary::tls(config, &mut c).await);
            out.push(primary::backup(config, &mut c, args).await);
        }
        Err(why) => out.push(check("marker row", Verdict::Fail, "-", "-", why)),
    }
    out.push(crate::verify_archive::archive(config).await);
    out.push(services::dcs(config, primary.as_deref()).await);
    out.push(services::exporter(config, &status).await);
    out.push(services::pgbouncer(config, primary.as_deref()).await);
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
