//! Starting a restored data dir and waiting until its recovery reached the target, and what
//! a restore into a cluster's own data dir (an agent's bootstrap from a backup) needs besides.

use std::path::Path;
use std::time::{Duration, Instant};

use pgha_config::PghaConfig;
use pgha_postgres::{LocalInstance, OsUser, PgBinaries, PgControl, ProcessState};

use crate::restore::{dummy_params, RecoveryTarget, RestoreOptions, TargetAction};
use crate::{BackupError, Manifest, Result};

/// The line [`crate::restore`] puts before the settings it adds to `postgresql.auto.conf`.
pub(crate) const ADDED_MARK: &str = "\n# Added by pgha-backup restore of backup ";

/// Starts the restored instance as the server's OS user and waits until recovery reached its
/// target: promoted (promote, latest), paused (pause) or stopped (shutdown).
pub async fn start_and_wait(
    config: &PghaConfig,
    m: &Manifest,
    opts: &RestoreOptions,
    timeout: Duration,
) -> Result<LocalInstance> {
    let inst = restored_instance(config, m, &opts.to, opts.port, opts.run_as.clone())?;
    let t = Instant::now();
    if opts.action == TargetAction::Shutdown && opts.target != RecoveryTarget::Latest {
        let mut cmd = inst.command("pg_ctl");
        cmd.arg("start")
            .arg("-D")
            .arg(&opts.to)
            .arg("-l")
            .arg(inst.log_file())
            .arg("-W")
            .arg("-s");
        let out = cmd
            .output()
            .await
            .map_err(BackupError::io("run", "pg_ctl"))?;
        if !out.status.success() {
            return Err(BackupError::Command {
                program: "pg_ctl start".into(),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        while inst.process_state()? != ProcessState::Stopped {
            if t.elapsed() > timeout {
                return Err(BackupError::Usage(format!(
                    "recovery did not finish within {timeout:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let log = inst.log_tail(20);
        if log.contains("FATAL") && !log.contains("shutdown at recovery target") {
            return Err(BackupError::Command {
                program: "postgres (restored)".into(),
                status: "stopped".into(),
                stderr: log,
            });
        }
        return Ok(inst);
    }
    let reached = |in_recovery: bool, paused: &str| match (opts.action, &opts.target) {
        (_, RecoveryTarget::Latest) | (TargetAction::Promote, _) => !in_recovery,
        (TargetAction::Pause, _) => paused == "paused",
        (TargetAction::Shutdown, _) => false,
    };
    start_until(&inst, &opts.to, t, timeout, reached).await?;
    Ok(inst)
}

/// Starts `inst` (a restored data dir with its recovery settings) and polls until `reached`
/// (in recovery, replay pause state) says so; a server that stops on the way is an error
/// naming the reason from its log.
async fn start_until(
    inst: &LocalInstance,
    dir: &Path,
    t: Instant,
    timeout: Duration,
    reached: impl Fn(bool, &str) -> bool,
) -> Result<()> {
    if let Err(e) = inst.start().await {
        return Err(aborted(inst, dir).await.unwrap_or(e.into()));
    }
    tracing::info!(
        elapsed_ms = t.elapsed().as_millis() as u64,
        "restore: server started (pg_ctl start -w returned)"
    );
    loop {
        let mut conn = match inst.connect().await {
            Ok(c) => c,
            Err(e) => return Err(aborted(inst, dir).await.unwrap_or(e.into())),
        };
        let (in_recovery, paused): (bool, String) = sqlx::query_as(
            "SELECT pg_is_in_recovery(), CASE WHEN pg_is_in_recovery() THEN pg_get_wal_replay_pause_state() ELSE '' END",
        )
        .fetch_one(&mut conn)
        .await
        .map_err(BackupError::query("restored instance"))?;
        if reached(in_recovery, &paused) {
            tracing::info!(
                elapsed_ms = t.elapsed().as_millis() as u64,
                "restore: recovery reached its target"
            );
            return Ok(());
        }
        if t.elapsed() > timeout {
            return Err(BackupError::Usage(format!(
                "recovery did not reach its target within {timeout:?}; see {}",
                inst.log_file().display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A restore into a node's own data dir (`inst`: recovery settings from [`crate::restore`],
/// the node's own settings installed): starts it and waits until recovery reached its target
/// and the server was promoted; left running. On failure the server is stopped (fast).
/// Then stop it and [`clear_recovery_settings`], so the node's own settings apply.
pub async fn start_promoted(inst: &LocalInstance, timeout: Duration) -> Result<()> {
    let dir = inst.data_dir().to_owned();
    let promoted = start_until(inst, &dir, Instant::now(), timeout, |in_recovery, _| {
        !in_recovery
    })
    .await;
    if promoted.is_err() && !matches!(inst.process_state(), Ok(ProcessState::Stopped)) {
        if let Err(e) = inst.stop(pgha_postgres::StopMode::Fast).await {
            tracing::warn!("stopping the restored server after a failed recovery: {e}");
        }
    }
    promoted
}

/// Removes what [`crate::restore`] appended to `postgresql.auto.conf` (atomically, the file
/// owned by `owner`: the server's OS user); a file without it is left as it is.
pub fn clear_recovery_settings(dir: &Path, owner: Option<&OsUser>) -> Result<()> {
    let path = dir.join("postgresql.auto.conf");
    let text = std::fs::read_to_string(&path).map_err(BackupError::io("read", &path))?;
    let Some(at) = text.find(ADDED_MARK) else {
        return Ok(());
    };
    let mut kept = text[..at].to_owned();
    kept.push('\n');
    pgha_postgres::files::write_atomic(&path, kept.as_bytes(), 0o600, owner)
        .map_err(BackupError::from)
}

/// When the restored server has stopped (its startup process aborted recovery, e.g. because
/// wal-fetch found a corrupt object): the reason from its log, naming the object.
async fn aborted(inst: &LocalInstance, dir: &Path) -> Option<BackupError> {
    // The postmaster may need a moment to remove its pid file after the startup process died.
    for _ in 0..20 {
        if matches!(inst.process_state(), Ok(ProcessState::Stopped)) {
            let log = inst.log_tail(200);
            let ours: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("pgha-backup:") && !l.contains("is not in the archive"))
                .collect();
            let fatal: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("FATAL") || l.contains("PANIC"))
                .collect();
            let hint = if ours.is_empty() {
                "the copy was not promoted"
            } else {
                "the copy was not promoted: repair the archive, or restore with a target before the damaged WAL"
            };
            let detail = match (ours.last(), fatal.last()) {
                (Some(o), Some(f)) => format!("{}; the server stopped: {}", o.trim(), f.trim()),
                (Some(o), None) => o.trim().to_owned(),
                (None, Some(f)) => f.trim().to_owned(),
                (None, None) => "the server stopped during recovery".into(),
            };
            return Some(BackupError::RecoveryAborted {
                dir: dir.to_owned(),
                detail: format!("{detail} (log {}); {hint}", inst.log_file().display()),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// The restored data dir as an instance (log file beside it: `<dir>.log`).
pub fn restored_instance(
    config: &PghaConfig,
    m: &Manifest,
    dir: &Path,
    port: Option<u16>,
    run_as: Option<OsUser>,
) -> Result<LocalInstance> {
    let bins = PgBinaries::discover(config.postgres.bin_dir.as_deref())?;
    let node = config.node(&m.node).or(config.nodes.first());
    let mut params = match node {
        Some(n) => pgha_postgres::connect_params(config, n)?,
        None => dummy_params(5432),
    };
    params.host = "127.0.0.1".into();
    if let Some(p) = port {
        params.port = p;
    }
    params.application_name = "pgha-backup".into();
    if port.is_some() {
        // The copy beside the cluster runs without TLS (write_recovery).
        params.ssl_root_cert = None;
    }
    let log = dir.with_extension("log");
    Ok(LocalInstance::new(
        "restored", dir, log, bins, run_as, params,
    ))
}
