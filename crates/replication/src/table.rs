//! The human-readable status table (`pgha status`, `cargo xtask cluster status`).

use std::fmt::Write;

use crate::status::{ClusterStatus, NodeStatus};
use crate::Role;
use pgha_config::PghaConfig;

/// Bytes as B/kB/MB/GB with one decimal.
pub fn human_bytes(b: u64) -> String {
    const U: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

fn state(n: &NodeStatus) -> String {
    if !n.reachable {
        return "down".into();
    }
    match (n.role, &n.receiver) {
        (Some(Role::Primary), _) => "running".into(),
        (Some(Role::Replica), Some(r)) if r.replay_paused => "replay-paused".into(),
        (Some(Role::Replica), Some(r)) => r
            .receiver_status
            .clone()
            .unwrap_or_else(|| "no-receiver".into()),
        _ => "?".into(),
    }
}

/// The slot this node's upstream keeps for it, as `name (active, 1.2 MB kept)`.
fn slot_cell(st: &ClusterStatus, n: &NodeStatus) -> String {
    let Some(p) = st.primary.as_deref().and_then(|p| st.node(p)) else {
        return "-".into();
    };
    match p.slots.iter().find(|s| s.slot_name == n.name) {
        Some(s) => format!(
            "{} ({}, {} kept)",
            s.slot_name,
            if s.active { "active" } else { "INACTIVE" },
            s.wal_retained_bytes
                .map(|b| human_bytes(b.max(0) as u64))
                .unwrap_or_else(|| "?".into())
        ),
        None => "-".into(),
    }
}

/// Renders the table; unreachable nodes get their error on a line below.
pub fn render(config: &PghaConfig, st: &ClusterStatus) -> String {
    let mut rows = vec![[
        "NODE",
        "ADDRESS",
        "ROLE",
        "STATE",
        "TL",
        "LSN",
        "LAG BYTES",
        "LAG S",
        "SYNC",
        "SLOT",
    ]
    .map(String::from)];
    for n in &st.nodes {
        let dash = || "-".to_string();
        rows.push([
            n.name.clone(),
            n.address.clone(),
            n.role.map(|r| r.to_string()).unwrap_or_else(dash),
            state(n),
            n.timeline.map(|t| t.to_string()).unwrap_or_else(dash),
            n.lsn.map(|l| l.to_string()).unwrap_or_else(dash),
            n.lag_bytes.map(human_bytes).unwrap_or_else(dash),
            n.lag_seconds
                .map(|s| format!("{s:.1}"))
                .unwrap_or_else(dash),
            n.sync_state.clone().unwrap_or_else(dash),
            if n.role == Some(Role::Replica) || !n.reachable {
                slot_cell(st, n)
            } else {
                dash()
            },
        ]);
    }
    let mut widths = [0usize; 10];
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let mut out = String::new();
    let primary = match (&st.primary, st.writable.len()) {
        (Some(p), _) => format!("primary {p}"),
        (None, 0) => "NO PRIMARY".into(),
        (None, _) => format!("SPLIT BRAIN: writable {}", st.writable.join(", ")),
    };
    let _ = writeln!(
        out,
        "Cluster {} ({primary}, mode {})",
        st.cluster, config.replication.mode
    );
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    for n in st.nodes.iter().filter(|n| !n.reachable) {
        let _ = writeln!(
            out,
            "  {}: {}",
            n.name,
            n.error.as_deref().unwrap_or("unreachable")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::human_bytes;

    #[test]
    fn bytes() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1536), "1.5 kB");
        assert_eq!(human_bytes(16 << 20), "16.0 MB");
    }
}
