//! Quorum commit: the order of `sync` and synchronous_standby_names changes, so that `sync`
//! is at every moment true of every acknowledged commit.

use super::*;

const BOTH: &str = "ANY 1 (\"n2\", \"n3\")";

fn claim(standbys: &[&str], quorum: Option<u32>) -> SyncState {
    SyncState {
        leader: "n1".into(),
        standbys: standbys.iter().map(|s| s.to_string()).collect(),
        quorum,
    }
}

/// A running primary n1 leading in quorum mode (`extra` config, strict or not), `sync` as given at revision
/// 9, PostgreSQL's synchronous_standby_names as given, the standbys streaming at these
/// flush positions.
fn leader(
    (extra, strict): (&str, bool),
    sync: SyncState,
    ssn: &str,
    streaming: &[(&str, u64)],
) -> (Ctx, Memory, Inputs) {
    let now = Instant::now();
    let mut c = ctx_with(&format!("mode = \"quorum\"\n{extra}"));
    if strict {
        c = ctx_changed(&c, |cfg| cfg.failover.sync_strict = true);
    }
    let m = mem(now, Role::Leader, 42);
    let mut v = view(Some(("n1", 42)));
    v.sync = Some(sync);
    v.sync_revision = 9;
    let mut local = primary();
    local.standbys = streaming_rows(streaming);
    local.sync_names = Some(ssn.into());
    (c, m, healthy(now, local, v))
}

/// The `sync` and synchronous_standby_names writes of `d`, in order.
fn writes(d: &Decision) -> Vec<String> {
    d.actions
        .iter()
        .filter_map(|a| match a {
            Action::PutSync { sync, .. } => {
                Some(format!("sync {:?} {:?}", sync.standbys, sync.quorum))
            }
            Action::SetSyncNames { value } => Some(format!("ssn {value}")),
            _ => None,
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn from_the_leader_alone_postgres_waits_first_and_sync_names_the_set_once_caught_up() {
    let (c, m, inp) = leader(
        ("", false),
        claim(&[], None),
        "",
        &[("n2", 1000), ("n3", 800)],
    );
    let d = decide(&c, &m, &inp);
    // `sync` naming nobody is true of anything: PostgreSQL may wait for the set at once.
    assert_eq!(writes(&d), vec![format!("ssn {BOTH}")]);
    let mut m = d.next.clone();
    // PostgreSQL waits from 900 on: n2 is past it, n3 not; one of two is enough.
    m.pending_sync.as_mut().unwrap().since_lsn = Some(Lsn(900));
    let (_, _, inp) = leader(
        ("", false),
        claim(&[], None),
        BOTH,
        &[("n2", 1000), ("n3", 800)],
    );
    let d = decide(&c, &m, &inp);
    assert_eq!(writes(&d), vec!["sync [\"n2\", \"n3\"] Some(2)"]);
    // Neither is past it yet: `sync` waits.
    m.pending_sync.as_mut().unwrap().since_lsn = Some(Lsn(2000));
    let d = decide(&c, &m, &inp);
    assert_eq!(writes(&d), Vec::<String>::new());
    // Set before this agent restarted (no pending change): set again for the position.
    let d = decide(&c, &mem(inp.now, Role::Leader, 42), &inp);
    assert_eq!(writes(&d), vec![format!("ssn {BOTH}")]);
    assert_eq!(d.next.pending_sync.unwrap().acks, Some(1));
}

#[tokio::test(start_paused = true)]
async fn fewer_acks_weaken_sync_before_postgres_waits_for_fewer() {
    // Two of n2, n3 hold every commit (`sync` quorum 1); n3 stops streaming: commits will
    // wait for n2 alone, so first `sync` says "any 2 of n2, n3 include a holder".
    let (c, m, inp) = leader(
        ("sync_standbys = 2", false),
        claim(&["n2", "n3"], Some(1)),
        "ANY 2 (\"n2\", \"n3\")",
        &[("n2", 1000)],
    );
    let d = decide(&c, &m, &inp);
    assert_eq!(
        writes(&d),
        vec!["sync [\"n2\", \"n3\"] Some(2)", "ssn ANY 1 (\"n2\")"]
    );
    // Once n2 caught up with the new setting, `sync` names it alone.
    let mut m = d.next.clone();
    m.pending_sync.as_mut().unwrap().since_lsn = Some(Lsn(900));
    let (_, _, inp) = leader(
        ("sync_standbys = 2", false),
        claim(&["n2", "n3"], Some(2)),
        "ANY 1 (\"n2\")",
        &[("n2", 1000)],
    );
    let d = decide(&c, &m, &inp);
    assert_eq!(writes(&d), vec!["sync [\"n2\"] Some(1)"]);
}

#[tokio::test(start_paused = true)]
async fn a_first_n_sync_is_widened_before_postgres_waits_for_any_of_more() {
    // From sync mode: n2 holds every commit. `ANY 1 (n2, n3)` may acknowledge on n3 alone,
    // so `sync` first says "any 2 of n2, n3".
    let (c, m, inp) = leader(
        ("", false),
        claim(&["n2"], None),
        "FIRST 1 (\"n2\")",
        &[("n2", 1000), ("n3", 1000)],
    );
    let d = decide(&c, &m, &inp);
    assert_eq!(
        writes(&d),
        vec![
            "sync [\"n2\", \"n3\"] Some(2)".to_string(),
            format!("ssn {BOTH}")
        ]
    );
    // A failed `sync` write stops the tick before PostgreSQL changes (the executor blocks
    // every later step; checked in the executor), and back in sync mode a quorum `sync`
    // goes to naming the leader alone before `FIRST n` is set.
    let c = ctx_with("mode = \"sync\"");
    let (_, m, inp) = leader(
        ("", false),
        claim(&["n2", "n3"], Some(2)),
        BOTH,
        &[("n2", 1000)],
    );
    let d = decide(&c, &m, &inp);
    assert_eq!(writes(&d), vec!["sync [] None"]);
}

#[tokio::test(start_paused = true)]
async fn strict_keeps_waiting_when_no_standby_is_left() {
    let (c, m, inp) = leader(("", true), claim(&["n2", "n3"], Some(2)), BOTH, &[]);
    let d = decide(&c, &m, &inp);
    assert_eq!(
        writes(&d),
        Vec::<String>::new(),
        "commits keep waiting for n2 or n3"
    );
    // Non-strict: the set shrinks to who streams (`sync` already covers it)...
    let (c, m, inp) = leader(
        ("", false),
        claim(&["n2", "n3"], Some(2)),
        BOTH,
        &[("n2", 1000)],
    );
    let d = decide(&c, &m, &inp);
    assert_eq!(writes(&d), vec!["ssn ANY 1 (\"n2\")"]);
    // ...and with no standby streaming PostgreSQL stops waiting once `sync` names nobody.
    let (c, m, inp) = leader(("", false), claim(&["n2", "n3"], Some(2)), BOTH, &[]);
    let d = decide(&c, &m, &inp);
    assert_eq!(writes(&d), vec!["sync [] None", "ssn "]);
    // Strict from the leader alone (after a promotion): commits wait for any one that may.
    let (c, m, inp) = leader(("", true), claim(&[], None), "", &[]);
    let d = decide(&c, &m, &inp);
    assert_eq!(writes(&d), vec![format!("ssn {BOTH}")]);
}

/// Review finding: strict mode fills the set with a node that never streamed from this
/// leader (it may hold WAL of another history, so positions would not compare): PostgreSQL
/// waits for it, `sync` never names it.
#[tokio::test(start_paused = true)]
async fn strict_waits_for_a_node_that_never_streamed_and_sync_never_names_it() {
    let (c, m, inp) = leader(
        ("sync_standbys = 2", true),
        claim(&[], None),
        "",
        &[("n2", 1000)],
    );
    let d = decide(&c, &m, &inp);
    assert_eq!(writes(&d), vec!["ssn ANY 2 (\"n2\", \"n3\")"]);
    let mut m = d.next.clone();
    m.pending_sync.as_mut().unwrap().since_lsn = Some(Lsn(900));
    let (_, _, inp) = leader(
        ("sync_standbys = 2", true),
        claim(&[], None),
        "ANY 2 (\"n2\", \"n3\")",
        &[("n2", 1000)],
    );
    let d = decide(&c, &m, &inp);
    // Of two confirmations one is n2's: n2 alone holds every commit.
    assert_eq!(writes(&d), vec!["sync [\"n2\"] Some(1)"]);
}

/// Two walsenders of one name count as one standby, at the lower position.
#[tokio::test(start_paused = true)]
async fn a_lingering_second_walsender_is_one_standby() {
    let (c, m, inp) = leader(
        ("sync_standbys = 2", false),
        claim(&[], None),
        "",
        &[("n2", 1000), ("n2", 500)],
    );
    let d = decide(&c, &m, &inp);
    assert_eq!(writes(&d), vec!["ssn ANY 1 (\"n2\")"]);
}
