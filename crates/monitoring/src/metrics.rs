//! A tiny metric registry: families of labelled samples, encoded in the Prometheus text format
//! (version 0.0.4). Built fresh for every scrape, so there is no shared mutable state.

use std::collections::BTreeMap;
use std::fmt::Write;

/// Prometheus metric type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Gauge,
    Counter,
    Untyped,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
            Kind::Untyped => "untyped",
        }
    }
}

/// One metric family: a name, help text, type and its samples.
#[derive(Debug, Clone)]
pub struct Family {
    pub help: String,
    pub kind: Kind,
    /// (label pairs, value).
    pub samples: Vec<(Vec<(String, String)>, f64)>,
}

/// The metrics of one scrape, keyed by family name (output sorted by name).
#[derive(Debug, Default, Clone)]
pub struct MetricSet {
    families: BTreeMap<String, Family>,
}

impl MetricSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a sample; the first call for a name fixes its help and type.
    pub fn add(&mut self, name: &str, help: &str, kind: Kind, labels: &[(&str, &str)], value: f64) {
        let fam = self
            .families
            .entry(name.to_owned())
            .or_insert_with(|| Family {
                help: help.to_owned(),
                kind,
                samples: Vec::new(),
            });
        let mut labels: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        // postgres_exporter (Go client) prints label names sorted; so do we.
        labels.sort();
        fam.samples.push((labels, value));
    }

    pub fn gauge(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        self.add(name, help, Kind::Gauge, labels, value);
    }

    pub fn counter(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        self.add(name, help, Kind::Counter, labels, value);
    }

    /// Moves every family of `other` into `self`.
    pub fn merge(&mut self, other: MetricSet) {
        for (name, fam) in other.families {
            match self.families.get_mut(&name) {
                Some(f) => f.samples.extend(fam.samples),
                None => {
                    self.families.insert(name, fam);
                }
            }
        }
    }

    /// Moves the families of `other` that `self` does not have; returns the names of those
    /// it already had (left out: the same series twice would make Prometheus refuse the
    /// whole scrape).
    pub fn merge_absent(&mut self, other: MetricSet) -> Vec<String> {
        let mut skipped = Vec::new();
        for (name, fam) in other.families {
            match self.families.entry(name) {
                std::collections::btree_map::Entry::Occupied(e) => skipped.push(e.key().clone()),
                std::collections::btree_map::Entry::Vacant(e) => {
                    e.insert(fam);
                }
            }
        }
        skipped
    }

    pub fn family(&self, name: &str) -> Option<&Family> {
        self.families.get(name)
    }

    pub fn families(&self) -> impl Iterator<Item = (&String, &Family)> {
        self.families.iter()
    }

    /// Total number of samples (series).
    pub fn series(&self) -> usize {
        self.families.values().map(|f| f.samples.len()).sum()
    }

    /// The Prometheus text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(64 * 1024);
        for (name, fam) in &self.families {
            let _ = writeln!(out, "# HELP {name} {}", escape_help(&fam.help));
            let _ = writeln!(out, "# TYPE {name} {}", fam.kind.as_str());
            for (labels, value) in &fam.samples {
                out.push_str(name);
                if !labels.is_empty() {
                    out.push('{');
                    for (i, (k, v)) in labels.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        out.push_str(k);
                        out.push_str("=\"");
                        escape_label(&mut out, v);
                        out.push('"');
                    }
                    out.push('}');
                }
                out.push(' ');
                write_value(&mut out, *value);
                out.push('\n');
            }
        }
        out
    }
}

fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

fn escape_label(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn write_value(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else if v == v.trunc() && v.abs() < 1e15 {
        let _ = write!(out, "{}", v as i64);
    } else {
        let _ = write!(out, "{v}");
    }
}

/// Turns an arbitrary string into a valid metric name part (`[a-zA-Z0-9_]`).
pub fn sanitize_name(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_families_sorted_with_escaped_labels() {
        let mut m = MetricSet::new();
        m.gauge("pg_up", "up", &[], 1.0);
        m.counter("a_total", "a", &[("x", "q\"\\\n")], 2.5);
        m.gauge("nan", "n", &[("l", "v")], f64::NAN);
        let text = m.encode();
        assert_eq!(
            text,
            "# HELP a_total a\n# TYPE a_total counter\na_total{x=\"q\\\"\\\\\\n\"} 2.5\n\
             # HELP nan n\n# TYPE nan gauge\nnan{l=\"v\"} NaN\n\
             # HELP pg_up up\n# TYPE pg_up gauge\npg_up 1\n"
        );
        assert_eq!(m.series(), 3);
    }
}
