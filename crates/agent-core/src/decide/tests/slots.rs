//! Replication slots on the primary: `member_slots_ttl`.

use super::*;

/// Leader n1 ticking every second for `secs` seconds with n3's member key gone and its slot
/// idle: the second at which it drops n3's slot, if it does.
fn drop_of_departed(c: &Ctx, secs: u64) -> Option<u64> {
    let start = Instant::now();
    let mut m = mem(start, Role::Leader, 42);
    let mut v = view(Some(("n1", 42)));
    v.members.remove("n3");
    for s in 0..secs {
        let now = start + Duration::from_secs(s);
        renew(&mut m, now);
        let mut local = primary();
        local.slots = Some(vec![("n2".into(), true), ("n3".into(), false)]);
        let d = decide(c, &m, &healthy(now, local, v.clone()));
        if has(
            &d,
            |a| matches!(a, Action::DropSlot { name } if name == "n3"),
        ) {
            return Some(s);
        }
        assert!(
            !has(&d, |a| matches!(a, Action::DropSlot { .. })),
            "{:?}",
            d.actions
        );
        m = d.next;
    }
    None
}

#[tokio::test(start_paused = true)]
async fn a_departed_members_slot_is_kept_for_member_slots_ttl_then_dropped() {
    let c = ctx_with("member_slots_ttl = \"10s\"");
    let at = drop_of_departed(&c, 30).expect("n3's slot is dropped");
    // Kept for the TTL, then for the usual grace of an unwanted slot (one lease TTL).
    assert!((10..=15).contains(&at), "dropped after {at} s");
    // The default (30 min, as Patroni 4) keeps it through the same time.
    assert_eq!(drop_of_departed(&ctx(), 30), None);
    // With n3's member key present the slot is wanted: never dropped.
    let start = Instant::now();
    let m = mem(start, Role::Leader, 42);
    let mut local = primary();
    local.slots = Some(vec![("n2".into(), true), ("n3".into(), false)]);
    let d = decide(&c, &m, &healthy(start, local, view(Some(("n1", 42)))));
    assert!(!has(&d, |a| matches!(a, Action::DropSlot { .. })));
    assert!(d.next.members_absent.is_empty());
}

#[tokio::test(start_paused = true)]
async fn an_absence_seen_before_a_gap_in_slot_checks_starts_over() {
    // n3's key was missing once, an hour ago, then this node stopped checking slots (another
    // role, a job): the absence counts from now, not from then.
    let c = ctx_with("member_slots_ttl = \"10s\"");
    let now = Instant::now() + Duration::from_secs(3600);
    let mut m = mem(now, Role::Leader, 42);
    m.members_absent
        .insert("n3".into(), now - Duration::from_secs(3600));
    m.timers.slots_checked = Some(now - Duration::from_secs(3600));
    let mut v = view(Some(("n1", 42)));
    v.members.remove("n3");
    let mut local = primary();
    local.slots = Some(vec![("n2".into(), true), ("n3".into(), false)]);
    let d = decide(&c, &m, &healthy(now, local, v));
    assert_eq!(d.next.members_absent.get("n3"), Some(&now));
    assert!(
        d.next.unwanted_slots.is_empty(),
        "{:?}",
        d.next.unwanted_slots
    );
}

#[tokio::test(start_paused = true)]
async fn slots_pgha_does_not_know_are_reported_unless_ignored_and_never_dropped() {
    let start = Instant::now();
    let m = mem(start, Role::Leader, 42);
    let mut local = primary();
    local.slots = Some(vec![
        ("n2".into(), true),
        ("n3".into(), true),
        ("site_b".into(), false),
        ("backup_tool".into(), false),
    ]);
    local.logical_slots = vec![
        LogicalSlot {
            name: "cdc".into(),
            database: Some("app".into()),
            plugin: Some("pgoutput".into()),
            ..Default::default()
        },
        LogicalSlot {
            name: "audit".into(),
            database: Some("audit".into()),
            plugin: Some("wal2json".into()),
            ..Default::default()
        },
    ];
    let inp = healthy(start, local, view(Some(("n1", 42))));
    let c = ctx_with("permanent_slots = [\"site_b\"]");
    let d = decide(&c, &m, &inp);
    assert_eq!(
        d.next.unknown_slots,
        vec!["logical:audit", "logical:cdc", "physical:backup_tool"]
    );
    assert!(!has(&d, |a| matches!(a, Action::DropSlot { .. })));
    // Patroni's matchers: every field a rule gives must be the slot's.
    let c = ctx_with(
        "permanent_slots = [\"site_b\"]\nignore_slots = [{ type = \"logical\", plugin = \"pgoutput\" }, { name = \"backup_tool\" }, { database = \"audit\", plugin = \"pgoutput\" }]",
    );
    let d = decide(&c, &m, &inp);
    assert_eq!(d.next.unknown_slots, vec!["logical:audit"]);
}
