//! Custom queries in postgres_exporter's queries.yml format:
//!
//! ```yaml
//! pg_replication:
//!   query: "SELECT ... AS lag"
//!   master: true
//!   cache_seconds: 30
//!   metrics:
//!     - lag:
//!         usage: "GAUGE"
//!         description: "Replication lag behind master in seconds"
//! ```
//!
//! Each non-LABEL column becomes `<query name>_<column>` labelled with the LABEL columns.
//! Errors name the file, the query and its line.
//!
//! As in postgres_exporter, `master: true` means "only on the DSN's database" when it
//! auto-discovers databases; pgha-exporter scrapes one database per target, so such a query
//! runs on every target, replicas included (a replication-lag query must run there).
//! `runonserver` is a semver range over the server's version (`">=10.0.0"`,
//! `">=9.6.0 <11.0.0 || >=13.0.0"`); the query is skipped on servers outside it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use sqlx::PgConnection;

use crate::collect::{num, text};
use crate::metrics::{sanitize_name, Kind, MetricSet};
use crate::version_range::VersionRange;
use crate::{MonitoringError, Result};

/// How a column is used (postgres_exporter's `usage`).
#[derive(Debug, Clone, PartialEq)]
pub enum Usage {
    Discard,
    Label,
    Counter,
    Gauge,
    /// A text column mapped to numbers.
    MappedMetric(BTreeMap<String, f64>),
    /// Milliseconds, exported as `<name>_milliseconds`.
    Duration,
}

/// One column of a query.
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    pub name: String,
    pub usage: Usage,
    pub description: String,
}

/// One query of the file.
#[derive(Debug, Clone, PartialEq)]
pub struct CustomQuery {
    pub name: String,
    pub sql: String,
    /// postgres_exporter: only on the DSN's database, not on auto-discovered ones. Every
    /// target here is one database, so this changes nothing (kept for round-trips and docs).
    pub master: bool,
    /// Run only on servers whose version is in this range.
    pub runonserver: Option<VersionRange>,
    pub cache: Option<Duration>,
    pub columns: Vec<Column>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQuery {
    query: String,
    #[serde(default)]
    master: bool,
    #[serde(default)]
    cache_seconds: u64,
    #[serde(default)]
    runonserver: Option<String>,
    metrics: Vec<BTreeMap<String, RawColumn>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawColumn {
    usage: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    mapping: Option<BTreeMap<String, f64>>,
}

/// Reads and parses a queries file.
pub fn load(path: &Path) -> Result<Vec<CustomQuery>> {
    let text = std::fs::read_to_string(path).map_err(|source| MonitoringError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(path, &text)
}

/// Top-level keys (query names) and the 1-based line each starts on.
fn query_lines(text: &str) -> Vec<(String, usize)> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| {
            l.chars()
                .next()
                .is_some_and(|c| !c.is_whitespace() && c != '#' && c != '-')
        })
        .filter_map(|(i, l)| {
            l.split_once(':')
                .map(|(k, _)| (k.trim().trim_matches('"').to_owned(), i + 1))
        })
        .collect()
}

/// The line of column `col`'s key after the query's line (the query's line if not found).
fn column_line(text: &str, query_line: usize, col: &str) -> usize {
    text.lines()
        .enumerate()
        .skip(query_line)
        .take_while(|(_, l)| l.starts_with(char::is_whitespace) || l.is_empty())
        .find(|(_, l)| {
            let t = l.trim_start().trim_start_matches('-').trim_start();
            t.strip_prefix(col).is_some_and(|r| r.starts_with(':'))
        })
        .map(|(i, _)| i + 1)
        .unwrap_or(query_line)
}

/// Parses `text` (the content of `path`).
pub fn parse(path: &Path, text: &str) -> Result<Vec<CustomQuery>> {
    let lines = query_lines(text);
    let err = |query: &str, line: usize, message: String| MonitoringError::Queries {
        path: PathBuf::from(path),
        query: query.to_owned(),
        line,
        message,
    };
    let doc: BTreeMap<String, yaml_serde::Value> = match yaml_serde::from_str(text) {
        Ok(d) => d,
        Err(e) => {
            let line = e.location().map(|l| l.line()).unwrap_or(1);
            let query = lines
                .iter()
                .rev()
                .find(|(_, l)| *l <= line)
                .map(|(q, _)| q.clone())
                .unwrap_or_else(|| "(top level)".into());
            return Err(err(&query, line, e.to_string()));
        }
    };
    let mut out = Vec::new();
    for (name, value) in doc {
        let line = lines
            .iter()
            .find(|(q, _)| *q == name)
            .map(|(_, l)| *l)
            .unwrap_or(1);
        let raw: RawQuery =
            yaml_serde::from_value(value).map_err(|e| err(&name, line, e.to_string()))?;
        if raw.query.trim().is_empty() {
            return Err(err(&name, line, "`query` is empty".into()));
        }
        if sanitize_name(&name) != name {
            return Err(err(
                &name,
                line,
                "the query name is not a valid metric name prefix ([a-zA-Z0-9_])".into(),
            ));
        }
        let runonserver = raw
            .runonserver
            .as_deref()
            .map(VersionRange::parse)
            .transpose()
            .map_err(|e| {
                err(
                    &name,
                    column_line(text, line, "runonserver"),
                    format!("`runonserver` {e}"),
                )
            })?;
        let mut columns = Vec::new();
        for map in raw.metrics {
            for (col, c) in map {
                let line = column_line(text, line, &col);
                let usage = match c.usage.to_ascii_uppercase().as_str() {
                    "DISCARD" => Usage::Discard,
                    "LABEL" => Usage::Label,
                    "COUNTER" => Usage::Counter,
                    "GAUGE" => Usage::Gauge,
                    "DURATION" => Usage::Duration,
                    "MAPPEDMETRIC" => Usage::MappedMetric(c.mapping.unwrap_or_default()),
                    "HISTOGRAM" => {
                        return Err(err(
                            &name,
                            line,
                            format!("column `{col}`: usage HISTOGRAM is not supported by pgha-exporter"),
                        ))
                    }
                    other => {
                        return Err(err(
                            &name,
                            line,
                            format!("column `{col}`: unknown usage `{other}` (expected DISCARD, LABEL, COUNTER, GAUGE, MAPPEDMETRIC, DURATION)"),
                        ))
                    }
                };
                columns.push(Column {
                    name: col,
                    usage,
                    description: c.description,
                });
            }
        }
        if columns.is_empty() {
            return Err(err(&name, line, "`metrics` lists no column".into()));
        }
        out.push(CustomQuery {
            name,
            sql: raw.query,
            master: raw.master,
            runonserver,
            cache: (raw.cache_seconds > 0).then(|| Duration::from_secs(raw.cache_seconds)),
            columns,
        });
    }
    Ok(out)
}

impl CustomQuery {
    /// Whether the query runs on a server with this `server_version_num`.
    pub fn runs_on(&self, version_num: i32) -> bool {
        self.runonserver
            .as_ref()
            .is_none_or(|r| r.matches_version_num(version_num))
    }

    /// Runs the query and adds its metrics.
    pub async fn run(&self, conn: &mut PgConnection, server: &str) -> Result<MetricSet> {
        use sqlx::{Column as _, Row};
        let rows = sqlx::query(&self.sql)
            .fetch_all(conn)
            .await
            .map_err(MonitoringError::query(server, &self.name))?;
        let mut m = MetricSet::new();
        for row in rows {
            let idx = |name: &str| row.columns().iter().position(|c| c.name() == name);
            let mut labels: Vec<(&str, String)> = vec![("server", server.to_owned())];
            for c in self.columns.iter().filter(|c| c.usage == Usage::Label) {
                labels.push((
                    c.name.as_str(),
                    idx(&c.name).map(|i| text(&row, i)).unwrap_or_default(),
                ));
            }
            let l: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
            for c in &self.columns {
                let Some(i) = idx(&c.name) else { continue };
                let (suffix, kind, v) = match &c.usage {
                    Usage::Discard | Usage::Label => continue,
                    Usage::Counter => ("", Kind::Counter, num(&row, i)),
                    Usage::Gauge => ("", Kind::Gauge, num(&row, i)),
                    Usage::Duration => ("_milliseconds", Kind::Gauge, num(&row, i)),
                    Usage::MappedMetric(map) => ("", Kind::Gauge, map.get(&text(&row, i)).copied()),
                };
                let name = format!("{}_{}{suffix}", self.name, sanitize_name(&c.name));
                m.add(&name, &c.description, kind, &l, v.unwrap_or(f64::NAN));
            }
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "\
pg_replication:
  query: \"SELECT 1 AS lag\"
  master: true
  cache_seconds: 30
  metrics:
    - lag:
        usage: \"GAUGE\"
        description: \"Replication lag\"
pg_things:
  query: \"SELECT 'a' AS kind, 2 AS n\"
  metrics:
    - kind:
        usage: \"LABEL\"
        description: \"k\"
    - n:
        usage: \"COUNTER\"
        description: \"n\"
";

    #[test]
    fn parses_postgres_exporter_format() {
        let q = parse(Path::new("q.yml"), GOOD).unwrap();
        assert_eq!(q.len(), 2);
        assert_eq!(q[0].name, "pg_replication");
        assert_eq!(q[0].cache, Some(Duration::from_secs(30)));
        assert!(q[0].master);
        assert_eq!(q[1].columns[0].usage, Usage::Label);
        assert_eq!(q[1].columns[1].usage, Usage::Counter);
        assert!(
            q[0].runs_on(90624) && q[1].runs_on(150004),
            "no range: everywhere"
        );
    }

    #[test]
    fn runonserver_is_a_version_range() {
        let text = GOOD.replace("  master: true\n", "  runonserver: \">=10.0.0 <16.0.0\"\n");
        let q = parse(Path::new("q.yml"), &text).unwrap();
        assert!(q[0].runs_on(150004));
        assert!(!q[0].runs_on(90624) && !q[0].runs_on(160001));
        let bad = GOOD.replace("  master: true\n", "  runonserver: \">=10.0.0 <1x\"\n");
        let e = parse(Path::new("q.yml"), &bad).unwrap_err().to_string();
        assert!(
            e.starts_with("q.yml:3: query `pg_replication`: `runonserver`"),
            "{e}"
        );
        assert!(e.contains("`<1x`"), "{e}");
    }

    #[test]
    fn bad_usage_names_file_query_and_line() {
        let bad = GOOD.replace("\"COUNTER\"", "\"COUNTR\"");
        let e = parse(Path::new("/etc/q.yml"), &bad)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("/etc/q.yml:15: query `pg_things`: column `n`"),
            "{e}"
        );
        assert!(e.contains("COUNTR"), "{e}");
    }

    #[test]
    fn missing_query_and_syntax_errors_are_located() {
        let bad = GOOD.replace("  query: \"SELECT 'a' AS kind, 2 AS n\"\n", "");
        let e = parse(Path::new("q.yml"), &bad).unwrap_err().to_string();
        assert!(e.starts_with("q.yml:9: query `pg_things`:"), "{e}");
        assert!(e.contains("query"), "{e}");
        let bad = GOOD.replace("    - n:\n", "    - n: [\n");
        let e = parse(Path::new("q.yml"), &bad).unwrap_err().to_string();
        assert!(e.contains("query `pg_things`"), "{e}");
    }
}
