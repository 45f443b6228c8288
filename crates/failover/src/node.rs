//! The local PostgreSQL behind the agent core's [`PgNode`] seam: observed with SQL, driven as
//! the supervised child of this process, rewound and cloned with pgha-replication.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::PgConnection;
use tokio::sync::Mutex;
use tokio::time::Instant;

use pgha_agent_core::inputs::{Local, LogicalSlot, StandbyRow};
use pgha_agent_core::ports::{PgNode, Target};
use pgha_agent_core::{CoreError, Result};
use pgha_config::{NodeConfig, PghaConfig};
use pgha_postgres::{
    connect_params, control_data, LocalInstance, Lsn, PgControl, PgError, ProcessState, StopMode,
    SupervisedInstance,
};
use pgha_replication::status::NodeStatus;
use pgha_replication::{
    bootstrap_replica, bootstrap_standby_leader, create_slot, drop_slot, install_settings,
    render_cluster_conf_keeping, render_node_conf_for, NodeRole, Role, CLUSTER_CONF, NODE_CONF,
};

use crate::dcs::{MemberRole, PgState};
use crate::first::{FirstPrimary, Initdb};

/// How long an immediate shutdown may take before the fence falls back to SIGKILL.
const FENCE_STOP_TIMEOUT: Duration = Duration::from_secs(3);

/// How long setting synchronous_standby_names waits for the reload to apply.
const SYNC_APPLY_WAIT: Duration = Duration::from_secs(1);

/// A standby that has not replied for this long (it replies every second:
/// `wal_receiver_status_interval`) no longer counts as streaming.
const STANDBY_SILENT_SECS: f64 = 3.0;

/// First line of the placeholder timeline history files a promotion writes.
const PLACEHOLDER: &str = "# pgha placeholder:";

/// This node's PostgreSQL.
#[derive(Debug)]
pub struct LocalNode {
    /// Replaced when the cluster settings change ([`PgNode::apply_config`]).
    cfg: std::sync::RwLock<Arc<PghaConfig>>,
    pub(crate) node: NodeConfig,
    pg: SupervisedInstance,
    /// One connection kept across ticks; dropped when it broke or the server stopped.
    conn: Mutex<Option<PgConnection>>,
    promote_timeout: Duration,
    /// How a bootstrap makes the first primary.
    first: Arc<dyn FirstPrimary>,
}

/// What the bootstrap marker holds once the first primary is made (before the commit).
const BOOTSTRAP_MADE: &[u8] = b"made\n";

impl LocalNode {
    /// `promote_timeout`: `Timings::promote_timeout`.
    pub fn new(
        cfg: Arc<PghaConfig>,
        node: NodeConfig,
        pg: SupervisedInstance,
        promote_timeout: Duration,
    ) -> Self {
        LocalNode {
            cfg: std::sync::RwLock::new(cfg),
            node,
            pg,
            conn: Mutex::new(None),
            promote_timeout,
            first: Arc::new(Initdb),
        }
    }

    /// A bootstrap makes the first primary with `first` instead of initdb.
    pub fn with_first_primary(mut self, first: Arc<dyn FirstPrimary>) -> Self {
        self.first = first;
        self
    }

    pub(crate) fn local(&self) -> &LocalInstance {
        self.pg.local()
    }

    /// Beside the data dir while a bootstrap makes it: the data dir does not count until the
    /// bootstrap removes it (a crash in initdb leaves a data dir that looks initialized).
    fn half_made(&self) -> std::path::PathBuf {
        let d = self.local().data_dir();
        d.with_file_name(format!(
            "{}.bootstrapping",
            d.file_name().map_or("data".into(), |f| f.to_string_lossy())
        ))
    }

    /// Moves the data dir aside (`<data_dir>.<why>-<time>`), when there is one.
    fn move_aside(&self, why: &str) -> Result<()> {
        let data = self.local().data_dir().to_owned();
        if !data.exists() {
            return Ok(());
        }
        let aside = data.with_extension(format!("{why}-{}", crate::now_ms() / 1000));
        tracing::warn!(node = %self.node.name, "keeping {} aside", aside.display());
        std::fs::rename(&data, &aside).map_err(|e| {
            PgError::Io {
                action: "move aside",
                path: data.clone(),
                source: e,
            }
            .into()
        })
    }

    /// Clears the way for a bootstrap or a clone over a data dir that is not a cluster. `ours`:
    /// the bootstrap marker was there, so the dir is one of our own bootstraps that never
    /// committed (never led, nothing acknowledged in it): removed, so failed tries of a
    /// restore from a backup do not pile up copies. Anything else is moved aside.
    async fn clear_half_made(&self, ours: bool) -> Result<()> {
        if matches!(
            self.local().process_state(),
            Ok(ProcessState::Running { .. })
        ) {
            // A previous try's server (pg_ctl started it, outside the supervisor).
            self.fence().await?;
        }
        let data = self.local().data_dir();
        if !ours || !data.exists() {
            return self.move_aside("incomplete");
        }
        tracing::warn!(node = %self.node.name, "removing {}: an interrupted bootstrap's data dir", data.display());
        std::fs::remove_dir_all(data).map_err(|source| {
            PgError::Io {
                action: "remove",
                path: data.to_owned(),
                source,
            }
            .into()
        })
    }

    /// The config settings are rendered from now.
    pub(crate) fn cfg(&self) -> Arc<PghaConfig> {
        match self.cfg.read() {
            Ok(c) => c.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn role<'a>(cfg: &'a PghaConfig, target: &Target) -> Result<NodeRole<'a>> {
        Ok(match target {
            Target::Primary => NodeRole::Primary,
            Target::Replica { upstream } => NodeRole::Replica {
                upstream: Self::node_named(cfg, upstream)?,
            },
            Target::StandbyLeader => NodeRole::StandbyLeader {
                source: cfg.standby_cluster.as_ref().ok_or_else(|| {
                    CoreError::refused("standby leader", "no [standby_cluster] in the config")
                })?,
            },
        })
    }

    /// This node as the current settings describe it (its tags, e.g. `nostream`, reload);
    /// the one it started with if a reload dropped it.
    fn me<'a>(cfg: &'a PghaConfig, started: &'a NodeConfig) -> &'a NodeConfig {
        cfg.node(&started.name).unwrap_or(started)
    }

    fn node_named<'a>(cfg: &'a PghaConfig, name: &str) -> Result<&'a NodeConfig> {
        cfg.node(name).ok_or_else(|| {
            CoreError::refused("follow", format!("node `{name}` is not in the config"))
        })
    }

    /// A fresh connection, or the kept one.
    async fn conn(&self) -> Result<tokio::sync::MappedMutexGuard<'_, PgConnection>> {
        let mut g = self.conn.lock().await;
        if g.is_none() {
            *g = Some(self.pg.connect().await?);
        }
        Ok(tokio::sync::MutexGuard::map(g, |c| {
            c.as_mut().expect("just set") // see above: Some on this path
        }))
    }

    /// pg_promote and wait until PostgreSQL leaves recovery.
    async fn promote_now(&self) -> Result<()> {
        self.with_conn("pg_promote", |c| {
            Box::pin(async move {
                sqlx::query("SELECT pg_promote(wait => false)")
                    .execute(c)
                    .await
                    .map(|_| ())
            })
        })
        .await?;
        let deadline = Instant::now() + self.promote_timeout;
        loop {
            let rec = self
                .with_conn("pg_is_in_recovery", |c| {
                    Box::pin(async move {
                        sqlx::query_scalar::<_, bool>("SELECT pg_is_in_recovery()")
                            .fetch_one(c)
                            .await
                    })
                })
                .await?;
            if !rec {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(CoreError::Timeout {
                    what: "promotion",
                    ms: self.promote_timeout.as_millis() as u64,
                });
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn pg_wal(&self) -> std::path::PathBuf {
        self.local().data_dir().join("pg_wal")
    }

    /// Makes PostgreSQL's promotion skip timelines up to `floor`: it takes the first timeline
    /// with no history file in pg_wal, and a timeline another node used (its history did not
    /// reach us) must never be used twice (pg_rewind would then see "the same timeline" and
    /// leave a diverged node as it is). A history file holding only a comment names no
    /// parent, so recovery never follows it.
    fn placeholders(&self, floor: i64) -> Result<()> {
        for tli in 2..=floor {
            let path = self.pg_wal().join(format!("{tli:08X}.history"));
            if path.exists() {
                continue;
            }
            let text = format!(
                "{PLACEHOLDER} timeline {tli} was used by another node of the cluster; its history is not here\n"
            );
            pgha_postgres::files::write_atomic(
                &path,
                text.as_bytes(),
                0o600,
                self.local().run_as(),
            )?;
            tracing::info!(node = %self.node.name, timeline = tli, "placeholder history file: the promotion takes a later timeline");
        }
        Ok(())
    }

    fn remove_placeholders(&self) {
        let Ok(dir) = std::fs::read_dir(self.pg_wal()) else {
            return;
        };
        for e in dir.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "history")
                && std::fs::read_to_string(&p).is_ok_and(|t| t.starts_with(PLACEHOLDER))
            {
                if let Err(err) = std::fs::remove_file(&p) {
                    tracing::warn!(node = %self.node.name, "remove placeholder {}: {err}", p.display());
                }
            }
        }
    }

    async fn forget_conn(&self) {
        *self.conn.lock().await = None;
    }

    /// Runs `f` on the kept connection; a failure drops it (it may be broken).
    pub(crate) async fn with_conn<T>(
        &self,
        what: &'static str,
        f: impl for<'c> FnOnce(
            &'c mut PgConnection,
        ) -> futures_util::future::BoxFuture<'c, Result<T, sqlx::Error>>,
    ) -> Result<T> {
        let r = {
            let mut c = self.conn().await?;
            f(&mut c).await
        };
        match r {
            Ok(v) => Ok(v),
            Err(source) => {
                self.forget_conn().await;
                Err(PgError::Query {
                    target: what.into(),
                    source,
                }
                .into())
            }
        }
    }
}

#[async_trait]
impl PgNode for LocalNode {
    async fn observe(&self, details: bool) -> Local {
        let inst = self.local();
        if self.half_made().exists() {
            // An interrupted bootstrap: no data anybody may use (moved aside by the next try).
            let mut o = Local::stopped(MemberRole::Uninitialized);
            if matches!(inst.process_state(), Ok(ProcessState::Running { .. })) {
                o.pg_state = PgState::Running;
            }
            o.bootstrap_made = std::fs::read(self.half_made()).is_ok_and(|m| m == BOOTSTRAP_MADE);
            return o;
        }
        let disk_role = if !inst.is_initialized() {
            MemberRole::Uninitialized
        } else if inst.data_dir().join("standby.signal").exists() {
            MemberRole::Replica
        } else {
            MemberRole::Primary
        };
        let running = matches!(inst.process_state(), Ok(ProcessState::Running { .. }));
        if !running {
            self.forget_conn().await;
            let mut o = Local::stopped(disk_role);
            if disk_role != MemberRole::Uninitialized {
                if let Ok(cd) = control_data(inst).await {
                    o.timeline = Some(i64::from(cd.timeline));
                    o.lsn = Some(cd.lsn());
                }
            }
            return o;
        }
        let mut o = Local::stopped(disk_role);
        o.pg_state = PgState::Running;
        let st = {
            match self.conn().await {
                Ok(mut c) => NodeStatus::query_position(&mut c, inst.name(), String::new())
                    .await
                    .ok(),
                Err(_) => None,
            }
        };
        let Some(st) = st else {
            self.forget_conn().await;
            return o;
        };
        o.reachable = true;
        match (st.role, &st.receiver) {
            (Some(Role::Replica), Some(r)) => {
                o.role = MemberRole::Replica;
                // The received position starts at its segment's start when streaming
                // starts, below what was replayed: the greater of the two.
                o.lsn = match (r.receive_lsn, r.replay_lsn) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    (a, b) => a.or(b),
                };
                o.replay_lsn = r.replay_lsn;
                o.streaming = st.streaming == Some(true);
                o.upstream = match (&r.upstream_host, r.upstream_port) {
                    (Some(h), Some(p)) => Some(format!("{h}:{p}")),
                    _ => None,
                };
            }
            _ => {
                o.role = MemberRole::Primary;
                o.lsn = st.lsn;
                o.replay_lsn = st.lsn;
            }
        }
        o.timeline = st.timeline;
        if !details {
            return o;
        }
        if o.role == MemberRole::Primary {
            let rows = self
                .with_conn("pg_stat_replication", |c| {
                    Box::pin(async move {
                        sqlx::query_as::<_, (String, Option<String>, Option<Lsn>, Option<f64>)>(
                            "SELECT application_name, state, flush_lsn, \
                               extract(epoch FROM now() - reply_time)::float8 \
                             FROM pg_stat_replication",
                        )
                        .fetch_all(c)
                        .await
                    })
                })
                .await;
            match rows {
                Ok(rows) => {
                    o.standbys = rows
                        .into_iter()
                        .map(|(name, state, flush_lsn, silent)| StandbyRow {
                            name,
                            // A standby silent for longer is cut off, whatever the walsender
                            // says (found by `cargo xtask faults --sync --scenario sync-churn`:
                            // commits waited for a standby behind a dropped link for 30 s).
                            streaming: state.as_deref() == Some("streaming")
                                && silent.is_none_or(|s| s < STANDBY_SILENT_SECS),
                            flush_lsn,
                        })
                        .collect();
                }
                // Without the rows, sync_names stays None: the sync planner skips this tick.
                Err(e) => {
                    tracing::warn!(node = %self.node.name, "read pg_stat_replication: {e}");
                    return o;
                }
            }
            let misc = self
                .with_conn("synchronous_standby_names", |c| {
                    Box::pin(async move {
                        sqlx::query_as::<_, (String, i64)>(
                            "SELECT current_setting('synchronous_standby_names'), \
                               (SELECT timeline_id FROM pg_control_checkpoint())::bigint",
                        )
                        .fetch_one(c)
                        .await
                    })
                })
                .await;
            match misc {
                Ok((ssn, ckpt)) => {
                    o.sync_names = Some(ssn);
                    o.checkpoint_timeline = Some(ckpt);
                }
                Err(e) => {
                    tracing::warn!(node = %self.node.name, "read synchronous_standby_names: {e}")
                }
            }
        }
        if details {
            let pending = self
                .with_conn("pg_settings", |c| {
                    Box::pin(async move {
                        sqlx::query_scalar::<_, String>(
                            "SELECT name::text FROM pg_settings WHERE pending_restart ORDER BY name",
                        )
                        .fetch_all(c)
                        .await
                    })
                })
                .await;
            match pending {
                Ok(p) => o.pending_restart = p,
                Err(e) => tracing::warn!(node = %self.node.name, "read pg_settings: {e}"),
            }
        }
        if self.cfg().replication.slots {
            type Row = (
                String,
                String,
                Option<String>,
                Option<String>,
                bool,
                Option<String>,
                Option<String>,
            );
            let slots = self
                .with_conn("pg_replication_slots", |c| {
                    Box::pin(async move {
                        sqlx::query_as::<_, Row>(
                            "SELECT slot_name::text, slot_type::text, database::text, plugin::text, active, confirmed_flush_lsn::text, restart_lsn::text FROM pg_replication_slots",
                        )
                        .fetch_all(c)
                        .await
                    })
                })
                .await;
            match slots {
                Ok(rows) => {
                    let (physical, logical): (Vec<Row>, Vec<Row>) =
                        rows.into_iter().partition(|r| r.1 == "physical");
                    o.slot_restart = physical
                        .iter()
                        .filter_map(|r| Some((r.0.clone(), r.6.as_deref()?.parse().ok()?)))
                        .collect();
                    o.slots = Some(physical.into_iter().map(|r| (r.0, r.4)).collect());
                    o.logical_slots = logical
                        .into_iter()
                        .map(|(name, _, database, plugin, _, confirmed, _)| LogicalSlot {
                            name,
                            database,
                            plugin,
                            confirmed_flush: confirmed.and_then(|c| c.parse().ok()),
                        })
                        .collect();
                }
                Err(e) => tracing::warn!(node = %self.node.name, "read pg_replication_slots: {e}"),
            }
        }
        o
    }

    async fn start(&self, target: &Target) -> Result<()> {
        self.remove_placeholders();
        let cfg = self.cfg();
        let role = Self::role(&cfg, target)?;
        install_settings(&cfg, Self::me(&cfg, &self.node), role, self.local())?;
        self.pg.start().await?;
        Ok(())
    }

    async fn restart(&self) -> Result<()> {
        self.remove_placeholders();
        self.pg.start().await?;
        Ok(())
    }

    async fn stop(&self, mode: StopMode) -> Result<()> {
        self.forget_conn().await;
        self.pg.stop(mode).await?;
        Ok(())
    }

    async fn fence(&self) -> Result<()> {
        self.forget_conn().await;
        match tokio::time::timeout(FENCE_STOP_TIMEOUT, self.pg.stop(StopMode::Immediate)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(node = %self.node.name, "immediate stop failed ({e}): SIGKILL of the postmaster and its children");
                self.local().kill().await?;
            }
            Err(_) => {
                tracing::error!(node = %self.node.name, "immediate stop did not finish within {FENCE_STOP_TIMEOUT:?}: SIGKILL of the postmaster and its children");
                self.local().kill().await?;
            }
        }
        match self.local().process_state()? {
            ProcessState::Stopped => Ok(()),
            ProcessState::Running { pid } => {
                self.local().kill().await?;
                match self.local().process_state()? {
                    ProcessState::Stopped => Ok(()),
                    ProcessState::Running { .. } => Err(CoreError::refused(
                        "fence",
                        format!("postmaster {pid} still runs after SIGKILL"),
                    )),
                }
            }
        }
    }

    async fn promote(&self, timeline_floor: Option<i64>) -> Result<()> {
        if let Some(floor) = timeline_floor {
            self.placeholders(floor)?;
        }
        let r = self.promote_now().await;
        if r.is_err() {
            // Still a standby: a placeholder would make its next start aim at that timeline.
            self.remove_placeholders();
        }
        r
    }

    async fn checkpoint(&self) -> Result<()> {
        self.with_conn("CHECKPOINT", |c| {
            Box::pin(async move { sqlx::query("CHECKPOINT").execute(c).await.map(|_| ()) })
        })
        .await
    }

    async fn set_sync_names(&self, value: &str) -> Result<Lsn> {
        // The position is read once PostgreSQL applies the value (a position from before
        // would let /sync name a standby that lacks commits acknowledged in between). The
        // wait is short: it runs inside the tick.
        let applied = {
            let mut c = self.conn().await?;
            pgha_replication::apply_sync_names(&mut c, self.local().name(), value, SYNC_APPLY_WAIT)
                .await
        };
        if let Err(e) = applied {
            self.forget_conn().await;
            return Err(e.into());
        }
        self.with_conn("pg_current_wal_lsn", |c| {
            Box::pin(async move {
                sqlx::query_scalar::<_, Lsn>(
                    "SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() \
                       ELSE pg_current_wal_lsn() END",
                )
                .fetch_one(c)
                .await
            })
        })
        .await
    }

    async fn point_at(&self, target: &Target) -> Result<bool> {
        let cfg = self.cfg();
        let role = Self::role(&cfg, target)?;
        let want = render_node_conf_for(&cfg, Self::me(&cfg, &self.node), role);
        let path = self.local().data_dir().join(NODE_CONF);
        if std::fs::read_to_string(&path).ok().as_deref() == Some(want.as_str()) {
            return Ok(false);
        }
        install_settings(&cfg, Self::me(&cfg, &self.node), role, self.local())?;
        self.pg.reload().await?;
        Ok(true)
    }

    async fn bootstrap(&self) -> Result<()> {
        let marker = self.half_made();
        let ours = marker.exists();
        pgha_postgres::files::write_atomic(&marker, b"", 0o600, None).map_err(CoreError::from)?;
        self.clear_half_made(ours).await?;
        let cfg = self.cfg();
        // Its server is started by pg_ctl, outside the supervisor, and outlives a killed
        // agent: on a private port no client configured for the cluster reaches it.
        let private = self.local().on_private_port()?;
        tracing::info!(
            node = %self.node.name,
            "bootstrapping a new cluster: {} (server on private port {} until committed)",
            self.first.describe(),
            private.connect_params().port
        );
        self.first.make(&cfg, &self.node, &private).await?;
        pgha_postgres::files::write_atomic(&marker, BOOTSTRAP_MADE, 0o600, None)
            .map_err(CoreError::from)
    }

    async fn finish_bootstrap(&self) -> Result<()> {
        let marker = self.half_made();
        std::fs::remove_file(&marker).map_err(|source| PgError::Io {
            action: "remove",
            path: marker.clone(),
            source,
        })?;
        Ok(())
    }

    async fn apply_config(&self, cfg: Arc<PghaConfig>) -> Result<bool> {
        match self.cfg.write() {
            Ok(mut c) => *c = cfg.clone(),
            Err(p) => *p.into_inner() = cfg.clone(),
        }
        let path = self.local().data_dir().join(CLUSTER_CONF);
        // No data dir yet: the clone or start that makes one renders the new settings.
        let Ok(current) = std::fs::read_to_string(&path) else {
            return Ok(false);
        };
        let on_disk = pgha_replication::logical::logical_slots_on_disk(self.local().data_dir());
        let want = render_cluster_conf_keeping(&cfg, &on_disk);
        if current == want {
            return Ok(false);
        }
        self.local().write_data_file(CLUSTER_CONF, &want)?;
        if matches!(
            self.local().process_state(),
            Ok(ProcessState::Running { .. })
        ) {
            self.pg.reload().await?;
        }
        Ok(true)
    }

    async fn rewind(&self, source: &str) -> Result<()> {
        let cfg = self.cfg();
        let src = Self::node_named(&cfg, source)?;
        pgha_replication::rewind(&cfg, Self::me(&cfg, &self.node), src, self.local()).await?;
        Ok(())
    }

    async fn clone_replica(&self, source: &str, move_aside: bool) -> Result<()> {
        let cfg = self.cfg();
        let up = Self::node_named(&cfg, source)?;
        let marker = self.half_made();
        if move_aside {
            self.move_aside("diverged")?;
        } else if marker.exists() {
            // An interrupted bootstrap's dir: nobody needs it.
            self.clear_half_made(true).await?;
        }
        if marker.exists() {
            std::fs::remove_file(&marker).map_err(|source| PgError::Io {
                action: "remove",
                path: marker.clone(),
                source,
            })?;
        }
        let params = connect_params(&cfg, up)?;
        bootstrap_replica(&cfg, Self::me(&cfg, &self.node), up, self.local(), &params).await?;
        Ok(())
    }

    async fn clone_standby_leader(&self) -> Result<()> {
        let cfg = self.cfg();
        let source = cfg.standby_cluster.as_ref().ok_or_else(|| {
            CoreError::refused("standby leader", "no [standby_cluster] in the config")
        })?;
        tracing::info!(node = %self.node.name, hosts = ?source.primary_hosts, "standby cluster without data: copying the primary site");
        bootstrap_standby_leader(&cfg, &self.node, source, self.local()).await?;
        Ok(())
    }

    async fn create_slot(&self, name: &str) -> Result<()> {
        let me = self.node.name.clone();
        let name = name.to_string();
        let mut c = self.conn().await?;
        let r = create_slot(&mut c, &me, &name).await;
        drop(c);
        if r.is_err() {
            self.forget_conn().await;
        }
        Ok(r?)
    }

    async fn drop_slot(&self, name: &str) -> Result<()> {
        let me = self.node.name.clone();
        let mut c = self.conn().await?;
        let r = drop_slot(&mut c, &me, name).await;
        drop(c);
        if r.is_err() {
            self.forget_conn().await;
        }
        Ok(r?)
    }

    async fn create_logical_slot(&self, name: &str, database: &str, plugin: &str) -> Result<()> {
        self.create_logical(name, database, plugin).await
    }

    async fn advance_slot(&self, name: &str, database: &str, to: Lsn) -> Result<Lsn> {
        self.advance(name, database, to).await
    }

    async fn copy_logical_slots(&self, source: &str, names: &[String]) -> Result<Vec<String>> {
        self.copy_logical(source, names).await
    }

    async fn checkpoint_lsn(&self) -> Result<Lsn> {
        Ok(control_data(self.local()).await?.checkpoint_lsn)
    }
}

#[cfg(test)]
#[path = "node_tests.rs"]
mod tests;
