//! Where the router learns which PostgreSQL nodes exist: URL lists and pgha.toml here, the
//! failover agents' `/cluster` endpoint in [`crate::AgentMembers`].
//!
//! Discovery names members only. Roles and lag are never taken from it: the health checker asks
//! every member itself (`pg_is_in_recovery()`), so a stale or wrong source cannot send writes to
//! a standby.

use std::fmt;

use async_trait::async_trait;
use sqlx::postgres::PgConnectOptions;

use pgha_config::{PghaConfig, Secret};

use crate::url::{HostPort, MultiHostUrl};
use crate::{Result, RouterError};

/// One PostgreSQL node: a name for messages and metrics, and how to connect to it. `Debug`
/// shows no password.
#[derive(Clone)]
pub struct Member {
    pub name: String,
    pub address: String,
    options: PgConnectOptions,
}

impl fmt::Debug for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Member")
            .field("name", &self.name)
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl Member {
    /// A member reached with `options` (host, port, user, password, database, TLS).
    pub fn new(name: impl Into<String>, options: PgConnectOptions) -> Member {
        let address = HostPort {
            host: options.get_host().to_owned(),
            port: options.get_port(),
        }
        .to_string();
        Member {
            name: name.into(),
            address,
            options,
        }
    }

    /// The connect options (they carry the password; never log them).
    pub fn options(&self) -> &PgConnectOptions {
        &self.options
    }
}

/// A source of cluster members. Implement it for another source (the agents' `/cluster`
/// endpoint, DNS, a service registry); it is called at start and again whenever the router
/// looks for a new primary.
#[async_trait]
pub trait Discovery: Send + Sync + fmt::Debug {
    /// Short description for messages, e.g. `url postgres://app:***@h1,h2/db`.
    fn describe(&self) -> String;
    /// The current members (at least one).
    async fn members(&self) -> Result<Vec<Member>>;
}

/// A fixed member list: from URLs or a pgha.toml.
#[derive(Debug, Clone)]
pub struct StaticMembers {
    what: String,
    members: Vec<Member>,
}

#[async_trait]
impl Discovery for StaticMembers {
    fn describe(&self) -> String {
        self.what.clone()
    }
    async fn members(&self) -> Result<Vec<Member>> {
        Ok(self.members.clone())
    }
}

impl StaticMembers {
    /// The given members, described as `what` in messages.
    pub fn new(what: impl Into<String>, members: Vec<Member>) -> Self {
        StaticMembers {
            what: what.into(),
            members,
        }
    }

    /// Every host of a multi-host URL (`postgres://u:p@h1:5432,h2:5433/db`).
    pub fn from_url(url: &str) -> Result<Self> {
        let u = MultiHostUrl::parse(url)?;
        let members = u
            .hosts
            .iter()
            .map(|h| Member::new(h.to_string(), u.options_for(h)))
            .collect();
        Ok(StaticMembers::new(format!("url {}", u.redacted), members))
    }

    /// The hosts of a write URL and a read URL (DATABASE_URL + DATABASE_READ_URL), each with
    /// its own credentials; a host named in both is kept once, with the write URL's.
    pub fn from_url_pair(write: &str, read: Option<&str>) -> Result<Self> {
        let w = MultiHostUrl::parse(write)?;
        let mut what = format!("urls {}", w.redacted);
        let mut members: Vec<Member> = w
            .hosts
            .iter()
            .map(|h| Member::new(h.to_string(), w.options_for(h)))
            .collect();
        if let Some(read) = read {
            let r = MultiHostUrl::parse(read)?;
            what.push_str(&format!(" + {}", r.redacted));
            for h in &r.hosts {
                let name = h.to_string();
                if !members.iter().any(|m| m.name == name) {
                    members.push(Member::new(name, r.options_for(h)));
                }
            }
        }
        Ok(StaticMembers::new(what, members))
    }

    /// The nodes of a pgha.toml, as its superuser (`postgres.superuser` and
    /// `postgres.superuser_password`) unless `app` names another role.
    /// Without `app`, the `[router]` section's `user`/`password`/`database` apply when set.
    pub fn from_config(config: &PghaConfig, app: Option<&AppCredentials>) -> Result<Self> {
        let creds = ConfigCredentials::resolve(config, app)?;
        let members = config
            .nodes
            .iter()
            .map(|n| Member::new(&n.name, creds.options(&n.host, n.port)))
            .collect();
        Ok(StaticMembers::new(
            format!("pgha.toml of cluster {}", config.cluster.name),
            members,
        ))
    }
}

/// User, password and database for members named by a pgha.toml (directly or through its
/// agents): `app`, else the `[router]` section's user, else the superuser.
#[derive(Clone)]
pub(crate) struct ConfigCredentials {
    user: String,
    password: Option<Secret>,
    database: String,
    ssl_root_cert: Option<std::path::PathBuf>,
}

impl ConfigCredentials {
    pub(crate) fn resolve(config: &PghaConfig, app: Option<&AppCredentials>) -> Result<Self> {
        let from_section;
        let app = match (app, config.router.as_ref()) {
            (Some(a), _) => Some(a),
            (None, Some(r)) if r.user.is_some() || r.database.is_some() => {
                from_section = AppCredentials {
                    user: r
                        .user
                        .clone()
                        .unwrap_or_else(|| config.postgres.superuser.clone()),
                    password: match (&r.user, &r.password) {
                        (Some(_), Some(p)) => Some(p.read()?),
                        (Some(_), None) => None,
                        (None, _) => config
                            .postgres
                            .superuser_password
                            .as_ref()
                            .map(|s| s.read())
                            .transpose()?,
                    },
                    database: r.database.clone(),
                };
                Some(&from_section)
            }
            (None, _) => None,
        };
        let password = match app {
            Some(a) => a.password.clone(),
            None => config
                .postgres
                .superuser_password
                .as_ref()
                .map(|s| s.read())
                .transpose()?,
        };
        Ok(ConfigCredentials {
            user: app.map_or(config.postgres.superuser.clone(), |a| a.user.clone()),
            password,
            database: app
                .and_then(|a| a.database.clone())
                .unwrap_or_else(|| config.postgres.database.clone()),
            ssl_root_cert: config.tls.as_ref().map(|t| t.ca_file()),
        })
    }

    pub(crate) fn options(&self, host: &str, port: u16) -> PgConnectOptions {
        let o = PgConnectOptions::new()
            .host(host)
            .port(port)
            .username(&self.user)
            .database(&self.database);
        let o = pgha_postgres::verify_full(o, self.ssl_root_cert.as_deref());
        match &self.password {
            Some(p) => o.password(p.expose()),
            None => o,
        }
    }
}

/// The role an application connects as when the router is built from a pgha.toml.
#[derive(Debug, Clone)]
pub struct AppCredentials {
    pub user: String,
    pub password: Option<Secret>,
    /// Database; `postgres.database` of the config when None.
    pub database: Option<String>,
}

pub(crate) fn no_nodes(d: &dyn Discovery) -> RouterError {
    RouterError::NoNodes {
        source_name: d.describe(),
    }
}
