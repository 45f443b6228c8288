//! What operators ask of one node through its API: a restart (now, at a time, or only when a
//! setting waits for one) and a reinit (clone afresh). Both also run while the cluster is
//! paused, as Patroni allows; each waits for a running job to end.

use super::{Ctx, Decision};
use crate::action::Job;
use crate::dcs::{ClusterView, MemberRole, PgState};
use crate::inputs::Inputs;

/// True when a request took this tick (a job started, or a refusal to report); the role
/// logic runs again at the next one.
pub(super) fn requests(ctx: &Ctx, d: &mut Decision, inp: &Inputs, view: &ClusterView) -> bool {
    if d.next.job.is_some() {
        return false;
    }
    let me = ctx.name();
    let leads = match (&view.leader, d.next.session) {
        (Some(l), Some(s)) => l.name == me && l.lease == s.lease,
        _ => false,
    };
    if d.next.reinit {
        d.next.reinit = false;
        let Some(l) = view.leader.as_ref().filter(|_| !leads) else {
            d.because(if leads {
                "reinitialize refused: this node holds the leader lease (switch over first)"
            } else {
                "reinitialize refused: no leader to clone from"
            });
            return true;
        };
        let running = view
            .members
            .get(&l.name)
            .is_some_and(|m| m.pg_state == PgState::Running);
        if !running {
            d.because(format!(
                "reinitialize refused: the leader {}'s PostgreSQL does not run",
                l.name
            ));
            return true;
        }
        let job = Job::Reinit {
            upstream: l.name.clone(),
        };
        if d.spawn(ctx, inp.now, job) {
            d.next.needs_rewind = false;
            d.next.failed_starts = 0;
            d.next.current_upstream = None;
            d.because(format!(
                "reinitialize on request: cloning afresh from {}",
                l.name
            ));
        } else {
            d.next.reinit = true;
        }
        return true;
    }
    let Some(r) = d.next.restart else {
        return false;
    };
    if r.at_ms.is_some_and(|at| inp.wall_ms < at) {
        return false;
    }
    d.next.restart = None;
    let local = &inp.local;
    if r.pending_only && local.pending_restart.is_empty() {
        d.because("restart on request skipped: no setting waits for a restart");
        return true;
    }
    if local.pg_state != PgState::Running {
        d.because("restart on request refused: PostgreSQL does not run");
        return true;
    }
    let primary = local.role == MemberRole::Primary;
    if primary && !leads {
        d.because("restart on request refused: a primary without the leader lease");
        return true;
    }
    if d.spawn(ctx, inp.now, Job::RestartPg { primary }) {
        d.because(if r.pending_only {
            format!(
                "restart on request: {} wait for it",
                local.pending_restart.join(", ")
            )
        } else {
            "restart on request".to_string()
        });
    } else {
        d.next.restart = Some(r);
    }
    true
}
