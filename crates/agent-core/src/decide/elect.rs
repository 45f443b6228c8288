//! Nobody holds the leader key: every agent ranks the members by the same rules; only the
//! best one tries to take the key (compare-and-swap), then leads at its next tick.

use super::{bootstrap, Ctx, Decision};
use crate::action::Action;
use crate::dcs::{ClusterView, MemberRole};
use crate::election::{self, Rules};
use crate::inputs::Inputs;
use crate::memory::Role;

pub(super) fn elect(ctx: &Ctx, d: &mut Decision, inp: &Inputs, view: &ClusterView) {
    let now = inp.now;
    let me = ctx.name().to_string();
    if d.next.role.holds_lease() {
        // The key is gone (expired, revoked, or deleted by an operator) while our session lives.
        d.next.role = Role::NoLeader;
    } else if !matches!(d.next.role, Role::Fenced { .. }) {
        d.next.role = Role::NoLeader;
    }
    if d.next.job.is_some() {
        d.because("no leader: a job is in progress");
        return;
    }
    let started = d.next.timers.started.unwrap_or(now);
    if now.duration_since(started) < ctx.t.settle_at_start {
        d.because("no leader: letting every member publish once first");
        return;
    }
    if d.next.timers.quarantine_until.is_some_and(|u| now < u) {
        d.because("no leader: we confirmed failsafe to the old leader; not taking the lease yet");
        return;
    }
    // A request restricts the election to its target only once it is due and while it is
    // fresh; a switchover scheduled for later (`--at`) never keeps a dead primary unreplaced.
    let fresh_request = view.switchover.as_ref().filter(|r| {
        let due = r.at_ms.unwrap_or(r.requested_ms).max(r.requested_ms);
        inp.wall_ms >= due && inp.wall_ms - due < ctx.t.request_fresh.as_millis() as u64
    });
    let standby = ctx.standby_source(view).is_some();
    if !standby
        && inp.local.pg_state == crate::dcs::PgState::Stopped
        && inp.local.role == MemberRole::Replica
    {
        // A stopped replica is not electable: start it read-only first (with every replica
        // stopped and no leader, nobody could ever be elected otherwise).
        d.because("no leader: starting PostgreSQL read-only so this node can be elected");
        d.spawn(ctx, now, crate::action::Job::StartReadOnly);
        return;
    }
    if !standby && bootstrap::new_cluster(ctx, d, inp, view) {
        return;
    }
    // Positions read this tick: ours, and every running replica's probe.
    let live: std::collections::BTreeSet<String> = inp
        .probes
        .positions
        .keys()
        .cloned()
        .chain([me.clone()])
        .collect();
    let mut rules = Rules {
        max_lag_bytes: ctx.cfg.failover.maximum_lag_on_failover.bytes(),
        status: view.status.as_ref(),
        sync: view.sync.as_ref(),
        request: fresh_request,
        standby_cluster: standby,
        live: Some(&live),
        failsafe: Rules::failsafe_topology(view.status.as_ref()),
    };
    let mut members = view.members.clone();
    members.insert(me.clone(), ctx.member(inp));
    // Published positions can be a tick old; the last WAL the dead primary sent may have
    // reached one replica after it published. Rank on positions read live.
    for (name, lsn) in &inp.probes.positions {
        if let Some(m) = members.get_mut(name) {
            m.lsn = Some(m.lsn.map_or(*lsn, |old| old.max(*lsn)));
        }
    }
    let mut best = election::best(members.values(), &rules).map(|b| b.name.clone());
    let mut request_failed = false;
    if best.is_none() && rules.request.is_some() {
        // The request's target cannot be promoted (down, lagging): the best other node can.
        rules.request = None;
        best = election::best(members.values(), &rules).map(|b| b.name.clone());
        request_failed = true;
    }
    let first_copy = standby
        && best.is_none()
        && members
            .values()
            .all(|m| m.role == MemberRole::Uninitialized)
        // The lowest-named member that published and may lead makes the first copy.
        && members
            .values()
            .filter(|m| !m.nofailover)
            .map(|m| m.name.as_str())
            .min()
            == Some(me.as_str());
    if best.as_deref() != Some(me.as_str()) && !first_copy {
        // Say why we are not the one: the operator sees it in the log.
        let ours = members
            .get(&me)
            .map(|m| {
                match election::eligibility(m, &rules)
                    .and_then(|()| election::quorum_check(m, members.values(), &rules))
                {
                    Err(why) => format!("we may not lead: {why}"),
                    Ok(()) => format!(
                        "we are at timeline {} {}",
                        m.timeline.unwrap_or(0),
                        m.lsn.map_or("-".into(), |l| l.to_string())
                    ),
                }
            })
            .unwrap_or_default();
        d.because(match best.as_ref().and_then(|b| members.get(b)) {
            Some(b) => format!(
                "no leader: {} is the best candidate (timeline {} {}; {ours})",
                b.name,
                b.timeline.unwrap_or(0),
                b.lsn.map_or("-".into(), |l| l.to_string())
            ),
            None => format!("no leader: no member is eligible ({ours})"),
        });
        return;
    }
    if inp.stopping {
        d.because("no leader: stopping, not taking the lease");
        return;
    }
    let Some(s) = d.next.session else { return };
    d.act(Action::AcquireLeader { lease: s.lease });
    d.again = true;
    d.because("no leader: we are the best candidate: taking the leader key");
    if request_failed {
        // Its target could not win: leading with it pending would hand over again, for
        // ever (simulator seed 47961: a quorum the target could not see).
        d.act(Action::ClearSwitchover);
        d.because(format!(
            "no leader: the request's target {} cannot be promoted; we are the best other candidate: taking the leader key and dropping the request",
            view.switchover.as_ref().map_or("-", |r| r.to.as_str())
        ));
    }
}
