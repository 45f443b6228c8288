//! Errors of the backup library: one enum, typed variants, cause text included.

use std::path::PathBuf;

/// Result alias of this crate.
pub type Result<T, E = BackupError> = std::result::Result<T, E>;

/// Why a backup, restore or repository operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackupError {
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("object {key} not found in {repo}")]
    NotFound { key: String, repo: String },
    #[error("storage {op} of {key} in {repo} failed: {message}")]
    Storage {
        op: &'static str,
        key: String,
        repo: String,
        message: String,
        /// Worth retrying (network, throttling, 5xx).
        transient: bool,
    },
    #[error("object {key} is corrupt: {detail}")]
    Corrupt { key: String, detail: String },
    #[error("WAL segment {name} is already archived with different content (archived sha256 {archived}, this one {local}); refusing to overwrite")]
    WalConflict {
        name: String,
        archived: String,
        local: String,
    },
    #[error("backup {0} not found (see `pgha-backup list`)")]
    NoSuchBackup(String),
    #[error("the repository holds no complete backup")]
    NoBackup,
    #[error("{0}")]
    Usage(String),
    #[error("directory {} is not empty; pass --force to overwrite it", .0.display())]
    DirNotEmpty(PathBuf),
    #[error("WAL needed by backup {backup} is missing from the archive: {missing}")]
    WalMissing { backup: String, missing: String },
    #[error("bad cron expression `{expr}`: {detail}")]
    Cron { expr: String, detail: String },
    #[error("{program} failed ({status}): {stderr}")]
    Command {
        program: String,
        status: String,
        stderr: String,
    },
    #[error("query on {target} failed: {source}")]
    Query {
        target: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("decryption of {key} failed: wrong encryption key or corrupt object")]
    Decrypt { key: String },
    #[error(transparent)]
    Pg(#[from] pgha_postgres::PgError),
    #[error(transparent)]
    Secret(#[from] pgha_config::SecretError),
    #[error("the repository {repo} is locked by {holder}; try again when it is done")]
    Locked { repo: String, holder: String },
    #[error("manifest {key} is unsafe: {detail}")]
    UnsafeManifest { key: String, detail: String },
    #[error("recovery of {dir} aborted: {detail}")]
    RecoveryAborted { dir: PathBuf, detail: String },
    #[error("a worker task failed: {0}")]
    Task(String),
}

impl BackupError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| BackupError::Io {
            action,
            path,
            source,
        }
    }

    /// True when retrying the same operation may succeed (network errors, throttling).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            BackupError::Storage {
                transient: true,
                ..
            }
        )
    }

    pub(crate) fn query(target: &str) -> impl FnOnce(sqlx::Error) -> Self + '_ {
        move |source| BackupError::Query {
            target: target.to_owned(),
            source,
        }
    }
}

impl From<tokio::task::JoinError> for BackupError {
    fn from(e: tokio::task::JoinError) -> Self {
        BackupError::Task(e.to_string())
    }
}
