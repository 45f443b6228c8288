//! Errors of instance control.

use std::path::PathBuf;
use std::time::Duration;

/// Result alias of this crate.
pub type Result<T, E = PgError> = std::result::Result<T, E>;

/// What went wrong while driving PostgreSQL.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PgError {
    #[error("PostgreSQL server binaries not found (looked in: {searched}); install them (Debian: apt-get install postgresql-15) or set postgres.bin_dir")]
    BinariesNotFound { searched: String },
    #[error("{dir} does not hold PostgreSQL server binaries (no {missing})")]
    BinDirIncomplete { dir: PathBuf, missing: &'static str },
    #[error("OS user `{name}` does not exist; create it (useradd --system {name}) or set postgres.os_user")]
    NoSuchUser { name: String },
    #[error("{path} is not reachable by OS user `{user}`: {blocking} lacks search (x) permission for it")]
    NotTraversable {
        path: PathBuf,
        user: String,
        blocking: PathBuf,
    },
    #[error("{action} on {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} {action} failed ({status}): {stderr}")]
    CommandFailed {
        program: String,
        action: String,
        status: String,
        stderr: String,
    },
    #[error("data directory {0} already holds a cluster (PG_VERSION exists)")]
    AlreadyInitialized(PathBuf),
    #[error("data directory {0} is not initialized (no PG_VERSION)")]
    NotInitialized(PathBuf),
    #[error("port {port} on {host} is already in use by another process; stop it or choose another port for node `{node}`")]
    PortInUse {
        node: String,
        host: String,
        port: u16,
    },
    #[error("removed stale postmaster.pid in {data_dir} (PID {pid} is not a running postgres)")]
    StalePidFile { data_dir: PathBuf, pid: i32 },
    #[error("{what} did not happen within {timeout:?}{}", last.as_deref().map(|l| format!(" (last error: {l})")).unwrap_or_default())]
    Timeout {
        what: String,
        timeout: Duration,
        last: Option<String>,
    },
    #[error("SIGKILL of {node}'s process {pid}: {source}")]
    Kill {
        node: String,
        pid: i32,
        #[source]
        source: nix::errno::Errno,
    },
    #[error("connect to {target}: {source}")]
    Connect {
        target: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("query on {target} failed: {source}")]
    Query {
        target: String,
        #[source]
        source: sqlx::Error,
    },
    #[error(transparent)]
    Secret(#[from] pgha_config::SecretError),
    #[error("invalid LSN `{0}`: expected two hex numbers like `16/B374D848`")]
    InvalidLsn(String),
}

impl PgError {
    pub fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> PgError {
        let path = path.into();
        move |source| PgError::Io {
            action,
            path,
            source,
        }
    }

    /// True when retrying the same call later may succeed (server starting, network blip).
    pub fn is_transient(&self) -> bool {
        matches!(self, PgError::Connect { .. } | PgError::Timeout { .. })
    }
}
