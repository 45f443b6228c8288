//! Errors of provisioning a local cluster.

use std::path::PathBuf;

/// Result alias of this crate.
pub type Result<T, E = LocalClusterError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LocalClusterError {
    #[error(transparent)]
    Postgres(#[from] pgha_postgres::PgError),
    #[error(transparent)]
    Replication(#[from] pgha_replication::ReplicationError),
    #[error(transparent)]
    Config(#[from] pgha_config::ConfigError),
    #[error(transparent)]
    Tls(#[from] pgha_tls::TlsError),
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no free port found on {host}: {source}")]
    NoFreePort {
        host: String,
        #[source]
        source: std::io::Error,
    },
    #[error("state dir {0} holds an incomplete cluster (an earlier `up` was interrupted); run `cargo xtask cluster down --purge` and try again")]
    Incomplete(PathBuf),
    #[error("no cluster in {0} (no pgha.toml); run `cargo xtask cluster up`")]
    NoCluster(PathBuf),
    #[error("replicas not streaming within {seconds}s: {detail}")]
    NotStreaming { seconds: u64, detail: String },
}

impl LocalClusterError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| LocalClusterError::Io {
            action,
            path,
            source,
        }
    }
}
