//! How our tools reach an instance over TCP, with a bounded connect time.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};

use pgha_config::Secret;

use crate::{PgError, Result};

/// Everything needed to open a connection; `Debug` hides the password.
#[derive(Debug, Clone)]
pub struct ConnectParams {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<Secret>,
    pub database: String,
    pub application_name: String,
    pub connect_timeout: Duration,
    /// statement_timeout for the session, so a stuck server cannot hang a status call.
    pub statement_timeout: Option<Duration>,
    /// With TLS: the CA to verify the server with (sslmode=verify-full); None = no TLS.
    pub ssl_root_cert: Option<std::path::PathBuf>,
}

/// `sslmode=verify-full` against `ca` when there is one (`[tls]`), else `o` unchanged: the one
/// place every sqlx client of ours (tools, router, PgBouncer console) turns TLS on.
pub fn verify_full(o: PgConnectOptions, ca: Option<&std::path::Path>) -> PgConnectOptions {
    match ca {
        Some(ca) => o
            .ssl_mode(sqlx::postgres::PgSslMode::VerifyFull)
            .ssl_root_cert(ca),
        None => o,
    }
}

impl ConnectParams {
    /// `host:port` for messages.
    pub fn target(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    pub fn options(&self) -> PgConnectOptions {
        let mut o = PgConnectOptions::new()
            .host(&self.host)
            .port(self.port)
            .username(&self.user)
            .database(&self.database)
            .application_name(&self.application_name)
            .disable_statement_logging();
        if let Some(p) = &self.password {
            o = o.password(p.expose());
        }
        if let Some(t) = self.statement_timeout {
            o = o.options([("statement_timeout", format!("{}", t.as_millis()))]);
        }
        verify_full(o, self.ssl_root_cert.as_deref())
    }

    /// libpq environment for a child tool (pg_dump, psql, pgbench) connecting with these
    /// parameters: TLS settings, never the password (pass that through a passfile).
    pub fn libpq_tls_env(&self) -> Vec<(&'static str, std::ffi::OsString)> {
        match &self.ssl_root_cert {
            Some(ca) => vec![
                ("PGSSLMODE", "verify-full".into()),
                ("PGSSLROOTCERT", ca.clone().into_os_string()),
            ],
            None => Vec::new(),
        }
    }

    /// One connection, or an error within `connect_timeout`.
    pub async fn connect(&self) -> Result<PgConnection> {
        let opts = self.options();
        let fut = opts.connect();
        match tokio::time::timeout(self.connect_timeout, fut).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(source)) => Err(PgError::Connect {
                target: self.target(),
                source,
            }),
            Err(_) => Err(PgError::Timeout {
                what: format!("connect to {}", self.target()),
                timeout: self.connect_timeout,
                last: None,
            }),
        }
    }

    /// A pool of up to `max` connections, connected lazily.
    pub fn pool(&self, max: u32) -> PgPool {
        PgPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(self.connect_timeout)
            .connect_lazy_with(self.options())
    }
}
