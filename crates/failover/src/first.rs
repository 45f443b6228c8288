//! How a bootstrap makes the first primary of a new cluster ([`FirstPrimary`]): initdb here;
//! the agent binary adds a restore from the backup repository (`bootstrap.method = "backup"`),
//! so this crate needs no backup code.

use async_trait::async_trait;

use pgha_agent_core::Result;
use pgha_config::{NodeConfig, PghaConfig};
use pgha_postgres::LocalInstance;

/// Makes the data dir of the first primary (absent on entry: a half-made one was moved aside),
/// with the node's settings installed for a primary, the replication role and the
/// superuser's password in place; the server is left stopped. The agent then starts it as
/// the leader.
#[async_trait]
pub trait FirstPrimary: Send + Sync + std::fmt::Debug {
    /// What the logs call it (`initdb`, `backup 20261201T020000Z`).
    fn describe(&self) -> String;

    async fn make(
        &self,
        cfg: &PghaConfig,
        node: &NodeConfig,
        instance: &LocalInstance,
    ) -> Result<()>;
}

/// `bootstrap.method = "initdb"`: a new, empty cluster with data checksums.
#[derive(Debug, Clone, Copy, Default)]
pub struct Initdb;

#[async_trait]
impl FirstPrimary for Initdb {
    fn describe(&self) -> String {
        "initdb with data checksums".into()
    }

    async fn make(
        &self,
        cfg: &PghaConfig,
        node: &NodeConfig,
        instance: &LocalInstance,
    ) -> Result<()> {
        pgha_replication::bootstrap_primary(cfg, node, instance, false).await?;
        Ok(())
    }
}
