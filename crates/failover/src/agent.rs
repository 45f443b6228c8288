//! The per-node agent loop: holds or follows the leader lease, promotes, fences, rejoins.
//!
//! Safety rules (docs/FAILOVER.md explains them):
//! - PostgreSQL runs as this process's child and dies with it ([`SupervisedInstance`]), so a
//!   killed agent never leaves a writable primary behind.
//! - PostgreSQL starts as a primary only while this agent holds the leader key.
//! - A leader that cannot renew its lease stops PostgreSQL before the lease can expire for the
//!   others, unless failsafe is on and every replica confirms the DCS is down for it too.
//! - Releasing the lease always stops PostgreSQL first.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde::Serialize;
use sqlx::PgConnection;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use pgha_config::{NodeConfig, PghaConfig, ReplicationMode, Secret, StandbyClusterSection};
use pgha_postgres::sql::{pgpass_field, quote_ident, quote_literal};
use pgha_postgres::{
    connect_params, control_data, files, LocalInstance, Lsn, PgControl, StopMode,
    SupervisedInstance,
};
use pgha_replication::{
    bootstrap_replica, bootstrap_standby_leader, create_slot, drop_slot, install_settings,
    render_node_conf_for, NodeRole, NODE_CONF,
};

use crate::cascade;
use crate::dcs::{
    ClusterView, Dcs, LeaderInfo, LeaderStatus, MemberRole, MemberState, PgState, RequestKind,
    Session, SwitchoverRequest, SyncState,
};
use crate::election::{self, Rules};
use crate::observe::{observe, Observation};
use crate::{now_ms, FailoverError, Result};

/// What the API serves; updated every loop.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Snapshot {
    pub name: String,
    pub is_leader: bool,
    pub dcs_reachable: bool,
    pub paused: bool,
    pub member: Option<MemberState>,
    pub view: Option<ClusterView>,
}

/// State shared between the loop and the HTTP API.
#[derive(Debug, Default)]
pub struct Shared {
    pub snapshot: RwLock<Snapshot>,
    /// Until then this node must not take the lease: it confirmed failsafe to the leader.
    pub quarantine_until: Mutex<Option<Instant>>,
    pub promotions: AtomicU64,
    pub fencings: AtomicU64,
    /// Wakes the loop early (API commands).
    pub wake: Notify,
}

impl Shared {
    pub fn snapshot(&self) -> Snapshot {
        self.snapshot.read().map(|s| s.clone()).unwrap_or_default()
    }
}

/// Sync-standby change waiting for the new standby to catch up before /sync names it.
#[derive(Debug, Clone)]
struct PendingSync {
    standbys: Vec<String>,
    since_lsn: Lsn,
}

/// The agent of one node.
pub struct Agent {
    cfg: Arc<PghaConfig>,
    node: NodeConfig,
    dcs: Arc<dyn Dcs>,
    pg: SupervisedInstance,
    conn: Option<PgConnection>,
    shared: Arc<Shared>,
    started: Instant,
    is_leader: bool,
    last_renew_ok: Option<Instant>,
    pg_down_since: Option<Instant>,
    dead_hits: u32,
    not_streaming_since: Option<Instant>,
    needs_rewind: bool,
    slots_ready: bool,
    /// Last time the slots on our PostgreSQL were compared with what should be there.
    slots_checked: Option<Instant>,
    /// Slots named after one of our nodes that nobody should read from us, since when.
    unwanted_slots: std::collections::HashMap<String, Instant>,
    /// The node pgha-node.conf points us at (as far as this process knows).
    current_upstream: Option<String>,
    /// We lead a standby cluster (as of the last loop with the DCS).
    standby_leader: bool,
    /// Since when our `replicate_from` node has looked usable without a break.
    cascade_usable_since: Option<Instant>,
    /// Until then we follow the leader: we could not stream from our `replicate_from` node.
    cascade_backoff_until: Option<Instant>,
    /// Last time we re-made our slot on the upstream while not streaming.
    slot_retry_at: Option<Instant>,
    pending_sync: Option<PendingSync>,
    last_dcs_error: Option<Instant>,
    failed_starts: u32,
    /// Cancelled when the agent is stopping: it must not take the lease any more.
    stopping: CancellationToken,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("node", &self.node.name)
            .field("is_leader", &self.is_leader)
            .finish()
    }
}

impl Agent {
    pub fn new(
        cfg: Arc<PghaConfig>,
        node: &str,
        dcs: Arc<dyn Dcs>,
        shared: Arc<Shared>,
    ) -> Result<Self> {
        let node = cfg
            .node(node)
            .ok_or_else(|| FailoverError::UnknownNode(node.into()))?
            .clone();
        let local = LocalInstance::from_config(&cfg, &node)?.with_timeout(Duration::from_secs(60));
        Ok(Agent {
            pg: SupervisedInstance::new(local),
            cfg,
            node,
            dcs,
            conn: None,
            shared,
            started: Instant::now(),
            is_leader: false,
            last_renew_ok: None,
            pg_down_since: None,
            dead_hits: 0,
            not_streaming_since: None,
            needs_rewind: false,
            slots_ready: false,
            slots_checked: None,
            unwanted_slots: std::collections::HashMap::new(),
            current_upstream: None,
            standby_leader: false,
            cascade_usable_since: None,
            cascade_backoff_until: None,
            slot_retry_at: None,
            pending_sync: None,
            last_dcs_error: None,
            failed_starts: 0,
            stopping: CancellationToken::new(),
        })
    }

    fn local(&self) -> &LocalInstance {
        self.pg.local()
    }

    /// Runs until `cancel`, then stops PostgreSQL and releases the lease.
    pub async fn run(mut self, cancel: CancellationToken) -> Result<()> {
        self.stopping = cancel.clone();
        let loop_wait = self.cfg.failover.loop_wait;
        let mut watch: Option<mpsc::Receiver<()>> = None;
        let shared = self.shared.clone();
        loop {
            if watch.is_none() {
                watch = self.dcs.watch().await.ok();
            }
            let t = Instant::now();
            self.tick().await;
            let busy = t.elapsed();
            let sleep = loop_wait
                .saturating_sub(busy)
                .max(Duration::from_millis(10));
            let watched = async {
                match watch.as_mut() {
                    Some(w) => w.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(sleep) => {}
                got = watched => {
                    if got.is_none() { watch = None; }
                    // Debounce: a burst of changes (leader deleted, then taken) costs one tick.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                _ = shared.wake.notified() => {}
            }
        }
        self.shutdown().await;
        Ok(())
    }

    async fn shutdown(&mut self) {
        tracing::info!(node = %self.node.name, "agent stopping: stopping PostgreSQL");
        if let Err(e) = self.pg.stop(StopMode::Fast).await {
            tracing::warn!("stop PostgreSQL: {e}");
        }
        if self.is_leader {
            let _ = self.dcs.release_leader().await;
        }
    }

    async fn tick(&mut self) {
        let t0 = Instant::now();
        let local = self.pg.local().clone();
        let obs = observe(&local, &mut self.conn).await;
        let dcs = async {
            let s = self.dcs.keep_alive().await?;
            let v = self.dcs.view().await?;
            Ok::<_, FailoverError>((s, v))
        }
        .await;
        match dcs {
            Ok((session, view)) => {
                self.last_renew_ok = Some(t0);
                self.last_dcs_error = None;
                self.with_dcs(obs, session, view).await;
            }
            Err(e) => {
                if self.last_dcs_error.is_none() {
                    tracing::warn!(node = %self.node.name, "DCS unreachable: {e}");
                }
                self.last_dcs_error = Some(Instant::now());
                self.without_dcs(obs).await;
            }
        }
    }

    fn member_state(&self, obs: &Observation) -> MemberState {
        MemberState {
            name: self.node.name.clone(),
            pg_address: self.node.address(),
            api_address: self.node.agent_address.map(|a| a.to_string()),
            pg_state: obs.pg_state,
            role: obs.role,
            timeline: obs.timeline,
            lsn: obs.lsn,
            replay_lsn: obs.replay_lsn,
            streaming: obs.streaming,
            upstream: obs.upstream.clone(),
            nofailover: self.node.nofailover,
            updated_ms: now_ms(),
        }
    }

    fn publish_snapshot(&self, obs: &Observation, view: Option<&ClusterView>, dcs_reachable: bool) {
        if let Ok(mut s) = self.shared.snapshot.write() {
            s.name = self.node.name.clone();
            s.is_leader = self.is_leader;
            s.dcs_reachable = dcs_reachable;
            s.member = Some(self.member_state(obs));
            if let Some(v) = view {
                s.paused = v.config.paused;
                s.view = Some(v.clone());
            }
        }
    }

    async fn with_dcs(&mut self, obs: Observation, session: Session, view: ClusterView) {
        let me = self.node.name.clone();
        if session == Session::Replaced && self.is_leader {
            // Our lease (and the leader key on it) is gone.
            self.is_leader = false;
            if view.leader.as_ref().is_some_and(|l| l.name != me) {
                self.fence("lease lost and another node holds the leader key")
                    .await;
            }
        }
        let member = self.member_state(&obs);
        if let Err(e) = self.dcs.publish_member(&member).await {
            tracing::debug!("publish member: {e}");
        }
        self.publish_snapshot(&obs, Some(&view), true);
        if view.config.paused {
            self.is_leader = view.leader.as_ref().is_some_and(|l| l.name == me);
            return;
        }
        self.standby_leader = view.leader.as_ref().is_some_and(|l| l.name == me)
            && self.standby_source(&view).is_some();
        match view.leader.clone() {
            Some(l) if l.name == me => self.lead(&obs, &view).await,
            Some(l) => self.follow(&obs, &view, &l).await,
            None => self.elect(&obs, &view).await,
        }
        self.publish_snapshot(&obs, Some(&view), true);
    }

    /// Stops PostgreSQL at once: no more writes from this node.
    async fn fence(&mut self, why: &str) {
        tracing::warn!(node = %self.node.name, "fencing: {why}; stopping PostgreSQL (immediate)");
        self.shared.fencings.fetch_add(1, Ordering::Relaxed);
        self.conn = None;
        if let Err(e) = self.pg.stop(StopMode::Immediate).await {
            tracing::error!("fencing stop failed: {e}");
        }
        self.needs_rewind = true;
        self.slots_ready = false;
    }

    /// Gives up the lease: stop PostgreSQL first, then delete the key.
    async fn release(&mut self, why: &str) {
        self.fence(why).await;
        self.is_leader = false;
        if let Err(e) = self.dcs.release_leader().await {
            tracing::warn!("release leader: {e}");
        }
    }

    // ---- leader ----

    async fn lead(&mut self, obs: &Observation, view: &ClusterView) {
        self.is_leader = true;
        if obs.pg_state == PgState::Stopped || !obs.reachable {
            let since = *self.pg_down_since.get_or_insert_with(Instant::now);
            let budget = self.cfg.failover.postgres_restart_timeout;
            if since.elapsed() >= budget {
                self.release(&format!("PostgreSQL not back within {budget:?}"))
                    .await;
                return;
            }
            if obs.pg_state == PgState::Stopped {
                tracing::warn!(node = %self.node.name, "leader's PostgreSQL is down: restarting");
                let left = budget.saturating_sub(since.elapsed());
                match tokio::time::timeout(left, self.pg.start()).await {
                    Ok(Ok(())) => self.pg_down_since = None,
                    Ok(Err(e)) => tracing::warn!("restart failed: {e}"),
                    Err(_) => tracing::warn!("restart did not finish within {left:?}"),
                }
            }
            return;
        }
        self.pg_down_since = None;
        if let Some(source) = self.standby_source(view) {
            self.lead_standby(obs, view, &source).await;
            return;
        }
        if obs.in_recovery() {
            self.promote(view).await;
            return;
        }
        self.publish_status_and_slots(obs, view).await;
        if self.cfg.replication.mode == ReplicationMode::Sync {
            if let Err(e) = self.manage_sync(view).await {
                tracing::warn!("sync standby management: {e}");
            }
        }
        if let Some(req) = view.switchover.clone() {
            self.hand_over(&req, view).await;
        }
    }

    async fn promote(&mut self, view: &ClusterView) {
        let t = Instant::now();
        let r: Result<()> = async {
            let mut c = self.pg.connect().await?;
            if self.cfg.replication.mode == ReplicationMode::Sync {
                // No acknowledged commit can be lost: this node was a synchronous standby. Until a
                // standby is synchronous again, /sync names none, so nobody else can be promoted.
                self.dcs
                    .put_sync(&SyncState {
                        leader: self.node.name.clone(),
                        standbys: vec![],
                    })
                    .await?;
                let ssn = if self.cfg.failover.sync_strict {
                    format!(
                        "FIRST 1 ({})",
                        self.other_nodes()
                            .iter()
                            .map(|n| quote_ident(n))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                } else {
                    String::new()
                };
                alter_system(&mut c, "synchronous_standby_names", &ssn).await?;
            }
            sqlx::query("SELECT pg_promote(wait => false)")
                .execute(&mut c)
                .await
                .map_err(query_err("pg_promote"))?;
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let rec: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
                    .fetch_one(&mut c)
                    .await
                    .map_err(query_err("pg_is_in_recovery"))?;
                if !rec || Instant::now() > deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Ok(())
        }
        .await;
        match r {
            Ok(()) => {
                self.shared.promotions.fetch_add(1, Ordering::Relaxed);
                tracing::info!(node = %self.node.name, elapsed_ms = t.elapsed().as_millis() as u64, "promoted");
                let me = self.node.name.clone();
                self.slots_ready = self.manage_slots(view, &me, true).await.is_ok();
                if view
                    .switchover
                    .as_ref()
                    .is_some_and(|r| r.to == self.node.name)
                {
                    let _ = self.dcs.clear_switchover().await;
                }
            }
            Err(e) => tracing::error!(node = %self.node.name, "promotion failed: {e}"),
        }
    }

    fn other_nodes(&self) -> Vec<String> {
        self.cfg
            .nodes
            .iter()
            .filter(|n| n.name != self.node.name)
            .map(|n| n.name.clone())
            .collect()
    }

    /// Every leader's loop work: its position in `status` (the lag reference after it dies) and
    /// the slots of the nodes streaming from it.
    async fn publish_status_and_slots(&mut self, obs: &Observation, view: &ClusterView) {
        if let (Some(lsn), Some(tl)) = (obs.lsn, obs.timeline) {
            let st = LeaderStatus {
                leader: self.node.name.clone(),
                lsn,
                timeline: tl,
                updated_ms: now_ms(),
            };
            let _ = self.dcs.put_status(&st).await;
        }
        let me = self.node.name.clone();
        self.slots_ready = self
            .manage_slots(view, &me, !self.slots_ready)
            .await
            .is_ok();
    }

    /// `[standby_cluster]` while `pgha promote-cluster` has not made this site the primary one.
    fn standby_source(&self, view: &ClusterView) -> Option<StandbyClusterSection> {
        self.cfg
            .standby_cluster
            .clone()
            .filter(|_| !view.config.standby_promoted)
    }

    /// Leader of a standby cluster: stays in recovery streaming from the primary site (its
    /// restore_command fills gaps from the shared repository), never promotes on its own.
    async fn lead_standby(
        &mut self,
        obs: &Observation,
        view: &ClusterView,
        source: &StandbyClusterSection,
    ) {
        if !obs.in_recovery() {
            // A writable node in the standby site would fork the data from the primary site.
            self.release(
                "standby cluster: our PostgreSQL is a primary; only `pgha promote-cluster` may make this site writable",
            )
            .await;
            return;
        }
        if let Err(e) = self
            .point_at_role(NodeRole::StandbyLeader { source }, "the primary site")
            .await
        {
            tracing::warn!("point the standby leader at the primary site: {e}");
        }
        self.publish_status_and_slots(obs, view).await;
    }

    /// Makes the slots on our PostgreSQL match who streams from us ([`cascade::wanted_slots`],
    /// plus `replication.permanent_slots` on a primary): creates missing ones; drops a slot named
    /// after one of our nodes that should not read from us once it stayed inactive for a TTL
    /// (an unread slot keeps WAL forever). Checked every few seconds, or now with `force`.
    async fn manage_slots(&mut self, view: &ClusterView, leader: &str, force: bool) -> Result<()> {
        const EVERY: Duration = Duration::from_secs(2);
        if !self.cfg.replication.slots
            || (!force && self.slots_checked.is_some_and(|t| t.elapsed() < EVERY))
        {
            return Ok(());
        }
        // A drop needs the slot seen unwanted and inactive on checks no further apart than
        // this: after a gap (PostgreSQL unreachable, another role) the timers start again.
        if self.slots_checked.is_none_or(|t| t.elapsed() > EVERY * 3) {
            self.unwanted_slots.clear();
        }
        self.slots_checked = Some(Instant::now());
        let me = self.node.name.clone();
        let mut wanted = cascade::wanted_slots(&self.cfg, view, &me, leader);
        if leader == me && self.standby_source(view).is_none() {
            wanted.extend(self.cfg.replication.permanent_slots.iter().cloned());
        }
        let grace = self.cfg.failover.ttl;
        let mut own = match self.conn.take() {
            Some(c) => c,
            None => self.pg.connect().await?,
        };
        let r: Result<()> = async {
            let slots: Vec<(String, bool)> = sqlx::query_as(
                "SELECT slot_name::text, active FROM pg_replication_slots WHERE slot_type = 'physical'",
            )
            .fetch_all(&mut own)
            .await
            .map_err(query_err("pg_replication_slots"))?;
            self.unwanted_slots
                .retain(|name, _| slots.iter().any(|(n, _)| n == name));
            for w in &wanted {
                if !slots.iter().any(|(n, _)| n == w) {
                    create_slot(&mut own, &me, w).await?;
                    tracing::info!(node = %me, slot = %w, "replication slot created");
                }
            }
            for (name, active) in &slots {
                let ours = self.cfg.node(name).is_some();
                if !ours || wanted.contains(name) || *active {
                    self.unwanted_slots.remove(name);
                    continue;
                }
                let since = *self
                    .unwanted_slots
                    .entry(name.clone())
                    .or_insert_with(Instant::now);
                if since.elapsed() >= grace {
                    drop_slot(&mut own, &me, name).await?;
                    self.unwanted_slots.remove(name);
                    tracing::info!(node = %me, slot = %name, "dropped an unused replication slot (its node streams from elsewhere)");
                }
            }
            Ok(())
        }
        .await;
        // A failed query may have broken the connection: observe opens a new one.
        if r.is_ok() {
            self.conn = Some(own);
        }
        r
    }

    /// Keeps `sync_standbys` streaming standbys synchronous and /sync naming only standbys that
    /// hold every acknowledged commit: names are added to /sync only after the standby caught up
    /// past the LSN at which PostgreSQL started waiting for it, and removed from /sync before
    /// PostgreSQL stops waiting for them.
    async fn manage_sync(&mut self, view: &ClusterView) -> Result<()> {
        let mut c = self.pg.connect().await?;
        let rows: Vec<(String, Option<String>, Option<Lsn>)> =
            sqlx::query_as("SELECT application_name, state, flush_lsn FROM pg_stat_replication")
                .fetch_all(&mut c)
                .await
                .map_err(query_err("pg_stat_replication"))?;
        let others = self.other_nodes();
        let eligible =
            |n: &String| others.contains(n) && self.cfg.node(n).is_some_and(|c| !c.nofailover);
        let healthy: Vec<(String, Lsn)> = rows
            .iter()
            .filter(|(n, st, _)| eligible(n) && st.as_deref() == Some("streaming"))
            .map(|(n, _, l)| (n.clone(), l.unwrap_or_default()))
            .collect();
        let current: Vec<String> = view
            .sync
            .as_ref()
            .filter(|s| s.leader == self.node.name)
            .map(|s| s.standbys.clone())
            .unwrap_or_default();
        let want_n = self.cfg.replication.sync_standbys.max(1) as usize;

        if let Some(p) = self.pending_sync.clone() {
            let caught_up = p
                .standbys
                .iter()
                .all(|s| healthy.iter().any(|(n, l)| n == s && *l >= p.since_lsn));
            if caught_up {
                self.dcs
                    .put_sync(&SyncState {
                        leader: self.node.name.clone(),
                        standbys: p.standbys.clone(),
                    })
                    .await?;
                tracing::info!(standbys = ?p.standbys, "synchronous standbys recorded");
                self.pending_sync = None;
            }
            return Ok(());
        }

        let mut desired: Vec<String> = current
            .iter()
            .filter(|s| healthy.iter().any(|(n, _)| n == *s))
            .cloned()
            .collect();
        let mut by_progress = healthy.clone();
        by_progress.sort_by_key(|x| std::cmp::Reverse(x.1));
        for (n, _) in by_progress {
            if desired.len() >= want_n {
                break;
            }
            if !desired.contains(&n) {
                desired.push(n);
            }
        }
        desired.sort();
        let mut current_sorted = current.clone();
        current_sorted.sort();
        let ssn_now: String =
            sqlx::query_scalar("SELECT current_setting('synchronous_standby_names')")
                .fetch_one(&mut c)
                .await
                .map_err(query_err("synchronous_standby_names"))?;
        let ssn_for = |names: &[String]| {
            if names.is_empty() {
                String::new()
            } else {
                format!(
                    "FIRST {} ({})",
                    names.len(),
                    names
                        .iter()
                        .map(|n| quote_ident(n))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        };
        if desired == current_sorted {
            let want = ssn_for(&desired);
            if ssn_now != want && !(desired.is_empty() && self.cfg.failover.sync_strict) {
                alter_system(&mut c, "synchronous_standby_names", &want).await?;
            }
            return Ok(());
        }
        let added = desired.iter().any(|d| !current_sorted.contains(d));
        if added {
            // PostgreSQL first, /sync after the new standbys caught up.
            alter_system(&mut c, "synchronous_standby_names", &ssn_for(&desired)).await?;
            let lsn: Lsn = sqlx::query_scalar("SELECT pg_current_wal_lsn()")
                .fetch_one(&mut c)
                .await
                .map_err(query_err("pg_current_wal_lsn"))?;
            self.pending_sync = Some(PendingSync {
                standbys: desired,
                since_lsn: lsn,
            });
        } else if desired.is_empty() && self.cfg.failover.sync_strict {
            // Strict: keep waiting for the old standbys; /sync keeps naming them.
        } else {
            // Only removals: /sync first, PostgreSQL after.
            self.dcs
                .put_sync(&SyncState {
                    leader: self.node.name.clone(),
                    standbys: desired.clone(),
                })
                .await?;
            alter_system(&mut c, "synchronous_standby_names", &ssn_for(&desired)).await?;
        }
        Ok(())
    }

    /// Planned switchover / manual failover away from this leader.
    async fn hand_over(&mut self, req: &SwitchoverRequest, view: &ClusterView) {
        if req.to == self.node.name {
            let _ = self.dcs.clear_switchover().await;
            return;
        }
        if req.at_ms.is_some_and(|at| now_ms() < at) {
            return;
        }
        let target_ok = view
            .members
            .get(&req.to)
            .is_some_and(|m| m.pg_state == PgState::Running && m.role == MemberRole::Replica);
        let Some(target) = self.cfg.node(&req.to).cloned().filter(|_| target_ok) else {
            tracing::warn!(to = %req.to, "switchover target is not a running replica; request dropped");
            let _ = self.dcs.clear_switchover().await;
            return;
        };
        let t = Instant::now();
        tracing::info!(to = %target.name, kind = ?req.kind, "handing over leadership");
        // A clean shutdown writes a final checkpoint and streams it to the standbys.
        self.conn = None;
        if let Err(e) = self.pg.stop(StopMode::Fast).await {
            tracing::warn!("fast stop for switchover failed ({e}); stopping immediately");
            let _ = self.pg.stop(StopMode::Immediate).await;
        }
        if let Ok(cd) = control_data(self.local()).await {
            let wait = if req.kind == RequestKind::Switchover {
                10
            } else {
                2
            };
            if let Err(e) = self
                .wait_received(&target, cd.checkpoint_lsn, Duration::from_secs(wait))
                .await
            {
                tracing::warn!("target did not confirm the final WAL: {e}");
            }
        }
        self.is_leader = false;
        self.slots_ready = false;
        if let Err(e) = self.dcs.release_leader().await {
            tracing::error!("release leader for switchover: {e}");
        }
        tracing::info!(
            elapsed_ms = t.elapsed().as_millis() as u64,
            "leadership released to {}",
            target.name
        );
    }

    async fn wait_received(&self, target: &NodeConfig, lsn: Lsn, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let params = connect_params(&self.cfg, target)?;
        let mut c = params.connect().await?;
        loop {
            let got: Option<Lsn> = sqlx::query_scalar("SELECT pg_last_wal_receive_lsn()")
                .fetch_one(&mut c)
                .await
                .map_err(query_err("pg_last_wal_receive_lsn"))?;
            if got.is_some_and(|g| g >= lsn) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(FailoverError::refused(
                    "switchover",
                    format!("{} did not receive {lsn}", target.name),
                ));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    // ---- follower ----

    async fn follow(&mut self, obs: &Observation, view: &ClusterView, leader: &LeaderInfo) {
        if self.is_leader {
            self.is_leader = false;
            self.fence("another node holds the leader key").await;
            return;
        }
        if self.cfg.node(&leader.name).is_none() {
            tracing::warn!(leader = %leader.name, "leader is not in our config");
            return;
        }
        let me = self.node.name.clone();
        let Some(up) = self.choose_upstream(obs, view, &leader.name) else {
            return;
        };
        if self
            .cfg
            .nodes
            .iter()
            .any(|n| n.replicate_from.as_deref() == Some(me.as_str()))
            && obs.pg_state == PgState::Running
            && obs.reachable
        {
            // Judge our own streaming from this loop's observation, not last loop's publication.
            let mut fresh = view.clone();
            fresh.members.insert(me.clone(), self.member_state(obs));
            if let Err(e) = self.manage_slots(&fresh, &leader.name, false).await {
                tracing::debug!("slots for cascading replicas: {e}");
            }
        }
        match (obs.pg_state, obs.role) {
            (PgState::Running, MemberRole::Primary) if obs.reachable => {
                self.fence(&format!(
                    "{} holds the leader key but our PostgreSQL is a primary",
                    up.name
                ))
                .await;
            }
            (PgState::Running, _) if !obs.reachable => {
                // Starting up, in crash recovery, or a dying postmaster: look again next loop.
            }
            (PgState::Running, _) => {
                if let Err(e) = self.point_at(&up).await {
                    tracing::warn!("re-point at {}: {e}", up.name);
                }
                if obs.streaming {
                    self.not_streaming_since = None;
                } else {
                    let since = *self.not_streaming_since.get_or_insert_with(Instant::now);
                    self.retry_slot_on(&up, since).await;
                    let leader_tl = view.members.get(&up.name).and_then(|m| m.timeline);
                    if since.elapsed() > Duration::from_secs(5) && leader_tl > obs.timeline {
                        tracing::warn!(
                            "not streaming from {} for 5s on an older timeline: rewinding",
                            up.name
                        );
                        self.needs_rewind = true;
                        self.conn = None;
                        let _ = self.pg.stop(StopMode::Fast).await;
                    }
                }
            }
            (PgState::Stopped, _) => {
                // pg_rewind takes the leader as source (a first copy comes from the chosen
                // upstream); a cascading node re-points at its own upstream once it runs.
                let up = if obs.role == MemberRole::Primary || self.needs_rewind {
                    self.cfg.node(&leader.name).cloned().unwrap_or(up)
                } else {
                    up
                };
                if let Err(e) = self.start_as_replica(obs, &up).await {
                    tracing::warn!(node = %self.node.name, "start as replica of {}: {e}", up.name);
                }
            }
        }
        self.detect_dead_leader(view, leader).await;
    }

    /// Our upstream: [`cascade::upstream_for`] with two guards of our own. We return to our
    /// `replicate_from` node only once it looked usable for a few seconds (no flapping on a
    /// blip in its published state), and we follow the leader for a while when we could not
    /// stream from that node for two TTLs although it looked usable (its pg_hba, the network,
    /// its max_wal_senders).
    fn choose_upstream(
        &mut self,
        obs: &Observation,
        view: &ClusterView,
        leader: &str,
    ) -> Option<NodeConfig> {
        const SETTLE: Duration = Duration::from_secs(3);
        const BACKOFF: Duration = Duration::from_secs(60);
        let me = self.node.name.clone();
        let pick = cascade::upstream_for(&self.cfg, view, &me, leader)?.clone();
        let to_leader = self.cfg.node(leader).cloned();
        if pick.name == leader {
            self.cascade_usable_since = None;
            return Some(pick);
        }
        let now = Instant::now();
        let usable_since = *self.cascade_usable_since.get_or_insert(now);
        if self.cascade_backoff_until.is_some_and(|t| now < t) {
            return to_leader;
        }
        let on_pick = self.current_upstream.as_deref() == Some(pick.name.as_str());
        if !on_pick && self.current_upstream.is_some() && usable_since.elapsed() < SETTLE {
            return to_leader;
        }
        let stuck = self
            .not_streaming_since
            .is_some_and(|t| t.elapsed() > self.cfg.failover.ttl * 2);
        if on_pick && !obs.streaming && stuck {
            tracing::warn!(
                node = %me,
                upstream = %pick.name,
                "cannot stream from our replicate_from node although it streams: following the leader for {BACKOFF:?}"
            );
            self.cascade_backoff_until = Some(now + BACKOFF);
            return to_leader;
        }
        Some(pick)
    }

    /// Not streaming: our slot on the upstream may be gone (dropped while we were elsewhere):
    /// make it again (idempotent), every 2 s at most.
    async fn retry_slot_on(&mut self, up: &NodeConfig, not_streaming_since: Instant) {
        if !self.cfg.replication.slots
            || not_streaming_since.elapsed() < Duration::from_secs(2)
            || self
                .slot_retry_at
                .is_some_and(|t| t.elapsed() < Duration::from_secs(2))
        {
            return;
        }
        self.slot_retry_at = Some(Instant::now());
        let made = async {
            let mut params = connect_params(&self.cfg, up)?;
            params.connect_timeout = Duration::from_secs(1);
            let mut c = params.connect().await?;
            create_slot(&mut c, &up.name, &self.node.name).await?;
            Ok::<_, FailoverError>(())
        }
        .await;
        if let Err(e) = made {
            tracing::debug!(upstream = %up.name, "re-make our slot: {e}");
        }
    }

    /// Rewrites pgha-node.conf to stream from `up` and reloads, when it points elsewhere. The
    /// slot on the new upstream is made first, so the WAL receiver finds it at once.
    async fn point_at(&mut self, up: &NodeConfig) -> Result<()> {
        let role = NodeRole::Replica { upstream: up };
        if !self.points_elsewhere(role) {
            self.current_upstream = Some(up.name.clone());
            return Ok(());
        }
        self.not_streaming_since = None;
        if self.cfg.replication.slots {
            let made = async {
                let mut c = connect_params(&self.cfg, up)?.connect().await?;
                create_slot(&mut c, &up.name, &self.node.name).await?;
                Ok::<_, FailoverError>(())
            }
            .await;
            if let Err(e) = made {
                tracing::warn!(upstream = %up.name, "create our slot on the new upstream: {e}");
            }
        }
        self.point_at_role(role, &up.name).await?;
        self.current_upstream = Some(up.name.clone());
        Ok(())
    }

    fn points_elsewhere(&self, role: NodeRole<'_>) -> bool {
        let want = render_node_conf_for(&self.cfg, &self.node, role);
        let path = self.local().data_dir().join(NODE_CONF);
        std::fs::read_to_string(&path).ok().as_deref() != Some(want.as_str())
    }

    /// Installs the settings of `role` and reloads, when pgha-node.conf differs.
    async fn point_at_role(&mut self, role: NodeRole<'_>, upstream: &str) -> Result<()> {
        if !self.points_elsewhere(role) {
            return Ok(());
        }
        install_settings(&self.cfg, &self.node, role, self.local())?;
        self.pg.reload().await?;
        tracing::info!(node = %self.node.name, upstream = %upstream, "following new upstream");
        Ok(())
    }

    async fn start_as_replica(&mut self, obs: &Observation, up: &NodeConfig) -> Result<()> {
        if obs.role == MemberRole::Uninitialized {
            let upstream_params = connect_params(&self.cfg, up)?;
            tracing::info!(node = %self.node.name, "no data directory: cloning from {}", up.name);
            bootstrap_replica(&self.cfg, &self.node, up, self.local(), &upstream_params).await?;
        } else if obs.role == MemberRole::Primary || self.needs_rewind {
            self.rewind_from(up).await?;
        }
        install_settings(
            &self.cfg,
            &self.node,
            NodeRole::Replica { upstream: up },
            self.local(),
        )?;
        if let Err(e) = self.pg.start().await {
            self.failed_starts += 1;
            if self.failed_starts >= 3 {
                // pg_rewind could not make this data dir follow the leader's history (seen after
                // repeated failovers across forked timelines): keep it aside and clone afresh.
                self.failed_starts = 0;
                return self.reclone_from(up).await;
            }
            return Err(e.into());
        }
        self.failed_starts = 0;
        self.needs_rewind = false;
        self.not_streaming_since = None;
        self.current_upstream = Some(up.name.clone());
        tracing::info!(node = %self.node.name, upstream = %up.name, "started as replica");
        Ok(())
    }

    /// Moves the data dir aside (`<data>.diverged-<unix time>`) and clones it from `up`.
    async fn reclone_from(&mut self, up: &NodeConfig) -> Result<()> {
        let data = self.local().data_dir().to_owned();
        let aside = data.with_extension(format!("diverged-{}", now_ms() / 1000));
        tracing::warn!(
            node = %self.node.name,
            "cannot start after rewind; keeping {} and cloning from {}",
            aside.display(),
            up.name
        );
        std::fs::rename(&data, &aside).map_err(|source| pgha_postgres::PgError::Io {
            action: "move aside",
            path: data.clone(),
            source,
        })?;
        let upstream_params = connect_params(&self.cfg, up)?;
        bootstrap_replica(&self.cfg, &self.node, up, self.local(), &upstream_params).await?;
        self.pg.start().await?;
        self.needs_rewind = false;
        tracing::info!(node = %self.node.name, upstream = %up.name, "re-cloned and started as replica");
        Ok(())
    }

    /// pg_rewind from `up` (it also finishes crash recovery first when needed, and says
    /// "no rewind required" when the timelines did not diverge).
    async fn rewind_from(&mut self, up: &NodeConfig) -> Result<()> {
        let t = Instant::now();
        let passfile = self.write_superuser_passfile()?;
        let source = format!(
            "host={} port={} user={} dbname={} passfile={}",
            up.host,
            up.port,
            self.cfg.postgres.superuser,
            self.cfg.postgres.database,
            passfile.display()
        );
        let mut cmd = self.local().command("pg_rewind");
        cmd.arg("-D")
            .arg(self.local().data_dir())
            .arg(format!("--source-server={source}"));
        let out = cmd
            .output()
            .await
            .map_err(|source| pgha_postgres::PgError::Spawn {
                program: "pg_rewind".into(),
                source,
            })?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.status.success() {
            return Err(pgha_postgres::PgError::CommandFailed {
                program: "pg_rewind".into(),
                action: format!("from {}", up.name),
                status: out.status.to_string(),
                stderr: text.trim().to_owned(),
            }
            .into());
        }
        tracing::info!(node = %self.node.name, source = %up.name, elapsed_ms = t.elapsed().as_millis() as u64, "pg_rewind: {}", text.lines().last().unwrap_or(""));
        Ok(())
    }

    fn write_superuser_passfile(&self) -> Result<std::path::PathBuf> {
        let pw: Option<Secret> = self
            .cfg
            .postgres
            .superuser_password
            .as_ref()
            .map(|s| s.read())
            .transpose()?;
        let path = self
            .node
            .run_dir()
            .join(format!("{}.su.pgpass", self.node.name));
        let line = format!(
            "*:*:*:{}:{}\n",
            pgpass_field(&self.cfg.postgres.superuser),
            pgpass_field(pw.as_ref().map(|p| p.expose()).unwrap_or(""))
        );
        files::write_atomic(&path, line.as_bytes(), 0o600, self.local().run_as())?;
        Ok(path)
    }

    /// The leader's PostgreSQL and agent ports both refuse connections twice in a row: its
    /// processes are gone while its host answers. Revoke its lease instead of waiting the TTL.
    async fn detect_dead_leader(&mut self, view: &ClusterView, leader: &LeaderInfo) {
        if !self.cfg.failover.fast_dead_detection {
            return;
        }
        let Some(m) = view.members.get(&leader.name) else {
            // Its member key shares the leader's lease; a missing one means the agent never
            // published (starting up): no judgement.
            self.dead_hits = 0;
            return;
        };
        let (Some(api), pg) = (m.api_address.clone(), m.pg_address.clone()) else {
            return;
        };
        let refused = |addr: String| async move {
            matches!(
                tokio::time::timeout(Duration::from_millis(300), tokio::net::TcpStream::connect(addr)).await,
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused
            )
        };
        if refused(pg).await && refused(api).await {
            self.dead_hits += 1;
        } else {
            self.dead_hits = 0;
        }
        if self.dead_hits >= 2 {
            self.dead_hits = 0;
            match self.dcs.revoke_leader(leader).await {
                Ok(true) => {
                    tracing::warn!(leader = %leader.name, "leader's PostgreSQL and agent refuse connections: revoked its lease")
                }
                Ok(false) => {}
                Err(e) => tracing::warn!("revoke dead leader: {e}"),
            }
        }
    }

    // ---- no leader ----

    async fn elect(&mut self, obs: &Observation, view: &ClusterView) {
        if self.started.elapsed() < self.cfg.failover.loop_wait * 2 {
            return; // let every member publish once before anyone decides
        }
        if self
            .shared
            .quarantine_until
            .lock()
            .ok()
            .and_then(|q| *q)
            .is_some_and(|until| Instant::now() < until)
        {
            return;
        }
        let fresh_request = view.switchover.as_ref().filter(|r| {
            now_ms().saturating_sub(r.at_ms.unwrap_or(r.requested_ms).max(r.requested_ms)) < 60_000
        });
        let rules = Rules {
            mode: self.cfg.replication.mode,
            max_lag_bytes: self.cfg.failover.maximum_lag_on_failover.bytes(),
            status: view.status.as_ref(),
            sync: view.sync.as_ref(),
            request: fresh_request,
            standby_cluster: self.standby_source(view).is_some(),
        };
        let mut members = view.members.clone();
        members.insert(self.node.name.clone(), self.member_state(obs));
        // Published positions can be a loop old; the last WAL the dead primary sent may have
        // reached one replica after it published. Rank on positions read live from each replica.
        self.refresh_positions(&mut members).await;
        let standby = self.standby_source(view);
        let best = election::best(members.values(), &rules).map(|b| b.name.clone());
        let first_copy = standby.is_some()
            && best.is_none()
            && members
                .values()
                .all(|m| m.role == MemberRole::Uninitialized)
            // The lowest-named member that published and may lead makes the first copy (a
            // node that is down does not hold the site back).
            && members
                .values()
                .filter(|m| !m.nofailover)
                .map(|m| m.name.as_str())
                .min()
                == Some(self.node.name.as_str());
        if best.as_deref() != Some(self.node.name.as_str()) && !first_copy {
            return;
        }
        if self.stopping.is_cancelled() {
            return; // a stopping agent would release the lease again at once
        }
        match self.dcs.try_acquire_leader().await {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                tracing::warn!("acquire leader: {e}");
                return;
            }
        }
        self.is_leader = true;
        tracing::info!(node = %self.node.name, lsn = ?obs.lsn, timeline = ?obs.timeline, "acquired the leader lease");
        if let Some(source) = standby {
            if let Err(e) = self.become_standby_leader(obs, &source).await {
                self.release(&format!("could not start as the standby leader: {e}"))
                    .await;
            }
            return;
        }
        match (obs.pg_state, obs.role) {
            (PgState::Running, MemberRole::Replica) => self.promote(view).await,
            (PgState::Running, _) => {}
            (PgState::Stopped, MemberRole::Primary) => {
                let r = install_settings(&self.cfg, &self.node, NodeRole::Primary, self.local())
                    .map_err(FailoverError::from);
                let r = match r {
                    Ok(()) => self.pg.start().await.map_err(FailoverError::from),
                    Err(e) => Err(e),
                };
                if let Err(e) = r {
                    self.release(&format!("could not start as primary: {e}"))
                        .await;
                }
            }
            (PgState::Stopped, _) => {
                if let Err(e) = self.pg.start().await {
                    self.release(&format!("could not start: {e}")).await;
                }
            }
        }
    }

    /// Just took the lease of a standby cluster: stream from the primary site (a first copy of it
    /// when this site has no data yet). A primary's data dir is refused: it could not follow.
    async fn become_standby_leader(
        &mut self,
        obs: &Observation,
        source: &StandbyClusterSection,
    ) -> Result<()> {
        let role = NodeRole::StandbyLeader { source };
        match (obs.pg_state, obs.role) {
            (PgState::Running, MemberRole::Replica) => {
                self.point_at_role(role, "the primary site").await
            }
            (_, MemberRole::Primary) => Err(FailoverError::refused(
                "standby leader",
                "our data dir is a primary's; move it aside so the standby leader copies the primary site afresh",
            )),
            (PgState::Stopped, MemberRole::Uninitialized) => {
                tracing::info!(node = %self.node.name, hosts = ?source.primary_hosts, "standby cluster without data: copying the primary site");
                bootstrap_standby_leader(&self.cfg, &self.node, source, self.local()).await?;
                self.pg.start().await?;
                Ok(())
            }
            (PgState::Stopped, _) => {
                install_settings(&self.cfg, &self.node, role, self.local())?;
                self.pg.start().await?;
                Ok(())
            }
            (PgState::Running, MemberRole::Uninitialized) => Ok(()),
        }
    }

    /// Reads each running replica's received WAL position directly from its PostgreSQL.
    async fn refresh_positions(
        &self,
        members: &mut std::collections::BTreeMap<String, MemberState>,
    ) {
        for m in members.values_mut() {
            if m.pg_state != PgState::Running || m.role != MemberRole::Replica {
                continue;
            }
            let Some(node) = self.cfg.node(&m.name) else {
                continue;
            };
            let Ok(mut params) = connect_params(&self.cfg, node) else {
                continue;
            };
            params.connect_timeout = Duration::from_millis(300);
            let Ok(mut c) = params.connect().await else {
                continue;
            };
            let live: Result<(bool, Option<Lsn>), _> = sqlx::query_as(
                "SELECT pg_is_in_recovery(), coalesce(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())",
            )
            .fetch_one(&mut c)
            .await;
            if let Ok((true, Some(lsn))) = live {
                m.lsn = Some(m.lsn.map_or(lsn, |old| old.max(lsn)));
            }
        }
    }

    // ---- DCS unreachable ----

    async fn without_dcs(&mut self, obs: Observation) {
        self.publish_snapshot(&obs, None, false);
        if !self.is_leader {
            return; // no DCS, no promotion
        }
        if self.standby_leader && obs.in_recovery() {
            // A standby leader takes no writes: nothing to fence. It keeps streaming from the
            // other site and competes for the lease again when the DCS is back.
            self.is_leader = false;
            return;
        }
        let f = &self.cfg.failover;
        let timeout = self
            .cfg
            .dcs
            .as_ref()
            .map(|d| d.request_timeout)
            .unwrap_or(Duration::from_secs(1));
        let fence_after = f
            .ttl
            .saturating_sub(f.loop_wait + timeout + Duration::from_millis(500))
            .max(f.loop_wait);
        let since = self
            .last_renew_ok
            .map(|t| t.elapsed())
            .unwrap_or(Duration::MAX);
        if since < fence_after {
            return;
        }
        if f.failsafe && obs.pg_state == PgState::Running {
            if let Err(why) = self.failsafe_confirmed().await {
                self.is_leader = false;
                self.fence(&format!(
                    "DCS unreachable for {since:?} and failsafe not confirmed: {why}"
                ))
                .await;
            }
        } else {
            self.is_leader = false;
            self.fence(&format!(
                "DCS unreachable for {since:?}; the lease may expire"
            ))
            .await;
        }
    }

    /// Every other node's agent confirms it cannot reach the DCS either (so none can promote).
    async fn failsafe_confirmed(&self) -> std::result::Result<(), String> {
        let token = self
            .cfg
            .failover
            .api_token
            .as_ref()
            .map(|s| s.read())
            .transpose()
            .map_err(|e| e.to_string())?;
        let api = pgha_tls::AgentApiClient::new(&self.cfg, Duration::from_millis(500))
            .map_err(|e| e.to_string())?;
        for n in self.cfg.nodes.iter().filter(|n| n.name != self.node.name) {
            let Some(addr) = n.agent_address else {
                return Err(format!("{} has no agent_address", n.name));
            };
            let mut req = api
                .client
                .post(api.url(addr, "/failsafe"))
                .json(&serde_json::json!({ "leader": self.node.name }));
            if let Some(t) = &token {
                req = req.bearer_auth(t.expose());
            }
            match req.send().await {
                Ok(r) if r.status().is_success() => {}
                Ok(r) => return Err(format!("{} answered {}", n.name, r.status())),
                Err(e) => return Err(format!("{} unreachable: {e}", n.name)),
            }
        }
        Ok(())
    }
}

async fn alter_system(c: &mut PgConnection, name: &'static str, value: &str) -> Result<()> {
    sqlx::query(&format!(
        "ALTER SYSTEM SET {name} = {}",
        quote_literal(value)
    ))
    .execute(&mut *c)
    .await
    .map_err(query_err("ALTER SYSTEM"))?;
    sqlx::query("SELECT pg_reload_conf()")
        .execute(&mut *c)
        .await
        .map_err(query_err("pg_reload_conf"))?;
    Ok(())
}

fn query_err(what: &'static str) -> impl FnOnce(sqlx::Error) -> FailoverError {
    move |source| {
        FailoverError::Postgres(pgha_postgres::PgError::Query {
            target: what.into(),
            source,
        })
    }
}
