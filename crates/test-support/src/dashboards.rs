//! The series the Grafana dashboards in docs/grafana query, split by who exports them, so
//! that each real test (exporter, agent, router) checks its share against a live scrape.

use std::collections::BTreeSet;
use std::path::PathBuf;

/// Series the failover agent's `/metrics` serves.
pub const AGENT_SERIES: &[&str] = &[
    "pgha_agent_",
    "pgha_promotions_",
    "pgha_fencings_",
    "pgha_postgres_running",
    "pgha_replica_streaming",
    "pgha_unknown_replication_slots",
    "patroni_",
];

/// Series `Router::prometheus` renders.
pub const ROUTER_SERIES: &[&str] = &["pgha_router_"];

/// Who exports `name`: "agent", "router", or "exporter" (everything else).
pub fn owner(name: &str) -> &'static str {
    if AGENT_SERIES.iter().any(|p| name.starts_with(p)) {
        "agent"
    } else if ROUTER_SERIES.iter().any(|p| name.starts_with(p)) {
        "router"
    } else {
        "exporter"
    }
}

/// The dashboards' directory, found upward from the running test's crate.
fn dir() -> PathBuf {
    let start = std::env::var("CARGO_MANIFEST_DIR").unwrap_or(env!("CARGO_MANIFEST_DIR").into());
    let mut d = PathBuf::from(start);
    loop {
        let g = d.join("docs/grafana");
        if g.is_dir() {
            return g;
        }
        if !d.pop() {
            panic!("no docs/grafana above the test's crate");
        }
    }
}

/// (dashboard file, series name) of every `pg_*`, `pgha_*` or `patroni_*` series the
/// dashboards name whose exporter is `owner`.
pub fn series_of(owner_name: &str) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    let mut files = 0;
    for e in std::fs::read_dir(dir())
        .expect("read docs/grafana")
        .flatten()
    {
        let path = e.path();
        if path.extension().and_then(|x| x.to_str()) != Some("json") {
            continue;
        }
        files += 1;
        let text = std::fs::read_to_string(&path).expect("read a dashboard");
        let file = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        for name in names(&text) {
            if owner(&name) == owner_name {
                out.insert((file.clone(), name));
            }
        }
    }
    assert!(
        files >= 4,
        "expected the dashboards in docs/grafana, found {files}"
    );
    out
}

fn names(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
        if word(b[i]) && (i == 0 || !word(b[i - 1])) {
            let end = (i..b.len()).find(|&j| !word(b[j])).unwrap_or(b.len());
            let w = &text[i..end];
            if ["pg_", "pgha_", "patroni_"]
                .iter()
                .any(|p| w.starts_with(p))
            {
                out.push(w.to_owned());
            }
            i = end;
        } else {
            i += 1;
        }
    }
    out
}
