//! The router's counters and per-node state in the Prometheus text exposition format
//! (version 0.0.4), for a service to serve on its own `/metrics` ([`crate::Router::prometheus`]).

use std::fmt::Write;

use crate::metrics::MetricsSnapshot;
use crate::node::{NodeState, NodeStatus, Role};

/// `Content-Type` of [`render`]'s text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// (name, help or "" for another sample of the family above, labels, value).
type Counter<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], u64);

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
    let c: [(&str, &str); 0] = [];
    let counters: [Counter; 10] = [
        (
            "pgha_router_writes_total",
            "Connections handed out for writes",
            &[],
            m.writes,
        ),
        (
            "pgha_router_reads_total",
            "Reads by where they went",
            &[("served_by", "replica")],
            m.reads_replica,
        ),
        (
            "pgha_router_reads_total",
            "",
            &[("served_by", "primary_fallback")],
            m.reads_primary_fallback,
        ),
        (
            "pgha_router_reads_total",
            "",
            &[("served_by", "refused")],
            m.reads_refused,
        ),
        (
            "pgha_router_token_reads_total",
            "Read-your-writes reads by how they were served",
            &[("served_by", "replica")],
            m.token_reads_replica,
        ),
        (
            "pgha_router_token_reads_total",
            "",
            &[("served_by", "replica_after_wait")],
            m.token_reads_waited,
        ),
        (
            "pgha_router_token_reads_total",
            "",
            &[("served_by", "primary")],
            m.token_reads_primary,
        ),
        (
            "pgha_router_failover_errors_total",
            "Errors that mean the primary moved (25006, connection errors)",
            &[],
            m.failover_errors,
        ),
        (
            "pgha_router_primary_changes_total",
            "Times the writer seat went to a node",
            &[],
            m.primary_changes,
        ),
        (
            "pgha_router_retries_total",
            "Idempotent calls retried after a failover error",
            &[],
            m.retries,
        ),
    ];
    for (name, help, labels, v) in counters {
        if !help.is_empty() {
            o.family(name, "counter", help);
        }
        let mut l = c.to_vec();
        l.extend_from_slice(labels);
        o.sample(name, &l, v as f64);
    }
    for (name, help, v) in [
        (
            "pgha_router_rediscoveries_total",
            "Health rounds started at once because of an error or a slow acquire",
            m.rediscoveries,
        ),
        (
            "pgha_router_health_rounds_total",
            "Health rounds run",
            m.health_rounds,
        ),
        (
            "pgha_router_probe_failures_total",
            "Node probes that failed",
            m.probe_failures,
        ),
    ] {
        o.family(name, "counter", help);
        o.sample(name, &c, v as f64);
    }

    o.family(
        "pgha_router_node_up",
        "gauge",
        "1 when the node's last probe succeeded",
    );
    for n in nodes {
        let up = matches!(n.state, NodeState::Up | NodeState::Lagging);
        o.sample(
            "pgha_router_node_up",
            &node_labels(n),
            f64::from(u8::from(up)),
        );
    }
    o.family(
        "pgha_router_node_state",
        "gauge",
        "The router's view of the node: 1 for its state",
    );
    for n in nodes {
        let state = match n.state {
            NodeState::Unknown => "unknown",
            NodeState::Up => "up",
            NodeState::Lagging => "lagging",
            NodeState::Down => "down",
        };
        let mut l = node_labels(n);
        l.push(("state", state));
        o.sample("pgha_router_node_state", &l, 1.0);
    }
    o.family(
        "pgha_router_node_is_writer",
        "gauge",
        "1 for the node writes go to",
    );
    for n in nodes {
        let w = n.is_writer && n.role == Some(Role::Primary);
        o.sample(
            "pgha_router_node_is_writer",
            &node_labels(n),
            f64::from(u8::from(w)),
        );
    }
    o.family(
        "pgha_router_node_lag_bytes",
        "gauge",
        "Replica: bytes behind the primary",
    );
    for n in nodes.iter().filter(|n| n.lag_bytes.is_some()) {
        let v = n.lag_bytes.unwrap_or(0) as f64;
        o.sample("pgha_router_node_lag_bytes", &node_labels(n), v);
    }
    o.family(
        "pgha_router_node_lag_seconds",
        "gauge",
        "Replica: time behind the primary",
    );
    for n in nodes.iter().filter(|n| n.lag.is_some()) {
        let v = n.lag.map(|d| d.as_secs_f64()).unwrap_or(0.0);
        o.sample("pgha_router_node_lag_seconds", &node_labels(n), v);
    }
    o.family(
        "pgha_router_pool_connections",
        "gauge",
        "Connections open in the node's pool",
    );
    for n in nodes {
        let busy = (n.pool_size as usize).saturating_sub(n.pool_idle);
        for (state, v) in [("idle", n.pool_idle), ("busy", busy)] {
            let mut l = node_labels(n);
            l.push(("state", state));
            o.sample("pgha_router_pool_connections", &l, v as f64);
        }
    }
    o.0
}

fn node_labels(n: &NodeStatus) -> Vec<(&str, &str)> {
    vec![("node", n.name.as_str())]
}
