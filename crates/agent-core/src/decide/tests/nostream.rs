//! `nodes[].nostream` (Patroni's tag): a replica that replays from the archive only.

use super::*;

/// The test config with `replication.restore_command` and `node` tagged nostream, as `me`.
fn nostream_ctx(node: usize, me: &str) -> Ctx {
    let mut cfg = (*ctx_with("restore_command = \"cp /archive/%f %p\"").cfg).clone();
    cfg.nodes[node].nostream = true;
    Ctx::new(Arc::new(cfg), me).unwrap()
}

/// n1 replicates from leader n2 and never streams: ticking every second for 60 s, the first
/// second at which it stops PostgreSQL to rewind, if it does.
fn rewind_while_not_streaming(c: &Ctx) -> Option<u64> {
    let start = Instant::now();
    let mut m = mem(
        start,
        Role::Follower {
            leader: "n2".into(),
        },
        42,
    );
    let v = view(Some(("n2", 7)));
    for s in 0..60 {
        let now = start + Duration::from_secs(s);
        renew(&mut m, now);
        let mut local = replica();
        local.streaming = false;
        let d = decide(c, &m, &healthy(now, local, v.clone()));
        assert!(
            has(
                &d,
                |a| matches!(a, Action::PointAt { upstream } if upstream == "n2")
            ),
            "{:?}",
            d.actions
        );
        if has(&d, |a| {
            matches!(
                a,
                Action::Spawn {
                    job: Job::StopForRewind,
                    ..
                }
            )
        }) {
            return Some(s);
        }
        if c.me.nostream {
            assert_eq!(
                d.reason,
                "follower of n2: replaying from the archive (nostream)"
            );
        }
        m = d.next;
    }
    None
}

#[tokio::test(start_paused = true)]
async fn a_nostream_replica_that_never_streams_is_left_replaying_from_the_archive() {
    assert_eq!(rewind_while_not_streaming(&nostream_ctx(0, "n1")), None);
    // A streaming replica that cannot stream is rewound (in case it diverged).
    assert!(rewind_while_not_streaming(&ctx()).is_some());
}

#[tokio::test(start_paused = true)]
async fn the_leader_keeps_no_slot_for_a_nostream_replica_and_drops_its_old_one() {
    let c = nostream_ctx(2, "n1");
    let start = Instant::now();
    let mut m = mem(start, Role::Leader, 42);
    let v = view(Some(("n1", 42)));
    let mut dropped = None;
    for s in 0..30 {
        let now = start + Duration::from_secs(s);
        renew(&mut m, now);
        let mut local = primary();
        // n3's slot from before the tag, idle now that it reads the archive; n2's missing.
        local.slots = Some(vec![("n3".into(), false)]);
        let d = decide(&c, &m, &healthy(now, local, v.clone()));
        assert!(
            !has(
                &d,
                |a| matches!(a, Action::CreateSlot { name } if name == "n3")
            ),
            "{:?}",
            d.actions
        );
        if s == 0 {
            assert!(has(
                &d,
                |a| matches!(a, Action::CreateSlot { name } if name == "n2")
            ));
        }
        if has(
            &d,
            |a| matches!(a, Action::DropSlot { name } if name == "n3"),
        ) {
            dropped = Some(s);
            break;
        }
        m = d.next;
    }
    // After the grace of an unwanted slot (one lease TTL).
    assert!(dropped.is_some_and(|s| (3..=5).contains(&s)), "{dropped:?}");
    // Without the tag, n3's slot is wanted.
    let idle_n3 = |v: &ClusterView| {
        let mut local = primary();
        local.slots = Some(vec![("n2".into(), true)]);
        decide(
            &ctx(),
            &mem(start, Role::Leader, 42),
            &healthy(start, local, v.clone()),
        )
    };
    let d = idle_n3(&v);
    assert!(has(
        &d,
        |a| matches!(a, Action::CreateSlot { name } if name == "n3")
    ));
    // Tagged in n3's own pgha.toml only (only its agent reloaded): its member key says so.
    let mut tagged = v.clone();
    tagged
        .members
        .get_mut("n3")
        .unwrap()
        .tags
        .insert("nostream".into(), "true".into());
    let d = idle_n3(&tagged);
    assert!(!has(&d, |a| matches!(a, Action::CreateSlot { .. })));
}
