//! Another node holds the leader key: run PostgreSQL as a replica streaming from it (or from
//! our `replicate_from` node), rewind or clone when needed, and watch for a dead leader.

use super::{plan, Ctx, Decision};
use crate::action::{Action, Job};
use crate::cascade;
use crate::dcs::{ClusterView, LeaderInfo, MemberRole, PgState};
use crate::inputs::Inputs;
use crate::memory::{LeaderWatch, Role};

pub(super) fn follow(
    ctx: &Ctx,
    d: &mut Decision,
    inp: &Inputs,
    view: &ClusterView,
    leader: &LeaderInfo,
) {
    follow_leader(ctx, d, inp, view, leader);
    if matches!(d.next.role, Role::Follower { .. }) {
        detect_dead_leader(ctx, d, inp, view, leader);
    }
}

fn follow_leader(
    ctx: &Ctx,
    d: &mut Decision,
    inp: &Inputs,
    view: &ClusterView,
    leader: &LeaderInfo,
) {
    let now = inp.now;
    if d.next.role.holds_lease() {
        d.fence("another node holds the leader key");
        d.because(format!("{} holds the leader key: fenced", leader.name));
        return;
    }
    if ctx.cfg.node(&leader.name).is_none() {
        d.because(format!("leader {} is not in our config", leader.name));
        return;
    }
    d.next.role = Role::Follower {
        leader: leader.name.clone(),
    };
    if let Some(j) = &d.next.job {
        d.because(format!(
            "follower of {}: {} in progress",
            leader.name,
            j.job.name()
        ));
        return;
    }
    let obs = &inp.local;
    let me = ctx.name().to_string();
    let Some(up) = choose_upstream(ctx, d, inp, view, &leader.name) else {
        return;
    };
    if ctx
        .cfg
        .nodes
        .iter()
        .any(|n| n.replicate_from.as_deref() == Some(me.as_str()))
        && obs.pg_state == PgState::Running
        && obs.reachable
    {
        // Judge our own streaming from this tick's observation, not last tick's publication.
        let mut fresh = view.clone();
        fresh.members.insert(me.clone(), ctx.member(inp));
        plan::slots(ctx, d, inp, &fresh, &leader.name);
    }
    match (obs.pg_state, obs.role) {
        (PgState::Running, MemberRole::Primary) if obs.reachable => {
            d.fence(format!(
                "{} holds the leader key but our PostgreSQL is a primary",
                leader.name
            ));
            d.because(format!(
                "follower of {}: our PostgreSQL was a primary: fenced",
                leader.name
            ));
        }
        (PgState::Running, MemberRole::Primary) => {
            // A primary we cannot query (stuck, out of connections): it may take writes.
            d.fence(format!(
                "{} holds the leader key and our PostgreSQL, a primary on disk, does not answer",
                leader.name
            ));
            d.because(format!(
                "follower of {}: our unanswering PostgreSQL is a primary on disk: fenced",
                leader.name
            ));
        }
        (PgState::Running, MemberRole::Uninitialized) => {
            // A server on an interrupted bootstrap's data dir (pg_ctl started it, so it
            // outlived its agent; private port): nobody needs it, and it keeps the clone out.
            d.fence(format!(
                "{} leads and a server runs on our half-made bootstrap data dir",
                leader.name
            ));
            d.because(format!(
                "follower of {}: stopped the server of an interrupted bootstrap",
                leader.name
            ));
        }
        (PgState::Running, _) if !obs.reachable => {
            // Starting up or in crash recovery as a replica: look again next tick.
            d.because(format!(
                "follower of {}: PostgreSQL does not answer yet",
                leader.name
            ));
        }
        (PgState::Running, _) => {
            d.act(Action::PointAt {
                upstream: up.clone(),
            });
            if ctx.me.nostream {
                // Replays from the archive (pgha-node.conf names no upstream): never
                // streaming is how it should be, not a reason to rewind. A timeline the
                // archive does not continue stays PostgreSQL's to report.
                d.next.timers.not_streaming_since = None;
                d.next.rewind_attempts = 0;
                d.because(format!(
                    "follower of {}: replaying from the archive (nostream)",
                    leader.name
                ));
                return;
            }
            if obs.streaming {
                d.next.timers.not_streaming_since = None;
                d.next.rewind_attempts = 0;
                d.because(format!("follower of {}: streaming from {up}", leader.name));
                super::logical::on_replica(ctx, d, inp, view, leader);
                super::permanent::on_replica(ctx, d, inp, view, leader);
                return;
            }
            let since = *d.next.timers.not_streaming_since.get_or_insert(now);
            retry_slot_on(ctx, d, inp, &up, since);
            // A replica that cannot stream from a running leader for a while may have WAL the
            // leader does not (it replayed a timeline that is gone: SQL cannot tell, the
            // receiver's timeline is only visible while it streams; or the leader is a stopped
            // old primary elected when the newer timeline's nodes were gone). pg_rewind finds
            // out ("no rewind required" costs a restart): tried with a doubling wait.
            let leader_up = view
                .members
                .get(&leader.name)
                .is_some_and(|m| m.pg_state == PgState::Running && m.role == MemberRole::Primary);
            let wait = ctx.t.rewind_after_not_streaming * (1u32 << d.next.rewind_attempts.min(6));
            if now.duration_since(since) > wait
                && up == leader.name
                && leader_up
                && inp.probes.leader_refused != Some(true)
            {
                if let Some(why) = not_checkpointed(view, leader) {
                    d.because(format!("follower of {}: {why}", leader.name));
                    return;
                }
                d.because(format!(
                    "follower of {}: not streaming from {up} for {wait:?}: rewinding",
                    leader.name
                ));
                if d.spawn(ctx, now, Job::StopForRewind) {
                    d.next.needs_rewind = true;
                    d.next.rewind_attempts += 1;
                }
            } else {
                d.because(format!(
                    "follower of {}: not streaming from {up} yet",
                    leader.name
                ));
            }
        }
        (PgState::Stopped, role) => {
            // pg_rewind takes the leader as source (a first copy comes from the chosen
            // upstream); a cascading node re-points at its own upstream once it runs.
            let rewind = role == MemberRole::Primary || d.next.needs_rewind;
            if rewind && role != MemberRole::Uninitialized {
                if let Some(why) = not_checkpointed(view, leader) {
                    d.because(format!("follower of {}: {why}", leader.name));
                    return;
                }
            }
            let source = if rewind { leader.name.clone() } else { up };
            let job = if role == MemberRole::Uninitialized {
                Job::StartReplica {
                    upstream: source,
                    rewind: false,
                    clone: true,
                }
            } else if d.next.failed_starts >= ctx.t.reclone_after_failed_starts {
                // pg_rewind could not make this data dir follow the leader's history: keep it
                // aside and clone afresh.
                Job::Reclone { upstream: source }
            } else {
                Job::StartReplica {
                    upstream: source,
                    rewind,
                    clone: false,
                }
            };
            d.because(format!("follower of {}: {}", leader.name, job.name()));
            let reclone = matches!(job, Job::Reclone { .. });
            if d.spawn(ctx, now, job) && reclone {
                d.next.failed_starts = 0;
            }
        }
    }
}

/// pg_rewind reads the source's timeline from its control file, which a new primary updates
/// only at its first checkpoint after the promotion: rewinding from it before that sees "the
/// same timeline" and leaves a diverged data dir as it is (or one that cannot start). The
/// leader checkpoints right after promoting and publishes the checkpoint's timeline.
fn not_checkpointed(view: &ClusterView, leader: &LeaderInfo) -> Option<String> {
    let m = view.members.get(&leader.name);
    match m.map(|m| (m.pg_state, m.role, m.timeline, m.checkpoint_timeline)) {
        Some((PgState::Running, MemberRole::Primary, Some(tl), Some(ck))) if ck >= tl => None,
        Some((PgState::Running, MemberRole::Primary, Some(tl), ck)) => Some(format!(
            "waiting for {}'s checkpoint after its promotion (timeline {tl}, checkpoint on {}) before pg_rewind",
            leader.name,
            ck.map_or("?".to_string(), |c| c.to_string())
        )),
        _ => Some(format!(
            "waiting for {} to publish itself as a running primary before pg_rewind",
            leader.name
        )),
    }
}

/// Our upstream: [`cascade::upstream_for`] with two guards of our own. We return to our
/// `replicate_from` node only once it looked usable for a while (no flapping on a blip in its
/// published state), and we follow the leader for a while when we could not stream from that
/// node although it looked usable (its pg_hba, the network, its max_wal_senders).
fn choose_upstream(
    ctx: &Ctx,
    d: &mut Decision,
    inp: &Inputs,
    view: &ClusterView,
    leader: &str,
) -> Option<String> {
    let now = inp.now;
    let t = &ctx.t;
    let pick = cascade::upstream_for(&ctx.cfg, view, ctx.name(), leader)?
        .name
        .clone();
    if pick == leader {
        d.next.timers.cascade_usable_since = None;
        return Some(pick);
    }
    let usable_since = *d.next.timers.cascade_usable_since.get_or_insert(now);
    if d.next.timers.cascade_backoff_until.is_some_and(|u| now < u) {
        return Some(leader.into());
    }
    let on_pick = d.next.current_upstream.as_deref() == Some(pick.as_str());
    if !on_pick
        && d.next.current_upstream.is_some()
        && now.duration_since(usable_since) < t.cascade_settle
    {
        return Some(leader.into());
    }
    let stuck = d
        .next
        .timers
        .not_streaming_since
        .is_some_and(|s| now.duration_since(s) > t.cascade_stuck);
    if on_pick && !inp.local.streaming && stuck {
        tracing::warn!(
            node = %ctx.name(),
            upstream = %pick,
            "cannot stream from our replicate_from node although it streams: following the leader for {:?}",
            t.cascade_backoff
        );
        d.next.timers.cascade_backoff_until = Some(now + t.cascade_backoff);
        return Some(leader.into());
    }
    Some(pick)
}

/// Not streaming: our slot on the upstream may be gone (dropped while we were elsewhere):
/// make it again (idempotent), every `slot_retry_every` at most.
fn retry_slot_on(
    ctx: &Ctx,
    d: &mut Decision,
    inp: &Inputs,
    up: &str,
    not_streaming_since: tokio::time::Instant,
) {
    let now = inp.now;
    let every = ctx.t.slot_retry_every;
    if !ctx.cfg.replication.slots
        || now.duration_since(not_streaming_since) < every
        || d.next
            .timers
            .slot_retry
            .is_some_and(|t| now.duration_since(t) < every)
    {
        return;
    }
    d.next.timers.slot_retry = Some(now);
    d.act(Action::CreateSlotOn {
        node: up.into(),
        slot: ctx.name().into(),
    });
}

/// The leader's PostgreSQL and agent ports both refuse connections on consecutive ticks: its
/// processes are gone while its host answers. Revoke its lease instead of waiting the TTL,
/// but never on one observer's word (a firewall rule can reset one node's connections to a
/// healthy leader, and a frozen leader agent also stops refreshing its key: seed 51): another
/// member must report the same refusals, and the leader's member key must have stopped
/// changing for `dead_leader_stale`. With one replica there is no second observer: the lease
/// runs out instead.
fn detect_dead_leader(
    ctx: &Ctx,
    d: &mut Decision,
    inp: &Inputs,
    view: &ClusterView,
    leader: &LeaderInfo,
) {
    let Some(refused) = inp.probes.leader_refused else {
        d.next.leader_watch = None;
        return;
    };
    let Some(m) = view.members.get(&leader.name) else {
        // Its member key shares the leader's lease; a missing one means the agent never
        // published (starting up): no judgement.
        d.next.leader_watch = None;
        return;
    };
    let now = inp.now;
    let mut w = match d.next.leader_watch.take() {
        Some(w) if w.leader == leader.name && w.lease == leader.lease => w,
        _ => LeaderWatch {
            leader: leader.name.clone(),
            lease: leader.lease,
            refused_hits: 0,
            member_stamp: Some(m.updated_ms),
            stamp_since: now,
        },
    };
    if w.member_stamp != Some(m.updated_ms) {
        w.member_stamp = Some(m.updated_ms);
        w.stamp_since = now;
    }
    w.refused_hits = if refused { w.refused_hits + 1 } else { 0 };
    if refused {
        d.soon = Some(ctx.t.dead_probe_every);
    }
    let stale = now.duration_since(w.stamp_since);
    let seconded = view
        .members
        .values()
        .any(|o| o.name != ctx.name() && o.name != leader.name && o.suspects == Some(leader.lease));
    // Stale by the leader's own loop period when it published one (a longer `loop_wait`
    // reaches the agents one by one).
    let theirs = m.loop_wait_ms.map_or(std::time::Duration::ZERO, |ms| {
        std::time::Duration::from_millis(ms) * 3 / 2
    });
    if w.refused_hits >= 2 && seconded && stale >= ctx.t.dead_leader_stale.max(theirs) {
        w.refused_hits = 0;
        d.act(Action::RevokeLeader(leader.clone()));
        d.again = true;
        d.because(format!(
            "{}'s PostgreSQL and agent ports refuse connections (another member sees it too) and its member key is {stale:?} old: revoking its lease",
            leader.name
        ));
    }
    d.next.leader_watch = Some(w);
}
