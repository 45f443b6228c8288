//! Live replication status: each node's own view, the primary's view of its standbys, slots,
//! and the lag of every replica in bytes and seconds.

use serde::Serialize;
use sqlx::PgConnection;

use pgha_config::PghaConfig;
use pgha_postgres::{connect_params, ConnectParams, Lsn};

use crate::{list_slots, ReplicationError, Result, SlotStatus};

/// A node's role as it reports it (pg_is_in_recovery()).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Primary,
    Replica,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Primary => "primary",
            Role::Replica => "replica",
        })
    }
}

/// One standby as the primary sees it (pg_stat_replication joined with its slot).
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct StandbyStat {
    pub application_name: String,
    pub client_addr: Option<String>,
    /// startup / catchup / streaming / backup / stopping.
    pub state: Option<String>,
    pub sent_lsn: Option<Lsn>,
    pub write_lsn: Option<Lsn>,
    pub flush_lsn: Option<Lsn>,
    pub replay_lsn: Option<Lsn>,
    pub write_lag_seconds: Option<f64>,
    pub flush_lag_seconds: Option<f64>,
    pub replay_lag_seconds: Option<f64>,
    /// pg_current_wal_lsn() - replay_lsn.
    pub lag_bytes: Option<i64>,
    /// async / potential / sync / quorum.
    pub sync_state: Option<String>,
    pub slot_name: Option<String>,
}

/// A replica's view of itself (pg_stat_wal_receiver and the recovery functions).
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct ReceiverStat {
    /// WAL receiver status (`streaming`, `waiting`, ...); None when no receiver runs.
    pub receiver_status: Option<String>,
    pub upstream_host: Option<String>,
    pub upstream_port: Option<i32>,
    pub slot_name: Option<String>,
    pub receive_lsn: Option<Lsn>,
    pub replay_lsn: Option<Lsn>,
    /// now() - pg_last_xact_replay_timestamp(), or - pg_postmaster_start_time() when nothing
    /// was replayed since the replica started: grows while nothing is replayed, never NULL on
    /// a replica (an alert on the lag must be able to fire after a restart without upstream).
    pub last_replay_age_seconds: Option<f64>,
    pub replay_paused: bool,
    pub timeline: Option<i64>,
}

/// Everything known about one node.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeStatus {
    pub name: String,
    pub address: String,
    pub reachable: bool,
    /// Why the node could not be queried.
    pub error: Option<String>,
    pub role: Option<Role>,
    pub timeline: Option<i64>,
    /// Primary: pg_current_wal_lsn(). Replica: its replay LSN.
    pub lsn: Option<Lsn>,
    /// Replica only.
    pub receiver: Option<ReceiverStat>,
    /// Primary only: its connected standbys.
    pub standbys: Vec<StandbyStat>,
    pub slots: Vec<SlotStatus>,
    /// Replica: WAL receiver streaming.
    pub streaming: Option<bool>,
    /// Replica: bytes behind the primary's current LSN.
    pub lag_bytes: Option<u64>,
    /// Replica: seconds behind; from the primary's replay_lag while streaming, else the age of
    /// the last replayed transaction (so a stopped receiver shows growing lag, not 0).
    pub lag_seconds: Option<f64>,
    /// Replica: sync_state as the primary reports it.
    pub sync_state: Option<String>,
    /// Tagged `nostream` in the config: replays from the archive, never streams (not
    /// streaming is how it should be).
    pub archive_only: bool,
}

impl NodeStatus {
    /// A node that could not be queried, with the reason.
    pub fn unreachable(name: &str, address: String, error: String) -> Self {
        NodeStatus {
            name: name.into(),
            address,
            reachable: false,
            error: Some(error),
            role: None,
            timeline: None,
            lsn: None,
            receiver: None,
            standbys: Vec::new(),
            slots: Vec::new(),
            streaming: None,
            lag_bytes: None,
            lag_seconds: None,
            sync_state: None,
            archive_only: false,
        }
    }

    /// Queries one node over `conn`: role, position, receiver, standbys and slots.
    pub async fn query(conn: &mut PgConnection, name: &str, address: String) -> Result<Self> {
        let mut st = Self::query_position(conn, name, address).await?;
        if st.role == Some(Role::Primary) {
            st.standbys = standby_stats(conn, name).await?;
        }
        st.slots = list_slots(conn, name).await?;
        Ok(st)
    }

    /// Role, timeline, WAL position and (on a replica) the receiver, without the standby and
    /// slot lists: what a loop that runs every few hundred milliseconds needs.
    pub async fn query_position(
        conn: &mut PgConnection,
        name: &str,
        address: String,
    ) -> Result<Self> {
        // One round trip on a primary: the CASE keeps pg_current_wal_lsn() (an error during
        // recovery) from running on a replica.
        let (in_recovery, position): (bool, Option<(Lsn, i64)>) =
            sqlx::query_as::<_, (bool, Option<Lsn>, Option<i64>)>(
                "SELECT pg_is_in_recovery(), \
               CASE WHEN NOT pg_is_in_recovery() THEN pg_current_wal_lsn() END, \
               CASE WHEN NOT pg_is_in_recovery() THEN \
                 ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::bigint END",
            )
            .fetch_one(&mut *conn)
            .await
            .map(|(r, lsn, tli)| (r, lsn.zip(tli)))
            .map_err(ReplicationError::query(
                name,
                "pg_is_in_recovery and WAL position",
            ))?;
        let mut st = NodeStatus::unreachable(name, address, String::new());
        st.reachable = true;
        st.error = None;
        if in_recovery {
            let r = receiver_stat(conn, name).await?;
            st.role = Some(Role::Replica);
            st.timeline = r.timeline;
            st.lsn = r.replay_lsn;
            st.streaming = Some(r.receiver_status.as_deref() == Some("streaming"));
            st.receiver = Some(r);
        } else if let Some((lsn, tli)) = position {
            st.role = Some(Role::Primary);
            st.lsn = Some(lsn);
            st.timeline = Some(tli);
        }
        Ok(st)
    }
}

/// pg_stat_replication on a primary.
pub async fn standby_stats(conn: &mut PgConnection, node: &str) -> Result<Vec<StandbyStat>> {
    sqlx::query_as::<_, StandbyStat>(
        "SELECT r.application_name, host(r.client_addr) AS client_addr, r.state, \
           r.sent_lsn, r.write_lsn, r.flush_lsn, r.replay_lsn, \
           extract(epoch FROM r.write_lag)::float8 AS write_lag_seconds, \
           extract(epoch FROM r.flush_lag)::float8 AS flush_lag_seconds, \
           extract(epoch FROM r.replay_lag)::float8 AS replay_lag_seconds, \
           (pg_current_wal_lsn() - r.replay_lsn)::bigint AS lag_bytes, \
           r.sync_state, s.slot_name::text AS slot_name \
         FROM pg_stat_replication r LEFT JOIN pg_replication_slots s ON s.active_pid = r.pid \
         ORDER BY r.application_name",
    )
    .fetch_all(conn)
    .await
    .map_err(ReplicationError::query(node, "pg_stat_replication"))
}

/// pg_stat_wal_receiver and recovery state on a replica.
pub async fn receiver_stat(conn: &mut PgConnection, node: &str) -> Result<ReceiverStat> {
    sqlx::query_as::<_, ReceiverStat>(
        "SELECT w.status AS receiver_status, w.sender_host AS upstream_host, \
           w.sender_port AS upstream_port, w.slot_name::text AS slot_name, \
           pg_last_wal_receive_lsn() AS receive_lsn, pg_last_wal_replay_lsn() AS replay_lsn, \
           extract(epoch FROM now() - coalesce(pg_last_xact_replay_timestamp(), pg_postmaster_start_time()))::float8 AS last_replay_age_seconds, \
           pg_is_wal_replay_paused() AS replay_paused, \
           coalesce(w.received_tli, (SELECT timeline_id FROM pg_control_checkpoint()))::bigint AS timeline \
         FROM (SELECT 1) AS one LEFT JOIN pg_stat_wal_receiver w ON true",
    )
    .fetch_one(conn)
    .await
    .map_err(ReplicationError::query(node, "pg_stat_wal_receiver"))
}

/// The status of every configured node, with replica lag computed against the primary.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClusterStatus {
    pub cluster: String,
    /// The writable node, when exactly one answers as primary.
    pub primary: Option<String>,
    /// Every node that answered as primary; more than one means split brain.
    pub writable: Vec<String>,
    pub nodes: Vec<NodeStatus>,
}

impl ClusterStatus {
    /// Connects to every node concurrently (each bounded by the connect timeout) and derives
    /// per-replica lag. Unreachable nodes are reported, not fatal.
    pub async fn collect(config: &PghaConfig) -> Result<Self> {
        let mut tasks = tokio::task::JoinSet::new();
        for (i, node) in config.nodes.iter().enumerate() {
            let params = connect_params(config, node)?;
            let name = node.name.clone();
            tasks.spawn(async move { (i, query_node(params, name).await) });
        }
        let mut nodes: Vec<Option<NodeStatus>> = vec![None; config.nodes.len()];
        while let Some(joined) = tasks.join_next().await {
            if let Ok((i, st)) = joined {
                nodes[i] = Some(st);
            }
        }
        let nodes: Vec<NodeStatus> = nodes
            .into_iter()
            .zip(&config.nodes)
            .map(|(st, n)| {
                let mut st = st.unwrap_or_else(|| {
                    NodeStatus::unreachable(&n.name, n.address(), "status task failed".into())
                });
                st.archive_only = n.nostream;
                st
            })
            .collect();
        Ok(Self::derive(config.cluster.name.clone(), nodes))
    }

    /// Fills the replica lag fields from the primary's view. Pure, so it is unit-tested.
    pub fn derive(cluster: String, mut nodes: Vec<NodeStatus>) -> Self {
        let writable: Vec<String> = nodes
            .iter()
            .filter(|n| n.role == Some(Role::Primary))
            .map(|n| n.name.clone())
            .collect();
        let primary = (writable.len() == 1).then(|| writable[0].clone());
        let primary_view = primary
            .as_ref()
            .and_then(|p| nodes.iter().find(|n| &n.name == p))
            .map(|p| (p.lsn, p.standbys.clone()));
        for n in nodes.iter_mut().filter(|n| n.role == Some(Role::Replica)) {
            let Some(r) = &n.receiver else { continue };
            let streaming = n.streaming == Some(true);
            let row = primary_view
                .as_ref()
                .and_then(|(_, s)| s.iter().find(|s| s.application_name == n.name));
            n.sync_state = row.and_then(|r| r.sync_state.clone());
            n.lag_bytes = match (primary_view.as_ref().and_then(|(l, _)| *l), r.replay_lsn) {
                (Some(p), Some(rep)) => Some(p.bytes_since(rep)),
                _ => row.and_then(|r| r.lag_bytes).map(|b| b.max(0) as u64),
            };
            n.lag_seconds = if n.lag_bytes == Some(0) {
                Some(0.0)
            } else if let (true, Some(row)) = (streaming, row) {
                Some(row.replay_lag_seconds.unwrap_or(0.0))
            } else if streaming
                && r.receive_lsn.is_some()
                && r.receive_lsn == r.replay_lsn
                && primary_view.is_none()
            {
                Some(0.0)
            } else {
                r.last_replay_age_seconds.map(|s| s.max(0.0))
            };
        }
        ClusterStatus {
            cluster,
            primary,
            writable,
            nodes,
        }
    }

    pub fn node(&self, name: &str) -> Option<&NodeStatus> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The replicas' statuses.
    pub fn replicas(&self) -> impl Iterator<Item = &NodeStatus> {
        self.nodes.iter().filter(|n| n.role == Some(Role::Replica))
    }
}

async fn query_node(params: ConnectParams, name: String) -> NodeStatus {
    let address = params.target();
    match params.connect().await {
        Ok(mut conn) => match NodeStatus::query(&mut conn, &name, address.clone()).await {
            Ok(st) => st,
            Err(e) => NodeStatus::unreachable(&name, address, e.to_string()),
        },
        Err(e) => NodeStatus::unreachable(&name, address, e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica(name: &str, replay: u64, streaming: bool, age: Option<f64>) -> NodeStatus {
        let mut n = NodeStatus::unreachable(name, "h:1".into(), String::new());
        n.reachable = true;
        n.error = None;
        n.role = Some(Role::Replica);
        n.lsn = Some(Lsn(replay));
        n.streaming = Some(streaming);
        n.receiver = Some(ReceiverStat {
            receiver_status: streaming.then(|| "streaming".into()),
            upstream_host: None,
            upstream_port: None,
            slot_name: None,
            receive_lsn: Some(Lsn(replay)),
            replay_lsn: Some(Lsn(replay)),
            last_replay_age_seconds: age,
            replay_paused: false,
            timeline: Some(1),
        });
        n
    }

    fn primary(lsn: u64, standbys: Vec<StandbyStat>) -> NodeStatus {
        let mut n = NodeStatus::unreachable("p", "h:0".into(), String::new());
        n.reachable = true;
        n.role = Some(Role::Primary);
        n.lsn = Some(Lsn(lsn));
        n.standbys = standbys;
        n
    }

    fn row(name: &str, replay_lag: Option<f64>) -> StandbyStat {
        StandbyStat {
            application_name: name.into(),
            client_addr: None,
            state: Some("streaming".into()),
            sent_lsn: None,
            write_lsn: None,
            flush_lsn: None,
            replay_lsn: None,
            write_lag_seconds: None,
            flush_lag_seconds: None,
            replay_lag_seconds: replay_lag,
            lag_bytes: None,
            sync_state: Some("async".into()),
            slot_name: None,
        }
    }

    #[test]
    fn caught_up_replica_has_zero_lag() {
        let s = ClusterStatus::derive(
            "c".into(),
            vec![
                primary(1000, vec![row("r1", None)]),
                replica("r1", 1000, true, Some(3600.0)),
            ],
        );
        let r = s.node("r1").unwrap();
        assert_eq!((r.lag_bytes, r.lag_seconds), (Some(0), Some(0.0)));
        assert_eq!(s.primary.as_deref(), Some("p"));
    }

    #[test]
    fn stopped_receiver_reports_growing_lag_not_zero() {
        let s = ClusterStatus::derive(
            "c".into(),
            vec![
                primary(5000, vec![]),
                replica("r1", 1000, false, Some(42.0)),
            ],
        );
        let r = s.node("r1").unwrap();
        assert_eq!(r.lag_bytes, Some(4000));
        assert_eq!(r.lag_seconds, Some(42.0));
        assert_eq!(r.streaming, Some(false));
    }

    #[test]
    fn two_primaries_name_no_primary() {
        let s = ClusterStatus::derive(
            "c".into(),
            vec![primary(1, vec![]), {
                let mut p = primary(2, vec![]);
                p.name = "q".into();
                p
            }],
        );
        assert_eq!(s.primary, None);
        assert_eq!(s.writable, vec!["p".to_string(), "q".to_string()]);
    }
}
