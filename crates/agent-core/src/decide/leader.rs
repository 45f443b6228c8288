//! We hold the leader key: run PostgreSQL as the primary (or, in a standby cluster, as the
//! standby leader), publish the position, keep slots and synchronous standbys, hand over.

use pgha_config::ReplicationMode;

use super::{plan, Ctx, Decision};
use crate::action::{Action, Job};
use crate::dcs::{ClusterView, LeaderStatus, MemberRole, PgState, SwitchoverRequest};
use crate::inputs::Inputs;
use crate::memory::Role;

pub(super) fn lead(ctx: &Ctx, d: &mut Decision, inp: &Inputs, view: &ClusterView) {
    let obs = &inp.local;
    let now = inp.now;
    let fresh = !d.next.role.holds_lease();
    let standby = ctx.standby_source(view).is_some();
    d.next.role = if standby {
        Role::StandbyLeader
    } else {
        Role::Leader
    };
    if let Some(j) = &d.next.job {
        d.because(format!("leader: {} in progress", j.job.name()));
        return;
    }
    if obs.pg_state == PgState::Stopped || !obs.reachable {
        let since = *d.next.timers.pg_down_since.get_or_insert(now);
        if now.duration_since(since) >= ctx.t.postgres_restart_timeout && !fresh {
            d.release(format!(
                "PostgreSQL not back within {:?}",
                ctx.t.postgres_restart_timeout
            ));
            return;
        }
        if obs.pg_state == PgState::Stopped {
            let job = match (standby, obs.role) {
                (true, MemberRole::Uninitialized) => Job::StartStandbyLeader { clone: true },
                (true, _) => Job::StartStandbyLeader { clone: false },
                (false, MemberRole::Primary) if fresh => Job::StartPrimary,
                (false, _) => Job::Restart,
            };
            d.because(format!("leader: PostgreSQL is down: {}", job.name()));
            let ours = view.sync.as_ref().is_some_and(|s| s.leader == ctx.name());
            let as_primary = job == Job::StartPrimary
                || (job == Job::Restart && obs.role == MemberRole::Primary);
            if as_primary && plan::sync_rules(ctx, view) && !ours {
                // As before a promotion: a primary with no synchronous standby acknowledges
                // commits alone, so until one catches up nobody else may be promoted. Without
                // this, a new cluster's first primary (or one started from a stopped cluster)
                // ran with /sync absent or naming another leader's standbys, and those could
                // win an election without its acknowledged commits (cargo xtask simulate
                // --empty, seed 14674). A failed write skips the start: the job ends as not
                // started and the key is released. A restart of a primary that went down
                // under a `/sync` naming someone else writes it first too.
                d.act(plan::put_sync(view, ctx.name(), vec![]));
            }
            d.spawn(ctx, now, job);
        } else {
            d.because("leader: PostgreSQL runs but does not answer yet");
        }
        return;
    }
    d.next.timers.pg_down_since = None;
    if standby {
        lead_standby(ctx, d, inp, view);
        return;
    }
    if obs.in_recovery() {
        promote(ctx, d, inp, view);
        return;
    }
    status_and_slots(ctx, d, inp, view);
    match ctx.cfg.replication.mode {
        ReplicationMode::Sync => plan::sync(ctx, d, inp, view),
        ReplicationMode::Quorum => super::quorum::quorum(ctx, d, inp, view),
        ReplicationMode::Async => plan::unsync(ctx, d, inp, view),
    }
    d.because("leader: primary running");
    if let (Some(tl), Some(ck)) = (obs.timeline, obs.checkpoint_timeline) {
        if ck < tl {
            // The checkpoint after our promotion did not happen (the job was cut short):
            // followers wait for it before they rewind from us.
            d.because(format!(
                "leader: checkpoint (pg_control is on timeline {ck}, we are on {tl})"
            ));
            d.spawn(ctx, now, Job::Checkpoint);
            return;
        }
    }
    if let Some(req) = view.switchover.clone() {
        hand_over(ctx, d, inp, view, &req);
    }
}

fn promote(ctx: &Ctx, d: &mut Decision, inp: &Inputs, view: &ClusterView) {
    let sync_names = if plan::sync_rules(ctx, view) {
        // No acknowledged commit can be lost: this node was a synchronous standby. Until a
        // standby is synchronous again, /sync names none, so nobody else can be promoted.
        // In async mode with `/sync` still there (the last leader did not finish a switch
        // to async) the same: commits we acknowledge before deleting it stay owed to it.
        d.act(plan::put_sync(view, ctx.name(), vec![]));
        let strict = ctx.cfg.replication.mode.waits() && ctx.cfg.failover.sync_strict;
        Some(if strict {
            plan::strict_hold(ctx)
        } else {
            String::new()
        })
    } else {
        // Async: names a copied postgresql.auto.conf may hold are cleared by the running
        // primary's first tick (`plan::unsync`), not here: a reload before pg_promote would
        // cost every failover up to a second.
        None
    };
    d.next.pending_sync = None;
    let floor = view
        .members
        .values()
        .filter_map(|m| m.timeline)
        .chain(view.status.as_ref().map(|s| s.timeline))
        .chain(inp.local.timeline)
        .chain(d.next.seen_timeline)
        .max();
    d.because("leader: promoting (our PostgreSQL is in recovery)");
    d.spawn(
        ctx,
        inp.now,
        Job::Promote {
            sync_names,
            timeline_floor: floor,
            checkpoint: true,
            history: crate::action::PromotionNote {
                // The timeline that ends: the last leader's (a replica's own can lag behind
                // until its next restartpoint).
                timeline: view
                    .status
                    .as_ref()
                    .map(|s| s.timeline)
                    .or(inp.local.timeline),
                lsn: inp.local.replay_lsn.or(inp.local.lsn),
                reason: crate::dcs::promotion_reason(view, ctx.name()),
            },
        },
    );
}

/// The leader's loop work: its position in `status` (the lag reference after it dies) and
/// the slots of the nodes streaming from it.
fn status_and_slots(ctx: &Ctx, d: &mut Decision, inp: &Inputs, view: &ClusterView) {
    if let (Some(lsn), Some(tl)) = (inp.local.lsn, inp.local.timeline) {
        d.act(Action::PutStatus(LeaderStatus {
            leader: ctx.name().into(),
            lsn,
            timeline: tl,
            updated_ms: inp.wall_ms,
            slots: {
                let mut s = super::logical::positions(ctx, inp);
                s.extend(super::permanent::positions(ctx, inp));
                s
            },
            failsafe: ctx.cfg.failover.failsafe.then(|| ctx.failsafe_topology()),
        }));
    }
    plan::slots(ctx, d, inp, view, ctx.name());
    super::logical::on_primary(ctx, d, inp);
}

/// Leader of a standby cluster: stays in recovery streaming from the primary site, never
/// promotes on its own.
fn lead_standby(ctx: &Ctx, d: &mut Decision, inp: &Inputs, view: &ClusterView) {
    if !inp.local.in_recovery() {
        // A writable node in the standby site would fork the data from the primary site.
        d.release(
            "standby cluster: our PostgreSQL is a primary; only `pgha promote-cluster` may make this site writable",
        );
        return;
    }
    d.act(Action::PointAtPrimarySite);
    status_and_slots(ctx, d, inp, view);
    d.because("standby leader: streaming from the primary site");
}

/// Planned switchover / manual failover away from this leader.
fn hand_over(
    ctx: &Ctx,
    d: &mut Decision,
    inp: &Inputs,
    view: &ClusterView,
    req: &SwitchoverRequest,
) {
    if req.to == ctx.name() {
        d.act(Action::ClearSwitchover);
        return;
    }
    if req.at_ms.is_some_and(|at| inp.wall_ms < at) {
        d.because(format!("leader: switchover to {} scheduled", req.to));
        return;
    }
    let target_ok = view
        .members
        .get(&req.to)
        .is_some_and(|m| m.pg_state == PgState::Running && m.role == MemberRole::Replica);
    if !target_ok || ctx.cfg.node(&req.to).is_none() {
        d.act(Action::ClearSwitchover);
        d.because(format!(
            "leader: switchover target {} is not a running replica; request dropped",
            req.to
        ));
        return;
    }
    // Hand over only to a node the election will accept (in sync mode a synchronous standby):
    // else the key comes back to us and the request hands it over again, for ever.
    // Its lag is the hand-over job's to wait for, not a reason to refuse here.
    let rules = crate::election::Rules {
        max_lag_bytes: ctx.cfg.failover.maximum_lag_on_failover.bytes(),
        status: None,
        sync: view.sync.as_ref(),
        request: Some(req),
        standby_cluster: false,
        live: None,
        // Our own topology, as the target's election will read it from `status`.
        failsafe: crate::election::Rules::failsafe_topology(view.status.as_ref()),
    };
    if let Some(Err(why)) = view.members.get(&req.to).map(|m| {
        crate::election::eligibility(m, &rules)
            .and_then(|()| crate::election::quorum_check(m, view.members.values(), &rules))
    }) {
        d.act(Action::ClearSwitchover);
        d.because(format!(
            "leader: {} cannot be promoted ({why}); request dropped",
            req.to
        ));
        return;
    }
    let wait = match req.kind {
        crate::dcs::RequestKind::Switchover => ctx.t.handover_wait_switchover,
        crate::dcs::RequestKind::Failover => ctx.t.handover_wait_failover,
    };
    d.next.pending_sync = None;
    d.because(format!("leader: handing over to {}", req.to));
    d.spawn(
        ctx,
        inp.now,
        Job::HandOver {
            to: req.to.clone(),
            wait,
        },
    );
}
