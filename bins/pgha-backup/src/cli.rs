//! Command-line interface of `pgha-backup` (clap derive).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "pgha-backup",
    version,
    about = "Base backups, WAL archive, point-in-time restore, verification and retention for pgha clusters"
)]
pub struct Cli {
    /// pgha.toml to read (else PGHA_CONFIG, else ./pgha.toml); its [backup] section names the repository.
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    /// More logs on stderr (-v info, -vv debug).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Take a full base backup (parallel, zstd, checksummed) into the repository.
    Backup(BackupArgs),
    /// Dump one database with pg_dump (custom format) into the repository.
    Logical {
        /// Database to dump (default: postgres.database).
        #[arg(long)]
        db: Option<String>,
        /// Node to dump from (default: the primary).
        #[arg(long)]
        node: Option<String>,
    },
    /// archive_command: archive the WAL file at PATH (`%p`).
    WalPush {
        /// Path of the WAL file, as the server passes %p.
        path: PathBuf,
    },
    /// restore_command: fetch WAL file NAME (`%f`) to PATH (`%p`).
    ///
    /// Exit 0 when fetched and checked, 1 only when the archive does not have NAME, 255 on any
    /// other failure (corrupt or undecryptable object, storage error after retries, bad
    /// config): PostgreSQL then aborts recovery instead of ending it at that segment.
    WalFetch { name: String, path: PathBuf },
    /// Restore a base backup into a directory (with recovery settings), or a logical dump.
    Restore(RestoreArgs),
    /// Re-read every object of the repository and check it: each backup's packs and chunks,
    /// every archived WAL object, and that every backup can replay to the archive's end.
    ///
    /// Exit 0 when nothing is wrong, 1 when anything is (each problem names its object).
    Verify(VerifyArgs),
    /// List backups, logical dumps and the WAL archive.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Apply the retention policy: remove old backups and the WAL only they needed.
    Expire {
        /// Print what would be removed, remove nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Run backups on the cron expressions of backup.schedule; expire after each.
    Schedule {
        /// Run one backup + expire now and exit.
        #[arg(long)]
        once: bool,
    },
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Backup id (default: every backup; the result is then stored for `pgha verify`).
    pub id: Option<String>,
    /// Also restore each good backup into a temporary instance, start it and run a query.
    #[arg(long)]
    pub restore_test: bool,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Objects read in parallel (default: backup.parallel, 0 = one per core).
    #[arg(long)]
    pub parallel: Option<usize>,
    /// No progress line even on a terminal.
    #[arg(long)]
    pub no_progress: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum KindArg {
    /// Every chunk of the data directory.
    Full,
    /// Only chunks changed since the newest full backup (restores as a full one).
    Diff,
    /// Only chunks changed since the newest backup of any type (restores as a full one).
    Incr,
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// What to store; diff and incr fall back to full when there is nothing to compare with.
    #[arg(long = "type", value_enum, default_value = "full")]
    pub kind: KindArg,
    /// Take the backup from a standby instead of the primary.
    #[arg(long)]
    pub from_standby: bool,
    /// Node to back up (default: backup.node, else the primary).
    #[arg(long)]
    pub node: Option<String>,
    /// Parallel workers (default: backup.parallel, 0 = one per core).
    #[arg(long)]
    pub parallel: Option<usize>,
    /// No progress line even on a terminal.
    #[arg(long)]
    pub no_progress: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ActionArg {
    Promote,
    Pause,
    Shutdown,
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("target").multiple(false))]
pub struct RestoreArgs {
    /// Directory to restore into (created; must be empty unless --force).
    #[arg(long, required_unless_present = "logical")]
    pub to: Option<PathBuf>,
    /// Backup (or logical dump) id; default: the newest suitable one.
    #[arg(long)]
    pub backup: Option<String>,
    /// Recover until this time (e.g. '2026-11-30 01:15:00+00').
    #[arg(long, group = "target")]
    pub target_time: Option<String>,
    /// Recover until this LSN (e.g. 0/3000060).
    #[arg(long, group = "target")]
    pub target_lsn: Option<String>,
    /// Recover until this restore point (pg_create_restore_point).
    #[arg(long, group = "target")]
    pub target_name: Option<String>,
    /// Recover through all archived WAL (the default).
    #[arg(long, group = "target")]
    pub latest: bool,
    /// Stop as soon as the backup is consistent.
    #[arg(long, group = "target")]
    pub immediate: bool,
    /// What the server does at the target.
    #[arg(long, value_enum, default_value = "promote")]
    pub target_action: ActionArg,
    /// Start the restored instance as the server's OS user and wait until the target is reached.
    #[arg(long)]
    pub start: bool,
    /// Port for the restored instance (its unix socket moves to /tmp).
    #[arg(long)]
    pub port: Option<u16>,
    /// Empty a non-empty --to directory first.
    #[arg(long, conflicts_with = "delta")]
    pub force: bool,
    /// Restore into a non-empty --to directory (a failed node, a diverged old primary):
    /// rewrite only the chunks that differ from the backup, remove what it does not have.
    #[arg(long)]
    pub delta: bool,
    /// How long --start waits for the target.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub wait_timeout: std::time::Duration,
    /// Restore a logical dump with pg_restore instead.
    #[arg(long, conflicts_with_all = ["to", "target", "start", "port", "force", "delta"])]
    pub logical: bool,
    /// With --logical: which database's newest dump.
    #[arg(long, requires = "logical")]
    pub db: Option<String>,
    /// With --logical: restore into this database (default: the dumped one).
    #[arg(long, requires = "logical")]
    pub target_db: Option<String>,
    /// No progress line even on a terminal.
    #[arg(long)]
    pub no_progress: bool,
}
