//! `schedule`: run backups on cron expressions, expire after each, and publish the last success
//! time as `pgha_backup_last_success_timestamp_seconds` in a Prometheus text file (for the
//! exporter's / node_exporter's textfile collector).

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use pgha_config::{BackupSection, PghaConfig};

use crate::cron::Cron;
use crate::storage::Storage;
use crate::{BackupError, BackupOptions, Repository, Result};

/// Outcome of one scheduled run, as written to the metrics file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunStats {
    pub last_success: Option<SystemTime>,
    pub last_duration_s: f64,
    pub last_size: u64,
    pub last_stored: u64,
    pub failures: u64,
}

/// The next time any of `crons` fires after `now`.
pub fn next_run(crons: &[Cron], now: SystemTime) -> Option<SystemTime> {
    crons.iter().filter_map(|c| c.next_after(now)).min()
}

/// One cycle: backup, then expire; updates `stats` and the metrics file.
pub async fn run_once(
    config: &PghaConfig,
    section: &BackupSection,
    storage: Arc<dyn Storage>,
    opts: &BackupOptions,
    stats: &mut RunStats,
) -> Result<()> {
    let t = Instant::now();
    let result = async {
        let m = crate::take_backup(config, storage.clone(), opts).await?;
        let repo = Repository::new(storage.clone());
        let plan =
            crate::expire::expire(&repo, &section.retention, SystemTime::now(), false).await?;
        tracing::info!(id = %m.id, expired = plan.remove_backups.len(), wal_removed = plan.remove_wal.len(), "scheduled backup done");
        Ok::<_, BackupError>(m)
    }
    .await;
    match &result {
        Ok(m) => {
            stats.last_success = Some(SystemTime::now());
            stats.last_duration_s = t.elapsed().as_secs_f64();
            stats.last_size = m.size;
            stats.last_stored = m.stored_size;
        }
        Err(e) => {
            stats.failures += 1;
            tracing::error!("scheduled backup failed: {e}");
        }
    }
    if let Some(path) = &section.metrics_file {
        write_metrics(path, &config.cluster.name, stats)?;
    }
    result.map(|_| ())
}

/// Runs forever (until ctrl-c / SIGTERM): sleeps until the next cron time, then [`run_once`].
pub async fn run_forever(
    config: &PghaConfig,
    section: &BackupSection,
    storage: Arc<dyn Storage>,
    opts: &BackupOptions,
) -> Result<()> {
    let crons = section
        .schedule
        .iter()
        .map(|e| Cron::parse(e))
        .collect::<Result<Vec<_>>>()?;
    if crons.is_empty() {
        return Err(BackupError::Usage(
            "backup.schedule is empty: nothing to run".into(),
        ));
    }
    let mut stats = RunStats::default();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(BackupError::io("install SIGTERM handler", "signal"))?;
    loop {
        let now = SystemTime::now();
        let Some(next) = next_run(&crons, now) else {
            return Err(BackupError::Usage(
                "no future time matches backup.schedule".into(),
            ));
        };
        tracing::info!(next = %humantime::format_rfc3339_seconds(next), "next scheduled backup");
        let wait = next.duration_since(now).unwrap_or_default();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = term.recv() => return Ok(()),
        }
        // A failed run is counted and logged; the daemon keeps going.
        let _ = run_once(config, section, storage.clone(), opts, &mut stats).await;
    }
}

/// Writes the Prometheus text file atomically (0644).
pub fn write_metrics(path: &Path, cluster: &str, s: &RunStats) -> Result<()> {
    let mut t = String::new();
    let label = format!("{{cluster=\"{}\"}}", cluster.replace('"', ""));
    let secs = |t: SystemTime| {
        t.duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0)
    };
    let _ = writeln!(t, "# HELP pgha_backup_last_success_timestamp_seconds Unix time of the last successful scheduled backup.");
    let _ = writeln!(t, "# TYPE pgha_backup_last_success_timestamp_seconds gauge");
    let _ = writeln!(
        t,
        "pgha_backup_last_success_timestamp_seconds{label} {}",
        s.last_success.map_or(0.0, secs)
    );
    let _ = writeln!(t, "# HELP pgha_backup_last_duration_seconds Duration of the last successful scheduled backup and expire.");
    let _ = writeln!(t, "# TYPE pgha_backup_last_duration_seconds gauge");
    let _ = writeln!(
        t,
        "pgha_backup_last_duration_seconds{label} {:.3}",
        s.last_duration_s
    );
    let _ = writeln!(
        t,
        "# HELP pgha_backup_last_size_bytes Data bytes read by the last successful backup."
    );
    let _ = writeln!(t, "# TYPE pgha_backup_last_size_bytes gauge");
    let _ = writeln!(t, "pgha_backup_last_size_bytes{label} {}", s.last_size);
    let _ = writeln!(
        t,
        "# HELP pgha_backup_last_stored_bytes Bytes stored by the last successful backup."
    );
    let _ = writeln!(t, "# TYPE pgha_backup_last_stored_bytes gauge");
    let _ = writeln!(t, "pgha_backup_last_stored_bytes{label} {}", s.last_stored);
    let _ = writeln!(t, "# HELP pgha_backup_failures_total Scheduled backups that failed since the scheduler started.");
    let _ = writeln!(t, "# TYPE pgha_backup_failures_total counter");
    let _ = writeln!(t, "pgha_backup_failures_total{label} {}", s.failures);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(BackupError::io("create directory", dir))?;
    }
    pgha_postgres::files::write_atomic(path, t.as_bytes(), 0o644, None)?;
    Ok(())
}
