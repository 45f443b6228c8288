//! What the agent sees of its own PostgreSQL each loop.

use sqlx::PgConnection;

use pgha_postgres::{control_data, LocalInstance, Lsn, ProcessState};
use pgha_replication::status::NodeStatus;
use pgha_replication::Role;

use crate::dcs::{MemberRole, PgState};

/// One look at the local instance.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub pg_state: PgState,
    /// Answered a query this loop.
    pub reachable: bool,
    pub role: MemberRole,
    pub timeline: Option<i64>,
    /// Primary: current LSN; replica: received (else replayed) LSN; stopped: from pg_controldata.
    pub lsn: Option<Lsn>,
    pub replay_lsn: Option<Lsn>,
    pub streaming: bool,
    pub upstream: Option<String>,
}

impl Observation {
    pub fn in_recovery(&self) -> bool {
        self.role == MemberRole::Replica
    }
}

/// Looks at the instance, reusing `conn` across loops and reconnecting when it broke.
pub async fn observe(inst: &LocalInstance, conn: &mut Option<PgConnection>) -> Observation {
    let disk_role = if !inst.is_initialized() {
        MemberRole::Uninitialized
    } else if inst.data_dir().join("standby.signal").exists() {
        MemberRole::Replica
    } else {
        MemberRole::Primary
    };
    let running = matches!(inst.process_state(), Ok(ProcessState::Running { .. }));
    if !running {
        *conn = None;
        let mut o = Observation {
            pg_state: PgState::Stopped,
            reachable: false,
            role: disk_role,
            timeline: None,
            lsn: None,
            replay_lsn: None,
            streaming: false,
            upstream: None,
        };
        if disk_role != MemberRole::Uninitialized {
            if let Ok(cd) = control_data(inst).await {
                o.timeline = Some(i64::from(cd.timeline));
                o.lsn = Some(cd.lsn());
            }
        }
        return o;
    }
    if conn.is_none() {
        *conn = inst.connect_params().connect().await.ok();
    }
    let status = match conn.as_mut() {
        Some(c) => NodeStatus::query_position(c, inst.name(), String::new())
            .await
            .ok(),
        None => None,
    };
    let Some(st) = status else {
        *conn = None;
        return Observation {
            pg_state: PgState::Running,
            reachable: false,
            role: disk_role,
            timeline: None,
            lsn: None,
            replay_lsn: None,
            streaming: false,
            upstream: None,
        };
    };
    let (role, lsn, replay, streaming, upstream) = match (st.role, &st.receiver) {
        (Some(Role::Replica), Some(r)) => (
            MemberRole::Replica,
            r.receive_lsn.or(r.replay_lsn),
            r.replay_lsn,
            st.streaming == Some(true),
            match (&r.upstream_host, r.upstream_port) {
                (Some(h), Some(p)) => Some(format!("{h}:{p}")),
                _ => None,
            },
        ),
        _ => (MemberRole::Primary, st.lsn, st.lsn, false, None),
    };
    Observation {
        pg_state: PgState::Running,
        reachable: true,
        role,
        timeline: st.timeline,
        lsn,
        replay_lsn: replay,
        streaming,
        upstream,
    }
}
