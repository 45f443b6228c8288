//! LocalNode's permanent logical slots (`replication.logical_slots`): create on the primary,
//! advance a replica's copy, copy the primary's state files into a replica.

use pgha_agent_core::ports::PgNode;
use pgha_agent_core::{CoreError, Result};
use pgha_postgres::{connect_params, Lsn, StopMode};
use pgha_replication::logical::{
    advance_slot, create_logical_slot, install_slot_state, read_slot_states,
};

use crate::node::LocalNode;

impl LocalNode {
    /// A superuser connection to `database` on node `node`.
    async fn connect_db(&self, node: &str, database: &str) -> Result<sqlx::PgConnection> {
        let cfg = self.cfg();
        let n = cfg.node(node).ok_or_else(|| {
            CoreError::refused(
                "logical slots",
                format!("node `{node}` is not in the config"),
            )
        })?;
        let mut p = connect_params(&cfg, n)?;
        p.database = database.to_string();
        Ok(p.connect().await?)
    }

    pub(crate) async fn create_logical(
        &self,
        name: &str,
        database: &str,
        plugin: &str,
    ) -> Result<()> {
        let me = self.node.name.clone();
        let mut c = self.connect_db(&me, database).await?;
        create_logical_slot(&mut c, &me, name, plugin).await?;
        Ok(())
    }

    pub(crate) async fn advance(&self, name: &str, database: &str, to: Lsn) -> Result<Lsn> {
        let me = self.node.name.clone();
        let mut c = self.connect_db(&me, database).await?;
        Ok(advance_slot(&mut c, &me, name, to).await?)
    }

    /// Reads the slots from `source`, and only when it has some: fast stop (immediate when
    /// that fails), install the state files, start again (what is on disk: still a replica).
    pub(crate) async fn copy_logical(&self, source: &str, names: &[String]) -> Result<Vec<String>> {
        let cfg = self.cfg();
        let mut c = self.connect_db(source, &cfg.postgres.database).await?;
        let states = read_slot_states(&mut c, source, names).await?;
        drop(c);
        let wanted: Vec<_> = states
            .into_iter()
            .filter(|s| {
                let ok = cfg.replication.logical_slots.iter().any(|spec| {
                    spec.name == s.name && spec.database == s.database && spec.plugin == s.plugin
                });
                if !ok {
                    tracing::warn!(node = %self.node.name, slot = %s.name, database = %s.database, plugin = %s.plugin, "not copying logical slot: on {source} its database or plugin differs from replication.logical_slots");
                }
                ok
            })
            .collect();
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        if let Err(e) = self.stop(StopMode::Fast).await {
            tracing::warn!(node = %self.node.name, "fast stop to copy logical slots failed ({e}); stopping immediately");
            self.fence().await?;
        }
        let data = self.local().data_dir().to_owned();
        for s in &wanted {
            install_slot_state(&data, s, self.local().run_as())?;
        }
        self.restart().await?;
        Ok(wanted.into_iter().map(|s| s.name).collect())
    }
}
