//! `pgha-backup` as a library: each command composes pgha-backup-core; exit codes are 0 on
//! success and 1 on any failure, except `wal-fetch` (PostgreSQL's restore_command), whose
//! answers PostgreSQL acts on: 1 only for "not in the archive" (recovery tries elsewhere or
//! ends there), [`EXIT_ABORT_RECOVERY`] for every other failure (a corrupt object, a wrong
//! key, an unreachable repository, a bad config), so that the server aborts recovery instead
//! of ending it early and promoting a copy that lacks the rest of the archive.

pub mod cli;
mod list;
mod verify;

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use anyhow::{bail, Context};
use pgha_backup_core::{
    storage, BackupError, BackupKind, BackupOptions, RecoveryTarget, Repository, RestoreOptions,
    Storage, TargetAction,
};
use pgha_config::{BackupSection, LoadedConfig};

use crate::cli::{ActionArg, Cli, Command, KindArg, RestoreArgs};

/// `wal-fetch`'s exit code for a failure other than "not archived": above 125, which
/// PostgreSQL treats like a shell error or a signal and aborts recovery on.
pub const EXIT_ABORT_RECOVERY: u8 = 255;

/// The exit code of a failed command.
pub fn failure_code(cli: &Cli) -> ExitCode {
    match cli.command {
        Command::WalFetch { .. } => ExitCode::from(EXIT_ABORT_RECOVERY),
        _ => ExitCode::FAILURE,
    }
}

/// Runs one command and maps the result to an exit code.
pub async fn run(cli: Cli) -> ExitCode {
    match run_inner(&cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("pgha-backup: {}", pgha_startup::error_chain(e.as_ref()));
            failure_code(&cli)
        }
    }
}

fn section(loaded: &LoadedConfig) -> anyhow::Result<BackupSection> {
    loaded.config.backup.clone().with_context(|| {
        format!(
            "{} has no [backup] section: add one with the repository, e.g.\n[backup.repository]\npath = \"/var/lib/pgha/backup\"",
            loaded.source
        )
    })
}

fn open_storage(s: &BackupSection) -> anyhow::Result<Arc<dyn Storage>> {
    storage::open(s).context("open the backup repository")
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The restore_command the restored server runs: this binary's wal-fetch with this config.
fn restore_command(loaded: &LoadedConfig) -> anyhow::Result<String> {
    let exe = std::env::current_exe().context("find this program's path")?;
    let cfg = loaded
        .source
        .path()
        .canonicalize()
        .with_context(|| format!("resolve {}", loaded.source.path().display()))?;
    Ok(format!(
        "{} --config {} wal-fetch %f %p",
        sh_quote(&exe.display().to_string()),
        sh_quote(&cfg.display().to_string())
    ))
}

fn server_user(loaded: &LoadedConfig) -> anyhow::Result<Option<pgha_postgres::OsUser>> {
    Ok(pgha_postgres::OsUser::for_server(
        &loaded.config.postgres.os_user,
    )?)
}

pub(crate) fn mb(b: u64) -> f64 {
    b as f64 / 1e6
}

async fn run_inner(cli: &Cli) -> anyhow::Result<ExitCode> {
    let loaded = pgha_startup::load_config(cli.config.as_deref())?;
    let sec = section(&loaded)?;
    let storage = open_storage(&sec)?;
    let repo = Repository::new(storage.clone());
    let config = &loaded.config;
    match &cli.command {
        Command::Backup(a) => {
            let opts = BackupOptions {
                kind: match a.kind {
                    KindArg::Full => BackupKind::Full,
                    KindArg::Diff => BackupKind::Diff,
                    KindArg::Incr => BackupKind::Incr,
                },
                node: a.node.clone().or(sec.node.clone()),
                from_standby: a.from_standby,
                parallel: a.parallel.unwrap_or(sec.parallel),
                level: sec.compression_level,
                progress: !a.no_progress,
                encrypted: sec.encryption_key.is_some(),
            };
            let t = Instant::now();
            let m = pgha_backup_core::take_backup(config, storage, &opts).await?;
            let secs = t.elapsed().as_secs_f64();
            println!(
                "backup {} complete: {}{}, node {}, timeline {}, LSN {} .. {}, WAL {} .. {}",
                m.id,
                m.kind,
                m.reference
                    .as_deref()
                    .map(|r| format!(" of {r}"))
                    .unwrap_or_default(),
                m.node,
                m.timeline,
                m.start_lsn,
                m.stop_lsn,
                m.start_wal,
                m.stop_wal
            );
            if m.reference.is_some() {
                println!(
                    "  {:.1} MB changed and stored, {:.1} MB referenced",
                    mb(m.own_size()),
                    mb(m.size - m.own_size())
                );
            }
            println!(
                "  {} files, {:.1} MB read, {:.1} MB stored in {} pack(s) (ratio {:.1}x), {:.2} s, {:.0} MB/s",
                m.files.len(),
                mb(m.size),
                mb(m.stored_size),
                m.packs.len(),
                m.size as f64 / m.stored_size.max(1) as f64,
                secs,
                mb(m.size) / secs.max(0.001)
            );
        }
        Command::Logical { db, node } => {
            let db = db
                .clone()
                .unwrap_or_else(|| config.postgres.database.clone());
            let t = Instant::now();
            let m = pgha_backup_core::logical::dump(
                config,
                storage,
                node.as_deref().or(sec.node.as_deref()),
                &db,
            )
            .await?;
            println!(
                "logical dump {} of database {} complete: {:.1} MB dumped, {:.1} MB stored, {:.2} s",
                m.id,
                m.database,
                mb(m.size),
                mb(m.stored_size),
                t.elapsed().as_secs_f64()
            );
        }
        Command::WalPush { path } => {
            let outcome = pgha_backup_core::push_batch::push_batch(
                storage.clone(),
                path,
                sec.archive_push_parallel.max(1),
            )
            .await
            .with_context(|| format!("archive {}", path.display()))?;
            tracing::info!(?outcome, path = %path.display(), "wal-push");
        }
        Command::WalFetch { name, path } => {
            match pgha_backup_core::wal::fetch(storage.as_ref(), name, path).await {
                Ok(()) => {}
                Err(BackupError::NotFound { .. }) => {
                    // A restore (no standby.signal in the data dir, which is our working
                    // directory) that misses a segment while later ones are archived has hit
                    // a gap: ending recovery here would promote a copy without the rest.
                    // A standby waits for the segment or streams it instead.
                    if !Path::new("standby.signal").exists() {
                        if let Some(later) =
                            pgha_backup_core::wal::later_segment(storage.as_ref(), name).await?
                        {
                            bail!(
                                "WAL segment {name} is missing from the archive {}, but the later segment {later} of its timeline is there: a gap in the archive; recovery must stop here, not end (run `pgha-backup verify`)",
                                storage.describe()
                            );
                        }
                    }
                    eprintln!("pgha-backup: WAL file {name} is not in the archive");
                    return Ok(ExitCode::FAILURE);
                }
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("fetch WAL file {name}: recovery must stop here, not end")
                    })
                }
            }
        }
        Command::Restore(a) => restore(&loaded, &repo, storage, a).await?,
        Command::Verify(a) => {
            let restore_cmd = restore_command(&loaded)?;
            let ok = verify::run(
                &loaded,
                &repo,
                a,
                restore_cmd,
                server_user(&loaded)?,
                sec.parallel,
            )
            .await?;
            if !ok {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::List { json } => list::run(&repo, *json).await?,
        Command::Expire { dry_run } => {
            let plan = pgha_backup_core::expire::expire(
                &repo,
                &sec.retention,
                SystemTime::now(),
                *dry_run,
            )
            .await?;
            let verb = if *dry_run { "would remove" } else { "removed" };
            for id in &plan.remove_backups {
                println!("{verb} backup {id}");
            }
            for id in &plan.incomplete {
                println!("{verb} incomplete backup {id}");
            }
            println!(
                "{verb} {} WAL file(s); kept {} backup(s): {}",
                plan.remove_wal.len(),
                plan.keep.len(),
                plan.keep.join(", ")
            );
        }
        Command::Schedule { once } => {
            let opts = BackupOptions {
                kind: BackupKind::Full,
                node: sec.node.clone(),
                from_standby: false,
                parallel: sec.parallel,
                level: sec.compression_level,
                progress: false,
                encrypted: sec.encryption_key.is_some(),
            };
            if *once {
                let mut stats = pgha_backup_core::schedule::RunStats::default();
                pgha_backup_core::schedule::run_once(config, &sec, storage, &opts, &mut stats)
                    .await?;
                println!("scheduled run done");
            } else {
                pgha_backup_core::schedule::run_forever(config, &sec, storage, &opts).await?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn restore(
    loaded: &LoadedConfig,
    repo: &Repository,
    storage: Arc<dyn Storage>,
    a: &RestoreArgs,
) -> anyhow::Result<()> {
    let config = &loaded.config;
    if a.logical {
        let t = Instant::now();
        let m = pgha_backup_core::logical::restore(
            config,
            storage,
            None,
            a.backup.as_deref(),
            a.db.as_deref(),
            a.target_db.as_deref(),
        )
        .await?;
        println!(
            "logical dump {} restored into database {} in {:.2} s",
            m.id,
            a.target_db.as_deref().unwrap_or(&m.database),
            t.elapsed().as_secs_f64()
        );
        return Ok(());
    }
    let Some(to) = &a.to else {
        bail!("--to DIR is required")
    };
    let target = if let Some(t) = &a.target_time {
        RecoveryTarget::Time(t.clone())
    } else if let Some(l) = &a.target_lsn {
        l.parse::<pgha_postgres::Lsn>()
            .with_context(|| format!("--target-lsn {l}"))?;
        RecoveryTarget::Lsn(l.clone())
    } else if let Some(n) = &a.target_name {
        RecoveryTarget::Name(n.clone())
    } else if a.immediate {
        RecoveryTarget::Immediate
    } else {
        RecoveryTarget::Latest
    };
    let action = match a.target_action {
        ActionArg::Promote => TargetAction::Promote,
        ActionArg::Pause => TargetAction::Pause,
        ActionArg::Shutdown => TargetAction::Shutdown,
    };
    if target == RecoveryTarget::Latest && action != TargetAction::Promote {
        bail!("--target-action {:?} needs a target (--target-time, --target-lsn, --target-name or --immediate)", a.target_action);
    }
    let to = absolute(to)?;
    let opts = RestoreOptions {
        backup: a.backup.clone(),
        to: to.clone(),
        target,
        action,
        force: a.force,
        delta: a.delta,
        port: a.port,
        parallel: config.backup.as_ref().map_or(0, |b| b.parallel),
        restore_command: restore_command(loaded)?,
        run_as: server_user(loaded)?,
        progress: !a.no_progress && std::io::stderr().is_terminal(),
        keep_archiving: false,
    };
    let t = Instant::now();
    let (m, stats) = pgha_backup_core::restore_counted(repo, &opts).await?;
    println!(
        "restored backup {} ({:.1} MB, {} files) into {} in {:.2} s",
        m.id,
        mb(m.size),
        m.files.len(),
        to.display(),
        t.elapsed().as_secs_f64()
    );
    if a.delta {
        println!(
            "  delta: {:.1} MB already in place, {:.1} MB rewritten, {} entries not in the backup removed",
            mb(stats.kept),
            mb(stats.written),
            stats.removed
        );
    }
    if a.start {
        let inst = pgha_backup_core::start_and_wait(config, &m, &opts, a.wait_timeout).await?;
        println!(
            "recovery reached its target ({}); instance in {} (log {}), {:.2} s since restore start",
            match (action, &opts.target) {
                (_, RecoveryTarget::Latest) | (TargetAction::Promote, _) => "promoted",
                (TargetAction::Pause, _) => "paused",
                (TargetAction::Shutdown, _) => "shut down",
            },
            to.display(),
            inst.log_file().display(),
            t.elapsed().as_secs_f64()
        );
    } else {
        println!(
            "start it with: pg_ctl start -D {} (as the server's OS user)",
            to.display()
        );
    }
    Ok(())
}

fn absolute(p: &Path) -> anyhow::Result<std::path::PathBuf> {
    Ok(if p.is_absolute() {
        p.to_owned()
    } else {
        std::env::current_dir()?.join(p)
    })
}
