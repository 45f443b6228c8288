//! Errors of replication setup and status.

use pgha_postgres::PgError;

/// Result alias of this crate.
pub type Result<T, E = ReplicationError> = std::result::Result<T, E>;

/// What went wrong while setting up or inspecting replication.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplicationError {
    #[error(transparent)]
    Postgres(#[from] PgError),
    #[error(transparent)]
    Secret(#[from] pgha_config::SecretError),
    #[error("query `{what}` on {node}: {source}")]
    Query {
        node: String,
        what: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("replication.password is not set in the config: replicas cannot authenticate")]
    NoReplicationPassword,
    #[error("data directory {0} is not empty: refusing to bootstrap a replica over it")]
    TargetNotEmpty(std::path::PathBuf),
    #[error("node `{0}` is not in the config")]
    UnknownNode(String),
    #[error("no writable primary found among {tried}")]
    NoPrimary { tried: String },
    #[error("cannot switch to sync mode: no standby is connected to {primary} (sync commits would hang)")]
    NoStandbyForSync { primary: String },
    /// With agents, synchronous_standby_names is theirs: a mode switched under them would
    /// acknowledge commits the DCS's `sync` key does not cover (or the reverse).
    #[error("[dcs] is set, so the agents manage the replication mode: switch it with `pgha edit-config --set synchronous_mode=true` (or false): the leader switches without a window where an acknowledged commit could be lost (`pgha set-mode` is for clusters without agents)")]
    AgentsManageMode,
    /// A certificate or key named by `[tls]` cannot be read.
    #[error("[tls] {what} {path}: {source} (create it with `pgha tls init`, or set the path in pgha.toml)")]
    TlsFile {
        what: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("setting {setting} did not take effect on {node} within {seconds}s after reload")]
    ReloadNotApplied {
        node: String,
        setting: &'static str,
        seconds: u64,
    },
}

impl ReplicationError {
    pub(crate) fn query<'a>(
        node: &'a str,
        what: &'static str,
    ) -> impl FnOnce(sqlx::Error) -> Self + 'a {
        move |source| ReplicationError::Query {
            node: node.to_owned(),
            what,
            source,
        }
    }
}
