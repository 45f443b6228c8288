//! Who streams from whom: cascading replicas (`replicate_from`) and the slots each node keeps.
//! Pure functions of the config and the DCS view, so every agent reaches the same answer.

use pgha_config::{NodeConfig, PghaConfig};

use crate::types::{ClusterView, MemberRole, PgState};

/// The node `node` streams from while `leader` holds the lease: its `replicate_from` while
/// that node is a running replica whose own WAL receiver streams, else the leader.
pub fn upstream_for<'a>(
    config: &'a PghaConfig,
    view: &ClusterView,
    node: &str,
    leader: &str,
) -> Option<&'a NodeConfig> {
    let want = config.node(node)?.replicate_from.as_deref();
    let usable = want.filter(|up| {
        *up != leader
            && view.members.get(*up).is_some_and(|m| {
                m.pg_state == PgState::Running && m.role == MemberRole::Replica && m.streaming
            })
    });
    config.node(usable.unwrap_or(leader))
}

/// Slots `me` should hold for other nodes: one for each node whose upstream is `me`. On the
/// leader, nodes that stream from a cascading upstream get none (an unread slot would keep WAL
/// forever); they get one here again the moment they fall back to the leader.
pub fn wanted_slots(
    config: &PghaConfig,
    view: &ClusterView,
    me: &str,
    leader: &str,
) -> Vec<String> {
    config
        .nodes
        .iter()
        // A `nostream` replica reads the archive, never a slot: as our pgha.toml says, or
        // as its member key does (only its own agent may have reloaded the tag).
        .filter(|n| {
            let tagged = view
                .members
                .get(&n.name)
                .is_some_and(|m| m.tags.get("nostream").is_some_and(|v| v == "true"));
            n.name != me && !n.nostream && !tagged
        })
        .filter(|n| upstream_for(config, view, &n.name, leader).is_some_and(|u| u.name == me))
        .map(|n| n.name.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::MemberState;

    fn config() -> PghaConfig {
        pgha_config::load_from_str(
            r#"
[cluster]
name = "c"
[replication]
password = { env = "X" }
[[nodes]]
name = "n1"
host = "127.0.0.1"
port = 5432
data_dir = "/d/n1"
[[nodes]]
name = "n2"
host = "127.0.0.1"
port = 5433
data_dir = "/d/n2"
[[nodes]]
name = "n3"
host = "127.0.0.1"
port = 5434
data_dir = "/d/n3"
replicate_from = "n2"
"#,
            "test",
        )
        .unwrap()
    }

    fn member(name: &str, role: MemberRole, streaming: bool) -> MemberState {
        MemberState {
            name: name.into(),
            pg_address: String::new(),
            api_address: None,
            pg_state: PgState::Running,
            role,
            timeline: Some(1),
            lsn: None,
            replay_lsn: None,
            streaming,
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

    #[test]
    fn cascades_while_the_upstream_streams_else_follows_the_leader() {
        let c = config();
        let mut view = ClusterView::default();
        view.members
            .insert("n1".into(), member("n1", MemberRole::Primary, false));
        view.members
            .insert("n2".into(), member("n2", MemberRole::Replica, true));
        assert_eq!(upstream_for(&c, &view, "n3", "n1").unwrap().name, "n2");
        assert_eq!(upstream_for(&c, &view, "n2", "n1").unwrap().name, "n1");
        assert_eq!(wanted_slots(&c, &view, "n1", "n1"), vec!["n2"]);
        assert_eq!(wanted_slots(&c, &view, "n2", "n1"), vec!["n3"]);

        // n2 stopped streaming (restarting, or its PostgreSQL is down): n3 goes to the leader.
        view.members
            .insert("n2".into(), member("n2", MemberRole::Replica, false));
        assert_eq!(upstream_for(&c, &view, "n3", "n1").unwrap().name, "n1");
        assert_eq!(wanted_slots(&c, &view, "n1", "n1"), vec!["n2", "n3"]);
        assert!(wanted_slots(&c, &view, "n2", "n1").is_empty());

        // n2's agent is gone (member key expired).
        view.members.remove("n2");
        assert_eq!(upstream_for(&c, &view, "n3", "n1").unwrap().name, "n1");

        // n2 became the leader: n3 streams from it as from any leader.
        view.members
            .insert("n2".into(), member("n2", MemberRole::Primary, false));
        assert_eq!(upstream_for(&c, &view, "n3", "n2").unwrap().name, "n2");
        assert_eq!(wanted_slots(&c, &view, "n2", "n2"), vec!["n1", "n3"]);
    }
}
