//! `decide`: a pure function from what the agent remembers and what it sees this tick to what
//! it remembers next, what it does, and why.
//!
//! - [`absorb`](self): fold last tick's outcomes and the API's events into memory;
//! - with the DCS: session first (no session, no lease), then by who holds the leader key:
//!   ourselves ([`leader`]), another node ([`follower`]), nobody ([`elect`]);
//! - without the DCS: [`nodcs`] (a leader fences itself before its lease can expire);
//! - last, the supervisor's deadline ([`watchdog`](self)).

mod bootstrap;
mod elect;
mod follower;
mod leader;
pub(crate) mod logical;
mod manual;
mod nodcs;
mod permanent;
mod plan;
mod quorum;
mod rotate;
mod settings;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use pgha_config::{NodeConfig, PghaConfig, StandbyClusterSection};
use tokio::time::Instant;

use crate::action::{Action, Job};
use crate::dcs::{ClusterView, MemberState};
use crate::inputs::{DcsRead, Event, Inputs, Outcome, SessionRead};
use crate::memory::{Memory, Role, RunningJob, Session};
use crate::timings::Timings;

pub use plan::sync_names_for;

/// What a tick decided.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub next: Memory,
    pub actions: Vec<Action>,
    /// Why, in one line (the tests assert on it, as Patroni's do on `run_cycle()`).
    pub reason: String,
    /// Tick again at once (a step whose result the next decision needs).
    pub again: bool,
    /// Tick again after this instead of `loop_wait` (watching something that changes fast).
    pub soon: Option<Duration>,
}

/// What does not change from one tick to the next: the config (pgha.toml with the cluster
/// settings from the DCS over it), this node, the timings. The run loop replaces it between
/// ticks when the settings or pgha.toml change (`generation` counts those changes).
#[derive(Debug, Clone)]
pub struct Ctx {
    pub cfg: Arc<PghaConfig>,
    pub me: NodeConfig,
    pub t: Timings,
    /// 0 at start; one more each time the run loop adopted other settings.
    pub generation: u64,
}

impl Ctx {
    pub fn new(cfg: Arc<PghaConfig>, node: &str) -> Option<Self> {
        let me = cfg.node(node)?.clone();
        let t = Timings::from_config(&cfg);
        Some(Ctx {
            cfg,
            me,
            t,
            generation: 0,
        })
    }

    /// This node's context over `cfg`, as the next generation, with the timings `cfg` gives.
    /// What rests on the lease follows the TTL of the lease we hold
    /// ([`Timings::fence_after_on`], [`Timings::watchdog_after_on`]) until the agent moves to
    /// a lease of the new TTL (`Action::RotateSession`).
    pub fn next_generation(&self, cfg: Arc<PghaConfig>) -> Option<Self> {
        let me = cfg.node(&self.me.name)?.clone();
        let t = Timings::from_config(&cfg);
        Some(Ctx {
            cfg,
            me,
            t,
            generation: self.generation + 1,
        })
    }

    pub fn name(&self) -> &str {
        &self.me.name
    }

    /// Every node our failsafe round asks (all of pgha.toml's), with its `/patroni` URL ("" for
    /// a node without `agent_address`, which can never confirm). The leader writes it in
    /// `status` while failsafe is on; a round counts only once a view showed exactly this
    /// (`Memory::failsafe_published`), and a node that sees failsafe switched off still finds
    /// it while we may serve on confirmations.
    pub fn failsafe_topology(&self) -> BTreeMap<String, String> {
        let scheme = if self.cfg.tls.as_ref().is_some_and(|t| t.agent_api) {
            "https"
        } else {
            "http"
        };
        self.cfg
            .nodes
            .iter()
            .map(|n| {
                let url = n
                    .agent_address
                    .map_or(String::new(), |a| format!("{scheme}://{a}/patroni"));
                (n.name.clone(), url)
            })
            .collect()
    }

    /// The other nodes' names.
    pub fn others(&self) -> Vec<String> {
        self.cfg
            .nodes
            .iter()
            .filter(|n| n.name != self.me.name)
            .map(|n| n.name.clone())
            .collect()
    }

    /// `[standby_cluster]` while `pgha promote-cluster` has not made this site the primary one.
    pub fn standby_source(&self, view: &ClusterView) -> Option<&StandbyClusterSection> {
        self.cfg
            .standby_cluster
            .as_ref()
            .filter(|_| !view.config.standby_promoted)
    }

    /// Our member key, from this tick's observation.
    pub fn member(&self, inp: &Inputs) -> MemberState {
        self.member_with(inp, None)
    }

    /// Our member key, naming the leader lease we suspect dead.
    pub fn member_with(&self, inp: &Inputs, suspects: Option<crate::dcs::LeaseId>) -> MemberState {
        let o = &inp.local;
        MemberState {
            name: self.me.name.clone(),
            pg_address: self.me.address(),
            api_address: self.me.agent_address.map(|a| a.to_string()),
            pg_state: o.pg_state,
            role: o.role,
            timeline: o.timeline,
            lsn: o.lsn,
            replay_lsn: o.replay_lsn,
            streaming: o.streaming,
            upstream: o.upstream.clone(),
            nofailover: self.me.nofailover,
            updated_ms: inp.wall_ms,
            checkpoint_timeline: o.checkpoint_timeline,
            suspects,
            noloadbalance: self.me.noloadbalance,
            tags: {
                let mut t = self.me.tags.clone();
                if self.me.nostream {
                    // Patroni publishes its typed tags with the others.
                    t.insert("nostream".into(), "true".into());
                }
                t
            },
            pending_restart: o.pending_restart.clone(),
            loop_wait_ms: Some(self.t.loop_wait.as_millis() as u64),
            failover_priority: Some(self.me.failover_rank()).filter(|p| *p != 1),
        }
    }
}

impl Decision {
    fn because(&mut self, reason: impl Into<String>) {
        self.reason = reason.into();
    }

    fn act(&mut self, a: Action) {
        self.actions.push(a);
    }

    /// Starts `job` in the background (one at a time), not sooner than a loop after a job
    /// failed (a failing step is retried once per loop, not in a spin).
    fn spawn(&mut self, ctx: &Ctx, now: Instant, job: Job) -> bool {
        if let Some(f) = self.next.timers.job_failed {
            if now.duration_since(f) < ctx.t.loop_wait {
                self.reason.push_str(" (retried next loop)");
                return false;
            }
        }
        let id = self.next.next_job_id;
        self.next.next_job_id += 1;
        self.next.job = Some(RunningJob {
            id,
            job: job.clone(),
            started: now,
        });
        self.act(Action::Spawn { id, job });
        true
    }

    /// Stops PostgreSQL at once; the agent becomes `Fenced`.
    fn fence(&mut self, why: impl Into<String>) {
        let why = why.into();
        if self.next.job.is_some() {
            self.act(Action::AbortJob);
            self.next.job = None;
        }
        self.act(Action::Fence { why: why.clone() });
        self.next.role = Role::Fenced { why };
        self.next.needs_rewind = true;
        self.next.pending_sync = None;
        self.next.sync_in_doubt = None;
    }

    /// Gives up the lease: PostgreSQL stops first, then the key is deleted.
    fn release(&mut self, why: impl Into<String>) {
        let why = why.into();
        self.fence(why.clone());
        if let Some(s) = self.next.session {
            self.act(Action::ReleaseLeader { lease: s.lease });
        }
        self.because(format!("released the leader lease: {why}"));
    }
}

/// One tick's decision.
pub fn decide(ctx: &Ctx, mem: &Memory, inp: &Inputs) -> Decision {
    let mut d = Decision {
        next: mem.clone(),
        actions: Vec::new(),
        reason: String::new(),
        again: false,
        soon: None,
    };
    absorb(ctx, &mut d, inp);
    settings::apply(ctx, &mut d, inp);
    match &inp.dcs {
        DcsRead::Ok { session, view } => with_dcs(ctx, &mut d, inp, session, view),
        DcsRead::Unreachable { since, session, .. } => {
            // The session stays as it is: a leader in failsafe serves on other proofs, and
            // everybody learns the lease's fate when the DCS answers again.
            d.next.timers.dcs_unreachable_since = Some(*since);
            nodcs::without_dcs(ctx, &mut d, inp, session);
        }
    }
    guard(&mut d);
    if d.next.role != mem.role {
        // A change of synchronous standbys belongs to the role that started it.
        if !matches!(d.next.role, Role::Leader) {
            d.next.pending_sync = None;
            // A write of a key we no longer may write (the lease compare refuses a late one).
            d.next.sync_in_doubt = None;
        }
    }
    watchdog(ctx, &mut d, inp);
    rotate::session(ctx, &mut d, inp);
    d
}

/// The DCS answers reads but our renewal failed: after a TTL without a successful renewal
/// the lease has certainly expired (an etcd client whose keep-alive stream broke in a
/// partition never recovers it). Then we hold nothing, and we need a new session.
fn expire_session(ctx: &Ctx, d: &mut Decision, inp: &Inputs, session: &SessionRead) {
    let SessionRead::Failed { .. } = session else {
        return;
    };
    let Some(s) = d.next.session else { return };
    if inp.now.duration_since(s.renewed_at) < s.ttl {
        return;
    }
    d.next.session = None;
    if d.next.role.holds_lease() {
        d.next.role = Role::NoLeader;
    }
    d.act(Action::GrantSession { ttl: ctx.t.ttl });
}

/// Whatever the role logic decided: a job that may make PostgreSQL writable only runs while
/// we hold the lease (a start or promotion that outlasted the lease is stopped, and
/// PostgreSQL with it).
fn guard(d: &mut Decision) {
    let leased = d.next.role.holds_lease() && d.next.session.is_some();
    let writable_job = d
        .next
        .job
        .as_ref()
        .filter(|j| j.job.may_make_writable())
        .map(|j| j.job.name());
    if let (false, Some(job)) = (leased, writable_job) {
        d.fence(format!("{job} was running when we lost the lease"));
        d.because(format!("lost the lease during {job}: fenced"));
    }
}

/// Folds the previous tick's outcomes and the API's events into memory.
fn absorb(ctx: &Ctx, d: &mut Decision, inp: &Inputs) {
    for e in &inp.events {
        match e {
            Event::FailsafeConfirmed { at, until, .. } => {
                let until = (*at + ctx.t.failsafe_quarantine).max(*until);
                let q = &mut d.next.timers.quarantine_until;
                *q = Some(q.map_or(until, |old| old.max(until)));
            }
            Event::PromiseInherited { until } => {
                let q = &mut d.next.timers.quarantine_until;
                *q = Some(q.map_or(*until, |old| old.max(*until)));
            }
            Event::RestartRequested {
                at_ms,
                pending_only,
            } => {
                d.next.restart = Some(crate::memory::RestartRequest {
                    at_ms: *at_ms,
                    pending_only: *pending_only,
                })
            }
            Event::RestartCancelled => d.next.restart = None,
            Event::ReinitRequested => d.next.reinit = true,
        }
    }
    for o in &inp.outcomes {
        match o {
            Outcome::SessionGranted { lease, sent, ttl } => {
                d.next.session = Some(Session {
                    lease: *lease,
                    renewed_at: *sent,
                    ttl: *ttl,
                });
            }
            Outcome::JobDone { id, job, error } => {
                if d.next.job.as_ref().is_some_and(|j| j.id == *id) {
                    d.next.job = None;
                }
                d.next.timers.job_failed = error.as_ref().map(|_| inp.now);
                if error.as_deref() == Some(crate::exec::NOT_STARTED) {
                    // Nothing of it ran (an earlier step of its tick failed, e.g. a `/sync`
                    // write that timed out): nothing to conclude; a later tick plans again.
                    // Concluding from it released the key of a running primary after a
                    // hand-over that never stopped it (simulator seed 102797).
                    continue;
                }
                job_done(ctx, d, job, error.as_deref());
            }
            Outcome::PointedAt { upstream } => {
                if d.next.current_upstream.as_deref() != Some(upstream.as_str()) {
                    d.next.timers.not_streaming_since = None;
                }
                d.next.current_upstream = Some(upstream.clone());
            }
            Outcome::SyncNamesSet { lsn, .. } => {
                if let Some(p) = d.next.pending_sync.as_mut() {
                    p.since_lsn.get_or_insert(*lsn);
                }
            }
            Outcome::SyncInDoubt { revision } => d.next.sync_in_doubt = Some(*revision),
            Outcome::LeaderTaken { .. }
            | Outcome::LeaderReleased
            | Outcome::SessionAbandoned { .. }
            | Outcome::Fenced { .. }
            | Outcome::SyncWritten { .. }
            | Outcome::SlotRetried => {}
            Outcome::ConfigApplied { generation, error } => {
                if error.is_none() {
                    d.next.config_applied = d.next.config_applied.max(*generation);
                    d.next.timers.config_failed = None;
                } else {
                    d.next.timers.config_failed = Some(inp.now);
                }
            }
        }
    }
    // The highest timeline the running server reported (a replica's falls back to its last
    // checkpoint's when the receiver stops).
    let o = &inp.local;
    if o.pg_state == crate::dcs::PgState::Stopped {
        d.next.seen_timeline = None;
    } else if o.reachable {
        d.next.seen_timeline = o.timeline.max(d.next.seen_timeline);
    }
}

/// A pg_rewind failure other than not reaching its source: pg_rewind ran against the data
/// dir, and a rewind interrupted when its source died mid-copy leaves it half-rewound, which
/// retrying never mends (seen: "could not find common ancestor", and "could not open file
/// .../pg_wal/...: No such file or directory" retried for minutes, never re-cloned). It counts
/// toward the re-clone like a failed start; a source that cannot be reached does not. Found
/// by `cargo xtask faults --scenario double-failover`.
pub(crate) fn rewind_damaged(e: &str) -> bool {
    /// libpq's and the OS's words for a source that was never reached.
    const UNREACHABLE: &[&str] = &[
        "connection to server at",
        "could not connect to server",
        "Connection refused",
        "timeout expired",
        "No route to host",
        "Network is unreachable",
        "could not translate host name",
    ];
    e.starts_with("rewind") && !UNREACHABLE.iter().any(|m| e.contains(m))
}

/// What a finished job changes.
fn job_done(ctx: &Ctx, d: &mut Decision, job: &Job, error: Option<&str>) {
    match (job, error) {
        (Job::StartReplica { upstream, .. }, None) => {
            d.next.failed_starts = 0;
            d.next.needs_rewind = false;
            d.next.timers.not_streaming_since = None;
            d.next.current_upstream = Some(upstream.clone());
        }
        (Job::StartReplica { .. }, Some(e)) if e.starts_with("start") => {
            d.next.failed_starts += 1;
        }
        (Job::StartReplica { rewind: true, .. }, Some(e)) if rewind_damaged(e) => {
            d.next.failed_starts += 1;
        }
        (Job::Reclone { upstream }, None) => {
            d.next.failed_starts = 0;
            d.next.needs_rewind = false;
            d.next.current_upstream = Some(upstream.clone());
        }
        (Job::StopForRewind, _) => d.next.needs_rewind = true,
        (Job::HandOver { .. }, e) => {
            // PostgreSQL is stopped (or the fallback immediate stop ran): hand the key over.
            // After a failure, once more at once: the key goes only with PostgreSQL down (a
            // failed fence stops the tick before the release).
            if let Some(e) = e {
                d.act(Action::Fence {
                    why: format!("hand-over failed ({e})"),
                });
            }
            if let Some(s) = d.next.session {
                d.act(Action::ReleaseLeader { lease: s.lease });
            }
            d.next.role = Role::NoLeader;
            d.next.needs_rewind = true;
            d.next.pending_sync = None;
            d.again = true;
        }
        (Job::StartPrimary | Job::StartStandbyLeader { .. }, Some(e))
            if d.next.role.holds_lease() =>
        {
            d.release(format!("could not start ({e})"));
        }
        (Job::Promote { .. }, None) => d.again = true,
        _ => {}
    }
    let _ = ctx;
}

fn with_dcs(ctx: &Ctx, d: &mut Decision, inp: &Inputs, session: &SessionRead, view: &ClusterView) {
    d.next.timers.dcs_unreachable_since = None;
    // Exactly our round's nodes: a `status` still listing a node our round no longer asks
    // (an agent restarted with a shorter node list, its first views) would let that node
    // be elected while we serve on the others' confirmations.
    d.next.failsafe_published = view.status.as_ref().is_some_and(|s| {
        s.leader == ctx.name() && s.failsafe.as_ref() == Some(&ctx.failsafe_topology())
    });
    match session {
        SessionRead::None => {
            d.act(Action::GrantSession { ttl: ctx.t.ttl });
            d.again = true;
            d.because("no session: granting one");
            return;
        }
        SessionRead::Gone { .. } => {
            d.next.session = None;
            if d.next.role.holds_lease() {
                d.next.role = Role::NoLeader;
                if view.leader.as_ref().is_some_and(|l| l.name != ctx.name()) {
                    d.fence("lease lost and another node holds the leader key");
                }
            }
            d.act(Action::GrantSession { ttl: ctx.t.ttl });
            d.again = true;
            if d.reason.is_empty() {
                d.because("our session lease expired: granting a new one");
            }
            return;
        }
        SessionRead::Failed { .. } => {
            // The renewal failed: as if the DCS could not be reached (and after a TTL, a new
            // session: the old lease is gone for sure).
            expire_session(ctx, d, inp, session);
            nodcs::without_dcs(ctx, d, inp, session);
            return;
        }
        SessionRead::Renewed { lease, sent } => {
            let ttl = d.next.session.map_or(ctx.t.ttl, |s| s.ttl);
            d.next.session = Some(Session {
                lease: *lease,
                renewed_at: *sent,
                ttl,
            });
        }
    }
    let Some(s) = d.next.session else { return };
    let suspects = d
        .next
        .leader_watch
        .as_ref()
        .filter(|w| w.refused_hits > 0)
        .map(|w| w.lease);
    d.act(Action::PublishMember {
        lease: s.lease,
        member: ctx.member_with(inp, suspects),
    });
    let me = ctx.name();
    if d.actions
        .iter()
        .any(|a| matches!(a, Action::ReleaseLeader { .. }))
    {
        // We give the key up this tick (a hand-over, a failed start): this tick's view still
        // names us; leading on it would start PostgreSQL as a primary again. The role and the
        // reason the release set stand.
        if d.next.role.holds_lease() {
            d.next.role = Role::NoLeader;
        }
        if d.reason.is_empty() {
            d.because("released the leader key (hand-over done)");
        }
        return;
    }
    if manual::requests(ctx, d, inp, view) {
        return;
    }
    if view.config.paused {
        let ours = view
            .leader
            .as_ref()
            .is_some_and(|l| l.name == me && l.lease == s.lease);
        if ours && !d.next.role.holds_lease() {
            d.next.role = Role::Leader;
        } else if !ours && d.next.role.holds_lease() {
            d.next.role = Role::NoLeader;
        }
        d.because("paused: no automatic action");
        return;
    }
    match view.leader.clone() {
        // Ours only when it sits on our own session: a key with our name on another lease
        // was made by a predecessor (this agent restarted) and expires with it.
        Some(l) if l.name == me && l.lease == s.lease => leader::lead(ctx, d, inp, view),
        Some(l) if l.name == me => {
            d.act(Action::TakeOverLeader {
                lease: s.lease,
                revision: l.revision,
            });
            d.again = true;
            d.because(format!(
                "the leader key names us but sits on lease {} (a predecessor's): taking it over with ours",
                l.lease
            ));
        }
        Some(l) => follower::follow(ctx, d, inp, view, &l),
        None => elect::elect(ctx, d, inp, view),
    }
    settings::seed(ctx, d, view);
    bootstrap::finish(d, inp, view);
}

/// The supervisor's deadline: PostgreSQL is killed unless the agent keeps proving, in time,
/// that it may take writes. While we hold the lease the deadline is `watchdog_after` past the
/// newest proof (the start of the last lease renewal, or of the last failsafe round every
/// other agent confirmed); a frozen or wedged agent proves nothing more and PostgreSQL dies
/// before the lease can expire for the others. A PostgreSQL that is (or may become) a
/// primary without the lease keeps the deadline it had: never extended. A replica with no
/// writable job needs none.
fn watchdog(ctx: &Ctx, d: &mut Decision, inp: &Inputs) {
    let local_primary = inp.local.pg_state == crate::dcs::PgState::Running
        && inp.local.role != crate::dcs::MemberRole::Replica;
    let writable_job = d
        .next
        .job
        .as_ref()
        .is_some_and(|j| j.job.may_make_writable());
    // A leader key with our name on another lease than the one we renew (a move to a lease
    // of a new TTL whose outcome was not known) may run out while we renew ours: no
    // extension until it is back on our lease.
    let key_elsewhere = match &inp.dcs {
        DcsRead::Ok { view, .. } => view.leader.as_ref().is_some_and(|l| {
            l.name == ctx.name() && Some(l.lease) != d.next.session.map(|s| s.lease)
        }),
        DcsRead::Unreachable { .. } => false,
    };
    let leased = d.next.role == Role::Leader && !key_elsewhere;
    let deadline = match (leased, d.next.session) {
        (true, Some(s)) => Some(d.next.proof(s) + ctx.t.watchdog_after_on(s.ttl)),
        _ if local_primary || writable_job => Some(d.next.watchdog.unwrap_or(inp.now)),
        _ => None,
    };
    if deadline != d.next.watchdog || deadline.is_some() {
        d.next.watchdog = deadline;
        // First: before a job that may make PostgreSQL writable starts.
        d.actions.insert(0, Action::Watchdog { deadline });
    }
}

#[cfg(test)]
mod tests;
