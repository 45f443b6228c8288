//! `[standby_cluster]`: this whole cluster is a standby of another pgha cluster (a second
//! site). Its leader is a *standby leader*: it holds this cluster's lease but stays in
//! recovery, streaming from the primary site's writable node and falling back to
//! `restore_command` (the shared backup repository). Its other nodes replicate from it.
//! It never promotes on its own: `pgha promote-cluster` turns it into the primary site.

use serde::{Deserialize, Serialize};

/// `[standby_cluster]`: this cluster is a standby site of another pgha cluster. Its leader stays
/// in recovery, streaming from the primary site (else `restore_command`), and never promotes on
/// its own: `pgha promote-cluster` makes this site the primary one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StandbyClusterSection {
    /// The primary site's nodes as `host:port`; the standby leader streams from whichever one is
    /// writable (libpq `target_session_attrs=primary`), so it follows a failover there.
    pub primary_hosts: Vec<String>,
    /// Slot on the primary site the standby leader streams through; create it there with
    /// `replication.permanent_slots`. No slot when absent (then `wal_keep_size` and the
    /// archive bridge gaps).
    #[serde(default)]
    pub primary_slot_name: Option<String>,
    /// restore_command of the standby leader: fetches WAL from the shared backup repository when
    /// streaming is not possible, e.g. `"/usr/local/bin/pgha-backup -c /etc/pgha.toml wal-fetch %f %p"`.
    #[serde(default)]
    pub restore_command: Option<String>,
}

impl StandbyClusterSection {
    /// `primary_hosts` split into hosts and ports; `None` when one does not parse.
    pub fn hosts_and_ports(&self) -> Option<Vec<(String, u16)>> {
        self.primary_hosts
            .iter()
            .map(|hp| {
                let (h, p) = hp.rsplit_once(':')?;
                let h = h.trim_start_matches('[').trim_end_matches(']');
                if h.is_empty() {
                    return None;
                }
                Some((h.to_owned(), p.parse::<u16>().ok().filter(|p| *p != 0)?))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_parse() {
        let s = StandbyClusterSection {
            primary_hosts: vec!["10.0.0.1:5432".into(), "[::1]:5433".into()],
            primary_slot_name: None,
            restore_command: None,
        };
        assert_eq!(
            s.hosts_and_ports().unwrap(),
            vec![("10.0.0.1".into(), 5432), ("::1".into(), 5433)]
        );
        let bad = StandbyClusterSection {
            primary_hosts: vec!["10.0.0.1".into()],
            ..s
        };
        assert!(bad.hosts_and_ports().is_none());
    }
}
