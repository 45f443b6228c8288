//! A changed TTL reaches the lease: etcd renews a lease to the TTL it was granted with, so
//! the agent moves to a new lease (`Action::RotateSession`). Until it has, everything that
//! rests on the lease counts on the shorter of the two TTLs (`Timings::lease_ttl`): the
//! fence, the supervisor's deadline (set first in the tick, before the move) and the loop
//! period. The leader's key moves by compare-and-swap on its revision, so a key that is not
//! ours any more is never taken back.

use super::{Ctx, Decision};
use crate::action::Action;
use crate::inputs::{DcsRead, Inputs, SessionRead};

/// Asks for the move when the settings' TTL differs from our lease's, on a quiet tick: the
/// lease was just renewed, no job runs (a bootstrap's `initialize` key sits on the lease), and
/// nothing else this tick takes, gives up or depends on a lease.
pub(super) fn session(ctx: &Ctx, d: &mut Decision, inp: &Inputs) {
    let DcsRead::Ok {
        session: SessionRead::Renewed { .. },
        view,
    } = &inp.dcs
    else {
        return;
    };
    let Some(s) = d.next.session else { return };
    if s.ttl == ctx.t.ttl || inp.stopping || d.next.job.is_some() {
        return;
    }
    let busy = d.actions.iter().any(|a| {
        matches!(
            a,
            Action::GrantSession { .. }
                | Action::AcquireLeader { .. }
                | Action::TakeOverLeader { .. }
                | Action::ReleaseLeader { .. }
                | Action::TryInitialize { .. }
                | Action::FinishInitialize
                | Action::Fence { .. }
                | Action::AbortJob
                | Action::Spawn { .. }
        )
    });
    let initializing = view
        .initialize
        .as_ref()
        .is_some_and(|i| !i.done && i.lease == Some(s.lease));
    if busy || initializing {
        return;
    }
    let ours = view.leader.as_ref().filter(|l| l.lease == s.lease);
    if d.next.role.holds_lease() && ours.is_none() {
        return; // the key is not where we think: the next tick's view decides
    }
    let Some(member) = d.actions.iter().find_map(|a| match a {
        Action::PublishMember { member, .. } => Some(member.clone()),
        _ => None,
    }) else {
        return;
    };
    d.reason.push_str(&format!(
        "; moving from lease {} ({:?}) to one of the new TTL ({:?})",
        s.lease, s.ttl, ctx.t.ttl
    ));
    d.act(Action::RotateSession {
        old: s.lease,
        ttl: ctx.t.ttl,
        leader_revision: ours.map(|l| l.revision),
        member: Box::new(member),
    });
}
