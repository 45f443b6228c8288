//! The executor: runs a decision's actions against the DCS, the local PostgreSQL, the peers
//! and the supervisor. Every error it consumes is logged here, once; results reach the next
//! tick as [`Outcome`]s. Long work runs as one background job at a time.

use std::sync::Arc;
use std::time::Duration;

use pgha_postgres::StopMode;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::action::{Action, Job};
use crate::dcs::Dcs;
use crate::decide::{Ctx, Decision};
use crate::inputs::Outcome;
use crate::ports::{Peers, PgNode, Target, WallClock, Watchdog};
use crate::shared::Shared;

/// The effects of one agent.
#[derive(Debug, Clone)]
pub struct Effects {
    pub dcs: Arc<dyn Dcs>,
    pub pg: Arc<dyn PgNode>,
    pub peers: Arc<dyn Peers>,
    pub watchdog: Arc<dyn Watchdog>,
    pub clock: Arc<dyn WallClock>,
}

/// The error of a job the executor never started (an earlier step of its tick failed): the
/// decision that asked for it learns that nothing of it happened.
pub const NOT_STARTED: &str = "not started: an earlier step of the tick failed";

#[derive(Debug)]
pub struct Executor {
    ctx: Ctx,
    fx: Effects,
    shared: Arc<Shared>,
    done_tx: mpsc::UnboundedSender<Outcome>,
    running: Option<JoinHandle<()>>,
}

impl Executor {
    /// The executor and the channel on which finished jobs report.
    pub fn new(
        ctx: Ctx,
        fx: Effects,
        shared: Arc<Shared>,
    ) -> (Self, mpsc::UnboundedReceiver<Outcome>) {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        (
            Executor {
                ctx,
                fx,
                shared,
                done_tx,
                running: None,
            },
            done_rx,
        )
    }

    pub fn effects(&self) -> &Effects {
        &self.fx
    }

    /// Actions and jobs from now on run with `ctx` (the settings changed between ticks).
    pub fn set_ctx(&mut self, ctx: Ctx) {
        self.ctx = ctx;
    }

    /// Runs `d.actions` in order. A failed fence or /sync write skips the rest of the tick
    /// but the watchdog and the member key: nothing may follow a step it depended on.
    pub async fn act(&mut self, d: &Decision) -> Vec<Outcome> {
        let node = self.ctx.name().to_string();
        let mut out = Vec::new();
        let mut blocked = false;
        // Leader-only keys are written on the condition that the key is still ours.
        let lease = d.next.session.map(|s| s.lease);
        for a in &d.actions {
            if blocked && !matches!(a, Action::Watchdog { .. } | Action::PublishMember { .. }) {
                tracing::warn!(node = %node, "skipped after a failed step: {a:?}");
                if let Action::Spawn { id, job } = a {
                    // The decision counted on this job: it ends here, not started.
                    out.push(Outcome::JobDone {
                        id: *id,
                        job: job.clone(),
                        error: Some(NOT_STARTED.into()),
                    });
                }
                continue;
            }
            match self.run(a, lease, &mut out).await {
                Ok(()) => {}
                Err(e) => {
                    tracing::warn!(node = %node, action = action_name(a), "{e}");
                    if matches!(
                        a,
                        Action::Fence { .. } | Action::PutSync { .. } | Action::DeleteSync { .. }
                    ) {
                        blocked = true;
                    }
                }
            }
        }
        out
    }

    /// `Action::RotateSession`. The leader key's move is a compare-and-swap. Only a definite
    /// "not moved" lets the new lease go: a request that failed may still commit after any
    /// read, so then the new lease is left to expire, and we go on with it only when the key
    /// is seen on it (a late move is taken up by a later tick's view; until then the
    /// supervisor's deadline is not extended, as the key with our name is on a lease we do
    /// not renew). The old lease is revoked only once our member key is on the new one.
    async fn rotate(
        &self,
        old: crate::dcs::LeaseId,
        ttl: std::time::Duration,
        leader_revision: Option<i64>,
        member: &crate::dcs::MemberState,
        out: &mut Vec<Outcome>,
    ) -> crate::Result<()> {
        let fx = &self.fx;
        let node = self.ctx.name();
        let sent = Instant::now();
        let new = fx.dcs.grant_session(ttl).await?;
        let refused =
            |why: String| crate::CoreError::refused("move to a lease of the new TTL", why);
        if let Some(revision) = leader_revision {
            match fx.dcs.take_over_leader(new, revision).await {
                Ok(true) => {}
                Ok(false) => {
                    if let Err(e) = fx.dcs.end_session(new).await {
                        tracing::warn!(node = %node, "revoke the unused lease {new} (it expires by itself): {e}");
                    }
                    return Err(refused(
                        "the leader key did not move (it changed since this tick's view)".into(),
                    ));
                }
                Err(e) => {
                    tracing::warn!(node = %node, "move the leader key to the new lease: {e}; looking where it is");
                    match fx.dcs.view().await {
                        Ok(v) if v.leader.as_ref().is_some_and(|l| l.lease == new) => {}
                        Ok(_) => {
                            return Err(refused(format!(
                                "the leader key's move failed ({e}) and it is not on the new lease yet; lease {new} is left to expire"
                            )))
                        }
                        Err(e2) => {
                            return Err(refused(format!(
                                "the leader key's move failed ({e}) and it could not be read ({e2}); lease {new} is left to expire"
                            )))
                        }
                    }
                }
            }
        }
        let published = match fx.dcs.publish_member(new, member).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(node = %node, "publish our member key on the new lease (next tick does; the old lease keeps it until then): {e}");
                false
            }
        };
        out.push(Outcome::SessionGranted {
            lease: new,
            sent,
            ttl,
        });
        if published {
            if let Err(e) = fx.dcs.end_session(old).await {
                tracing::warn!(node = %node, "revoke the old lease {old} (it expires by itself): {e}");
            }
        }
        tracing::info!(node = %node, lease = new, leader = leader_revision.is_some(), "moved to a lease of the new TTL ({ttl:?})");
        Ok(())
    }

    async fn run(
        &mut self,
        a: &Action,
        lease: Option<crate::dcs::LeaseId>,
        out: &mut Vec<Outcome>,
    ) -> crate::Result<()> {
        let fx = &self.fx;
        match a {
            Action::GrantSession { ttl } => {
                let sent = Instant::now();
                let lease = fx.dcs.grant_session(*ttl).await?;
                out.push(Outcome::SessionGranted {
                    lease,
                    sent,
                    ttl: *ttl,
                });
            }
            Action::RotateSession {
                old,
                ttl,
                leader_revision,
                member,
            } => {
                self.rotate(*old, *ttl, *leader_revision, member, out)
                    .await?
            }
            Action::PublishMember { lease, member } => {
                fx.dcs.publish_member(*lease, member).await?
            }
            Action::AcquireLeader { lease } => {
                if self.shared.promised(Instant::now()) {
                    out.push(Outcome::LeaderTaken { ok: false });
                    return Err(crate::CoreError::refused(
                        "take the leader key",
                        "we just confirmed failsafe to the old leader",
                    ));
                }
                let ok = fx.dcs.try_acquire_leader(*lease).await?;
                if ok {
                    tracing::info!(node = %self.ctx.name(), "acquired the leader lease");
                }
                out.push(Outcome::LeaderTaken { ok });
            }
            Action::TakeOverLeader { lease, revision } => {
                if self.shared.promised(Instant::now()) {
                    out.push(Outcome::LeaderTaken { ok: false });
                    return Ok(());
                }
                let ok = fx.dcs.take_over_leader(*lease, *revision).await?;
                out.push(Outcome::LeaderTaken { ok });
            }
            Action::ReleaseLeader { lease } => match fx.dcs.release_leader(*lease).await {
                Ok(_) => {
                    tracing::info!(node = %self.ctx.name(), "released the leader lease");
                    out.push(Outcome::LeaderReleased);
                }
                Err(e) => {
                    // It may still be applied: never lead on this lease again.
                    tracing::warn!(node = %self.ctx.name(), "release the leader key: {e}; giving up session {lease}");
                    if let Err(e) = fx.dcs.end_session(*lease).await {
                        tracing::warn!(node = %self.ctx.name(), "revoke session {lease} (it expires by itself): {e}");
                    }
                    out.push(Outcome::SessionAbandoned { lease: *lease });
                    return Err(e);
                }
            },
            Action::RevokeLeader(l) => {
                if fx.dcs.revoke_leader(l).await? {
                    tracing::warn!(node = %self.ctx.name(), leader = %l.name, "revoked the dead leader's lease");
                }
            }
            Action::PutStatus(s) => {
                if let Some(lease) = lease {
                    fx.dcs.put_status(lease, s).await?;
                }
            }
            Action::PutSync { sync: s, revision } => {
                let Some(lease) = lease else {
                    return Err(crate::CoreError::refused("write /sync", "no session"));
                };
                let written = fx.dcs.put_sync(lease, s, *revision).await;
                sync_written("write /sync", written, *revision, out)?;
                tracing::info!(node = %self.ctx.name(), standbys = ?s.standbys, quorum = ?s.quorum, "synchronous standbys recorded");
                out.push(Outcome::SyncWritten {
                    standbys: s.standbys.clone(),
                });
            }
            Action::DeleteSync { revision } => {
                let Some(lease) = lease else {
                    return Err(crate::CoreError::refused("delete /sync", "no session"));
                };
                let deleted = fx.dcs.delete_sync(lease, *revision).await;
                sync_written("delete /sync", deleted, *revision, out)?;
                tracing::info!(node = %self.ctx.name(), "async mode: /sync deleted, every replica may be promoted");
            }
            Action::ClearSwitchover => fx.dcs.clear_switchover().await?,
            Action::Fence { why } => {
                tracing::warn!(node = %self.ctx.name(), "fencing: {why}; stopping PostgreSQL at once");
                self.shared.count_fencing();
                let r = fx.pg.fence().await;
                out.push(Outcome::Fenced { ok: r.is_ok() });
                r?;
            }
            Action::AbortJob => {
                if let Some(h) = self.running.take() {
                    h.abort();
                }
            }
            Action::Spawn { id, job } => self.spawn(*id, job.clone()),
            Action::PointAt { upstream } => {
                if self.ctx.cfg.replication.slots && !self.ctx.me.nostream {
                    // The WAL receiver finds its slot at once on the new upstream.
                    if let Err(e) = fx.peers.create_slot_on(upstream, self.ctx.name()).await {
                        tracing::warn!(node = %self.ctx.name(), upstream = %upstream, "create our slot on the upstream: {e}");
                    }
                }
                let target = Target::Replica {
                    upstream: upstream.clone(),
                };
                if fx.pg.point_at(&target).await? {
                    tracing::info!(node = %self.ctx.name(), upstream = %upstream, "following new upstream");
                }
                out.push(Outcome::PointedAt {
                    upstream: upstream.clone(),
                });
            }
            Action::PointAtPrimarySite => {
                if fx.pg.point_at(&Target::StandbyLeader).await? {
                    tracing::info!(node = %self.ctx.name(), "following the primary site");
                }
            }
            Action::SetSyncNames { value } => {
                let lsn = fx.pg.set_sync_names(value).await?;
                tracing::info!(node = %self.ctx.name(), synchronous_standby_names = %value, "set");
                out.push(Outcome::SyncNamesSet {
                    value: value.clone(),
                    lsn,
                });
            }
            Action::CreateSlot { name } => {
                fx.pg.create_slot(name).await?;
                tracing::info!(node = %self.ctx.name(), slot = %name, "replication slot created");
            }
            Action::DropSlot { name } => {
                fx.pg.drop_slot(name).await?;
                tracing::info!(node = %self.ctx.name(), slot = %name, "dropped a replication slot not needed here (its node streams from elsewhere, or a permanent slot's copy this node may not hold or PostgreSQL invalidated)");
            }
            Action::CreateLogicalSlot {
                name,
                database,
                plugin,
            } => {
                fx.pg.create_logical_slot(name, database, plugin).await?;
                tracing::info!(node = %self.ctx.name(), slot = %name, %database, %plugin, "logical replication slot created (replication.logical_slots)");
            }
            Action::AdvanceSlot { name, database, to } => {
                let end = fx.pg.advance_slot(name, database, *to).await?;
                tracing::debug!(node = %self.ctx.name(), slot = %name, %database, to = %to, end = %end, "copy of a permanent slot advanced");
            }
            Action::CreateSlotOn { node, slot } => {
                fx.peers.create_slot_on(node, slot).await?;
                out.push(Outcome::SlotRetried);
            }
            Action::Watchdog { deadline } => fx.watchdog.arm(*deadline)?,
            Action::ApplyConfig { generation } => {
                let r = fx.pg.apply_config(self.ctx.cfg.clone()).await;
                if let Ok(true) = r {
                    tracing::info!(node = %self.ctx.name(), "cluster settings written to pgha.conf and reloaded");
                }
                out.push(Outcome::ConfigApplied {
                    generation: *generation,
                    error: r.as_ref().err().map(|e| e.to_string()),
                });
                r?;
            }
            Action::TryInitialize { lease } => {
                if fx.dcs.try_initialize(*lease).await? {
                    tracing::info!(node = %self.ctx.name(), "took the initialize key: bootstrapping the cluster");
                }
            }
            Action::FinishInitialize => {
                fx.dcs.finish_initialize(None).await?;
                tracing::info!(node = %self.ctx.name(), "cluster bootstrapped");
            }
            Action::SeedSettings { config, revision } => {
                if fx.dcs.put_config(config, *revision).await? {
                    tracing::info!(node = %self.ctx.name(), "cluster settings seeded in the DCS from pgha.toml");
                }
            }
        }
        Ok(())
    }

    fn spawn(&mut self, id: u64, job: Job) {
        let fx = self.fx.clone();
        let ctx = self.ctx.clone();
        let shared = self.shared.clone();
        let tx = self.done_tx.clone();
        tracing::info!(node = %ctx.name(), job = job.name(), "starting");
        self.running = Some(tokio::spawn(async move {
            let t = Instant::now();
            let r = run_job(&ctx, &fx, &job).await;
            let ms = t.elapsed().as_millis() as u64;
            match &r {
                Ok(()) => {
                    if matches!(job, Job::Promote { .. }) {
                        shared.count_promotion();
                    }
                    if matches!(job, Job::RestartPg { .. }) {
                        shared.count_restart();
                    }
                    tracing::info!(node = %ctx.name(), job = job.name(), elapsed_ms = ms, "done");
                }
                Err(e) => {
                    tracing::warn!(node = %ctx.name(), job = job.name(), elapsed_ms = ms, "failed: {e}")
                }
            }
            if tx
                .send(Outcome::JobDone {
                    id,
                    job,
                    error: r.err(),
                })
                .is_err()
            {
                tracing::debug!("agent loop gone before a job finished");
            }
        }));
    }

    /// Stops the background job (the agent is shutting down).
    pub fn abort(&mut self) {
        if let Some(h) = self.running.take() {
            h.abort();
        }
    }
}

/// A job's steps; the error names the step (`start: ...`, `rewind: ...`).
async fn run_job(ctx: &Ctx, fx: &Effects, job: &Job) -> Result<(), String> {
    let step = |s: &'static str| move |e: crate::CoreError| format!("{s}: {e}");
    let pg = &fx.pg;
    match job {
        Job::Promote {
            sync_names,
            timeline_floor,
            checkpoint,
            history,
        } => {
            if let Some(v) = sync_names {
                pg.set_sync_names(v).await.map_err(step("sync"))?;
            }
            let at_least = timeline_floor.unwrap_or(1) + 1;
            let tli = fx
                .dcs
                .allocate_timeline(at_least)
                .await
                .map_err(step("allocate a timeline"))?;
            pg.promote(Some(tli - 1)).await.map_err(step("promote"))?;
            if *checkpoint {
                pg.checkpoint().await.map_err(step("checkpoint"))?;
            }
            let entry = crate::dcs::HistoryEntry {
                timeline: history.timeline,
                new_timeline: tli,
                lsn: history.lsn,
                reason: history.reason.clone(),
                at_ms: fx.clock.now_ms(),
                leader: ctx.name().into(),
            };
            // The promotion stands without its history line: logged, not failed.
            if let Err(e) = fx.dcs.append_history(&entry).await {
                tracing::warn!(node = %ctx.name(), "promotion to timeline {tli} not recorded in the DCS history: {e}");
            }
        }
        Job::StartPrimary => pg.start(&Target::Primary).await.map_err(step("start"))?,
        Job::Restart | Job::StartReadOnly => pg.restart().await.map_err(step("start"))?,
        Job::StartReplica {
            upstream,
            rewind,
            clone,
        } => {
            if *clone {
                pg.clone_replica(upstream, false)
                    .await
                    .map_err(step("clone"))?;
            } else if *rewind {
                pg.rewind(upstream).await.map_err(step("rewind"))?;
            }
            pg.start(&Target::Replica {
                upstream: upstream.clone(),
            })
            .await
            .map_err(step("start"))?;
        }
        Job::Reclone { upstream } => clone_afresh(fx, upstream).await?,
        Job::StartStandbyLeader { clone } => {
            if *clone {
                pg.clone_standby_leader().await.map_err(step("clone"))?;
            }
            pg.start(&Target::StandbyLeader)
                .await
                .map_err(step("start"))?;
        }
        Job::HandOver { to, wait } => {
            // A clean shutdown writes a final checkpoint and streams it to the standbys.
            if let Err(e) = pg.stop(StopMode::Fast).await {
                tracing::warn!(node = %ctx.name(), "fast stop for switchover failed ({e}); stopping immediately");
                pg.fence().await.map_err(step("stop"))?;
            }
            let lsn = pg.checkpoint_lsn().await.map_err(step("pg_controldata"))?;
            wait_received(fx, to, lsn, *wait).await?;
        }
        Job::StopForRewind => pg.stop(StopMode::Fast).await.map_err(step("stop"))?,
        Job::Bootstrap { lease } => {
            pg.bootstrap().await.map_err(step("bootstrap"))?;
            // The commit point, before the data dir counts: the initialize key becomes
            // permanent only while it is still ours (an agent frozen past its lease may find
            // another node bootstrapping by now). Once it is, no other node bootstraps, even
            // if we die before our first tick as leader; the marker says "made", so a
            // restart that finds the key done by us only finishes (Job::FinishBootstrap).
            if !fx
                .dcs
                .finish_initialize(Some(*lease))
                .await
                .map_err(step("bootstrap"))?
            {
                return Err("bootstrap: the initialize key is no longer ours; the data dir stays half-made (removed at the next try)".into());
            }
            tracing::info!(node = %ctx.name(), "bootstrap committed: the initialize key is kept for good");
            pg.finish_bootstrap().await.map_err(step("bootstrap"))?;
        }
        Job::FinishBootstrap => pg.finish_bootstrap().await.map_err(step("bootstrap"))?,
        Job::RestartPg { .. } => {
            stop_for_operator(ctx, fx).await?;
            pg.restart().await.map_err(step("start"))?;
        }
        Job::Reinit { upstream } => {
            stop_for_operator(ctx, fx).await?;
            clone_afresh(fx, upstream).await?;
        }
        Job::Checkpoint => pg.checkpoint().await.map_err(step("checkpoint"))?,
        Job::CopyLogicalSlots { from, names } => {
            let got = pg
                .copy_logical_slots(from, names)
                .await
                .map_err(step("copy logical slots"))?;
            let missing: Vec<&String> = names.iter().filter(|n| !got.contains(n)).collect();
            if got.is_empty() {
                return Err(format!("{from} has none of the logical slots {names:?}"));
            }
            tracing::info!(node = %ctx.name(), from = %from, slots = ?got, "logical slots copied from the primary; restarted to load them");
            if !missing.is_empty() {
                tracing::warn!(node = %ctx.name(), from = %from, slots = ?missing, "the primary does not have these logical slots (yet)");
            }
        }
    }
    Ok(())
}

/// Moves the data dir aside, clones it from `upstream` and starts streaming from it.
async fn clone_afresh(fx: &Effects, upstream: &str) -> Result<(), String> {
    fx.pg
        .clone_replica(upstream, true)
        .await
        .map_err(|e| format!("clone: {e}"))?;
    fx.pg
        .start(&Target::Replica {
            upstream: upstream.to_string(),
        })
        .await
        .map_err(|e| format!("start: {e}"))
}

/// Fast stop for an operator's restart or reinit; immediate when the fast one fails.
async fn stop_for_operator(ctx: &Ctx, fx: &Effects) -> Result<(), String> {
    if let Err(e) = fx.pg.stop(StopMode::Fast).await {
        tracing::warn!(node = %ctx.name(), "fast stop failed ({e}); stopping immediately");
        fx.pg.fence().await.map_err(|e| format!("stop: {e}"))?;
    }
    Ok(())
}

/// Waits until `to` received `lsn` (the final checkpoint of a switchover), at most `wait`.
/// Not confirming is logged, not an error: the switchover goes on (the target may lag a
/// little; pg_rewind reconciles the old primary).
async fn wait_received(
    fx: &Effects,
    to: &str,
    lsn: pgha_postgres::Lsn,
    wait: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + wait;
    loop {
        match fx.peers.received_lsn(to).await {
            Ok(Some(got)) if got >= lsn => return Ok(()),
            Ok(_) => {}
            Err(e) => tracing::debug!(target = %to, "received position: {e}"),
        }
        if Instant::now() > deadline {
            tracing::warn!(target = %to, "did not confirm the final WAL {lsn} within {wait:?}");
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The answer to a conditional `/sync` write: an error leaves its outcome unknown (etcd may
/// still apply it: reported as in doubt, settled by the next tick), false is a refusal.
fn sync_written(
    what: &'static str,
    r: crate::Result<bool>,
    revision: i64,
    out: &mut Vec<Outcome>,
) -> crate::Result<()> {
    if r.is_err() {
        out.push(Outcome::SyncInDoubt { revision });
    }
    if !r? {
        return Err(crate::CoreError::refused(
            what,
            "the leader key is not ours any more, or /sync changed since this tick's view",
        ));
    }
    Ok(())
}

fn action_name(a: &Action) -> &'static str {
    match a {
        Action::GrantSession { .. } => "grant session",
        Action::RotateSession { .. } => "move to a lease of the new TTL",
        Action::PublishMember { .. } => "publish member",
        Action::AcquireLeader { .. } => "acquire leader",
        Action::TakeOverLeader { .. } => "take over leader key",
        Action::ReleaseLeader { .. } => "release leader",
        Action::RevokeLeader(_) => "revoke dead leader",
        Action::PutStatus(_) => "put status",
        Action::PutSync { .. } => "put sync",
        Action::DeleteSync { .. } => "delete sync",
        Action::ClearSwitchover => "clear switchover",
        Action::Fence { .. } => "fence",
        Action::AbortJob => "abort job",
        Action::Spawn { .. } => "spawn job",
        Action::PointAt { .. } => "point at upstream",
        Action::PointAtPrimarySite => "point at the primary site",
        Action::SetSyncNames { .. } => "set synchronous_standby_names",
        Action::CreateSlot { .. } => "create slot",
        Action::DropSlot { .. } => "drop slot",
        Action::CreateLogicalSlot { .. } => "create logical slot",
        Action::AdvanceSlot { .. } => "advance slot",
        Action::CreateSlotOn { .. } => "create our slot on the upstream",
        Action::Watchdog { .. } => "watchdog",
        Action::ApplyConfig { .. } => "apply cluster settings",
        Action::TryInitialize { .. } => "take the initialize key",
        Action::FinishInitialize => "keep the initialize key",
        Action::SeedSettings { .. } => "seed cluster settings",
    }
}
