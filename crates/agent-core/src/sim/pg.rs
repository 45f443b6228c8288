//! A simulated PostgreSQL: WAL as a list of commit records tagged with their timeline,
//! recovery, promotion to a new timeline, checkpoints in pg_control, pg_rewind and
//! pg_basebackup, and `synchronous_standby_names = 'FIRST n (...)'`.

use std::collections::{BTreeMap, BTreeSet};

use tokio::time::Instant;

/// One WAL record: a commit (`id`) written on timeline `tli`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rec {
    pub tli: i64,
    pub id: u64,
}

/// A data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Data {
    pub wal: Vec<Rec>,
    /// The timeline it writes (primary) or last replayed (replica).
    pub tli: i64,
    /// standby.signal: starts in recovery.
    pub standby_signal: bool,
    /// Timeline of the last checkpoint in pg_control.
    pub control_tli: i64,
    /// Cannot start, and why (a rewind from a source that had not checkpointed since its
    /// promotion copies a control file whose minimum recovery point is on the old timeline).
    pub broken: Option<String>,
}

/// What an interrupted bootstrap leaves in the data dir (reported as uninitialized).
pub const HALF_MADE: &str = "half-made bootstrap";
/// What a bootstrap leaves once it made the first primary, until the commit removes the mark.
pub const BOOTSTRAP_MADE: &str = "bootstrap made, not committed";

impl Data {
    pub fn is_half_made(&self) -> bool {
        matches!(self.broken.as_deref(), Some(HALF_MADE | BOOTSTRAP_MADE))
    }

    pub fn new() -> Self {
        Data {
            wal: Vec::new(),
            tli: 1,
            standby_signal: false,
            control_tli: 1,
            broken: None,
        }
    }

    /// `other` holds all of our WAL (we can stream from it). Commit ids are unique and WAL
    /// only ever travels as a whole prefix, so two WALs that have the same record at one
    /// position share everything before it: comparing our last record is enough.
    pub fn is_prefix_of(&self, other: &Data) -> bool {
        match self.wal.len() {
            0 => true,
            n => other.wal.get(n - 1) == self.wal.last(),
        }
    }

    pub fn lsn(&self) -> u64 {
        self.wal.len() as u64
    }
}

impl Default for Data {
    fn default() -> Self {
        Self::new()
    }
}

/// One instance.
#[derive(Debug, Clone, Default)]
pub struct Pg {
    pub data: Option<Data>,
    pub running: bool,
    /// Started with pg_ctl outside the supervisor (a bootstrap's server): no deadline kills it
    /// and it outlives its agent.
    pub unsupervised: bool,
    /// Starting (recovery, not accepting connections) until then.
    pub ready_at: Option<Instant>,
    /// A promotion was requested; it completes then.
    pub promote_at: Option<Instant>,
    /// The promotion skips timelines up to this one (placeholder history files).
    pub timeline_floor: Option<i64>,
    /// The checkpoint the server requests after a promotion ends then.
    pub checkpoint_at: Option<Instant>,
    /// `FIRST n (names)` or `ANY n (names)` (`sync_any`); n = 0: asynchronous.
    pub sync_n: usize,
    pub sync_any: bool,
    pub sync_names: Vec<String>,
    pub sync_raw: String,
    pub slots: BTreeSet<String>,
    /// pgha-node.conf's primary_conninfo target.
    pub upstream: Option<String>,
    /// The node it streams from right now.
    pub streaming_from: Option<String>,
    pub received_tli: Option<i64>,
    /// Commits waiting for synchronous standbys: (id, position of the record + 1).
    pub pending: Vec<(u64, u64)>,
    /// A fault cut its WAL receiver.
    pub receiver_cut: bool,
    /// Start counter: an operation that waits on a start knows whether it is the same one.
    pub boot: u64,
    /// `postgres.parameters` as pgha.conf has them.
    pub conf: BTreeMap<String, String>,
    /// ... and as the running server applies them (restart-only ones as of its start).
    pub active: BTreeMap<String, String>,
}

/// Parameters the simulated server applies only at start (PostgreSQL's `postmaster` context).
pub const RESTART_ONLY: &[&str] = &["max_connections", "shared_buffers"];

impl Pg {
    pub fn ready(&self, now: Instant) -> bool {
        self.running && self.ready_at.is_none_or(|r| now >= r)
    }

    pub fn in_recovery(&self) -> bool {
        self.data.as_ref().is_some_and(|d| d.standby_signal)
    }

    /// Answers `pg_is_in_recovery() = false` and takes writes.
    pub fn writable(&self, now: Instant) -> bool {
        // A half-made bootstrap's server listens on a private port only: no client reaches it.
        self.ready(now)
            && self.data.as_ref().is_some_and(|d| !d.is_half_made())
            && !self.in_recovery()
    }

    /// pgha.conf now says `params`; a running server reloads it (restart-only ones wait).
    pub fn write_conf(&mut self, params: &BTreeMap<String, String>) {
        self.conf = params.clone();
        if !self.running {
            return;
        }
        let keys: BTreeSet<String> = self
            .conf
            .keys()
            .chain(self.active.keys())
            .cloned()
            .collect();
        for k in keys
            .into_iter()
            .filter(|k| !RESTART_ONLY.contains(&k.as_str()))
        {
            match self.conf.get(&k) {
                Some(v) => self.active.insert(k, v.clone()),
                None => self.active.remove(&k),
            };
        }
    }

    /// `pg_settings.pending_restart`.
    pub fn pending_restart(&self) -> Vec<String> {
        RESTART_ONLY
            .iter()
            .filter(|k| self.conf.get(**k) != self.active.get(**k))
            .map(|k| k.to_string())
            .collect()
    }

    /// Crash or stop: nothing in flight survives.
    pub fn down(&mut self) {
        self.running = false;
        self.unsupervised = false;
        self.ready_at = None;
        self.promote_at = None;
        self.checkpoint_at = None;
        self.streaming_from = None;
        self.received_tli = None;
        self.pending.clear();
    }

    /// Parses what the agent sets: `FIRST n ("a", "b")`, `ANY n (...)` or empty.
    pub fn set_sync(&mut self, raw: &str) {
        self.sync_raw = raw.to_string();
        self.sync_n = 0;
        self.sync_any = false;
        self.sync_names.clear();
        let raw = raw.trim();
        let Some(rest) = raw
            .strip_prefix("FIRST ")
            .or_else(|| raw.strip_prefix("ANY "))
        else {
            return;
        };
        self.sync_any = raw.starts_with("ANY ");
        let Some((n, list)) = rest.split_once(' ') else {
            return;
        };
        self.sync_n = n.parse().unwrap_or(0);
        self.sync_names = list
            .trim_matches(|c| c == '(' || c == ')')
            .split(',')
            .map(|s| s.trim().trim_matches('"').to_string())
            .filter(|s| !s.is_empty())
            .collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_first_n() {
        let mut p = Pg::default();
        p.set_sync("FIRST 1 (\"node2\", \"node3\")");
        assert_eq!(p.sync_n, 1);
        assert_eq!(p.sync_names, vec!["node2", "node3"]);
        assert!(!p.sync_any);
        p.set_sync("ANY 2 (\"node2\", \"node3\", \"node4\")");
        assert_eq!((p.sync_n, p.sync_any), (2, true));
        assert_eq!(p.sync_names, vec!["node2", "node3", "node4"]);
        p.set_sync("");
        assert_eq!(p.sync_n, 0);
    }
}
