//! The agent loop: gather → decide → act, every `loop_wait` and at once when a key the
//! decisions depend on changes, an API event arrives, or a background job ends.

use std::sync::Arc;
use std::time::Duration;

use pgha_config::PghaConfig;
use pgha_postgres::StopMode;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::action::Action;
use crate::dcs::{ClusterView, MemberRole, PgState};
use crate::decide::{decide, Ctx, Decision};
use crate::exec::{Effects, Executor};
use crate::inputs::{DcsRead, Event, Inputs, Outcome, Probes, SessionRead};
use crate::memory::Memory;
use crate::shared::{Shared, Snapshot};

/// How often a failsafe question a peer refused is asked again within one round.
const FAILSAFE_RETRY: Duration = Duration::from_millis(100);

/// Asks every other agent (concurrently) whether it cannot reach the DCS either; one that
/// says no (it has not noticed yet) is asked again until `within` has passed. Ok: every one
/// confirmed, with the earliest moment one of the confirmed questions was sent (each promise
/// runs from its answer, which came later).
async fn failsafe_round(
    ctx: &Ctx,
    fx: &Effects,
    within: Duration,
    promise: Duration,
) -> Result<Instant, String> {
    let until = Instant::now() + within;
    let me = ctx.name().to_string();
    let asks: Vec<_> = ctx
        .others()
        .into_iter()
        .map(|n| {
            let peers = fx.peers.clone();
            let me = me.clone();
            tokio::spawn(async move {
                loop {
                    let sent = Instant::now();
                    match peers.ask_failsafe(&n, &me, promise).await {
                        Ok(()) => return Ok(sent),
                        Err(e) if Instant::now() + FAILSAFE_RETRY > until => {
                            return Err(format!("{n}: {e}"))
                        }
                        Err(_) => tokio::time::sleep(FAILSAFE_RETRY).await,
                    }
                }
            })
        })
        .collect();
    let mut earliest: Option<Instant> = None;
    let mut failed = Vec::new();
    for a in asks {
        match a.await {
            Ok(Ok(sent)) => earliest = Some(earliest.map_or(sent, |e| e.min(sent))),
            Ok(Err(e)) => failed.push(e),
            Err(e) => failed.push(format!("question lost: {e}")),
        }
    }
    if !failed.is_empty() {
        tracing::warn!(node = %me, "failsafe not confirmed: {}", failed.join("; "));
        return Err(failed.join("; "));
    }
    // No other node: nobody could take the lease.
    Ok(earliest.unwrap_or(until - within))
}

/// Immediate re-ticks in a row before the loop waits again (no spinning on a step that keeps
/// asking for one).
const MAX_AGAIN: u32 = 5;

/// One node's agent over its effects.
#[derive(Debug)]
pub struct Agent {
    ctx: Ctx,
    exec: Executor,
    shared: Arc<Shared>,
    events: mpsc::UnboundedReceiver<Event>,
    done: mpsc::UnboundedReceiver<Outcome>,
    mem: Memory,
    last_reason: String,
    last_dcs_error: Option<String>,
    /// Called with each tick's inputs and decision (the simulator's trace).
    observer: Option<Observer>,
    /// pgha.toml as loaded at start or at the last reload.
    local: Arc<PghaConfig>,
    /// The DCS settings document adopted (or refused) last; None: none seen yet.
    adopted: Option<serde_json::Value>,
    /// Re-reads pgha.toml on a reload request (none: reloads are refused).
    reloader: Option<Reloader>,
    /// What the last reload refused.
    reload_error: Option<String>,
}

/// Loads and validates pgha.toml again.
pub type ReloadFn = dyn Fn() -> Result<PghaConfig, String> + Send + Sync;

struct Reloader(Box<ReloadFn>);

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reloader")
    }
}

/// What an observer is called with.
type ObserveFn = dyn FnMut(&Inputs, &Decision) + Send + Sync;

/// A callback that sees every tick.
struct Observer(Box<ObserveFn>);

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Observer")
    }
}

impl Agent {
    pub fn new(
        ctx: Ctx,
        fx: Effects,
        shared: Arc<Shared>,
        events: mpsc::UnboundedReceiver<Event>,
    ) -> Self {
        let (exec, done) = Executor::new(ctx.clone(), fx, shared.clone());
        Agent {
            local: ctx.cfg.clone(),
            adopted: None,
            reloader: None,
            reload_error: None,
            ctx,
            exec,
            shared,
            events,
            done,
            mem: Memory::new(Instant::now()),
            last_reason: String::new(),
            last_dcs_error: None,
            observer: None,
        }
    }

    /// Reload requests ([`Shared::request_reload`]) call `f` for pgha.toml afresh.
    pub fn reload_with(
        &mut self,
        f: impl Fn() -> Result<PghaConfig, String> + Send + Sync + 'static,
    ) {
        self.reloader = Some(Reloader(Box::new(f)));
    }

    /// A reload of pgha.toml: tags, `nofailover`, `noloadbalance` and the dynamic keys
    /// apply; a change anything else rests on is refused whole (restart the agent for it).
    fn reload(&mut self) {
        let Some(r) = &self.reloader else {
            self.reload_error = Some("this agent has no config file to reload".into());
            return;
        };
        let node = self.ctx.name().to_string();
        let new = match (r.0)() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(node = %node, "reload refused: {e}");
                self.reload_error = Some(e);
                return;
            }
        };
        let fixed = crate::reload::restart_only_changes(&self.local, &new);
        if !fixed.is_empty() {
            let e = format!(
                "pgha.toml changes [{}], which need a restart of the agent; nothing was reloaded",
                fixed.join("], [")
            );
            tracing::error!(node = %node, "reload refused: {e}");
            self.reload_error = Some(e);
            return;
        }
        tracing::info!(node = %node, "pgha.toml reloaded");
        self.reload_error = None;
        self.local = Arc::new(new);
        let settings = self.adopted.take();
        self.adopt(settings.as_ref(), true);
    }

    /// Runs with pgha.toml and `settings` (the DCS document) over it, when that differs from
    /// what it runs with; an unusable document is refused whole (logged once).
    fn adopt(&mut self, settings: Option<&serde_json::Value>, force: bool) {
        if !force && settings == self.adopted.as_ref() {
            return;
        }
        self.adopted = settings.cloned();
        let node = self.ctx.name().to_string();
        let cfg = match crate::reload::effective(&self.local, settings) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(node = %node, "the cluster settings in the DCS are not usable; keeping the current ones:\n{e}");
                return;
            }
        };
        if *cfg == *self.ctx.cfg {
            return;
        }
        let keys = crate::reload::changed_keys(&self.ctx.cfg, &cfg);
        match self.ctx.next_generation(cfg) {
            Some(ctx) => {
                tracing::info!(node = %node, generation = ctx.generation, changed = ?keys, "running with new settings");
                if ctx.t.dcs_timeout != self.ctx.t.dcs_timeout {
                    self.exec
                        .effects()
                        .dcs
                        .set_request_timeout(ctx.t.dcs_timeout);
                }
                self.ctx = ctx;
                self.exec.set_ctx(self.ctx.clone());
            }
            None => {
                tracing::error!(node = %node, "the new config has no node `{node}`: keeping the current one")
            }
        }
    }

    /// Every tick's inputs and decision go to `f` too.
    pub fn observe_with(&mut self, f: impl FnMut(&Inputs, &Decision) + Send + Sync + 'static) {
        self.observer = Some(Observer(Box::new(f)));
    }

    /// Runs until `cancel`, then stops PostgreSQL and releases the lease.
    pub async fn run(mut self, cancel: CancellationToken) {
        let mut watch: Option<mpsc::Receiver<()>> = None;
        let mut outcomes: Vec<Outcome> = Vec::new();
        let mut again = 0u32;
        // Whether the last read of the DCS answered: a watch is (re)opened only then, so an
        // outage costs no extra request timeout per tick.
        let mut dcs_answered = true;
        loop {
            if watch.is_none() && dcs_answered {
                match self.exec.effects().dcs.watch().await {
                    Ok(w) => watch = Some(w),
                    Err(e) => {
                        tracing::warn!(node = %self.ctx.name(), "DCS watch: {e}; polling every loop_wait")
                    }
                }
            }
            let t = Instant::now();
            if self.shared.take_reload() {
                self.reload();
            }
            let inputs = self.gather(std::mem::take(&mut outcomes), &cancel).await;
            dcs_answered = matches!(inputs.dcs, DcsRead::Ok { .. });
            if let DcsRead::Ok { view, .. } = &inputs.dcs {
                self.adopt(view.config.settings.as_ref(), false);
            }
            let d = decide(&self.ctx, &self.mem, &inputs);
            self.log(&inputs, &d);
            if let Some(f) = self.observer.as_mut() {
                (f.0)(&inputs, &d);
            }
            self.mem = d.next.clone();
            outcomes = self.exec.act(&d).await;
            self.publish(&inputs, &d);
            if cancel.is_cancelled() {
                break;
            }
            if d.again && again < MAX_AGAIN {
                again += 1;
                continue;
            }
            again = 0;
            // The settings may have changed the period this tick; a lease of an older, shorter
            // TTL is renewed often enough for it until the agent moved to a new one.
            let loop_wait = self.ctx.t.loop_period(self.mem.session.map(|s| s.ttl));
            let sleep = d
                .soon
                .map_or(loop_wait, |s| s.min(loop_wait))
                .saturating_sub(t.elapsed())
                .max(Duration::from_millis(10));
            let watched = async {
                match watch.as_mut() {
                    Some(w) => w.recv().await,
                    None => std::future::pending().await,
                }
            };
            let shared = self.shared.clone();
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                got = self.done.recv() => {
                    if let Some(o) = got { outcomes.push(o); }
                }
                _ = shared.wake.notified() => {}
                got = watched => {
                    if got.is_none() { watch = None; }
                    // Debounce: a burst of changes (leader deleted, then taken) costs one tick.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                _ = tokio::time::sleep(sleep) => {}
            }
        }
        self.shutdown(&outcomes).await;
    }

    /// Stops PostgreSQL, then releases the key and revokes the session: ours, and one this
    /// tick moved to that the loop has not taken up yet (`pending`).
    async fn shutdown(&mut self, pending: &[Outcome]) {
        tracing::info!(node = %self.ctx.name(), "agent stopping: stopping PostgreSQL");
        self.exec.abort();
        let fx = self.exec.effects().clone();
        if let Err(e) = fx.pg.stop(StopMode::Fast).await {
            tracing::warn!(node = %self.ctx.name(), "stop PostgreSQL: {e}; stopping it at once");
            if let Err(e) = fx.pg.fence().await {
                tracing::error!(node = %self.ctx.name(), "could not stop PostgreSQL: {e}");
                return; // keep the lease: a PostgreSQL that may take writes must not lose it
            }
        }
        let mut leases: Vec<crate::dcs::LeaseId> =
            self.mem.session.map(|s| s.lease).into_iter().collect();
        for o in pending {
            if let Outcome::SessionGranted { lease, .. } = o {
                leases.push(*lease);
            }
        }
        for lease in leases {
            if self.mem.role.holds_lease() {
                match fx.dcs.release_leader(lease).await {
                    Ok(released) => {
                        tracing::debug!(node = %self.ctx.name(), lease, released, "release leader at shutdown")
                    }
                    Err(e) => {
                        tracing::warn!(node = %self.ctx.name(), "release leader at shutdown: {e}")
                    }
                }
            }
            if let Err(e) = fx.dcs.end_session(lease).await {
                tracing::warn!(node = %self.ctx.name(), "revoke our session at shutdown (it expires by itself): {e}");
            }
        }
    }

    /// One tick's inputs.
    async fn gather(&mut self, mut outcomes: Vec<Outcome>, cancel: &CancellationToken) -> Inputs {
        let fx = self.exec.effects().clone();
        let local = fx.pg.observe(true).await;
        // Renewal and read in parallel: a tick that waits on the DCS costs one timeout.
        // A lease granted by the last tick's actions (a move to a new TTL) is the one we hold
        // now: renewing the old one would only find it revoked.
        let granted = outcomes.iter().rev().find_map(|o| match o {
            Outcome::SessionGranted { lease, ttl, .. } => Some((*lease, *ttl)),
            _ => None,
        });
        let abandoned: Vec<crate::dcs::LeaseId> = outcomes
            .iter()
            .filter_map(|o| match o {
                Outcome::SessionAbandoned { lease } => Some(*lease),
                _ => None,
            })
            .collect();
        let current = granted.map(|g| g.0).or(self.mem.session.map(|s| s.lease));
        let lease_ttl = granted
            .map(|g| g.1)
            .or(self.mem.session.map(|s| s.ttl))
            .unwrap_or(self.ctx.t.ttl);
        let renew = async {
            match current {
                None => SessionRead::None,
                // Given up (a release that may still land): as if it were gone.
                Some(lease) if abandoned.contains(&lease) => SessionRead::Gone { lease },
                Some(lease) => {
                    let sent = Instant::now();
                    match fx.dcs.keep_alive(lease).await {
                        Ok(true) => SessionRead::Renewed { lease, sent },
                        Ok(false) => SessionRead::Gone { lease },
                        Err(e) => SessionRead::Failed {
                            lease,
                            error: e.to_string(),
                        },
                    }
                }
            }
        };
        // A leader that could not reach the DCS last tick asks the others at the same time.
        let ask = self.ctx.cfg.failover.failsafe
            && self.mem.role == crate::memory::Role::Leader
            && self.mem.timers.dcs_unreachable_since.is_some();
        let round = async {
            if ask {
                let promise = self.ctx.t.failsafe_promise(lease_ttl);
                Some(failsafe_round(&self.ctx, &fx, self.ctx.t.dcs_timeout, promise).await)
            } else {
                None
            }
        };
        let (session, view, failsafe) = tokio::join!(renew, fx.dcs.view(), round);
        // Decisions about time (fence before the lease can expire) use the clock after the
        // reads, not before: the reads may have waited for their timeouts.
        let now = Instant::now();
        let dcs = match view {
            Ok(view) => DcsRead::Ok { session, view },
            Err(e) => DcsRead::Unreachable {
                since: self.mem.timers.dcs_unreachable_since.unwrap_or(now),
                session,
                error: e.to_string(),
            },
        };
        let mut probes = match &dcs {
            DcsRead::Ok { view, .. } => self.probe(&fx, view).await,
            DcsRead::Unreachable { .. } => Probes::default(),
        };
        probes.failsafe = failsafe;
        let now = if probes.leader_refused.is_none() && probes.positions.is_empty() {
            now
        } else {
            Instant::now()
        };
        let mut events = Vec::new();
        while let Ok(e) = self.events.try_recv() {
            events.push(e);
        }
        while let Ok(o) = self.done.try_recv() {
            outcomes.push(o);
        }
        Inputs {
            now,
            wall_ms: fx.clock.now_ms(),
            local,
            dcs,
            events,
            outcomes,
            probes,
            stopping: cancel.is_cancelled(),
        }
    }

    /// Reads of other nodes the view calls for: the leader's ports (fast dead-leader path)
    /// while following; every running replica's live position while nobody leads.
    async fn probe(&self, fx: &Effects, view: &ClusterView) -> Probes {
        let me = self.ctx.name();
        let mut p = Probes::default();
        match &view.leader {
            Some(l) if l.name != me => {
                if self.ctx.cfg.failover.fast_dead_detection && view.members.contains_key(&l.name) {
                    p.leader_refused = Some(fx.peers.refused(&l.name).await);
                }
            }
            Some(_) => {}
            None => {
                for m in view.members.values() {
                    if m.name != me
                        && m.pg_state == PgState::Running
                        && m.role == MemberRole::Replica
                    {
                        if let Some(lsn) = fx.peers.position(&m.name).await {
                            p.positions.insert(m.name.clone(), lsn);
                        }
                    }
                }
            }
        }
        p
    }

    fn log(&mut self, inputs: &Inputs, d: &Decision) {
        // Which request failed, and how: the reason only says that the DCS did not answer.
        let dcs_error = match &inputs.dcs {
            DcsRead::Unreachable { error, .. } => Some(error.as_str()),
            DcsRead::Ok {
                session: SessionRead::Failed { error, .. },
                ..
            } => Some(error.as_str()),
            DcsRead::Ok { .. } => None,
        };
        if dcs_error != self.last_dcs_error.as_deref() {
            match dcs_error {
                Some(e) => tracing::warn!(node = %self.ctx.name(), "DCS: {e}"),
                None if self.last_dcs_error.is_some() => {
                    tracing::info!(node = %self.ctx.name(), "DCS answers again")
                }
                None => {}
            }
            self.last_dcs_error = dcs_error.map(str::to_string);
        }
        let notable = d.actions.iter().any(|a| {
            !matches!(
                a,
                Action::PublishMember { .. }
                    | Action::PutStatus(_)
                    | Action::PointAt { .. }
                    | Action::PointAtPrimarySite
                    | Action::Watchdog { .. }
            )
        });
        if d.next.unknown_slots != self.mem.unknown_slots && !d.next.unknown_slots.is_empty() {
            tracing::warn!(
                node = %self.ctx.name(),
                slots = ?d.next.unknown_slots,
                "replication slots that are neither a node's, nor in replication.permanent_slots, \
                 nor matched by replication.ignore_slots: pgha leaves them, and they keep WAL"
            );
        }
        if d.reason != self.last_reason || notable {
            tracing::info!(node = %self.ctx.name(), role = ?d.next.role, "{}", d.reason);
            self.last_reason = d.reason.clone();
        }
    }

    fn publish(&self, inputs: &Inputs, d: &Decision) {
        let (reachable, view, paused) = match &inputs.dcs {
            DcsRead::Ok { session, view } => (
                matches!(session, SessionRead::Renewed { .. }),
                Some(view.clone()),
                view.config.paused,
            ),
            DcsRead::Unreachable { .. } => (false, None, self.shared.snapshot().paused),
        };
        let before = self.shared.snapshot();
        let dcs_last_seen_ms = if reachable {
            Some(inputs.wall_ms)
        } else {
            before.dcs_last_seen_ms
        };
        let view = view.or(before.view);
        self.shared.publish(Snapshot {
            name: self.ctx.name().into(),
            is_leader: d.next.role.holds_lease() && d.next.session.is_some(),
            dcs_reachable: reachable,
            paused,
            role: format!("{:?}", d.next.role),
            reason: d.reason.clone(),
            member: Some(self.ctx.member(inputs)),
            view,
            at: Some(tokio::time::Instant::now()),
            dcs_last_seen_ms,
            config: Some(self.ctx.cfg.clone()),
            reload_error: self.reload_error.clone(),
            scheduled_restart_ms: d.next.restart.as_ref().and_then(|r| r.at_ms),
            unknown_slots: d.next.unknown_slots.clone(),
        });
    }
}
