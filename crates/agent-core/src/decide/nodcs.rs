//! The DCS cannot be read: nobody can take the key, so nothing is promoted; a leader stops
//! PostgreSQL before its lease can expire for the others, unless failsafe holds.

use super::{Ctx, Decision};
use crate::action::Action;
use crate::dcs::PgState;
use crate::inputs::{Inputs, Outcome, SessionRead};
use crate::memory::Role;

pub(super) fn without_dcs(ctx: &Ctx, d: &mut Decision, inp: &Inputs, _session: &SessionRead) {
    let now = inp.now;
    if !d.next.role.holds_lease() {
        d.because("DCS unreachable: no promotion");
        return;
    }
    if d.next.role == Role::StandbyLeader && inp.local.in_recovery() {
        // A standby leader takes no writes: nothing to fence. It keeps streaming from the
        // other site and competes for the lease again when the DCS is back.
        d.next.role = Role::NoLeader;
        d.because("DCS unreachable: standby leader keeps streaming, gives up the lease");
        return;
    }
    let t = &ctx.t;
    let since = d
        .next
        .session
        .map(|s| now.duration_since(s.renewed_at))
        .unwrap_or(std::time::Duration::MAX);
    if since < t.fence_after {
        d.because(format!(
            "DCS unreachable for {since:?}: leader keeps serving"
        ));
        return;
    }
    let failed_round = inp
        .outcomes
        .iter()
        .any(|o| matches!(o, Outcome::Failsafe { ok: false, .. }));
    if ctx.cfg.failover.failsafe && inp.local.pg_state == PgState::Running {
        if failed_round {
            d.fence(format!(
                "DCS unreachable for {since:?} and failsafe not confirmed by every other agent"
            ));
            d.because("DCS unreachable, failsafe not confirmed: fenced");
            return;
        }
        if d.next.timers.failsafe_asked.is_none() {
            d.next.timers.failsafe_asked = Some(now);
            d.act(Action::AskFailsafe);
            d.again = true;
        }
        d.because(format!(
            "DCS unreachable for {since:?}: failsafe, asking every other agent"
        ));
    } else {
        d.fence(format!(
            "DCS unreachable for {since:?}; the lease may expire"
        ));
        d.because("DCS unreachable: fenced before the lease can expire");
    }
}
