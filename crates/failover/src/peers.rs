//! The other nodes behind the agent core's [`Peers`] seam: TCP probes, short SQL reads, the
//! agents' `POST /failsafe`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::PgConnection;
use tokio::sync::Mutex;

use pgha_agent_core::ports::Peers;
use pgha_agent_core::{CoreError, Result};
use pgha_config::{NodeConfig, PghaConfig, Secret};
use pgha_postgres::{connect_params, Lsn};
use pgha_replication::create_slot;

/// The cluster's other nodes, reached over the network.
#[derive(Debug)]
pub struct NetPeers {
    cfg: Arc<PghaConfig>,
    token: Option<Secret>,
    api: pgha_tls::AgentApiClient,
    /// The connection a switchover polls the target's received position on.
    received: Mutex<Option<(String, PgConnection)>>,
    /// Connect timeout of the dead-leader and position probes (`Timings::dead_probe_timeout`).
    probe_timeout: Duration,
}

impl NetPeers {
    pub fn new(cfg: Arc<PghaConfig>, probe_timeout: Duration) -> crate::Result<Self> {
        let token = cfg
            .failover
            .api_token
            .as_ref()
            .map(|s| s.read())
            .transpose()?;
        let api = pgha_tls::AgentApiClient::new(&cfg, Duration::from_millis(500)).map_err(|e| {
            crate::FailoverError::Api {
                addr: "(client)".into(),
                reason: e.to_string(),
            }
        })?;
        Ok(NetPeers {
            cfg,
            token,
            api,
            received: Mutex::new(None),
            probe_timeout,
        })
    }

    fn node(&self, name: &str) -> Result<&NodeConfig> {
        self.cfg
            .node(name)
            .ok_or_else(|| CoreError::peer(name, "look up", "not a node of the config"))
    }

    async fn connect(&self, name: &str, timeout: Duration) -> Result<PgConnection> {
        let mut p = connect_params(&self.cfg, self.node(name)?)?;
        p.connect_timeout = timeout;
        Ok(p.connect().await?)
    }
}

async fn refused(addr: String, timeout: Duration) -> bool {
    matches!(
        tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused
    )
}

#[async_trait]
impl Peers for NetPeers {
    async fn refused(&self, node: &str) -> bool {
        let Ok(n) = self.node(node) else { return false };
        let Some(api) = n.agent_address else {
            return false;
        };
        refused(n.address(), self.probe_timeout).await
            && refused(api.to_string(), self.probe_timeout).await
    }

    async fn position(&self, node: &str) -> Option<Lsn> {
        let mut c = self.connect(node, self.probe_timeout).await.ok()?;
        // None until its startup process asked for streaming, i.e. replayed the WAL it has
        // locally (before, the replay position may be short of what is on disk); then the
        // greater of the two (the received position starts at the segment's start).
        let live: Result<(bool, Option<Lsn>), _> = sqlx::query_as(
            "SELECT pg_is_in_recovery(), CASE WHEN pg_last_wal_receive_lsn() IS NULL THEN NULL \
             ELSE greatest(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()) END",
        )
        .fetch_one(&mut c)
        .await;
        match live {
            Ok((true, lsn)) => lsn,
            _ => None,
        }
    }

    async fn create_slot_on(&self, node: &str, slot: &str) -> Result<()> {
        let mut c = self.connect(node, Duration::from_secs(1)).await?;
        create_slot(&mut c, node, slot).await?;
        Ok(())
    }

    async fn received_lsn(&self, node: &str) -> Result<Option<Lsn>> {
        let mut g = self.received.lock().await;
        if g.as_ref().is_none_or(|(n, _)| n != node) {
            *g = Some((
                node.into(),
                self.connect(node, Duration::from_secs(1)).await?,
            ));
        }
        let Some((_, c)) = g.as_mut() else {
            return Ok(None);
        };
        match sqlx::query_scalar::<_, Option<Lsn>>("SELECT pg_last_wal_receive_lsn()")
            .fetch_one(c)
            .await
        {
            Ok(l) => Ok(l),
            Err(e) => {
                *g = None;
                Err(CoreError::peer(node, "pg_last_wal_receive_lsn", e))
            }
        }
    }

    async fn ask_failsafe(
        &self,
        node: &str,
        leader: &str,
        promise: std::time::Duration,
    ) -> Result<()> {
        let n = self.node(node)?;
        let Some(addr) = n.agent_address else {
            return Err(CoreError::peer(node, "failsafe", "has no agent_address"));
        };
        let mut req = self.api.client.post(self.api.url(addr, "/failsafe")).json(
            &serde_json::json!({ "leader": leader, "promise_ms": promise.as_millis() as u64 }),
        );
        if let Some(t) = &self.token {
            req = req.bearer_auth(t.expose());
        }
        match req.send().await {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(CoreError::peer(
                node,
                "failsafe",
                format!("answered {}", r.status()),
            )),
            Err(e) => Err(CoreError::peer(
                node,
                "failsafe",
                format!("unreachable: {e}"),
            )),
        }
    }
}
