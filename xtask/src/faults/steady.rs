//! Scenarios after which nothing may have failed over: partitions that leave the primary
//! reachable, resets, etcd member and leader loss, etcd unreachable or stopped (failsafe).

use std::time::{Duration, Instant};

use super::observe::Observed;
use super::scenarios::{Report, Run, Scenario};
use super::world::{Frozen, ETCD, NODES};

impl Run<'_> {
    /// A no-failover scenario's own checks: no promotion, the primary kept writable.
    pub(super) fn no_failover(
        r: &mut Report,
        seen: &Observed,
        old: &str,
        from: Instant,
        until: Instant,
    ) {
        r.check(
            r.promotions == 0 && r.to_writable.is_none(),
            format!("{} promotions, expected none", r.promotions),
        );
        let gap = longest_run(seen, old, from, until);
        r.primary_gap = Some(gap);
        // A fenced primary is gone for seconds; a slow answer under load is one sample.
        r.check(
            gap < 1.0,
            format!("the primary {old} was not writable for {gap:.2} s (fenced?)"),
        );
    }

    pub(super) async fn replica_peers_cut(&mut self) -> anyhow::Result<Report> {
        let (old, obs) = self.begin().await?;
        let replica = self.chosen_replica(&old).await?;
        let others: Vec<usize> = NODES
            .iter()
            .copied()
            .filter(|&h| Some(h) != self.w.host_of(&replica).ok())
            .collect();
        let t0 = Instant::now();
        let fault = self.w.net.cut(self.w.host_of(&replica)?, &others)?;
        tokio::time::sleep(self.hold()).await;
        drop(fault);
        let healed = Instant::now();
        let (mut r, seen) = self
            .end(Scenario::ReplicaPeersCut, &old, obs, t0, healed)
            .await?;
        Self::no_failover(&mut r, &seen, &old, t0, healed);
        Ok(r)
    }

    pub(super) async fn reject_to_primary(&mut self) -> anyhow::Result<Report> {
        let (old, obs) = self.begin().await?;
        let replica = self.chosen_replica(&old).await?;
        let t0 = Instant::now();
        let fault = self.w.net.reject_ports(
            self.w.host_of(&replica)?,
            self.w.host_of(&old)?,
            &[5432, 8008],
        )?;
        tokio::time::sleep(self.hold()).await;
        drop(fault);
        let healed = Instant::now();
        let (mut r, seen) = self
            .end(Scenario::RejectToPrimary, &old, obs, t0, healed)
            .await?;
        Self::no_failover(&mut r, &seen, &old, t0, healed);
        Ok(r)
    }

    pub(super) async fn etcd_kill(&mut self, leader: bool) -> anyhow::Result<Report> {
        let (old, obs) = self.begin().await?;
        let l = self.w.etcd_leader().await?;
        let k = if leader {
            l
        } else {
            (l + 1) % self.w.etcd.len()
        };
        let t0 = Instant::now();
        self.w.kill_etcd(k);
        tokio::time::sleep(self.hold()).await;
        self.w.restart_etcd(k)?;
        let healed = Instant::now();
        let name = if leader {
            Scenario::EtcdLeaderKill
        } else {
            Scenario::EtcdMemberLost
        };
        let (mut r, seen) = self.end(name, &old, obs, t0, healed).await?;
        Self::no_failover(&mut r, &seen, &old, t0, healed);
        Ok(r)
    }

    /// Every node cut from every etcd member.
    fn cut_all_from_etcd(&self) -> anyhow::Result<Vec<pgha_test_support::netns::Fault>> {
        NODES.iter().map(|&h| self.w.net.cut(h, &ETCD)).collect()
    }

    pub(super) async fn etcd_all_cut(&mut self) -> anyhow::Result<Report> {
        let (old, obs) = self.begin().await?;
        let t0 = Instant::now();
        let faults = self.cut_all_from_etcd()?;
        tokio::time::sleep(self.outage).await;
        drop(faults);
        let healed = Instant::now();
        // etcd is back: nothing may be promoted now either.
        tokio::time::sleep(self.hold()).await;
        let (mut r, seen) = self
            .end(Scenario::EtcdAllCut, &old, obs, t0, Instant::now())
            .await?;
        Self::no_failover(&mut r, &seen, &old, t0, healed + self.hold());
        Ok(r)
    }

    pub(super) async fn etcd_cut_replica_frozen(&mut self) -> anyhow::Result<Report> {
        let (old, obs) = self.begin().await?;
        let replica = self.replica(&old);
        let t0 = Instant::now();
        let faults = self.cut_all_from_etcd()?;
        // The failsafe holds (every replica confirms) ...
        tokio::time::sleep(self.hold()).await;
        // ... until one replica's agent stops answering.
        let t_freeze = Instant::now();
        let frozen = Frozen::new(self.w.agent_pid(&replica)? as i32)?;
        tokio::time::sleep(self.hold()).await;
        drop(frozen);
        drop(faults);
        let healed = Instant::now();
        let (mut r, seen) = self
            .end(Scenario::EtcdCutReplicaFrozen, &old, obs, t0, healed)
            .await?;
        let gap = longest_run(&seen, &old, t0, t_freeze);
        r.check(
            gap < 1.0,
            format!("the primary was not writable for {gap:.2} s while the failsafe held"),
        );
        // The first sample after the freeze without the primary writable.
        let stopped = seen
            .samples
            .iter()
            .find(|s| s.at >= t_freeze && !s.writable.contains(&old))
            .map(|s| s.at - t_freeze);
        let bound = self.w.ttl();
        r.stopped_after = stopped.map(|d| d.as_secs_f64());
        r.check(
            stopped.is_some_and(|d| d < bound),
            format!(
                "the primary kept taking writes {stopped:?} after a replica's agent stopped confirming (bound: the TTL, {bound:?})"
            ),
        );
        Ok(r)
    }

    pub(super) async fn etcd_all_killed(&mut self) -> anyhow::Result<Report> {
        let (old, obs) = self.begin().await?;
        let t0 = Instant::now();
        for k in 0..self.w.etcd.len() {
            self.w.kill_etcd(k);
        }
        tokio::time::sleep(self.hold()).await;
        let mut failures = Vec::new();
        for k in 0..self.w.etcd.len() {
            if let Err(e) = self.w.restart_etcd(k) {
                failures.push(format!("restart etcd member {k}: {e:#}"));
            }
        }
        let healed = Instant::now();
        // etcd is back (every lease it held is extended on its new leader's election):
        // nothing may be promoted now either.
        tokio::time::sleep(self.hold()).await;
        let (mut r, seen) = self
            .end(Scenario::EtcdAllKilled, &old, obs, t0, Instant::now())
            .await?;
        Self::no_failover(&mut r, &seen, &old, t0, healed + self.hold());
        r.failures.extend(failures);
        Ok(r)
    }
}

/// The longest run of consecutive samples in `[from, until]` without `node` writable, in
/// seconds (from the first such sample to the next one with it writable).
fn longest_run(seen: &Observed, node: &str, from: Instant, until: Instant) -> f64 {
    let mut longest = Duration::ZERO;
    let mut start: Option<Instant> = None;
    for s in seen
        .samples
        .iter()
        .filter(|s| s.at >= from && s.at <= until)
    {
        let w = s.writable.iter().any(|n| n == node);
        match (w, start) {
            (false, None) => start = Some(s.at),
            (true, Some(st)) => {
                longest = longest.max(s.at - st);
                start = None;
            }
            _ => {}
        }
    }
    if let Some(st) = start {
        longest = longest.max(until.min(Instant::now()) - st);
    }
    longest.as_secs_f64()
}
