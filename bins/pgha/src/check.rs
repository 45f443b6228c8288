//! `pgha check ...`: Nagios-convention checks (exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN)
//! with one summary line and perfdata.

use std::fmt::Write;
use std::process::ExitCode;

use pgha_replication::status::ClusterStatus;

use crate::cli::{ArchivingCheckArgs, ConnectionsCheckArgs, ReplicationCheckArgs};
use pgha_monitoring::health::{self, Health, Level};
use pgha_replication::table::human_bytes;

/// Thresholds of the replication check.
#[derive(Debug, Clone, Copy)]
pub struct LagThresholds {
    pub warn_bytes: u64,
    pub crit_bytes: u64,
    pub warn_seconds: f64,
    pub crit_seconds: f64,
}

impl From<&ReplicationCheckArgs> for LagThresholds {
    fn from(a: &ReplicationCheckArgs) -> Self {
        LagThresholds {
            crit_bytes: a.max_lag_bytes.bytes(),
            warn_bytes: a
                .warn_lag_bytes
                .map(|b| b.bytes())
                .unwrap_or(a.max_lag_bytes.bytes() / 2),
            crit_seconds: a.max_lag_seconds,
            warn_seconds: a.warn_lag_seconds.unwrap_or(a.max_lag_seconds / 2.0),
        }
    }
}

/// Judges replication from a status snapshot. `expected_replicas` is nodes in config minus one.
pub fn evaluate_replication(
    st: &ClusterStatus,
    expected_replicas: usize,
    t: LagThresholds,
) -> Health {
    let mut state = Level::Ok;
    let mut problems: Vec<String> = Vec::new();
    let mut perf = String::new();
    if st.writable.len() > 1 {
        return Health::new(
            Level::Critical,
            format!("split brain: {} are all writable", st.writable.join(", ")),
        );
    }
    let Some(primary) = st.primary.clone() else {
        let reachable = st.nodes.iter().filter(|n| n.reachable).count();
        return Health::new(
            Level::Critical,
            format!(
                "no writable primary ({reachable}/{} nodes reachable)",
                st.nodes.len()
            ),
        );
    };
    let others: Vec<_> = st.nodes.iter().filter(|n| n.name != primary).collect();
    let streaming = others.iter().filter(|n| n.streaming == Some(true)).count();
    // `nostream` replicas replay from the archive: they count as replicating when running.
    let archive_only = others
        .iter()
        .filter(|n| n.archive_only && n.reachable)
        .count();
    let mut max_bytes = 0u64;
    let mut max_secs = 0f64;
    for n in &others {
        if !n.reachable {
            problems.push(format!("{} unreachable", n.name));
            state = state.max(Level::Warning);
            continue;
        }
        if n.streaming != Some(true) && !n.archive_only {
            problems.push(format!("{} not streaming", n.name));
            state = state.max(Level::Warning);
        }
        if let Some(b) = n.lag_bytes {
            max_bytes = max_bytes.max(b);
            let _ = write!(
                perf,
                "{}_lag_bytes={b}B;{};{} ",
                n.name, t.warn_bytes, t.crit_bytes
            );
            if b > t.crit_bytes {
                problems.push(format!(
                    "{} lag {} > {}",
                    n.name,
                    human_bytes(b),
                    human_bytes(t.crit_bytes)
                ));
                state = state.max(Level::Critical);
            } else if b > t.warn_bytes {
                problems.push(format!(
                    "{} lag {} > {}",
                    n.name,
                    human_bytes(b),
                    human_bytes(t.warn_bytes)
                ));
                state = state.max(Level::Warning);
            }
        }
        if let Some(s) = n.lag_seconds {
            max_secs = max_secs.max(s);
            let _ = write!(
                perf,
                "{}_lag_seconds={s:.3}s;{};{} ",
                n.name, t.warn_seconds, t.crit_seconds
            );
            if s > t.crit_seconds {
                problems.push(format!("{} lag {s:.1}s > {}s", n.name, t.crit_seconds));
                state = state.max(Level::Critical);
            } else if s > t.warn_seconds {
                problems.push(format!("{} lag {s:.1}s > {}s", n.name, t.warn_seconds));
                state = state.max(Level::Warning);
            }
        }
    }
    if expected_replicas > 0 && streaming + archive_only == 0 {
        state = Level::Critical;
    }
    let _ = write!(perf, "streaming={streaming};;;0;{expected_replicas}");
    let mut summary = format!(
        "primary {primary}, {streaming}/{expected_replicas} replicas streaming, max lag {} / {max_secs:.1}s",
        human_bytes(max_bytes)
    );
    if !problems.is_empty() {
        summary = format!("{}; {summary}", problems.join(", "));
    }
    Health {
        level: state,
        summary,
        perfdata: perf.trim_end().to_owned(),
    }
}

/// `pgha check replication`: prints one line, returns the Nagios exit code.
pub async fn replication_main(
    config: Option<&std::path::Path>,
    args: &ReplicationCheckArgs,
) -> ExitCode {
    let result = match crate::load_config(config) {
        Err(e) => Health::new(Level::Unknown, crate::error_chain(&e).replace('\n', " ")),
        Ok(loaded) => match ClusterStatus::collect(&loaded.config).await {
            Err(e) => Health::new(Level::Unknown, format!("cannot collect status: {e}")),
            Ok(st) => evaluate_replication(
                &st,
                loaded.config.nodes.len().saturating_sub(1),
                args.into(),
            ),
        },
    };
    println!("{}", result.line("REPLICATION"));
    ExitCode::from(result.level.exit_code())
}

fn unknown(summary: String) -> Health {
    Health::new(Level::Unknown, summary)
}

fn print_result(name: &str, result: Health) -> ExitCode {
    println!("{}", result.line(name));
    ExitCode::from(result.level.exit_code())
}

/// `pgha check connections`: client connections on every node against max_connections.
pub async fn connections_main(
    config: Option<&std::path::Path>,
    args: &ConnectionsCheckArgs,
) -> ExitCode {
    let result = match crate::load_config(config) {
        Err(e) => unknown(crate::error_chain(&e).replace('\n', " ")),
        Ok(loaded) => {
            let warn = args
                .warn_ratio
                .unwrap_or(loaded.config.monitoring.alerts.connections_ratio);
            let nodes = health::connections(&loaded.config).await;
            health::judge_connections(&nodes, warn, args.crit_ratio)
        }
    };
    print_result("CONNECTIONS", result)
}

/// `pgha check archiving`: the primary's WAL archiver.
pub async fn archiving_main(
    config: Option<&std::path::Path>,
    args: &ArchivingCheckArgs,
) -> ExitCode {
    let result = match crate::load_config(config) {
        Err(e) => unknown(crate::error_chain(&e).replace('\n', " ")),
        Ok(loaded) => {
            let max_age = args
                .max_age_seconds
                .unwrap_or(loaded.config.monitoring.alerts.archive_age.as_secs_f64());
            match health::archiver(&loaded.config).await {
                Ok((primary, st)) => health::judge_archiving(&primary, &st, max_age),
                Err(e) => Health::new(Level::Critical, e),
            }
        }
    };
    print_result("ARCHIVING", result)
}
