//! Errors of certificate issuance and TLS setup.

use std::path::PathBuf;

/// Result alias of this crate.
pub type Result<T, E = TlsError> = std::result::Result<T, E>;

/// What went wrong while issuing or loading certificates.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The config has no `[tls]` section.
    #[error(
        "pgha.toml has no [tls] section: add one (e.g. `[tls]` with `dir = \"tls\"`) to use TLS"
    )]
    NotConfigured,
    /// A file could not be read or written.
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A PEM file holds no usable certificate or key.
    #[error("{path}: {problem}")]
    BadPem { path: PathBuf, problem: String },
    /// Certificate generation failed.
    #[error("issuing {what}: {source}")]
    Issue {
        what: String,
        #[source]
        source: rcgen::Error,
    },
    /// rustls refused the certificate and key.
    #[error("TLS setup with {cert} and its key: {source}")]
    Rustls {
        cert: PathBuf,
        #[source]
        source: tokio_rustls::rustls::Error,
    },
    /// The HTTP client for the agent API could not be built.
    #[error("cannot build the agent API client: {0}")]
    HttpClient(String),
    /// Writing a file failed.
    #[error(transparent)]
    Write(#[from] pgha_postgres::PgError),
}

impl TlsError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> TlsError {
        let path = path.into();
        move |source| TlsError::Io {
            action,
            path,
            source,
        }
    }
}
