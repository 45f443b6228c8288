//! `pgha topology`: who streams from whom, as a tree drawn from the members' published
//! upstreams (the leader first; a node streaming from nobody is a root of its own).

use std::collections::BTreeMap;

use pgha_config::PghaConfig;

use crate::dcs::ClusterView;
use crate::ops::list_rows;

/// The tree as text lines, e.g. `node1 [Leader, running]` / `├── node2 [Replica, streaming, lag 0]`.
pub fn lines(config: &PghaConfig, view: &ClusterView) -> Vec<String> {
    let rows = list_rows(config, view);
    // MEMBER, HOST, ROLE, STATE, TL, LSN, LAG, TAGS
    let label: BTreeMap<&str, String> = rows
        .iter()
        .skip(1)
        .map(|r| {
            let lag = if r[6] == "-" {
                String::new()
            } else {
                format!(", lag {}", r[6])
            };
            (r[0].as_str(), format!("{} [{}, {}{lag}]", r[0], r[2], r[3]))
        })
        .collect();
    let by_addr: BTreeMap<String, &str> = config
        .nodes
        .iter()
        .map(|n| (n.address(), n.name.as_str()))
        .collect();
    let parent = |name: &str| -> Option<&str> {
        let m = view.members.get(name)?;
        if !m.streaming {
            return None;
        }
        let up = m.upstream.as_deref()?;
        by_addr.get(up).copied().filter(|p| *p != name)
    };
    let mut children: BTreeMap<Option<&str>, Vec<&str>> = BTreeMap::new();
    for n in &config.nodes {
        children.entry(parent(&n.name)).or_default().push(&n.name);
    }
    let leader = view.leader.as_ref().map(|l| l.name.as_str());
    let mut roots = children.remove(&None).unwrap_or_default();
    roots.sort_by_key(|r| Some(*r) != leader);
    let mut out = Vec::new();
    let mut seen = Vec::new();
    for r in roots {
        out.push(label.get(r).cloned().unwrap_or_else(|| r.to_string()));
        seen.push(r);
        draw(r, "", &children, &label, &mut out, &mut seen);
    }
    // A cycle of upstreams (a stale view) leaves nodes unreached: list them, not lose them.
    for n in &config.nodes {
        if !seen.contains(&n.name.as_str()) {
            out.push(format!("{} (upstream cycle)", label[n.name.as_str()]));
        }
    }
    out
}

fn draw<'a>(
    node: &'a str,
    indent: &str,
    children: &BTreeMap<Option<&'a str>, Vec<&'a str>>,
    label: &BTreeMap<&str, String>,
    out: &mut Vec<String>,
    seen: &mut Vec<&'a str>,
) {
    let kids = children.get(&Some(node)).cloned().unwrap_or_default();
    for (i, k) in kids.iter().enumerate() {
        if seen.contains(k) {
            continue;
        }
        seen.push(k);
        let last = i + 1 == kids.len();
        let (branch, more) = if last {
            ("└── ", "    ")
        } else {
            ("├── ", "│   ")
        };
        out.push(format!("{indent}{branch}{}", label[k]));
        draw(k, &format!("{indent}{more}"), children, label, out, seen);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dcs::{LeaderInfo, MemberRole, MemberState, PgState};

    fn member(name: &str, upstream: Option<&str>, streaming: bool) -> MemberState {
        MemberState {
            name: name.into(),
            pg_address: format!("10.0.0.{}:5432", &name[4..]),
            api_address: None,
            pg_state: PgState::Running,
            role: if upstream.is_some() || name != "node1" {
                MemberRole::Replica
            } else {
                MemberRole::Primary
            },
            timeline: Some(1),
            lsn: None,
            replay_lsn: None,
            streaming,
            upstream: upstream.map(String::from),
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
    fn cascades_draw_as_a_tree_under_the_leader() {
        let mut toml = String::from(
            "[cluster]\nname = \"t\"\n[replication]\npassword = { env = \"PGHA_T_UNUSED\" }\n",
        );
        for i in 1..=4 {
            toml.push_str(&format!(
                "[[nodes]]\nname = \"node{i}\"\nhost = \"10.0.0.{i}\"\ndata_dir = \"/d/{i}\"\nagent_address = \"127.0.0.1:80{i}0\"\n"
            ));
        }
        let cfg = pgha_config::load_from_str(&toml, "t.toml").unwrap();
        let mut v = ClusterView {
            leader: Some(LeaderInfo {
                name: "node1".into(),
                lease: 1,
                revision: 1,
            }),
            ..ClusterView::default()
        };
        for m in [
            member("node1", None, false),
            member("node2", Some("10.0.0.1:5432"), true),
            member("node3", Some("10.0.0.2:5432"), true),
            member("node4", Some("10.0.0.1:5432"), false),
        ] {
            v.members.insert(m.name.clone(), m);
        }
        let got = lines(&cfg, &v);
        assert_eq!(
            got,
            [
                "node1 [Leader, running]",
                "└── node2 [Replica, streaming]",
                "    └── node3 [Replica, streaming]",
                "node4 [Replica, running (not streaming)]",
            ],
            "{got:#?}"
        );
    }
}
