//! The monitoring crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong while collecting, parsing queries or rendering rules.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MonitoringError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: query `{query}`: {message}")]
    Queries {
        path: PathBuf,
        query: String,
        line: usize,
        message: String,
    },
    #[error("{target}: {what} failed: {source}")]
    Query {
        target: String,
        what: String,
        source: sqlx::Error,
    },
    #[error("{target}: {source}")]
    Connect {
        target: String,
        source: pgha_postgres::PgError,
    },
    #[error("{target}: scrape took longer than {timeout:?}")]
    Timeout {
        target: String,
        timeout: std::time::Duration,
    },
    #[error("{path}: {message}")]
    WebConfig { path: PathBuf, message: String },
    #[error("unknown target `{0}`: not a node in the config")]
    UnknownTarget(String),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: pgha_postgres::PgError,
    },
}

pub type Result<T, E = MonitoringError> = std::result::Result<T, E>;

impl MonitoringError {
    /// Maps a sqlx error of query `what` on `target`.
    pub fn query(target: &str, what: &str) -> impl FnOnce(sqlx::Error) -> MonitoringError {
        let (target, what) = (target.to_owned(), what.to_owned());
        move |source| MonitoringError::Query {
            target,
            what,
            source,
        }
    }
}
