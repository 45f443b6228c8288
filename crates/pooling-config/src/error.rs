//! Errors of rendering, installing and driving PgBouncer.

use std::path::PathBuf;
use std::time::Duration;

/// Result alias of this crate.
pub type Result<T, E = PoolingError> = std::result::Result<T, E>;

/// What went wrong while rendering or driving PgBouncer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PoolingError {
    #[error("pgha.toml has no [pooling] section: add one (at least `databases = [\"app\"]` and `users = [\"app\"]`)")]
    NoPoolingSection,
    #[error("[pooling] cannot be rendered ({} problem(s)):\n{errors}", errors.0.len())]
    Invalid {
        errors: pgha_config::ValidationErrors,
    },
    #[error("no single primary answered (writable: {writable:?}; unreachable: {unreachable:?}); cannot point the read-write entries anywhere")]
    NoPrimary {
        writable: Vec<String>,
        unreachable: Vec<String>,
    },
    #[error("no node answered to read the users' SCRAM secrets from pg_authid (tried: {tried})")]
    NoNodeForSecrets { tried: String },
    #[error("role `{user}` (pooling.users/admin_users/stats_users/auth_user) does not exist on node {node}; create it first")]
    UnknownRole { user: String, node: String },
    #[error("role `{user}` has no password on node {node}: set one (stored as SCRAM-SHA-256) so it can log in through PgBouncer")]
    NoPassword { user: String, node: String },
    #[error("role `{user}`'s password on node {node} is not a SCRAM-SHA-256 secret (an md5 hash?): set password_encryption = 'scram-sha-256' and set the password again")]
    NotScram { user: String, node: String },
    #[error("node `{node}`'s host `{host}` cannot go into pgbouncer.ini (no spaces, commas, quotes or `;`)")]
    BadHost { node: String, host: String },
    #[error("query on {target} failed: {source}")]
    Query {
        target: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("PgBouncer admin console at {target}: {action} failed: {source}")]
    Console {
        target: String,
        action: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("PgBouncer admin console at {target}: {action} did not answer within {timeout:?}")]
    ConsoleTimeout {
        target: String,
        action: String,
        timeout: Duration,
    },
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("PgBouncer ({ini}) exited during startup ({status}); last log lines:\n{log}")]
    Exited {
        ini: PathBuf,
        status: String,
        log: String,
    },
    #[error("PgBouncer ({ini}) did not accept connections on {addr} within {timeout:?}; last log lines:\n{log}")]
    NotReady {
        ini: PathBuf,
        addr: String,
        timeout: Duration,
        log: String,
    },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Postgres(#[from] pgha_postgres::PgError),
    #[error(transparent)]
    Replication(#[from] pgha_replication::ReplicationError),
    #[error(transparent)]
    Secret(#[from] pgha_config::SecretError),
}

impl PoolingError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> PoolingError {
        let path = path.into();
        move |source| PoolingError::Io {
            action,
            path,
            source,
        }
    }

    /// True when an operator can fix the cause on the live cluster (create the role, set its
    /// password) without touching pgha.toml: the follower keeps running.
    pub fn is_fixable_at_runtime(&self) -> bool {
        matches!(
            self,
            PoolingError::UnknownRole { .. }
                | PoolingError::NoPassword { .. }
                | PoolingError::NotScram { .. }
                | PoolingError::Query { .. }
        )
    }

    /// True when the same call may succeed later (PgBouncer restarting, no primary yet).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            PoolingError::NoPrimary { .. }
                | PoolingError::NoNodeForSecrets { .. }
                | PoolingError::Console { .. }
                | PoolingError::ConsoleTimeout { .. }
        )
    }
}
