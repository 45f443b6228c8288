//! Health checks behind `pgha check connections` and `pgha check archiving`: live numbers
//! from every node, judged against thresholds, as a Nagios state, a summary and perfdata.

use std::fmt::Write;

use pgha_config::PghaConfig;
use pgha_postgres::connect_params;

/// Nagios state of a check (exit code = discriminant).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Ok = 0,
    Warning = 1,
    Critical = 2,
    Unknown = 3,
}

impl Level {
    /// `OK`, `WARNING`, `CRITICAL`, `UNKNOWN`.
    pub fn label(self) -> &'static str {
        match self {
            Level::Ok => "OK",
            Level::Warning => "WARNING",
            Level::Critical => "CRITICAL",
            Level::Unknown => "UNKNOWN",
        }
    }

    /// The Nagios exit code.
    pub fn exit_code(self) -> u8 {
        self as u8
    }
}

/// A check's verdict: what `pgha check` prints and exits with, and what `pgha verify` sums up
/// to (its rows' verdicts convert into a level).
#[derive(Debug, Clone, PartialEq)]
pub struct Health {
    pub level: Level,
    pub summary: String,
    pub perfdata: String,
}

impl Health {
    pub fn new(level: Level, summary: impl Into<String>) -> Self {
        Health {
            level,
            summary: summary.into(),
            perfdata: String::new(),
        }
    }

    /// The Nagios line: `NAME STATE - summary | perfdata`.
    pub fn line(&self, name: &str) -> String {
        if self.perfdata.is_empty() {
            format!("{name} {} - {}", self.level.label(), self.summary)
        } else {
            format!(
                "{name} {} - {} | {}",
                self.level.label(),
                self.summary,
                self.perfdata
            )
        }
    }
}

/// Connection use of one node.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ConnectionUse {
    pub used: i64,
    pub max_connections: i32,
    pub reserved: i32,
}

/// Archiver state of the primary.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ArchiverState {
    pub archive_mode: String,
    pub in_recovery: bool,
    pub archived_count: i64,
    pub failed_count: i64,
    pub last_archived_age: Option<f64>,
    /// The most recent attempt failed (last_failed_time after last_archived_time).
    pub last_attempt_failed: bool,
    pub last_failed_wal: Option<String>,
    /// WAL segments waiting in archive_status/*.ready.
    pub ready: i64,
}

/// Queries connection use on every node; unreachable nodes carry their error.
pub async fn connections(config: &PghaConfig) -> Vec<(String, Result<ConnectionUse, String>)> {
    let mut out = Vec::new();
    for node in &config.nodes {
        let r = async {
            let mut conn = connect_params(config, node)
                .map_err(|e| e.to_string())?
                .connect()
                .await
                .map_err(|e| e.to_string())?;
            connection_use(&mut conn).await.map_err(|e| e.to_string())
        }
        .await;
        out.push((node.name.clone(), r));
    }
    out
}

/// Client backends, max_connections and superuser_reserved_connections of the server `conn`
/// is on (the one connection-use query of `pgha check` and `pgha verify`).
pub async fn connection_use(conn: &mut sqlx::PgConnection) -> Result<ConnectionUse, sqlx::Error> {
    sqlx::query_as::<_, ConnectionUse>(
        "SELECT (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend') AS used, \
         current_setting('max_connections')::int AS max_connections, \
         current_setting('superuser_reserved_connections')::int AS reserved",
    )
    .fetch_one(conn)
    .await
}

/// Judges connection use: WARNING above `warn` and CRITICAL above `crit` (fractions of the
/// connections available to non-superusers).
pub fn judge_connections(
    nodes: &[(String, Result<ConnectionUse, String>)],
    warn: f64,
    crit: f64,
) -> Health {
    let mut level = Level::Ok;
    let mut problems = Vec::new();
    let mut perf = String::new();
    let mut parts = Vec::new();
    let mut reachable = 0;
    for (name, r) in nodes {
        match r {
            Err(e) => {
                problems.push(format!("{name} unreachable ({e})"));
                level = level.max(Level::Warning);
            }
            Ok(u) => {
                reachable += 1;
                let avail = (u.max_connections - u.reserved).max(1) as f64;
                let ratio = u.used as f64 / avail;
                let _ = write!(
                    perf,
                    "{name}_connections={};{:.0};{:.0};0;{} ",
                    u.used,
                    warn * avail,
                    crit * avail,
                    avail
                );
                parts.push(format!("{name} {}/{}", u.used, avail));
                if ratio > crit {
                    problems.push(format!("{name} at {:.0}% of connections", ratio * 100.0));
                    level = level.max(Level::Critical);
                } else if ratio > warn {
                    problems.push(format!("{name} at {:.0}% of connections", ratio * 100.0));
                    level = level.max(Level::Warning);
                }
            }
        }
    }
    if reachable == 0 {
        level = Level::Critical;
    }
    let mut summary = parts.join(", ");
    if summary.is_empty() {
        summary = "no node reachable".into();
    }
    if !problems.is_empty() {
        summary = format!("{}; {summary}", problems.join(", "));
    }
    Health {
        level,
        summary,
        perfdata: perf.trim_end().to_owned(),
    }
}

/// Finds the primary and reads its archiver state; Err names why not.
pub async fn archiver(config: &PghaConfig) -> Result<(String, ArchiverState), String> {
    let mut errors = Vec::new();
    for node in &config.nodes {
        let conn = match connect_params(config, node) {
            Ok(p) => p.connect().await,
            Err(e) => Err(e),
        };
        let mut conn = match conn {
            Ok(c) => c,
            Err(e) => {
                errors.push(e.to_string());
                continue;
            }
        };
        let st = sqlx::query_as::<_, ArchiverState>(
            "SELECT current_setting('archive_mode') AS archive_mode, pg_is_in_recovery() AS in_recovery, \
               archived_count, failed_count, \
               extract(epoch FROM now() - last_archived_time)::float8 AS last_archived_age, \
               (last_failed_time IS NOT NULL AND (last_archived_time IS NULL OR last_failed_time > last_archived_time)) AS last_attempt_failed, \
               last_failed_wal, \
               (SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready') AS ready \
             FROM pg_stat_archiver",
        )
        .fetch_one(&mut conn)
        .await
        .map_err(|e| format!("{}: {e}", node.name))?;
        if !st.in_recovery {
            return Ok((node.name.clone(), st));
        }
    }
    Err(if errors.is_empty() {
        "no primary found".into()
    } else {
        format!("no primary reachable: {}", errors.join("; "))
    })
}

/// Judges archiving on the primary: CRITICAL when the last attempt failed, WARNING when the
/// last success is older than `max_age_seconds` while segments wait, OK otherwise.
pub fn judge_archiving(primary: &str, st: &ArchiverState, max_age_seconds: f64) -> Health {
    let perf = format!(
        "archived={}c failed={}c ready={} age={}s;{max_age_seconds}",
        st.archived_count,
        st.failed_count,
        st.ready,
        st.last_archived_age
            .map(|a| format!("{a:.0}"))
            .unwrap_or_default()
    );
    if st.archive_mode == "off" {
        return Health {
            level: Level::Warning,
            summary: format!("archive_mode is off on primary {primary}: no WAL archive"),
            perfdata: String::new(),
        };
    }
    let (level, summary) = if st.last_attempt_failed {
        (
            Level::Critical,
            format!(
                "archiving failing on {primary}: last attempt for {} failed, {} segments waiting",
                st.last_failed_wal.as_deref().unwrap_or("?"),
                st.ready
            ),
        )
    } else if st.ready > 0 && st.last_archived_age.is_none_or(|a| a > max_age_seconds) {
        (
            Level::Warning,
            format!(
                "nothing archived on {primary} for more than {max_age_seconds}s, {} segments waiting",
                st.ready
            ),
        )
    } else {
        (
            Level::Ok,
            format!(
                "{primary}: {} archived, {} waiting, last {}",
                st.archived_count,
                st.ready,
                st.last_archived_age
                    .map(|a| format!("{a:.0}s ago"))
                    .unwrap_or_else(|| "never".into())
            ),
        )
    };
    Health {
        level,
        summary,
        perfdata: perf,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn use_(used: i64) -> Result<ConnectionUse, String> {
        Ok(ConnectionUse {
            used,
            max_connections: 103,
            reserved: 3,
        })
    }

    #[test]
    fn connection_levels() {
        let n = |u| vec![("a".to_string(), use_(u))];
        assert_eq!(judge_connections(&n(10), 0.8, 0.9).level, Level::Ok);
        assert_eq!(judge_connections(&n(85), 0.8, 0.9).level, Level::Warning);
        assert_eq!(judge_connections(&n(95), 0.8, 0.9).level, Level::Critical);
        let down = vec![("a".to_string(), Err("refused".to_string()))];
        assert_eq!(judge_connections(&down, 0.8, 0.9).level, Level::Critical);
    }

    #[test]
    fn archiving_levels() {
        let mut st = ArchiverState {
            archive_mode: "on".into(),
            in_recovery: false,
            archived_count: 3,
            failed_count: 0,
            last_archived_age: Some(10.0),
            last_attempt_failed: false,
            last_failed_wal: None,
            ready: 0,
        };
        assert_eq!(judge_archiving("p", &st, 600.0).level, Level::Ok);
        st.last_attempt_failed = true;
        assert_eq!(judge_archiving("p", &st, 600.0).level, Level::Critical);
        st.last_attempt_failed = false;
        st.ready = 4;
        st.last_archived_age = Some(4000.0);
        assert_eq!(judge_archiving("p", &st, 600.0).level, Level::Warning);
        st.archive_mode = "off".into();
        assert_eq!(judge_archiving("p", &st, 600.0).level, Level::Warning);
    }
}
