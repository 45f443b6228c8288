//! Members from the pgha failover agents' `GET /cluster`: the nodes registered in the DCS, so
//! a node added to (or removed from) the cluster is routed to without restarting the service.
//!
//! As with every [`Discovery`], only names and addresses are taken from the agents; roles and
//! lag come from the router's own health checks, so an agent with a stale view cannot send
//! writes to a standby.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use sqlx::postgres::PgConnectOptions;

use pgha_config::{PghaConfig, Secret};

use crate::discovery::{AppCredentials, ConfigCredentials, Discovery, Member};
use crate::url::parse_host;
use crate::{Result, RouterError};

/// The part of an agent's `/cluster` answer the router reads.
#[derive(Deserialize)]
struct ClusterBody {
    view: ViewBody,
}

#[derive(Deserialize)]
struct ViewBody {
    members: BTreeMap<String, MemberBody>,
}

#[derive(Deserialize)]
struct MemberBody {
    /// `host:port` of the member's PostgreSQL.
    pg_address: String,
}

/// A [`Discovery`] asking the failover agents (any one that answers) which nodes exist.
/// Each member is connected to with `template` (user, password, database, TLS), its host and
/// port replaced by the member's. `Debug` shows no password or token.
#[derive(Clone)]
pub struct AgentMembers {
    agents: Vec<String>,
    template: PgConnectOptions,
    token: Option<Secret>,
    client: reqwest::Client,
}

impl fmt::Debug for AgentMembers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentMembers")
            .field("agents", &self.agents)
            .finish_non_exhaustive()
    }
}

impl AgentMembers {
    /// Time allowed to one agent's answer; the agents are asked at once, the first answer wins.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(800);

    /// `agents`: agent API addresses, `host:port` or `http://host:port`.
    pub fn new(
        agents: impl IntoIterator<Item = impl Into<String>>,
        template: PgConnectOptions,
    ) -> Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(Self::DEFAULT_TIMEOUT)
            .build()
            .map_err(|e| RouterError::InvalidOption {
                option: "agents",
                problem: format!("cannot build the HTTP client: {e}"),
            })?;
        Self::with_client(agents, template, client, "http")
    }

    /// Addresses without a scheme get `scheme://`.
    fn with_client(
        agents: impl IntoIterator<Item = impl Into<String>>,
        template: PgConnectOptions,
        client: reqwest::Client,
        scheme: &str,
    ) -> Result<Self> {
        let agents: Vec<String> = agents
            .into_iter()
            .map(|a| {
                let a: String = a.into();
                let a = a.trim_end_matches('/');
                if a.contains("://") {
                    a.to_owned()
                } else {
                    format!("{scheme}://{a}")
                }
            })
            .collect();
        if agents.is_empty() {
            return Err(RouterError::InvalidOption {
                option: "agents",
                problem: "no agent address given (expected host:port of at least one pgha agent)"
                    .into(),
            });
        }
        Ok(AgentMembers {
            agents,
            template,
            token: None,
            client,
        })
    }

    /// The agents of a pgha.toml (`nodes[*].agent_address`), credentials as in
    /// [`crate::StaticMembers::from_config`], and the API token when `failover.api_token` is set.
    pub fn from_config(config: &PghaConfig, app: Option<&AppCredentials>) -> Result<Self> {
        let creds = ConfigCredentials::resolve(config, app)?;
        let agents: Vec<String> = config
            .nodes
            .iter()
            .filter_map(|n| n.agent_address.map(|a| a.to_string()))
            .collect();
        if agents.is_empty() {
            return Err(RouterError::InvalidOption {
                option: "agents",
                problem: format!(
                    "cluster {}: no node has agent_address set in pgha.toml",
                    config.cluster.name
                ),
            });
        }
        // HTTPS with the cluster CA when the agents serve it ([tls] agent_api).
        let api = pgha_tls::AgentApiClient::new(config, Self::DEFAULT_TIMEOUT).map_err(|e| {
            RouterError::InvalidOption {
                option: "agents",
                problem: e.to_string(),
            }
        })?;
        let mut m = AgentMembers::with_client(
            agents,
            creds.options("localhost", 5432),
            api.client,
            api.scheme,
        )?;
        m.token = config
            .failover
            .api_token
            .as_ref()
            .map(|t| t.read())
            .transpose()?;
        Ok(m)
    }

    /// Sends `Authorization: Bearer <token>` (for agents whose read endpoints need it).
    pub fn with_token(mut self, token: Secret) -> Self {
        self.token = Some(token);
        self
    }

    async fn ask(&self, agent: &str) -> std::result::Result<Vec<Member>, String> {
        let mut req = self.client.get(format!("{agent}/cluster"));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t.expose());
        }
        let resp = req.send().await.map_err(|e| format!("{agent}: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("{agent}: HTTP {}", resp.status()));
        }
        let body: ClusterBody = resp
            .json()
            .await
            .map_err(|e| format!("{agent}: unexpected /cluster answer: {e}"))?;
        let mut members = Vec::with_capacity(body.view.members.len());
        for (name, m) in body.view.members {
            let hp = parse_host(&m.pg_address).map_err(|e| {
                format!("{agent}: member {name}: pg_address `{}`: {e}", m.pg_address)
            })?;
            let options = self.template.clone().host(&hp.host).port(hp.port);
            members.push(Member::new(name, options));
        }
        if members.is_empty() {
            return Err(format!("{agent}: no member registered in the DCS"));
        }
        Ok(members)
    }
}

#[async_trait]
impl Discovery for AgentMembers {
    fn describe(&self) -> String {
        format!("agents {}", self.agents.join(","))
    }

    async fn members(&self) -> Result<Vec<Member>> {
        let asks = self.agents.iter().map(|a| Box::pin(self.ask(a)));
        match futures_util::future::select_ok(asks).await {
            Ok((members, _)) => Ok(members),
            // select_ok keeps only the last error; every agent failed, that one names itself.
            Err(cause) => Err(RouterError::Discovery {
                source_name: self.describe(),
                cause,
            }),
        }
    }
}
