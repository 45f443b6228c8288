//! `[backup]`: where base backups and archived WAL go, how long they are kept, when they run.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{SecretSource, ValidationErrors};

/// `[backup]`: base backups, WAL archive, retention and schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackupSection {
    /// Where backups and WAL are stored: a local directory or an S3 bucket.
    pub repository: RepositoryConfig,
    /// What to keep when `expire` runs (after every scheduled backup).
    pub retention: RetentionConfig,
    /// Cron expressions (minute hour day-of-month month day-of-week, UTC) for `schedule`.
    pub schedule: Vec<String>,
    /// zstd level for base backups (1-19); WAL segments use level 1 to keep up with writes.
    pub compression_level: i32,
    /// Parallel workers reading, compressing and uploading; 0 means one per CPU core.
    pub parallel: usize,
    /// Segments one `wal-push` archives at once: the one PostgreSQL asks for and the next
    /// ready ones (`archive_status/*.ready`), so the archive keeps up with a busy primary.
    /// 1 pushes only the one asked for.
    pub archive_push_parallel: usize,
    /// Node to back up; default: whichever node answers as primary (or a standby with
    /// `--from-standby`).
    pub node: Option<String>,
    /// Client-side encryption (AES-256-GCM); when set everything stored is encrypted. 64
    /// hexadecimal characters are the 256-bit key itself; anything else is a passphrase,
    /// stretched with Argon2id and the repository's salt (kept in `encryption.json`).
    pub encryption_key: Option<SecretSource>,
    /// File the scheduler writes `pgha_backup_last_success_timestamp_seconds` to, in the
    /// Prometheus text format (for the exporter's textfile collector); default
    /// `/var/lib/pgha/pgha_backup.prom`.
    pub metrics_file: Option<PathBuf>,
}

impl Default for BackupSection {
    fn default() -> Self {
        BackupSection {
            repository: RepositoryConfig::default(),
            retention: RetentionConfig::default(),
            schedule: vec!["0 2 * * *".into()],
            compression_level: 3,
            parallel: 0,
            archive_push_parallel: 4,
            node: None,
            encryption_key: None,
            metrics_file: Some(PathBuf::from("/var/lib/pgha/pgha_backup.prom")),
        }
    }
}

/// `[backup.repository]`: exactly one of `path` (local filesystem) or `s3`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RepositoryConfig {
    /// Local repository directory (must be writable by the server's OS user, which runs
    /// `wal-push` as archive_command).
    pub path: Option<PathBuf>,
    /// S3 (or S3-compatible) bucket instead of a local directory.
    pub s3: Option<S3Config>,
}

/// `[backup.repository.s3]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// Bucket name.
    pub bucket: String,
    /// Region (SigV4 signing region).
    #[serde(default = "default_region")]
    pub region: String,
    /// Custom endpoint URL for S3-compatible servers (e.g. `http://127.0.0.1:9000`).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Key prefix inside the bucket (e.g. `prod/`).
    #[serde(default)]
    pub prefix: String,
    /// Path-style addressing (`endpoint/bucket/key`), needed by most S3-compatible servers.
    #[serde(default)]
    pub path_style: bool,
    /// Access key id.
    pub access_key_id: SecretSource,
    /// Secret access key.
    pub secret_access_key: SecretSource,
}

fn default_region() -> String {
    "us-east-1".into()
}

/// `[backup.retention]`: a backup is removed when it is beyond `full` newest backups or
/// older than `max_age` (either rule, when set). The newest backup is never removed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Number of full backups to keep (None: no count limit).
    pub full: Option<u32>,
    /// Age after which a backup is removed (None: no age limit); default 7 days.
    #[serde(with = "humantime_serde")]
    pub max_age: Option<Duration>,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            full: None,
            max_age: Some(Duration::from_secs(7 * 24 * 3600)),
        }
    }
}

impl BackupSection {
    pub(crate) fn validate(&self, errs: &mut ValidationErrors) {
        let r = &self.repository;
        match (&r.path, &r.s3) {
            (Some(_), Some(_)) => errs.push(
                "backup.repository",
                "set either path (local) or s3, not both",
            ),
            (None, None) => errs.push(
                "backup.repository",
                "no repository: set path = \"/dir\" or a [backup.repository.s3] table",
            ),
            (Some(p), None) if p.is_relative() => errs.push(
                "backup.repository.path",
                format!("`{}` must be an absolute path", p.display()),
            ),
            _ => {}
        }
        if let Some(s3) = &r.s3 {
            if s3.bucket.is_empty() {
                errs.push("backup.repository.s3.bucket", "must not be empty");
            }
            if let Some(e) = &s3.endpoint {
                if !(e.starts_with("http://") || e.starts_with("https://")) {
                    errs.push(
                        "backup.repository.s3.endpoint",
                        format!("`{e}` must start with http:// or https://"),
                    );
                }
            }
        }
        if self.retention.full == Some(0) {
            errs.push(
                "backup.retention.full",
                "0 would remove every backup: expected 1 or more (or leave it unset)",
            );
        }
        if self.retention.max_age.is_some_and(|d| d.is_zero()) {
            errs.push(
                "backup.retention.max_age",
                "must be longer than 0s, e.g. \"7d\"",
            );
        }
        if !(1..=19).contains(&self.compression_level) {
            errs.push(
                "backup.compression_level",
                format!(
                    "{} is out of range: expected 1..=19",
                    self.compression_level
                ),
            );
        }
        for (i, expr) in self.schedule.iter().enumerate() {
            if let Err(e) = check_cron(expr) {
                errs.push(format!("backup.schedule[{i}]"), format!("`{expr}`: {e}"));
            }
        }
    }
}

/// Syntax check of a 5-field cron expression (the scheduler parses it fully).
fn check_cron(expr: &str) -> Result<(), String> {
    let fields: Vec<&str> = expr.split_whitespace().collect();
    if fields.len() != 5 {
        return Err(format!(
            "expected 5 fields (minute hour day-of-month month day-of-week), found {}",
            fields.len()
        ));
    }
    let limits = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)];
    for (f, (lo, hi)) in fields.iter().zip(limits) {
        for part in f.split(',') {
            let (range, step) = match part.split_once('/') {
                Some((r, s)) => (r, Some(s)),
                None => (part, None),
            };
            if let Some(s) = step {
                match s.parse::<u32>() {
                    Ok(n) if n > 0 => {}
                    _ => return Err(format!("bad step `{s}` in `{part}`")),
                }
            }
            if range == "*" {
                continue;
            }
            let (a, b) = range.split_once('-').unwrap_or((range, range));
            for v in [a, b] {
                match v.parse::<u32>() {
                    Ok(n) if (lo..=hi).contains(&n) => {}
                    _ => return Err(format!("`{v}` is not in {lo}..={hi} (in `{part}`)")),
                }
            }
        }
    }
    Ok(())
}
