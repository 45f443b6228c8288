//! The DCS cannot be read: nobody can take the key, so nothing is promoted; a leader stops
//! PostgreSQL before its lease can expire for the others, unless failsafe holds.
//!
//! The leader's right to serve rests on a proof: the start of its last lease renewal, or of
//! its last failsafe round that every other agent confirmed (each of them then promised not
//! to take the lease for `failsafe_quarantine`, counted from its answer, which came after the
//! round started). It serves until `fence_after` past the newest proof; the supervisor's
//! deadline (`watchdog_after` past it) backs that up when this agent cannot act.

use super::{Ctx, Decision};
use crate::inputs::{Inputs, SessionRead};
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
    if let (Some(Ok(started)), true) = (&inp.probes.failsafe, d.next.failsafe_published) {
        // This tick's round: every other agent promised not to take the lease, and no node
        // outside them may be elected, once a view showed our topology in `status` (failsafe
        // switched on just before the DCS went: a node only its own pgha.toml lists could
        // still be elected; decide test only, the simulator never hit that window).
        let f = &mut d.next.timers.failsafe_ok;
        *f = Some(f.map_or(*started, |old| old.max(*started)));
    }
    let Some(s) = d.next.session else {
        d.fence("DCS unreachable and no session");
        d.because("DCS unreachable without a session: fenced");
        return;
    };
    let since = now.duration_since(d.next.proof(s));
    let fence_after = t.fence_after_on(s.ttl);
    if since >= fence_after {
        d.fence(format!(
            "DCS unreachable: no lease renewal{} for {since:?}; the lease may expire",
            if ctx.cfg.failover.failsafe {
                " nor failsafe confirmation by every other agent"
            } else {
                ""
            }
        ));
        d.because("DCS unreachable: fenced before the lease can expire");
        return;
    }
    d.because(format!(
        "DCS unreachable: leader keeps serving until {fence_after:?} past its last lease renewal or confirmed failsafe round"
    ));
}
