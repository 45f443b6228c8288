//! Every duration the decision core uses, derived once from the config. No literal durations
//! live in the decision code: each rule names the field it waits for.

use std::time::Duration;

use pgha_config::PghaConfig;

/// The agent's clocks and limits (docs/FAILOVER.md, "Timing budget").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timings {
    /// The leader lease (`failover.ttl`).
    pub ttl: Duration,
    /// Loop period (`failover.loop_wait`).
    pub loop_wait: Duration,
    /// Longest one DCS request may take (`dcs.request_timeout`).
    pub dcs_timeout: Duration,
    /// A leader that could not renew for this long stops PostgreSQL itself (unless failsafe
    /// holds): `ttl - loop_wait - 2 x dcs_timeout - 0.5 s` (a tick that waits on the DCS takes
    /// up to two request timeouts), at least `loop_wait`. For a lease granted with another
    /// TTL than the settings', [`Timings::fence_after_on`].
    pub fence_after: Duration,
    /// The supervisor kills PostgreSQL this long after the start of the last lease renewal
    /// the agent reported (`ttl - failover.safety_margin`): before the lease can expire. For
    /// a lease granted with another TTL, [`Timings::watchdog_after_on`].
    pub watchdog_after: Duration,
    /// `failover.safety_margin`.
    pub safety_margin: Duration,
    /// A leader whose PostgreSQL does not come back within this releases the lease.
    pub postgres_restart_timeout: Duration,
    /// Nobody is elected before the agent ran this long (every member publishes once first).
    pub settle_at_start: Duration,
    /// A replica not streaming this long from a leader on a newer timeline is rewound.
    pub rewind_after_not_streaming: Duration,
    /// Slots are compared with what should exist at least this often; gaps of more than three
    /// times this restart the drop timers.
    pub slot_check_every: Duration,
    /// A slot nobody should read from us is dropped after it stayed unwanted and inactive
    /// this long.
    pub slot_drop_grace: Duration,
    /// A replica that does not stream re-makes its slot on the upstream this often, after
    /// this long.
    pub slot_retry_every: Duration,
    /// A cascading replica returns to its `replicate_from` node after that node looked usable
    /// this long.
    pub cascade_settle: Duration,
    /// ... and follows the leader this long after it could not stream from it.
    pub cascade_backoff: Duration,
    /// ... when it could not stream from it for this long.
    pub cascade_stuck: Duration,
    /// A node that confirmed failsafe to the leader does not take the lease for this long.
    pub failsafe_quarantine: Duration,
    /// A switchover or failover request restricts elections this long after it became due.
    pub request_fresh: Duration,
    /// Promotion (pg_promote until not in recovery).
    pub promote_timeout: Duration,
    /// The fast dead-leader path probes ports with this connect timeout.
    pub dead_probe_timeout: Duration,
    /// ... and, once the leader's ports refused, probes again this often (not every
    /// `loop_wait`): the second refusal and the other member's word come sooner.
    pub dead_probe_every: Duration,
    /// ... and needs the leader's member key unchanged for this long (a live agent
    /// republishes it every tick), with another member reporting the same refusals.
    pub dead_leader_stale: Duration,
    /// A planned switchover waits this long for the target to receive the final checkpoint.
    pub handover_wait_switchover: Duration,
    /// A manual failover away from a live leader waits this long.
    pub handover_wait_failover: Duration,
    /// Non-strict sync mode: a new synchronous standby that has not caught up within this is
    /// dropped from synchronous_standby_names again (commits must not hang on it).
    pub sync_catchup_timeout: Duration,
    /// Starts that fail in a row after a rewind before the data dir is cloned afresh.
    pub reclone_after_failed_starts: u32,
}

impl Timings {
    pub fn from_config(cfg: &PghaConfig) -> Self {
        let f = &cfg.failover;
        let dcs_timeout = cfg
            .dcs
            .as_ref()
            .map(|d| d.request_timeout)
            .unwrap_or(Duration::from_secs(1));
        let fence_after = fence_after(f.ttl, f.loop_wait, dcs_timeout);
        Timings {
            ttl: f.ttl,
            loop_wait: f.loop_wait,
            dcs_timeout,
            fence_after,
            watchdog_after: f.ttl.saturating_sub(f.safety_margin),
            safety_margin: f.safety_margin,
            postgres_restart_timeout: f.postgres_restart_timeout,
            settle_at_start: f.loop_wait * 2,
            rewind_after_not_streaming: Duration::from_secs(5),
            slot_check_every: Duration::from_secs(2),
            slot_drop_grace: f.ttl,
            slot_retry_every: Duration::from_secs(2),
            cascade_settle: Duration::from_secs(3),
            cascade_backoff: Duration::from_secs(60),
            cascade_stuck: f.ttl * 2,
            failsafe_quarantine: f.ttl + Duration::from_secs(1),
            request_fresh: Duration::from_secs(60),
            promote_timeout: Duration::from_secs(60),
            dead_probe_timeout: Duration::from_millis(300),
            dead_probe_every: (f.loop_wait / 4).max(Duration::from_millis(50)),
            dead_leader_stale: f.loop_wait * 3 / 2,
            handover_wait_switchover: Duration::from_secs(10),
            handover_wait_failover: Duration::from_secs(2),
            sync_catchup_timeout: f.ttl * 2,
            reclone_after_failed_starts: 3,
        }
    }
}

impl Timings {
    /// The TTL our promises may count on while we hold a lease granted with `lease_ttl`: the
    /// shorter of it and the settings' (a changed TTL reaches the lease only when the agent
    /// moves to a new one; until then neither may be outlived).
    pub fn lease_ttl(&self, lease_ttl: Duration) -> Duration {
        lease_ttl.min(self.ttl)
    }

    /// [`Timings::fence_after`] for a lease granted with `lease_ttl`, with the current loop
    /// period and request timeout (the next tick waits on those).
    pub fn fence_after_on(&self, lease_ttl: Duration) -> Duration {
        fence_after(self.lease_ttl(lease_ttl), self.loop_wait, self.dcs_timeout)
    }

    /// [`Timings::watchdog_after`] for a lease granted with `lease_ttl`.
    pub fn watchdog_after_on(&self, lease_ttl: Duration) -> Duration {
        self.lease_ttl(lease_ttl).saturating_sub(self.safety_margin)
    }

    /// The longest sleep between two ticks while we hold a lease of `lease_ttl`: `loop_wait`,
    /// but never more than a quarter of the lease (a longer `loop_wait` set together with a
    /// longer TTL must not let the old, shorter lease run out between renewals).
    pub fn loop_period(&self, lease_ttl: Option<Duration>) -> Duration {
        lease_ttl.map_or(self.loop_wait, |t| self.loop_wait.min(t / 4))
    }

    /// What a leader asks of the agents in a failsafe round: no lease for this long, which
    /// covers its supervisor's deadline on either TTL.
    pub fn failsafe_promise(&self, lease_ttl: Duration) -> Duration {
        lease_ttl.max(self.ttl) + Duration::from_secs(1)
    }
}

/// `ttl - loop_wait - 2 x dcs_timeout - 0.5 s`, at least `loop_wait` (capped at a quarter of
/// the TTL: a loop period meant for a longer lease).
fn fence_after(ttl: Duration, loop_wait: Duration, dcs_timeout: Duration) -> Duration {
    ttl.saturating_sub(loop_wait + dcs_timeout * 2 + Duration::from_millis(500))
        .max(loop_wait.min(ttl / 4))
}
