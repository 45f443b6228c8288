//! `[router]`: how services that embed `pgha-router` connect and pick nodes when they build
//! their router from this pgha.toml (`Router::builder().config(..)`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{ByteSize, SecretSource, ValidationErrors};

/// Which qualifying replica serves a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RouterReaderPolicy {
    #[default]
    RoundRobin,
    LeastLag,
    Random,
}

/// What a read does when no replica qualifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RouterFallback {
    #[default]
    Primary,
    Error,
}

/// `[router]`: the application role and routing policy of embedded routers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouterSection {
    /// Role the application connects as; `postgres.superuser` when absent.
    pub user: Option<String>,
    /// That role's password (required with `user`).
    pub password: Option<SecretSource>,
    /// Database the application uses; `postgres.database` when absent.
    pub database: Option<String>,
    /// round-robin | least-lag | random among replicas within the lag bound.
    pub reader_policy: RouterReaderPolicy,
    /// A replica further behind than this serves no reads (default 16MB).
    pub max_lag_bytes: Option<ByteSize>,
    /// A replica further behind in time serves no reads (default 10s).
    #[serde(with = "humantime_serde")]
    pub max_lag: Option<Duration>,
    /// primary | error: when no replica qualifies.
    pub fallback: RouterFallback,
    /// How long a read with a write token waits for a replica to replay it.
    #[serde(with = "humantime_serde")]
    pub read_your_writes_wait: Duration,
    /// Time between health probes of every node.
    #[serde(with = "humantime_serde")]
    pub health_interval: Duration,
    /// How long a write waits for a (new) primary.
    #[serde(with = "humantime_serde")]
    pub failover_wait: Duration,
    /// Connections per node pool.
    pub max_connections: u32,
}

impl Default for RouterSection {
    fn default() -> Self {
        RouterSection {
            user: None,
            password: None,
            database: None,
            reader_policy: RouterReaderPolicy::RoundRobin,
            max_lag_bytes: Some(ByteSize(16 << 20)),
            max_lag: Some(Duration::from_secs(10)),
            fallback: RouterFallback::Primary,
            read_your_writes_wait: Duration::from_millis(100),
            health_interval: Duration::from_millis(500),
            failover_wait: Duration::from_secs(30),
            max_connections: 10,
        }
    }
}

impl RouterSection {
    pub(crate) fn validate(&self, errs: &mut ValidationErrors) {
        if let Some(u) = &self.user {
            if u.is_empty() || u.len() > 63 {
                errs.push(
                    "router.user",
                    format!("`{u}` is not a role name (1-63 characters)"),
                );
            }
            if self.password.is_none() {
                errs.push(
                    "router.password",
                    "is required with router.user: { env = \"VAR\" } or { file = \"/path\" }",
                );
            }
        } else if self.password.is_some() {
            errs.push("router.password", "is set but router.user is not");
        }
        if self.database.as_deref().is_some_and(str::is_empty) {
            errs.push("router.database", "must not be empty");
        }
        if self.health_interval.is_zero() {
            errs.push(
                "router.health_interval",
                "must be longer than 0s, e.g. \"500ms\"",
            );
        }
        if self.max_connections == 0 {
            errs.push("router.max_connections", "0: expected at least 1");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use crate::{load_from_str, RouterFallback, RouterReaderPolicy};

    const BASE: &str = r#"
[cluster]
name = "x"
[[nodes]]
name = "a"
host = "127.0.0.1"
data_dir = "/d/a"
"#;

    #[test]
    fn router_section_parses_with_defaults_and_reports_problems() {
        let c = load_from_str(
            &format!("{BASE}[router]\nuser = \"app\"\npassword = {{ env = \"APP_PW\" }}\nreader_policy = \"least-lag\"\nmax_lag_bytes = \"1MB\"\nmax_lag = \"2s\"\nfallback = \"error\"\n"),
            "t",
        )
        .unwrap();
        let r = c.router.unwrap();
        assert_eq!(r.user.as_deref(), Some("app"));
        assert_eq!(r.reader_policy, RouterReaderPolicy::LeastLag);
        assert_eq!(r.max_lag_bytes.unwrap().bytes(), 1 << 20);
        assert_eq!(r.max_lag, Some(std::time::Duration::from_secs(2)));
        assert_eq!(r.fallback, RouterFallback::Error);
        assert_eq!(r.max_connections, 10);
        assert!(load_from_str(BASE, "t").unwrap().router.is_none());

        let err = load_from_str(
            &format!("{BASE}[router]\nuser = \"app\"\nmax_connections = 0\n"),
            "t",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("router.password: is required"), "{err}");
        assert!(err.contains("router.max_connections: 0"), "{err}");
        let err = load_from_str(
            &format!("{BASE}[router]\nreader_policy = \"fastest\"\n"),
            "t",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("fastest"), "{err}");
    }
}
