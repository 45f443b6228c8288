//! `replication.logical_slots`: permanent logical slots kept across failover.

use super::*;

const CDC: &str = "logical_slots = [{ name = \"cdc\", database = \"app\", plugin = \"pgoutput\" }]";

fn slot(name: &str, plugin: &str, confirmed: u64) -> LogicalSlot {
    LogicalSlot {
        name: name.into(),
        database: Some("app".into()),
        plugin: Some(plugin.into()),
        confirmed_flush: Some(Lsn(confirmed)),
    }
}

fn status_of(d: &Decision) -> Option<&LeaderStatus> {
    d.actions.iter().find_map(|a| match a {
        Action::PutStatus(s) => Some(s),
        _ => None,
    })
}

#[tokio::test(start_paused = true)]
async fn the_leader_creates_its_logical_slots_and_publishes_where_consumers_confirmed() {
    let c = ctx_with(CDC);
    let now = Instant::now();
    let m = mem(now, Role::Leader, 42);
    let d = decide(&c, &m, &healthy(now, primary(), view(Some(("n1", 42)))));
    assert!(
        has(
            &d,
            |a| matches!(a, Action::CreateLogicalSlot { name, database, plugin }
            if name == "cdc" && database == "app" && plugin == "pgoutput")
        ),
        "{:?}",
        d.actions
    );
    assert!(status_of(&d).unwrap().slots.is_empty());

    let mut local = primary();
    local.logical_slots = vec![slot("cdc", "pgoutput", 900)];
    let d = decide(&c, &m, &healthy(now, local, view(Some(("n1", 42)))));
    assert!(!has(&d, |a| matches!(a, Action::CreateLogicalSlot { .. })));
    assert_eq!(
        status_of(&d).unwrap().slots,
        BTreeMap::from([("cdc".to_string(), Lsn(900))])
    );
    assert!(
        d.next.unknown_slots.is_empty(),
        "{:?}",
        d.next.unknown_slots
    );

    // A slot of that name with another plugin is not ours: reported, never published
    // (replicas would copy it), nor replaced.
    let mut local = primary();
    local.logical_slots = vec![slot("cdc", "wal2json", 900)];
    let d = decide(&c, &m, &healthy(now, local, view(Some(("n1", 42)))));
    assert!(status_of(&d).unwrap().slots.is_empty());
    assert_eq!(d.next.unknown_slots, vec!["logical:cdc"]);
    assert!(!has(&d, |a| matches!(
        a,
        Action::CreateLogicalSlot { .. } | Action::DropSlot { .. }
    )));
    // Without the setting nothing is created.
    let d = decide(&ctx(), &m, &healthy(now, primary(), view(Some(("n1", 42)))));
    assert!(!has(&d, |a| matches!(a, Action::CreateLogicalSlot { .. })));
}

/// n1 follows leader n2, whose status publishes its slot `cdc` at `at`.
fn follower_view(at: u64) -> ClusterView {
    slot_status_view("cdc", at)
}

/// `follower_view(at)` as the leader's `n`th status.
fn written(at: u64, n: u32) -> ClusterView {
    let mut v = follower_view(at);
    v.status.as_mut().unwrap().updated_ms = 1 + u64::from(n);
    v
}

fn copies(d: &Decision) -> bool {
    has(d, |a| {
        matches!(a, Action::Spawn { job: Job::CopyLogicalSlots { from, names }, .. }
            if from == "n2" && names == &vec!["cdc".to_string()])
    })
}

fn advanced_to(d: &Decision) -> Option<Lsn> {
    d.actions.iter().find_map(|a| match a {
        Action::AdvanceSlot { name, database, to } if name == "cdc" && database == "app" => {
            Some(*to)
        }
        _ => None,
    })
}

#[tokio::test(start_paused = true)]
async fn a_replica_copies_a_missing_slot_once_then_advances_it_never_past_its_replay() {
    let c = ctx_with(CDC);
    let now = Instant::now();
    let m = mem(now, follower_of("n2"), 42);
    // Not before we replayed (1000) up to the leader's slot: a copy ahead of our replay
    // would, promoted, skip what the new timeline writes in between.
    let d = decide(&c, &m, &healthy(now, replica(), follower_view(1500)));
    assert!(!copies(&d), "{:?}", d.actions);
    let d = decide(&c, &m, &healthy(now, replica(), follower_view(900)));
    assert!(copies(&d), "{:?} {}", d.actions, d.reason);
    assert!(
        d.reason.contains("copying logical slots cdc"),
        "{}",
        d.reason
    );
    // The copy failed (or the slot did not appear): not again within the back-off, as each
    // copy restarts PostgreSQL.
    let mut m2 = d.next.clone();
    m2.job = None;
    let later = now + Duration::from_secs(5);
    renew(&mut m2, later);
    let d = decide(&c, &m2, &healthy(later, replica(), follower_view(900)));
    assert!(!copies(&d), "{:?}", d.actions);
    let much_later = now + crate::decide::logical::COPY_BACKOFF;
    renew(&mut m2, much_later);
    let d = decide(&c, &m2, &healthy(much_later, replica(), follower_view(900)));
    assert!(copies(&d), "{:?}", d.actions);

    // With a copy: advanced to the leader's position, at most to what we replayed (1000).
    let mut local = replica();
    local.logical_slots = vec![slot("cdc", "pgoutput", 800)];
    let d = decide(&c, &m, &healthy(now, local.clone(), follower_view(1500)));
    assert_eq!(advanced_to(&d), Some(Lsn(1000)));
    assert!(!copies(&d));
    let d = decide(&c, &m, &healthy(now, local.clone(), follower_view(900)));
    assert_eq!(advanced_to(&d), Some(Lsn(900)));
    local.logical_slots = vec![slot("cdc", "pgoutput", 900)];
    let d = decide(&c, &m, &healthy(now, local, follower_view(900)));
    assert_eq!(advanced_to(&d), None);

    // A status from another leader (the last one's, before this leader published) says
    // nothing about this leader's slot.
    let mut v = follower_view(900);
    v.status.as_mut().unwrap().leader = "n3".into();
    let d = decide(&c, &m, &healthy(now, replica(), v));
    assert!(!copies(&d) && advanced_to(&d).is_none(), "{:?}", d.actions);
    // pg_replication_slots could not be read this tick: not a missing copy (no restart).
    let mut unread = replica();
    unread.slots = None;
    let d = decide(&c, &m, &healthy(now, unread, follower_view(900)));
    assert!(!copies(&d), "{:?}", d.actions);
    // The leader has not made it yet: nothing to copy.
    let mut v = follower_view(900);
    v.status.as_mut().unwrap().slots.clear();
    let d = decide(&c, &m, &healthy(now, replica(), v));
    assert!(!copies(&d));
}

#[tokio::test(start_paused = true)]
async fn a_node_that_never_leads_keeps_no_copy() {
    let c = ctx_changed(&ctx_with(CDC), |cfg| cfg.nodes[0].nofailover = true);
    let now = Instant::now();
    let m = mem(now, follower_of("n2"), 42);
    let mut local = replica();
    let d = decide(&c, &m, &healthy(now, local.clone(), follower_view(1500)));
    assert!(!copies(&d), "{:?}", d.actions);
    local.logical_slots = vec![slot("cdc", "pgoutput", 800)];
    let d = decide(&c, &m, &healthy(now, local, follower_view(1500)));
    assert_eq!(advanced_to(&d), None);
}

/// A former primary rejoins with its own slot, ahead of the new leader's copy (it confirmed
/// on the old timeline, maybe past the fork): copied anew once it stays ahead a few loops; a
/// fresh copy merely ahead of the last published position is left alone.
#[tokio::test(start_paused = true)]
async fn a_copy_ahead_of_the_leaders_slot_for_a_few_loops_is_copied_anew() {
    let c = ctx_with(CDC);
    let start = Instant::now();
    let mut m = mem(start, follower_of("n2"), 42);
    let mut local = replica();
    local.replay_lsn = Some(Lsn(5000));
    local.logical_slots = vec![slot("cdc", "pgoutput", 2000)];
    let mut copied_at = None;
    for i in 0..10u32 {
        let now = start + c.t.loop_wait * i;
        renew(&mut m, now);
        let d = decide(&c, &m, &healthy(now, local.clone(), written(1500, i)));
        assert_eq!(advanced_to(&d), None, "never moved while ahead");
        if copies(&d) {
            copied_at = Some(i);
            break;
        }
        m = d.next;
    }
    assert_eq!(copied_at, Some(3));

    // The leader wrote no new status (it runs a job, or the watch is late): however long,
    // nothing says its slot did not pass our copy since.
    let mut m = mem(start, follower_of("n2"), 42);
    for i in 0..10u32 {
        let now = start + c.t.loop_wait * i;
        renew(&mut m, now);
        let d = decide(
            &c,
            &m,
            &healthy(now, local.clone(), written(1500, i.min(2))),
        );
        assert!(!copies(&d), "tick {i}: {:?}", d.actions);
        m = d.next;
    }
    // Three fresh statuses in one loop's time are not three loops.
    let mut m = mem(start, follower_of("n2"), 42);
    for i in 0..4u32 {
        let now = start + c.t.loop_wait / 8 * i;
        renew(&mut m, now);
        let d = decide(&c, &m, &healthy(now, local.clone(), written(1500, i)));
        assert!(!copies(&d), "tick {i}: {:?}", d.actions);
        m = d.next;
    }

    // The leader's position catches up within two loops: no copy, and the next time it is
    // ahead counts from then.
    let mut m = mem(start, follower_of("n2"), 42);
    for (i, at) in [(0u32, 1500u64), (1, 1500), (2, 2100), (3, 2100), (4, 2100)] {
        let now = start + c.t.loop_wait * i;
        renew(&mut m, now);
        let d = decide(&c, &m, &healthy(now, local.clone(), written(at, i)));
        assert!(!copies(&d), "tick {i}: {:?}", d.actions);
        m = d.next;
    }
    assert!(m.logical_ahead.is_empty());
}

/// Creating a slot waits for open write transactions (up to its statement budget): the
/// leader makes one a tick, so budgets never add up past its lease.
#[tokio::test(start_paused = true)]
async fn the_leader_creates_one_slot_a_tick() {
    let c = ctx_with(
        "logical_slots = [{ name = \"a\", database = \"app\", plugin = \"pgoutput\" }, { name = \"b\", database = \"app\", plugin = \"pgoutput\" }]",
    );
    let now = Instant::now();
    let m = mem(now, Role::Leader, 42);
    let creates = |d: &Decision| {
        d.actions
            .iter()
            .filter(|a| matches!(a, Action::CreateLogicalSlot { .. }))
            .count()
    };
    let d = decide(&c, &m, &healthy(now, primary(), view(Some(("n1", 42)))));
    assert_eq!(creates(&d), 1, "{:?}", d.actions);
    let mut local = primary();
    local.logical_slots = vec![slot("a", "pgoutput", 900)];
    let d = decide(&c, &m, &healthy(now, local, view(Some(("n1", 42)))));
    assert!(has(
        &d,
        |a| matches!(a, Action::CreateLogicalSlot { name, .. } if name == "b")
    ));
}

/// The statuses counted against a copy are one leader's: a new leader (whose clock may be
/// behind) starts the count again. With no replay position known, nothing is advanced.
#[tokio::test(start_paused = true)]
async fn the_ahead_count_is_per_leader_and_no_replay_means_no_advance() {
    let c = ctx_with(CDC);
    let start = Instant::now();
    let mut m = mem(start, follower_of("n2"), 42);
    let mut local = replica();
    local.replay_lsn = Some(Lsn(5000));
    local.logical_slots = vec![slot("cdc", "pgoutput", 2000)];
    for i in 0..3u32 {
        let now = start + c.t.loop_wait * i;
        renew(&mut m, now);
        let d = decide(&c, &m, &healthy(now, local.clone(), written(1500, i)));
        m = d.next;
    }
    // A status by another leader at the fourth loop: counted from zero, no copy yet.
    m.logical_ahead.get_mut("cdc").unwrap().leader = "n3".into();
    let now = start + c.t.loop_wait * 3;
    renew(&mut m, now);
    let d = decide(&c, &m, &healthy(now, local.clone(), written(1500, 3)));
    assert!(!copies(&d), "{:?}", d.actions);
    assert_eq!(d.next.logical_ahead["cdc"].statuses, 0);

    let m = mem(start, follower_of("n2"), 42);
    let mut behind = replica();
    behind.replay_lsn = None;
    behind.logical_slots = vec![slot("cdc", "pgoutput", 800)];
    let d = decide(&c, &m, &healthy(start, behind, follower_view(900)));
    assert_eq!(advanced_to(&d), None, "{:?}", d.actions);
}
