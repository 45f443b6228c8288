//! LocalNode's permanent logical slots (`replication.logical_slots`): create on the primary,
//! advance a replica's copy, copy the primary's state files into a replica.

use std::time::Duration;

use pgha_agent_core::ports::PgNode;
use pgha_agent_core::{CoreError, Result};
use pgha_postgres::{connect_params, Lsn, StopMode};
use pgha_replication::logical::{
    advance_slot, create_logical_slot, install_slot_state, read_slot_states,
};

use crate::node::LocalNode;

impl LocalNode {
    /// A superuser connection to `database` on node `node`; `budget` bounds each statement.
    async fn connect_db(
        &self,
        node: &str,
        database: &str,
        budget: Option<Duration>,
    ) -> Result<sqlx::PgConnection> {
        let cfg = self.cfg();
        let n = cfg.node(node).ok_or_else(|| {
            CoreError::refused(
                "logical slots",
                format!("node `{node}` is not in the config"),
            )
        })?;
        let mut p = connect_params(&cfg, n)?;
        p.database = database.to_string();
        if budget.is_some() {
            p.statement_timeout = budget;
        }
        Ok(p.connect().await?)
    }

    /// How long creating or advancing a slot may hold up the agent's loop (they run in it):
    /// creating one waits for the open write transactions to end, advancing one decodes the
    /// WAL in between. Past it the statement is cancelled and retried next loop. The leader
    /// creates one slot a loop (`decide::logical::on_primary`) and advances none, so its
    /// renewals stay within `loop_wait + ttl / 4` of each other.
    fn slot_budget(&self) -> Duration {
        let f = &self.cfg().failover;
        f.loop_wait.max(Duration::from_secs(1)).min(f.ttl / 4)
    }

    pub(crate) async fn create_logical(
        &self,
        name: &str,
        database: &str,
        plugin: &str,
    ) -> Result<()> {
        let me = self.node.name.clone();
        let mut c = self
            .connect_db(&me, database, Some(self.slot_budget()))
            .await?;
        create_logical_slot(&mut c, &me, name, plugin).await?;
        Ok(())
    }

    pub(crate) async fn advance(&self, name: &str, database: &str, to: Lsn) -> Result<Lsn> {
        let me = self.node.name.clone();
        let mut c = self
            .connect_db(&me, database, Some(self.slot_budget()))
            .await?;
        Ok(advance_slot(&mut c, &me, name, to).await?)
    }

    /// Reads the slots from `source`, and only when it has some: fast stop (immediate when
    /// that fails), install the state files, start again (what is on disk: still a replica).
    pub(crate) async fn copy_logical(&self, source: &str, names: &[String]) -> Result<Vec<String>> {
        let cfg = self.cfg();
        let me = self.node.name.clone();
        let mut c = self
            .connect_db(source, &cfg.postgres.database, None)
            .await?;
        let states = read_slot_states(&mut c, source, names).await?;
        drop(c);
        // Read after the states: what we replayed only grows, so a state at or behind it
        // now stays so.
        let replayed = self
            .with_conn("pg_last_wal_replay_lsn", |c| {
                Box::pin(async move {
                    sqlx::query_scalar::<_, Option<Lsn>>(
                        "SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() END",
                    )
                    .fetch_one(c)
                    .await
                })
            })
            .await?;
        let wanted: Vec<_> = states
            .into_iter()
            .filter(|s| {
                let ok = cfg.replication.logical_slots.iter().any(|spec| {
                    spec.name == s.name && spec.database == s.database && spec.plugin == s.plugin
                });
                if !ok {
                    tracing::warn!(node = %me, slot = %s.name, database = %s.database, plugin = %s.plugin, "not copying logical slot: on {source} its database or plugin differs from replication.logical_slots");
                    return false;
                }
                // Promoted with a slot past its own replay, we would skip what the new
                // timeline writes between the two: copy once we replayed that far.
                let behind = replayed.is_some_and(|r| s.confirmed_flush.is_some_and(|c| c <= r));
                if !behind {
                    tracing::info!(node = %me, slot = %s.name, confirmed_flush = ?s.confirmed_flush, replayed = ?replayed, "not copying logical slot yet: its position on {source} is past what we replayed");
                }
                behind
            })
            .collect();
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        if let Err(e) = self.stop(StopMode::Fast).await {
            tracing::warn!(node = %me, "fast stop to copy logical slots failed ({e}); stopping immediately");
            self.fence().await?;
        }
        let data = self.local().data_dir().to_owned();
        // Started again whatever the install did: a failed write must not leave it down.
        let installed: Result<Vec<()>> = wanted
            .iter()
            .map(|s| Ok(install_slot_state(&data, s, self.local().run_as())?))
            .collect();
        self.restart().await?;
        installed?;
        Ok(wanted.into_iter().map(|s| s.name).collect())
    }
}
