//! The exporter and the backups beside the local cluster (`cargo xtask cluster up`): WAL
//! archiving into `<state>/backups` through a copy of pgha-backup the server user can run, a
//! first base backup, the backup schedule and pgha-exporter started detached with pid files in
//! `<state>/services/`, stopped by `cluster down`.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use pgha_config::PghaConfig;
use pgha_local_cluster::{stop_pid, ClusterSpec, PortReservation};
use pgha_postgres::OsUser;

use crate::agents::read_pid;

fn services(root: &Path) -> PathBuf {
    root.join("services")
}

/// Where the server user runs pgha-backup from (the build's target dir may be unreadable to it).
fn archive_bin(root: &Path) -> PathBuf {
    root.join("bin/pgha-backup")
}

/// Adds archiving, `[backup]` and `[monitoring]` to a new cluster's spec. The exporter listens
/// on `exporter_port`.
pub fn configure(
    spec: &mut ClusterSpec,
    root: &Path,
    exporter: &PortReservation,
) -> anyhow::Result<()> {
    let repo = root.join("backups");
    std::fs::create_dir_all(&repo)?;
    // wal-push runs as the server user and writes into the repository.
    if let Some(u) = OsUser::for_server(&spec.os_user)? {
        u.chown(&repo)?;
    }
    let cmd = format!(
        "'{}' --config '{}' wal-push %p",
        archive_bin(root).display(),
        root.join(pgha_local_cluster::CONFIG_FILE).display()
    );
    // always: a standby archives what it receives too (the push of a segment already archived
    // with the same content succeeds), so a failover leaves no gap of segments that only the
    // lost primary had. docs/BACKUP.md, "Archiving across failover".
    spec.parameters
        .insert("archive_mode".into(), "always".into());
    spec.parameters.insert("archive_command".into(), cmd);
    spec.extra_toml.push_str(&format!(
        "\n[monitoring]\nlisten = \"127.0.0.1:{}\"\n\n[backup]\n# daily at 02:00; retention: 7 days\nschedule = [\"0 2 * * *\"]\nmetrics_file = \"{}\"\n\n[backup.repository]\npath = \"{}\"\n",
        exporter.port,
        repo.join("metrics.prom").display(),
        repo.display()
    ));
    Ok(())
}

/// Copies pgha-backup where archive_command runs it (atomically: the server may be running it).
pub fn install_archive_bin(root: &Path, bin_dir: &Path) -> anyhow::Result<()> {
    let to = archive_bin(root);
    std::fs::create_dir_all(to.parent().context("bin dir")?)?;
    let bytes = std::fs::read(bin_dir.join("pgha-backup")).context("read pgha-backup")?;
    pgha_postgres::files::write_atomic(&to, &bytes, 0o755, None)?;
    Ok(())
}

fn spawn(root: &Path, name: &str, bin: &Path, args: &[&str]) -> anyhow::Result<()> {
    let dir = services(root);
    std::fs::create_dir_all(&dir)?;
    let pid_file = dir.join(format!("{name}.pid"));
    if read_pid(&pid_file).is_some() {
        return Ok(());
    }
    let log = dir.join(format!("{name}.log"));
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)?;
    let child = Command::new(bin)
        .args(args)
        .env("RUST_LOG", "info,sqlx=warn")
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .process_group(0)
        .spawn()
        .with_context(|| format!("start {}", bin.display()))?;
    std::fs::write(&pid_file, child.id().to_string())?;
    eprintln!("xtask: {name} started (log {})", log.display());
    Ok(())
}

/// Starts pgha-exporter; returns its address.
pub fn ensure_exporter(
    root: &Path,
    config: &PghaConfig,
    config_path: &Path,
    bin_dir: &Path,
) -> anyhow::Result<String> {
    let cfg = config_path.display().to_string();
    spawn(
        root,
        "exporter",
        &bin_dir.join("pgha-exporter"),
        &["--config", &cfg],
    )?;
    Ok(config.monitoring.listen.to_string())
}

/// With `[backup]`: a first base backup when the repository has none, then the schedule.
pub fn ensure_backups(
    root: &Path,
    config: &PghaConfig,
    config_path: &Path,
    bin_dir: &Path,
) -> anyhow::Result<()> {
    let Some(b) = &config.backup else {
        eprintln!("xtask: this cluster has no [backup] section (created before backups were part of `up`); skipping backups");
        return Ok(());
    };
    install_archive_bin(root, bin_dir)?;
    let bin = bin_dir.join("pgha-backup");
    let cfg = config_path.display().to_string();
    let has_backup = b.repository.path.as_ref().is_some_and(|p| {
        p.join("backups")
            .read_dir()
            .is_ok_and(|mut d| d.next().is_some())
    });
    if !has_backup {
        eprintln!("xtask: first base backup");
        let st = Command::new(&bin)
            .args(["--config", &cfg, "backup"])
            .stdin(Stdio::null())
            .status()
            .context("run pgha-backup backup")?;
        if !st.success() {
            bail!("the first base backup failed ({st}); see above");
        }
    }
    spawn(
        root,
        "backup-schedule",
        &bin,
        &["--config", &cfg, "schedule"],
    )
}

/// Stops the exporter and the backup schedule.
pub fn stop_all(root: &Path) {
    for name in ["exporter", "backup-schedule"] {
        if let Some(pid) = read_pid(&services(root).join(format!("{name}.pid"))) {
            stop_pid(pid, Duration::from_secs(10));
            eprintln!("xtask: {name} stopped");
        }
    }
}
