//! `pgha check ...`: Nagios-convention checks (exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN)
//! with one summary line and perfdata.

use std::fmt::Write;
use std::process::ExitCode;

use pgha_replication::status::ClusterStatus;

use crate::cli::{ArchivingCheckArgs, ConnectionsCheckArgs, ReplicationCheckArgs};
use pgha_monitoring::health::{self, Health, Level};
use pgha_replication::table::human_bytes;

/// Nagios states, ordered by severity except Unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CheckState {
    Ok = 0,
    Warning = 1,
    Critical = 2,
    Unknown = 3,
}

impl CheckState {
    pub fn label(self) -> &'static str {
        match self {
            CheckState::Ok => "OK",
            CheckState::Warning => "WARNING",
            CheckState::Critical => "CRITICAL",
            CheckState::Unknown => "UNKNOWN",
        }
    }

    fn worst(self, other: CheckState) -> CheckState {
        self.max(other)
    }
}

/// Outcome of one check.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckResult {
    pub state: CheckState,
    pub summary: String,
    pub perfdata: String,
}

impl CheckResult {
    pub fn line(&self, name: &str) -> String {
        if self.perfdata.is_empty() {
            format!("{name} {} - {}", self.state.label(), self.summary)
        } else {
            format!(
                "{name} {} - {} | {}",
                self.state.label(),
                self.summary,
                self.perfdata
            )
        }
    }
}

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
) -> CheckResult {
    let mut state = CheckState::Ok;
    let mut problems: Vec<String> = Vec::new();
    let mut perf = String::new();
    if st.writable.len() > 1 {
        return CheckResult {
            state: CheckState::Critical,
            summary: format!("split brain: {} are all writable", st.writable.join(", ")),
            perfdata: String::new(),
        };
    }
    let Some(primary) = st.primary.clone() else {
        let reachable = st.nodes.iter().filter(|n| n.reachable).count();
        return CheckResult {
            state: CheckState::Critical,
            summary: format!(
                "no writable primary ({reachable}/{} nodes reachable)",
                st.nodes.len()
            ),
            perfdata: String::new(),
        };
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
            state = state.worst(CheckState::Warning);
            continue;
        }
        if n.streaming != Some(true) && !n.archive_only {
            problems.push(format!("{} not streaming", n.name));
            state = state.worst(CheckState::Warning);
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
                state = state.worst(CheckState::Critical);
            } else if b > t.warn_bytes {
                problems.push(format!(
                    "{} lag {} > {}",
                    n.name,
                    human_bytes(b),
                    human_bytes(t.warn_bytes)
                ));
                state = state.worst(CheckState::Warning);
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
                state = state.worst(CheckState::Critical);
            } else if s > t.warn_seconds {
                problems.push(format!("{} lag {s:.1}s > {}s", n.name, t.warn_seconds));
                state = state.worst(CheckState::Warning);
            }
        }
    }
    if expected_replicas > 0 && streaming + archive_only == 0 {
        state = CheckState::Critical;
    }
    let _ = write!(perf, "streaming={streaming};;;0;{expected_replicas}");
    let mut summary = format!(
        "primary {primary}, {streaming}/{expected_replicas} replicas streaming, max lag {} / {max_secs:.1}s",
        human_bytes(max_bytes)
    );
    if !problems.is_empty() {
        summary = format!("{}; {summary}", problems.join(", "));
    }
    CheckResult {
        state,
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
        Err(e) => CheckResult {
            state: CheckState::Unknown,
            summary: crate::error_chain(&e).replace('\n', " "),
            perfdata: String::new(),
        },
        Ok(loaded) => match ClusterStatus::collect(&loaded.config).await {
            Err(e) => CheckResult {
                state: CheckState::Unknown,
                summary: format!("cannot collect status: {e}"),
                perfdata: String::new(),
            },
            Ok(st) => evaluate_replication(
                &st,
                loaded.config.nodes.len().saturating_sub(1),
                args.into(),
            ),
        },
    };
    println!("{}", result.line("REPLICATION"));
    ExitCode::from(result.state as u8)
}

impl From<Health> for CheckResult {
    fn from(h: Health) -> Self {
        CheckResult {
            state: match h.level {
                Level::Ok => CheckState::Ok,
                Level::Warning => CheckState::Warning,
                Level::Critical => CheckState::Critical,
                Level::Unknown => CheckState::Unknown,
            },
            summary: h.summary,
            perfdata: h.perfdata,
        }
    }
}

fn unknown(summary: String) -> CheckResult {
    CheckResult {
        state: CheckState::Unknown,
        summary,
        perfdata: String::new(),
    }
}

fn print_result(name: &str, result: CheckResult) -> ExitCode {
    println!("{}", result.line(name));
    ExitCode::from(result.state as u8)
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
            health::judge_connections(&nodes, warn, args.crit_ratio).into()
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
                Ok((primary, st)) => health::judge_archiving(&primary, &st, max_age).into(),
                Err(e) => CheckResult {
                    state: CheckState::Critical,
                    summary: e,
                    perfdata: String::new(),
                },
            }
        }
    };
    print_result("ARCHIVING", result)
}
