//! Who may be promoted and who is best: pure functions over published member states.

use std::collections::{BTreeMap, BTreeSet};

use crate::types::{
    LeaderStatus, MemberRole, MemberState, PgState, RequestKind, SwitchoverRequest, SyncState,
};

/// The rules one election applies.
#[derive(Debug, Clone, Copy)]
pub struct Rules<'a> {
    /// maximum_lag_on_failover in bytes, against the last leader status.
    pub max_lag_bytes: u64,
    pub status: Option<&'a LeaderStatus>,
    /// The `sync` key: while it exists only its leader and standbys may be promoted, in either
    /// mode (a leader switching to async deletes it only after PostgreSQL stopped waiting
    /// for the standbys it names, and writes it before PostgreSQL starts waiting).
    pub sync: Option<&'a SyncState>,
    /// A pending switchover/failover: only its target may win.
    pub request: Option<&'a SwitchoverRequest>,
    /// Electing the leader of a standby cluster: it stays a standby, so a stopped replica may
    /// win (it starts and streams from the primary site; nothing is promoted).
    pub standby_cluster: bool,
    /// The members whose WAL position was read live this tick (this node, and the replicas
    /// probed): under a quorum `sync` only those count as seen. None: every published one.
    pub live: Option<&'a BTreeSet<String>>,
    /// The last leader's failsafe topology (`LeaderStatus::failsafe`, written while failsafe
    /// was on for it). Only its nodes may be promoted: the leader never asked any other
    /// whether it sees the DCS, so one outside it could take the lease while the leader
    /// serves on the others' confirmations (Patroni's `/failsafe` rule). It is the leader's
    /// word that counts, not this node's view of `failsafe_mode`: a leader cut off from the
    /// DCS does not see failsafe switched off, and serves on (simulator seed 13764).
    pub failsafe: Option<&'a BTreeMap<String, String>>,
}

impl<'a> Rules<'a> {
    /// [`Rules::failsafe`] as `status` makes it.
    pub fn failsafe_topology(
        status: Option<&'a LeaderStatus>,
    ) -> Option<&'a BTreeMap<String, String>> {
        status
            .and_then(|s| s.failsafe.as_ref())
            .filter(|t| !t.is_empty())
    }
}

/// Why `m` may not be promoted, or Ok.
pub fn eligibility(m: &MemberState, rules: &Rules<'_>) -> Result<(), String> {
    let manual = rules.request.map(|r| (r.to.as_str(), r.kind));
    if let Some((to, _)) = manual {
        if m.name != to {
            return Err(format!("a {} to {to} is pending", kind_name(manual)));
        }
    }
    // Never a leader, also not by request (Patroni refuses those too).
    if m.nofailover {
        return Err("tagged nofailover".into());
    }
    if m.failover_rank() == 0 {
        return Err("failover_priority 0: never a leader".into());
    }
    // Also not by an operator's failover: a leader cut off from the DCS that serves on its
    // nodes' confirmations looks exactly like a dead one from here (simulator seed 82060:
    // a manual failover to such a node left two writable nodes).
    if let Some(t) = rules.failsafe.filter(|t| !t.contains_key(&m.name)) {
        return Err(format!(
            "failsafe: not in the last leader's failsafe topology [{}] (it never asked this node whether it sees the DCS)",
            t.keys().cloned().collect::<Vec<_>>().join(", ")
        ));
    }
    match (m.pg_state, m.role) {
        (_, MemberRole::Uninitialized) => return Err("no data directory yet".into()),
        (PgState::Stopped, MemberRole::Replica) if !rules.standby_cluster => {
            return Err("its PostgreSQL is not running".into())
        }
        (_, MemberRole::Primary) if rules.standby_cluster => {
            return Err("a primary's data dir cannot lead a standby cluster".into())
        }
        _ => {}
    }
    let Some(lsn) = m.lsn else {
        return Err("its WAL position is unknown".into());
    };
    let forced = matches!(manual, Some((_, RequestKind::Failover)));
    if let (Some(st), false, MemberRole::Replica) = (rules.status, forced, m.role) {
        let lag = st.lsn.bytes_since(lsn);
        if lag > rules.max_lag_bytes {
            return Err(format!(
                "{lag} bytes behind the last primary position {} (maximum_lag_on_failover {})",
                st.lsn, rules.max_lag_bytes
            ));
        }
    }
    if let Some(sync) = rules.sync {
        if m.name != sync.leader && !sync.standbys.contains(&m.name) {
            return Err(format!(
                "sync mode: only the synchronous standbys [{}] may be promoted",
                sync.standbys.join(", ")
            ));
        }
    }
    Ok(())
}

fn kind_name(manual: Option<(&str, RequestKind)>) -> &'static str {
    match manual {
        Some((_, RequestKind::Failover)) => "failover",
        _ => "switchover",
    }
}

/// Ordering key: newest timeline, then a running primary (every replica on its timeline
/// streams from it, so none holds WAL it lacks; a replica's position read a moment later than
/// the primary's is ahead only while the primary keeps writing), then furthest WAL, then the
/// higher `failover_priority` (it decides only between equally advanced candidates: never one
/// that lacks WAL another has), then a node that is a primary on disk, then name (ascending)
/// so every agent computes the same winner.
fn rank(m: &MemberState) -> (i64, bool, u64, u32, bool, std::cmp::Reverse<String>) {
    (
        m.timeline.unwrap_or(0),
        m.role == MemberRole::Primary && m.pg_state == PgState::Running,
        m.lsn.map(|l| l.0).unwrap_or(0),
        m.failover_rank(),
        m.role == MemberRole::Primary,
        std::cmp::Reverse(m.name.clone()),
    )
}

/// The eligible member every agent agrees should lead: under a quorum `sync`, only one that
/// [`quorum_check`] accepts.
pub fn best<'a>(
    members: impl IntoIterator<Item = &'a MemberState> + Clone,
    rules: &Rules<'_>,
) -> Option<&'a MemberState> {
    // Under a quorum `sync` every candidate streamed from its leader, so positions compare
    // on one history; a replica's reported timeline is its last restartpoint's once its
    // receiver stopped (possibly older than the one it received), so it does not rank.
    let quorum = rules.sync.is_some_and(|s| s.quorum.is_some());
    let winner = members
        .clone()
        .into_iter()
        .filter(|m| eligibility(m, rules).is_ok())
        .max_by_key(|m| {
            let mut r = rank(m);
            if quorum {
                r.0 = 0;
            }
            r
        })?;
    quorum_check(winner, members, rules).ok()?;
    Some(winner)
}

/// Quorum commit: any `quorum` of the standbys `sync` names include one holding every
/// acknowledged commit, so `winner` (one of them) may be promoted only when it sees that many
/// of them, positions read live, and none has more WAL (they all streamed from the leader
/// that wrote `sync`: one history; a stopped receiver's timeline may read older). The
/// leader `sync` names needs no quorum (it wrote every commit), nor does a `FIRST n` `sync`
/// (each named standby holds them all).
pub fn quorum_check<'a>(
    winner: &MemberState,
    members: impl IntoIterator<Item = &'a MemberState>,
    rules: &Rules<'_>,
) -> Result<(), String> {
    let Some(sync) = rules.sync else {
        return Ok(());
    };
    let Some(q) = sync.quorum else {
        return Ok(());
    };
    if winner.name == sync.leader {
        return Ok(());
    }
    let seen: Vec<&MemberState> = members
        .into_iter()
        .filter(|m| sync.standbys.contains(&m.name) && m.lsn.is_some())
        .filter(|m| match rules.live {
            Some(l) => l.contains(&m.name),
            // Published positions (a leader's check before it hands over): running ones.
            None => m.pg_state == PgState::Running,
        })
        .collect();
    if seen.len() < q as usize {
        return Err(format!(
            "quorum commit: {} of the standbys [{}] seen live, {q} needed to be sure of every acknowledged commit",
            seen.len(),
            sync.standbys.join(", ")
        ));
    }
    if let Some(ahead) = seen.iter().find(|m| m.lsn > winner.lsn) {
        return Err(format!(
            "quorum commit: {} is further than {} and may not be promoted",
            ahead.name, winner.name
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgha_postgres::Lsn;

    fn m(name: &str, lsn: u64, role: MemberRole) -> MemberState {
        MemberState {
            name: name.into(),
            pg_address: "h:1".into(),
            api_address: None,
            pg_state: PgState::Running,
            role,
            timeline: Some(1),
            lsn: Some(Lsn(lsn)),
            replay_lsn: Some(Lsn(lsn)),
            streaming: true,
            upstream: None,
            nofailover: false,
            updated_ms: 0,
            checkpoint_timeline: None,
            suspects: None,
            noloadbalance: false,
            tags: Default::default(),
            pending_restart: Vec::new(),
            loop_wait_ms: None,
            failover_priority: None,
        }
    }

    fn rules<'a>(status: Option<&'a LeaderStatus>, sync: Option<&'a SyncState>) -> Rules<'a> {
        Rules {
            max_lag_bytes: 1000,
            status,
            sync,
            request: None,
            standby_cluster: false,
            live: None,
            failsafe: None,
        }
    }

    #[test]
    fn most_advanced_replica_wins() {
        let a = m("a", 500, MemberRole::Replica);
        let b = m("b", 900, MemberRole::Replica);
        let c = m("c", 700, MemberRole::Replica);
        assert_eq!(best([&a, &b, &c], &rules(None, None)).unwrap().name, "b");
    }

    #[test]
    fn a_standby_cluster_may_elect_a_stopped_replica_never_a_primary_data_dir() {
        let mut stopped = m("a", 900, MemberRole::Replica);
        stopped.pg_state = PgState::Stopped;
        let primary = m("b", 950, MemberRole::Primary);
        let normal = rules(None, None);
        assert!(eligibility(&stopped, &normal).is_err());
        let standby = Rules {
            standby_cluster: true,
            ..normal
        };
        assert!(eligibility(&primary, &standby)
            .unwrap_err()
            .contains("cannot lead a standby cluster"));
        assert_eq!(best([&stopped, &primary], &standby).unwrap().name, "a");
    }

    #[test]
    fn lagging_and_nofailover_are_skipped() {
        let st = LeaderStatus {
            leader: "p".into(),
            lsn: Lsn(5000),
            timeline: 1,
            updated_ms: 0,
            slots: Default::default(),
            failsafe: None,
        };
        let far = m("far", 100, MemberRole::Replica);
        let mut tagged = m("tagged", 4900, MemberRole::Replica);
        tagged.nofailover = true;
        let ok = m("ok", 4500, MemberRole::Replica);
        let r = rules(Some(&st), None);
        assert!(eligibility(&far, &r)
            .unwrap_err()
            .contains("4900 bytes behind"));
        assert_eq!(best([&far, &tagged, &ok], &r).unwrap().name, "ok");
    }

    #[test]
    fn sync_mode_only_promotes_sync_standbys() {
        let sync = SyncState {
            leader: "p".into(),
            standbys: vec!["b".into()],
            quorum: None,
        };
        let a = m("a", 900, MemberRole::Replica);
        let b = m("b", 800, MemberRole::Replica);
        assert_eq!(best([&a, &b], &rules(None, Some(&sync))).unwrap().name, "b");
        let none = SyncState {
            leader: "p".into(),
            standbys: vec![],
            quorum: None,
        };
        assert!(best([&a, &b], &rules(None, Some(&none))).is_none());
    }

    /// Quorum commit: any 2 of a, b, c include one holding every acknowledged commit.
    #[test]
    fn a_quorum_sync_promotes_only_one_that_saw_enough_and_none_further() {
        let sync = SyncState {
            leader: "p".into(),
            standbys: vec!["a".into(), "b".into(), "c".into()],
            quorum: Some(2),
        };
        let a = m("a", 500, MemberRole::Replica);
        let b = m("b", 400, MemberRole::Replica);
        let c = m("c", 900, MemberRole::Replica);
        let live = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<BTreeSet<_>>();
        fn with<'a>(l: &'a BTreeSet<String>, sync: &'a SyncState) -> Rules<'a> {
            Rules {
                live: Some(l),
                ..rules(None, Some(sync))
            }
        }
        // a alone is not enough: c (not seen) may hold commits a lacks.
        let only_a = live(&["a"]);
        assert!(best([&a], &with(&only_a, &sync)).is_none());
        assert!(quorum_check(&a, [&a], &with(&only_a, &sync))
            .unwrap_err()
            .contains("1 of the standbys [a, b, c] seen live, 2 needed"));
        // a and b seen: one of them holds every commit, and a is the further.
        let ab = live(&["a", "b"]);
        assert_eq!(best([&a, &b], &with(&ab, &sync)).unwrap().name, "a");
        // A published position that was not read live does not count.
        assert!(best([&a, &b], &with(&only_a, &sync)).is_none());
        // c seen and further: c, never a.
        let abc = live(&["a", "b", "c"]);
        assert_eq!(best([&a, &b, &c], &with(&abc, &sync)).unwrap().name, "c");
        let mut never = c.clone();
        never.nofailover = true;
        assert!(quorum_check(&a, [&a, &b, &never], &with(&abc, &sync))
            .unwrap_err()
            .contains("c is further than a"));
        assert!(best([&a, &b, &never], &with(&abc, &sync)).is_none());
        // A stopped receiver reports its last restartpoint's timeline: WAL decides
        // (simulator seed 11119: the one with the newer timeline and less WAL won).
        let mut stale = c.clone();
        stale.timeline = Some(0);
        assert_eq!(
            best([&a, &b, &stale], &with(&abc, &sync)).unwrap().name,
            "c"
        );
        // The leader `sync` names needs no quorum.
        let p = m("p", 100, MemberRole::Primary);
        assert_eq!(best([&p], &with(&only_a, &sync)).unwrap().name, "p");
    }

    #[test]
    fn newer_timeline_beats_longer_wal_and_ties_break_by_name() {
        let mut old = m("old", 9000, MemberRole::Primary);
        old.timeline = Some(1);
        let mut new = m("new", 100, MemberRole::Primary);
        new.timeline = Some(2);
        assert_eq!(best([&old, &new], &rules(None, None)).unwrap().name, "new");
        let x = m("x", 5, MemberRole::Replica);
        let y = m("y", 5, MemberRole::Replica);
        assert_eq!(best([&y, &x], &rules(None, None)).unwrap().name, "x");
    }

    /// Found by `cargo xtask faults --scenario etcd-all-cut`: when etcd came back after the
    /// leader's lease had expired in it, the primary that served through the failsafe ranked
    /// below a replica whose position was read a moment later (the primary kept writing), so
    /// it stopped and the replica was promoted.
    #[test]
    fn a_running_primary_outranks_a_replica_read_later_on_its_timeline() {
        let primary = m("p", 0x5094110, MemberRole::Primary);
        let replica = m("a", 0x5094320, MemberRole::Replica);
        assert_eq!(
            best([&replica, &primary], &rules(None, None)).unwrap().name,
            "p"
        );
        // A stopped primary's position is its last checkpoint: WAL decides again.
        let mut stopped = primary.clone();
        stopped.pg_state = PgState::Stopped;
        assert_eq!(
            best([&replica, &stopped], &rules(None, None)).unwrap().name,
            "a"
        );
        // A newer timeline still wins over a running primary of an older one.
        let mut newer = replica.clone();
        newer.timeline = Some(2);
        assert_eq!(
            best([&newer, &primary], &rules(None, None)).unwrap().name,
            "a"
        );
    }

    #[test]
    fn pending_request_restricts_to_its_target() {
        let req = SwitchoverRequest {
            kind: RequestKind::Switchover,
            from: Some("p".into()),
            to: "a".into(),
            at_ms: None,
            requested_ms: 0,
        };
        let a = m("a", 10, MemberRole::Replica);
        let b = m("b", 900, MemberRole::Replica);
        let mut r = rules(None, None);
        r.request = Some(&req);
        assert_eq!(best([&a, &b], &r).unwrap().name, "a");
        // A node that never leads is refused also by request, with the reason.
        let mut never = a.clone();
        never.failover_priority = Some(0);
        assert_eq!(
            eligibility(&never, &r).unwrap_err(),
            "failover_priority 0: never a leader"
        );
        never.failover_priority = None;
        never.nofailover = true;
        assert_eq!(eligibility(&never, &r).unwrap_err(), "tagged nofailover");
        assert!(best([&never, &b], &r).is_none());
    }

    #[test]
    fn outside_the_failsafe_topology_nobody_is_elected_not_even_by_request() {
        let t: BTreeMap<String, String> = [("p".to_string(), String::new())].into();
        let b = m("b", 900, MemberRole::Replica);
        let mut r = rules(None, None);
        r.failsafe = Some(&t);
        assert!(eligibility(&b, &r)
            .unwrap_err()
            .starts_with("failsafe: not in the last leader's failsafe topology [p]"));
        let req = |kind| SwitchoverRequest {
            kind,
            from: Some("p".into()),
            to: "b".into(),
            at_ms: None,
            requested_ms: 0,
        };
        let switchover = req(RequestKind::Switchover);
        r.request = Some(&switchover);
        assert!(eligibility(&b, &r).is_err());
        let failover = req(RequestKind::Failover);
        r.request = Some(&failover);
        assert!(eligibility(&b, &r).is_err());
    }

    /// failover_priority decides only between equally advanced candidates.
    #[test]
    fn priority_breaks_ties_of_position_never_of_wal() {
        let r = rules(None, None);
        let a = m("a", 500, MemberRole::Replica);
        let mut b = m("b", 500, MemberRole::Replica);
        assert_eq!(best([&a, &b], &r).unwrap().name, "a", "by name");
        b.failover_priority = Some(2);
        assert_eq!(best([&a, &b], &r).unwrap().name, "b");
        let ahead = m("ahead", 501, MemberRole::Replica);
        assert_eq!(best([&a, &b, &ahead], &r).unwrap().name, "ahead");
        let mut newer = m("newer", 10, MemberRole::Replica);
        newer.timeline = Some(2);
        b.failover_priority = Some(100);
        assert_eq!(best([&b, &newer], &r).unwrap().name, "newer");
    }
}
