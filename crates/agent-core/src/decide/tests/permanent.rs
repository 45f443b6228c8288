//! `replication.permanent_slots` on replicas: published by the leader, held and advanced by
//! the replicas that may lead, so a promoted one keeps what the slot's consumer needs.

use super::*;

const SITE: &str = "permanent_slots = [\"site_b\"]";

/// n1 follows leader n2, whose status publishes its slot `site_b` at `at`.
fn follower_view(at: u64) -> ClusterView {
    slot_status_view("site_b", at)
}

fn creates(d: &Decision) -> bool {
    has(
        d,
        |a| matches!(a, Action::CreateSlot { name } if name == "site_b"),
    )
}

fn advanced_to(d: &Decision) -> Option<Lsn> {
    d.actions.iter().find_map(|a| match a {
        Action::AdvanceSlot { name, to, .. } if name == "site_b" => Some(*to),
        _ => None,
    })
}

fn holding(at: Option<u64>, active: bool) -> Local {
    let mut l = replica();
    l.slots = Some(vec![("site_b".into(), active)]);
    if let Some(at) = at {
        l.slot_restart.insert("site_b".into(), Lsn(at));
    }
    l
}

#[tokio::test(start_paused = true)]
async fn the_leader_publishes_where_its_permanent_slots_hold_wal() {
    let c = ctx_with(SITE);
    let now = Instant::now();
    let m = mem(now, Role::Leader, 42);
    let mut local = primary();
    local.slots = Some(vec![("site_b".into(), false), ("n2".into(), true)]);
    local.slot_restart = BTreeMap::from([("site_b".into(), Lsn(700)), ("n2".into(), Lsn(990))]);
    let d = decide(&c, &m, &healthy(now, local, view(Some(("n1", 42)))));
    let st = d
        .actions
        .iter()
        .find_map(|a| match a {
            Action::PutStatus(s) => Some(s),
            _ => None,
        })
        .expect("status");
    // Only permanent slots: a member's slot moves with its member, not with a failover.
    assert_eq!(st.slots, BTreeMap::from([("site_b".to_string(), Lsn(700))]));
}

#[tokio::test(start_paused = true)]
async fn a_replica_holds_the_leaders_permanent_slots_advanced_never_past_its_replay() {
    let c = ctx_with(SITE);
    let now = Instant::now();
    let m = mem(now, follower_of("n2"), 42);
    let d = decide(&c, &m, &healthy(now, replica(), follower_view(700)));
    assert!(creates(&d), "{:?} {}", d.actions, d.reason);
    // The leader has not published it (not made yet, or an older agent): not yet.
    let mut v = follower_view(700);
    v.status.as_mut().unwrap().slots.clear();
    let d = decide(&c, &m, &healthy(now, replica(), v));
    assert!(!creates(&d), "{:?}", d.actions);
    // A status another leader wrote says nothing of this one's slot.
    let mut v = follower_view(700);
    v.status.as_mut().unwrap().leader = "n3".into();
    assert!(!creates(&decide(&c, &m, &healthy(now, replica(), v))));
    // Slots not read this tick: nothing is missing.
    let mut unread = replica();
    unread.slots = None;
    assert!(!creates(&decide(
        &c,
        &m,
        &healthy(now, unread, follower_view(700))
    )));

    // Held: advanced to the leader's position, at most to our replay (1000).
    let d = decide(
        &c,
        &m,
        &healthy(now, holding(Some(500), false), follower_view(700)),
    );
    assert_eq!(advanced_to(&d), Some(Lsn(700)));
    assert!(!creates(&d));
    let d = decide(
        &c,
        &m,
        &healthy(now, holding(Some(500), false), follower_view(4000)),
    );
    assert_eq!(advanced_to(&d), Some(Lsn(1000)));
    // Already there, or ahead (a slot cannot move back): left alone.
    for at in [700, 900] {
        let d = decide(
            &c,
            &m,
            &healthy(now, holding(Some(at), false), follower_view(700)),
        );
        assert_eq!(advanced_to(&d), None, "{at}");
    }
    // Someone streams through it from us: theirs to move.
    let d = decide(
        &c,
        &m,
        &healthy(now, holding(Some(500), true), follower_view(700)),
    );
    assert_eq!(advanced_to(&d), None);
    // Invalidated by PostgreSQL (no restart_lsn): dropped, to be made again.
    let d = tick(&c, &m, holding(None, false));
    assert!(drops(&d), "{:?}", d.actions);
    assert!(!drops(&tick(&c, &m, holding(None, true))));
    // Our replay unknown: no bound for the advance.
    let mut l = holding(Some(500), false);
    l.replay_lsn = None;
    assert_eq!(advanced_to(&tick(&c, &m, l)), None);
    // A job runs (it may be stopping PostgreSQL): nothing this tick.
    let mut busy = m.clone();
    busy.job = Some(RunningJob {
        id: 1,
        job: Job::CopyLogicalSlots {
            from: "n2".into(),
            names: vec![],
        },
        started: now,
    });
    let d = tick(&c, &busy, holding(Some(500), false));
    assert_eq!(advanced_to(&d), None, "{:?}", d.actions);
}

/// One tick of n1 at the start, `local` as its PostgreSQL, the leader's slot at 700.
fn tick(c: &Ctx, m: &Memory, local: Local) -> Decision {
    let now = Instant::now();
    decide(c, m, &healthy(now, local, follower_view(700)))
}

fn drops(d: &Decision) -> bool {
    has(
        d,
        |a| matches!(a, Action::DropSlot { name } if name == "site_b"),
    )
}

#[tokio::test(start_paused = true)]
async fn a_node_that_never_leads_holds_no_permanent_slot() {
    let c = ctx_changed(&ctx_with(SITE), |cfg| cfg.nodes[0].nofailover = true);
    let now = Instant::now();
    let m = mem(now, follower_of("n2"), 42);
    assert!(!creates(&decide(
        &c,
        &m,
        &healthy(now, replica(), follower_view(700))
    )));
    let d = decide(
        &c,
        &m,
        &healthy(now, holding(Some(500), false), follower_view(700)),
    );
    assert_eq!(advanced_to(&d), None);
    // A copy it holds from before (tagged since) is dropped while idle: it would hold WAL.
    assert!(drops(&d), "{:?}", d.actions);
    assert!(!drops(&tick(&c, &m, holding(Some(500), true))));
    // Nor without slots at all.
    let c = ctx_changed(&ctx_with(SITE), |cfg| cfg.replication.slots = false);
    assert!(!creates(&decide(
        &c,
        &m,
        &healthy(now, replica(), follower_view(700))
    )));
}
