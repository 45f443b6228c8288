//! PgBouncer's admin console (the virtual `pgbouncer` database): RELOAD, PAUSE, RESUME, SHOW.
//!
//! The console speaks only the simple query protocol; sqlx's `raw_sql` uses exactly that (one
//! Query message, no Parse/Bind), so no second client library is needed.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection, Row};

use pgha_config::{PghaConfig, Secret};

use crate::{PoolingError, Result};

/// Where the console is and who logs in (an `admin_users` role with its password).
#[derive(Debug, Clone)]
pub struct ConsoleTarget {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<Secret>,
    /// Bound on connecting and on each command.
    pub timeout: Duration,
    /// With `[tls]`: the CA PgBouncer's certificate is verified with (verify-full).
    pub ssl_root_cert: Option<std::path::PathBuf>,
}

impl ConsoleTarget {
    /// The console of the PgBouncer `[pooling]` describes, as `postgres.superuser`.
    pub fn from_config(config: &PghaConfig) -> Result<Self> {
        let pool = crate::section(config)?;
        Ok(ConsoleTarget {
            host: pool.client_host(),
            port: pool.listen_port,
            user: config.postgres.superuser.clone(),
            password: config
                .postgres
                .superuser_password
                .as_ref()
                .map(|s| s.read())
                .transpose()?,
            timeout: config.postgres.connect_timeout,
            ssl_root_cert: config.tls.as_ref().map(|t| t.ca_file()),
        })
    }

    fn target(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// A connection to the admin console.
#[derive(Debug)]
pub struct AdminConsole {
    conn: PgConnection,
    target: ConsoleTarget,
}

impl AdminConsole {
    /// A longer bound for commands that wait on clients (PAUSE waits for running transactions).
    pub fn set_command_timeout(&mut self, timeout: Duration) {
        self.target.timeout = timeout;
    }

    pub async fn connect(target: &ConsoleTarget) -> Result<Self> {
        let mut o = PgConnectOptions::new()
            .host(&target.host)
            .port(target.port)
            .username(&target.user)
            .database("pgbouncer")
            .application_name("pgha-pgbouncer")
            .disable_statement_logging();
        if let Some(p) = &target.password {
            o = o.password(p.expose());
        }
        o = pgha_postgres::verify_full(o, target.ssl_root_cert.as_deref());
        let conn = match tokio::time::timeout(target.timeout, o.connect()).await {
            Ok(Ok(c)) => c,
            Ok(Err(source)) => {
                return Err(PoolingError::Console {
                    target: target.target(),
                    action: "connect".into(),
                    source,
                })
            }
            Err(_) => {
                return Err(PoolingError::ConsoleTimeout {
                    target: target.target(),
                    action: "connect".into(),
                    timeout: target.timeout,
                })
            }
        };
        Ok(AdminConsole {
            conn,
            target: target.clone(),
        })
    }

    /// Runs one console command that returns no rows (RELOAD, PAUSE, RESUME, ...).
    pub async fn command(&mut self, cmd: &str) -> Result<()> {
        let fut = sqlx::raw_sql(cmd).execute(&mut self.conn);
        match tokio::time::timeout(self.target.timeout, fut).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(source)) => Err(PoolingError::Console {
                target: self.target.target(),
                action: cmd.to_owned(),
                source,
            }),
            Err(_) => Err(PoolingError::ConsoleTimeout {
                target: self.target.target(),
                action: cmd.to_owned(),
                timeout: self.target.timeout,
            }),
        }
    }

    /// RELOAD: re-read pgbouncer.ini and userlist.txt; databases whose host or port changed
    /// get new server connections.
    pub async fn reload(&mut self) -> Result<()> {
        self.command("RELOAD").await
    }

    /// PAUSE: wait until every server connection is idle, then hold new queries (clients wait
    /// instead of failing) until RESUME. `db` limits it to one database entry. When PAUSE does
    /// not finish within the command timeout it is undone with RESUME, so PgBouncer is never
    /// left half-paused by a failed call.
    pub async fn pause(&mut self, db: Option<&str>) -> Result<()> {
        match self.command(&with_db("PAUSE", db)).await {
            Ok(()) => Ok(()),
            Err(e) => {
                let _ = run_once(&self.target, &with_db("RESUME", db)).await;
                Err(e)
            }
        }
    }

    /// RESUME after PAUSE.
    pub async fn resume(&mut self, db: Option<&str>) -> Result<()> {
        self.command(&with_db("RESUME", db)).await
    }

    /// `SHOW DATABASES`: (entry name, host, port) of every database entry.
    pub async fn databases(&mut self) -> Result<Vec<(String, Option<String>, Option<i32>)>> {
        let fut = sqlx::raw_sql("SHOW DATABASES").fetch_all(&mut self.conn);
        let rows = match tokio::time::timeout(self.target.timeout, fut).await {
            Ok(Ok(r)) => r,
            Ok(Err(source)) => {
                return Err(PoolingError::Console {
                    target: self.target.target(),
                    action: "SHOW DATABASES".into(),
                    source,
                })
            }
            Err(_) => {
                return Err(PoolingError::ConsoleTimeout {
                    target: self.target.target(),
                    action: "SHOW DATABASES".into(),
                    timeout: self.target.timeout,
                })
            }
        };
        rows.iter()
            .map(|r| {
                let get = |i: &str| -> std::result::Result<Option<String>, sqlx::Error> {
                    // The console sends text; its column types vary by version, so read the text.
                    r.try_get_unchecked::<Option<String>, _>(i)
                };
                let port = get("port")?.and_then(|p| p.parse().ok());
                Ok((get("name")?.unwrap_or_default(), get("host")?, port))
            })
            .collect::<std::result::Result<_, sqlx::Error>>()
            .map_err(|source| PoolingError::Console {
                target: self.target.target(),
                action: "SHOW DATABASES (decode)".into(),
                source,
            })
    }

    pub async fn close(self) {
        let _ = self.conn.close().await;
    }
}

fn with_db(cmd: &str, db: Option<&str>) -> String {
    match db {
        // Entry names are validated as letters, digits and `_` (pooling.databases).
        Some(d) => format!("{cmd} {d}"),
        None => cmd.to_owned(),
    }
}

/// Planned switchover: PAUSE (running transactions finish, new queries wait), run `f` (stop the
/// primary, promote, then [`crate::apply`] to re-render and RELOAD), then RESUME, also when `f`
/// failed, so clients wait through the switch instead of failing.
pub async fn paused<T, F, Fut>(target: &ConsoleTarget, f: F) -> Result<T>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut c = AdminConsole::connect(target).await?;
    c.pause(None).await?;
    let out = f().await;
    let resumed = match c.resume(None).await {
        Ok(()) => Ok(()),
        // The console connection may have been dropped meanwhile; try a fresh one.
        Err(_) => run_once(target, "RESUME").await,
    };
    c.close().await;
    let value = out?;
    resumed?;
    Ok(value)
}

/// Connects, runs one command, disconnects.
pub(crate) async fn run_once(target: &ConsoleTarget, cmd: &str) -> Result<()> {
    let mut c = AdminConsole::connect(target).await?;
    let r = c.command(cmd).await;
    c.close().await;
    r
}
