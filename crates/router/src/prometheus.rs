//! The router's counters and per-node state in the Prometheus text exposition format
//! (version 0.0.4), for a service to serve on its own `/metrics` ([`crate::Router::prometheus`]).

use std::fmt::Write;

use crate::metrics::MetricsSnapshot;
use crate::node::{NodeState, NodeStatus};

/// `Content-Type` of [`render`]'s text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", escape(v));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }
}

/// A label value as the text format wants it: `\`, `"` and newlines escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The text for `m` and `nodes`.
pub fn render(m: &MetricsSnapshot, nodes: &[NodeStatus]) -> String {
    let mut o = Out(String::new());
    // (family, help, its samples: label and value); one HELP/TYPE per family.
    let served =
        |pairs: &[(&'static str, u64)]| -> Vec<(Option<(&'static str, &'static str)>, u64)> {
            pairs
                .iter()
                .map(|(k, v)| (Some(("served_by", *k)), *v))
                .collect()
        };
    let counters = [
        (
            "writes",
            "Connections handed out for writes",
            vec![(None, m.writes)],
        ),
        (
            "reads",
            "Reads by where they went",
            served(&[
                ("replica", m.reads_replica),
                ("primary_fallback", m.reads_primary_fallback),
                ("refused", m.reads_refused),
            ]),
        ),
        (
            "token_reads",
            "Read-your-writes reads by how they were served",
            served(&[
                ("replica", m.token_reads_replica),
                ("replica_after_wait", m.token_reads_waited),
                ("primary", m.token_reads_primary),
            ]),
        ),
        (
            "failover_errors",
            "Errors that mean the primary moved (25006, connection errors)",
            vec![(None, m.failover_errors)],
        ),
        (
            "primary_changes",
            "Times the writer seat went to a node",
            vec![(None, m.primary_changes)],
        ),
        (
            "retries",
            "Idempotent calls retried after a failover error",
            vec![(None, m.retries)],
        ),
        (
            "rediscoveries",
            "Health rounds started at once because of an error or a slow acquire",
            vec![(None, m.rediscoveries)],
        ),
        (
            "health_rounds",
            "Health rounds run",
            vec![(None, m.health_rounds)],
        ),
        (
            "probe_failures",
            "Node probes that failed",
            vec![(None, m.probe_failures)],
        ),
    ];
    for (family, help, samples) in counters {
        let name = format!("pgha_router_{family}_total");
        o.family(&name, "counter", help);
        for (label, v) in samples {
            o.sample(&name, label.as_slice(), v as f64);
        }
    }

    let state = |n: &NodeStatus| match n.state {
        NodeState::Unknown => "unknown",
        NodeState::Up => "up",
        NodeState::Lagging => "lagging",
        NodeState::Down => "down",
    };
    type PerNode = fn(&NodeStatus) -> Option<f64>;
    let gauges: [(&str, &str, PerNode); 4] = [
        ("up", "1 when the node's last probe succeeded", |n| {
            Some(f64::from(u8::from(matches!(
                n.state,
                NodeState::Up | NodeState::Lagging
            ))))
        }),
        ("is_writer", "1 for the node writes go to", |n| {
            Some(f64::from(u8::from(n.is_writer)))
        }),
        ("lag_bytes", "Replica: bytes behind the primary", |n| {
            n.lag_bytes.map(|b| b as f64)
        }),
        ("lag_seconds", "Replica: time behind the primary", |n| {
            n.lag.map(|d| d.as_secs_f64())
        }),
    ];
    for (family, help, value) in gauges {
        let name = format!("pgha_router_node_{family}");
        o.family(&name, "gauge", help);
        for n in nodes {
            if let Some(v) = value(n) {
                o.sample(&name, &[("node", &n.name)], v);
            }
        }
    }
    o.family(
        "pgha_router_node_state",
        "gauge",
        "The router's view of the node: 1 for its state",
    );
    for n in nodes {
        o.sample(
            "pgha_router_node_state",
            &[("node", &n.name), ("state", state(n))],
            1.0,
        );
    }
    o.family(
        "pgha_router_pool_connections",
        "gauge",
        "Connections open in the node's pool",
    );
    for n in nodes {
        let busy = (n.pool_size as usize).saturating_sub(n.pool_idle);
        for (st, v) in [("idle", n.pool_idle), ("busy", busy)] {
            o.sample(
                "pgha_router_pool_connections",
                &[("node", &n.name), ("state", st)],
                v as f64,
            );
        }
    }
    o.0
}
