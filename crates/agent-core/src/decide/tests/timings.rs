//! A TTL changed in the cluster settings: the move to a lease of the new TTL, and what rests
//! on the old lease until then.

use super::*;

/// `ctx()` with the settings' TTL at `ttl` (loop_wait 250ms, request timeout 500ms).
fn ctx_ttl(ttl: u64) -> Ctx {
    let c = ctx();
    let mut cfg = (*c.cfg).clone();
    cfg.failover.ttl = Duration::from_secs(ttl);
    c.next_generation(Arc::new(cfg)).unwrap()
}

fn rotation(d: &Decision) -> Option<(i64, Duration, Option<i64>)> {
    d.actions.iter().find_map(|a| match a {
        Action::RotateSession {
            old,
            ttl,
            leader_revision,
            ..
        } => Some((*old, *ttl, *leader_revision)),
        _ => None,
    })
}

#[tokio::test(start_paused = true)]
async fn a_leader_moves_its_key_to_a_lease_of_the_new_ttl_as_the_ticks_last_step() {
    let now = Instant::now();
    let m = mem(now, Role::Leader, 42); // granted with 3s
    let c = ctx_ttl(12);
    let d = decide(&c, &m, &healthy(now, primary(), view(Some(("n1", 42)))));
    assert_eq!(
        rotation(&d),
        Some((42, Duration::from_secs(12), Some(7))),
        "{d:?}"
    );
    assert!(
        matches!(d.actions.last(), Some(Action::RotateSession { .. })),
        "the leader-only writes before it use the old lease: {:?}",
        d.actions
    );
    // Until the move, the supervisor's deadline counts on the lease we hold (3s), not on 12s.
    assert_eq!(
        d.actions.first(),
        Some(&Action::Watchdog {
            deadline: Some(now + Duration::from_secs(3) - c.t.safety_margin)
        })
    );
    assert_eq!(d.next.role, Role::Leader);
    assert_eq!(c.t.loop_period(Some(Duration::from_secs(3))), c.t.loop_wait);
}

#[tokio::test(start_paused = true)]
async fn a_shorter_ttl_shortens_the_deadline_before_the_move() {
    let now = Instant::now();
    let mut m = mem(now, Role::Leader, 42);
    m.session = Some(Session {
        lease: 42,
        renewed_at: now,
        ttl: Duration::from_secs(12),
    });
    let c = ctx_ttl(4);
    let d = decide(&c, &m, &healthy(now, primary(), view(Some(("n1", 42)))));
    assert_eq!(rotation(&d), Some((42, Duration::from_secs(4), Some(7))));
    // The new lease may run out 4s after its grant: the deadline set first is on 4s.
    assert_eq!(
        d.actions.first(),
        Some(&Action::Watchdog {
            deadline: Some(now + Duration::from_secs(4) - c.t.safety_margin)
        })
    );
    assert!(c.t.fence_after_on(Duration::from_secs(12)) < Duration::from_secs(4));
}

#[tokio::test(start_paused = true)]
async fn a_longer_loop_period_never_outlasts_the_old_lease() {
    let c = ctx();
    let mut cfg = (*c.cfg).clone();
    cfg.failover.ttl = Duration::from_secs(40);
    cfg.failover.loop_wait = Duration::from_secs(10);
    let c = c.next_generation(Arc::new(cfg)).unwrap();
    let old = Duration::from_secs(3);
    assert!(c.t.loop_period(Some(old)) <= old / 4);
    assert!(c.t.fence_after_on(old) < c.t.watchdog_after_on(old));
    assert!(c.t.watchdog_after_on(old) < old);
    assert_eq!(
        c.t.loop_period(Some(Duration::from_secs(40))),
        c.t.loop_wait
    );
    // The failsafe promise asked of the others covers either lease.
    assert!(c.t.failsafe_promise(old) > Duration::from_secs(40));
}

#[tokio::test(start_paused = true)]
async fn no_move_while_a_job_runs_or_the_tick_takes_or_gives_up_a_lease() {
    let now = Instant::now();
    let c = ctx_ttl(12);
    // A follower with a clone running.
    let mut m = mem(now, follower_of("n2"), 42);
    m.job = Some(RunningJob {
        id: 1,
        job: Job::Reclone {
            upstream: "n2".into(),
        },
        started: now,
    });
    let d = decide(&c, &m, &healthy(now, replica(), view(Some(("n2", 9)))));
    assert_eq!(rotation(&d), None, "{d:?}");
    // Nobody leads and we take the key this tick: not in the same tick.
    let m = mem(now, Role::NoLeader, 42);
    let d = decide(&c, &m, &healthy(now, replica(), view(None)));
    if has(&d, |a| matches!(a, Action::AcquireLeader { .. })) {
        assert_eq!(rotation(&d), None, "{d:?}");
    }
    // A follower otherwise moves, with no leader key to carry.
    let m = mem(
        now,
        Role::Follower {
            leader: "n2".into(),
        },
        42,
    );
    let d = decide(&c, &m, &healthy(now, replica(), view(Some(("n2", 9)))));
    assert_eq!(rotation(&d), Some((42, Duration::from_secs(12), None)));
    // The same TTL: nothing to do.
    let d = decide(&ctx(), &m, &healthy(now, replica(), view(Some(("n2", 9)))));
    assert_eq!(rotation(&d), None);
}

#[tokio::test(start_paused = true)]
async fn a_key_with_our_name_on_another_lease_stops_extending_the_deadline() {
    // A move whose outcome was not known left the key on the new lease; we renew the old one.
    let now = Instant::now();
    let mut m = mem(now, Role::Leader, 42);
    let before = now - Duration::from_millis(300);
    m.watchdog = Some(before);
    let d = decide(&ctx(), &m, &healthy(now, primary(), view(Some(("n1", 43)))));
    assert!(
        matches!(d.actions.first(), Some(Action::Watchdog { deadline: Some(t) }) if *t == before),
        "{:?}",
        d.actions
    );
    assert!(has(&d, |a| matches!(
        a,
        Action::TakeOverLeader {
            lease: 42,
            revision: 7
        }
    )));
}

#[tokio::test(start_paused = true)]
async fn a_stale_leader_key_is_judged_by_the_leaders_own_loop_period() {
    // The leader already publishes every 2s (an edited loop_wait reached it first); we still
    // run with 250ms. Its key unchanged for 1s is not stale by its period.
    let c = ctx();
    assert_eq!(
        c.member(&healthy(Instant::now(), primary(), view(None)))
            .loop_wait_ms,
        Some(250)
    );
    let revoked_after = |leader_period: Option<u64>| {
        let mut v = view(Some(("n2", 9)));
        v.members.get_mut("n3").unwrap().suspects = Some(9);
        v.members.get_mut("n2").unwrap().loop_wait_ms = leader_period;
        ticks_until_revoked(&c, &v, 200).map(|(i, _)| c.t.dead_probe_every * i)
    };
    let ours = revoked_after(None).expect("revoked on our own period");
    assert!(ours < Duration::from_secs(1), "{ours:?}");
    let theirs = revoked_after(Some(2_000)).expect("revoked on its period");
    assert!(theirs >= Duration::from_secs(3), "{theirs:?}");
}
