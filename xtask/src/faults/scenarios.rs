//! The scenarios: each applies its faults to a healthy world under the observers, heals them,
//! waits until the cluster is healthy again, and checks what the observers saw.

use std::sync::atomic::AtomicI64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use pgha_config::ReplicationMode;

use super::observe::{lost_on, Observed, Observer};
use super::world::{Frozen, World, ETCD};

/// Every scenario, in the order `cargo xtask faults` runs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// The primary's host drops every packet (no reset): a vanished host.
    Vanish,
    /// The primary cannot reach any etcd member; clients and replicas still reach it.
    EtcdIsolated,
    /// A replica (sync: the synchronous one) cannot reach the other nodes; etcd it can.
    ReplicaPeersCut,
    /// A replica's connections to the primary's PostgreSQL and agent ports are reset.
    RejectToPrimary,
    /// The etcd leader is killed, restarted after 3 x TTL.
    EtcdLeaderKill,
    /// An etcd member that is not the leader is killed, restarted after 3 x TTL.
    EtcdMemberLost,
    /// No node reaches any etcd member for --outage (failsafe).
    EtcdAllCut,
    /// Every etcd member is SIGKILLed, restarted after 3 x TTL (failsafe).
    EtcdAllKilled,
    /// No node reaches etcd, and a replica's agent is frozen: the failsafe loses a confirmation.
    EtcdCutReplicaFrozen,
    /// The primary's agent is frozen (SIGSTOP) for 3 x TTL, its PostgreSQL keeps running.
    FrozenAgent,
    /// The replicas' startup processes are frozen (a promotion that hangs), then the primary's
    /// host vanishes; they are thawed after 2 x TTL.
    SlowPromotion,
    /// The primary's agent is SIGKILLed and restarted after 0.1, 0.5, 1, 2 and 3 s in turn.
    AgentRestart,
    /// Two failovers within 10 s, then a third: every node rejoins by pg_rewind.
    DoubleFailover,
    /// Sync only: the synchronous standby's link to the primary is cut, the primary moves
    /// synchronous_standby_names to the other replica, then the primary's host vanishes.
    SyncChurn,
    /// A base backup, then the primary's host vanishes: the WAL archive stays continuous,
    /// `pgha verify` and `pgha-backup verify` pass, a restore to the latest point holds every
    /// acknowledged write (sync).
    ArchiveContinuity,
}

impl Scenario {
    pub fn all() -> Vec<Scenario> {
        use clap::ValueEnum;
        Scenario::value_variants().to_vec()
    }

    pub fn name(self) -> String {
        use clap::ValueEnum;
        self.to_possible_value()
            .map(|v| v.get_name().to_string())
            .unwrap_or_default()
    }

    pub fn applies(self, mode: ReplicationMode) -> bool {
        self != Scenario::SyncChurn || mode != ReplicationMode::Async
    }
}

/// What one trial of one scenario measured, and the checks that failed.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub scenario: String,
    pub samples: usize,
    pub two_writable: usize,
    pub acked: usize,
    pub lost: usize,
    /// Writes the old primary acknowledged after another node was seen writable.
    pub late_acks: usize,
    pub promotions: usize,
    /// The fault to the first sample with another node writable (failover scenarios).
    pub to_writable: Option<f64>,
    /// Longest run of samples without the primary writable, in seconds (no-failover scenarios).
    pub primary_gap: Option<f64>,
    /// How long the primary kept taking writes after it lost its right to (etcd-cut-replica-frozen).
    pub stopped_after: Option<f64>,
    /// Acknowledged writes missing from a copy restored to the latest point (archive-continuity).
    pub restored_missing: Option<usize>,
    /// The fault healed to every node streaming again.
    pub healthy_after: Option<f64>,
    pub failures: Vec<String>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    pub(super) fn check(&mut self, ok: bool, what: impl Into<String>) {
        if !ok {
            self.failures.push(what.into());
        }
    }
}

/// A world, the ids its writers use, and the mode's rules.
pub struct Run<'a> {
    pub w: &'a mut World,
    pub next_id: Arc<AtomicI64>,
    /// The URL the routed writer uses (libpq multi-host, read-write).
    pub url: pgha_router::url::MultiHostUrl,
    /// How long etcd stays unreachable in etcd-all-cut.
    pub outage: Duration,
    /// The running scenario fails over more than once (late acknowledgements are not counted).
    pub repeated: bool,
}

/// How long a scenario gives a new primary to become writable.
const PROMOTION_WAIT: Duration = Duration::from_secs(60);
/// How long a scenario gives the cluster to be healthy again after the fault healed.
const HEAL_WAIT: Duration = Duration::from_secs(90);

impl Run<'_> {
    pub(super) fn sync(&self) -> bool {
        self.w.mode != ReplicationMode::Async
    }

    pub(super) fn hold(&self) -> Duration {
        self.w.ttl() * 3
    }

    /// A healthy cluster and its primary, the observers started on it.
    pub(super) async fn begin(&mut self) -> anyhow::Result<(String, Observer)> {
        let old = self.w.wait_healthy(HEAL_WAIT).await?;
        let obs = Observer::start(
            self.w.params(),
            self.url.clone(),
            &old,
            self.next_id.clone(),
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        Ok((old, obs))
    }

    /// Waits until the cluster is healthy again (timed from `healed`), stops the observers,
    /// and fills the measurements every scenario shares.
    pub(super) async fn end(
        &mut self,
        name: Scenario,
        old: &str,
        obs: Observer,
        fault: Instant,
        healed: Instant,
    ) -> anyhow::Result<(Report, Observed)> {
        let healthy = self.w.wait_healthy(HEAL_WAIT).await;
        let healthy_after = healthy.is_ok().then(|| healed.elapsed().as_secs_f64());
        tokio::time::sleep(Duration::from_secs(1)).await;
        let seen = obs.finish().await;
        let mut r = Report {
            scenario: name.name(),
            samples: seen.samples.len(),
            two_writable: seen.two_writable(),
            acked: seen.acks.len(),
            promotions: seen.writers().len().saturating_sub(1),
            healthy_after,
            ..Report::default()
        };
        if let Some((at, _)) = seen.new_writable_at(old, fault) {
            r.to_writable = Some((at - fault).as_secs_f64());
            // Scenarios with several failovers: the first primary may lead again later.
            if !self.repeated {
                r.late_acks = seen.acks_by_after(old, at);
            }
        }
        match &healthy {
            Ok(p) => r.lost = lost_on(&self.w.params_of(p)?, &seen.acks).await?,
            Err(e) => r.failures.push(format!("not healthy again: {e:#}")),
        }
        r.check(
            r.two_writable == 0,
            format!("{} samples with two writable nodes", r.two_writable),
        );
        r.check(
            r.late_acks == 0,
            format!(
                "{} writes acknowledged by {old} after another node was writable",
                r.late_acks
            ),
        );
        if self.sync() {
            r.check(
                r.lost == 0,
                format!("{} acknowledged writes lost in sync mode", r.lost),
            );
        }
        // This trial's (from its fault on), except after a rewind that lost its source.
        let since = std::time::SystemTime::now() - fault.elapsed();
        let reclones = self.w.reclones(since);
        r.check(
            reclones.is_empty(),
            format!("re-cloned instead of rewound: {}", reclones.join(", ")),
        );
        Ok((r, seen))
    }

    /// A failover scenario's own checks: exactly one promotion, to a node that was not `old`.
    pub(super) fn one_promotion(r: &mut Report) {
        r.check(
            r.to_writable.is_some(),
            "no other node became writable".to_string(),
        );
        r.check(
            r.promotions == 1,
            format!("{} promotions, expected exactly 1", r.promotions),
        );
    }

    pub(super) fn replica(&self, old: &str) -> String {
        self.w
            .node_names()
            .into_iter()
            .find(|n| n != old)
            .unwrap_or_default()
    }

    /// A replica of `old`: in sync mode the synchronous standby.
    pub(super) async fn chosen_replica(&self, old: &str) -> anyhow::Result<String> {
        if self.sync() {
            if let Some(s) = self.w.sync_standby(old).await? {
                return Ok(s);
            }
        }
        Ok(self.replica(old))
    }

    pub async fn run(&mut self, s: Scenario) -> anyhow::Result<Report> {
        self.repeated = matches!(s, Scenario::AgentRestart | Scenario::DoubleFailover);
        match s {
            Scenario::Vanish => self.vanish().await,
            Scenario::EtcdIsolated => self.etcd_isolated().await,
            Scenario::ReplicaPeersCut => self.replica_peers_cut().await,
            Scenario::RejectToPrimary => self.reject_to_primary().await,
            Scenario::EtcdLeaderKill => self.etcd_kill(true).await,
            Scenario::EtcdMemberLost => self.etcd_kill(false).await,
            Scenario::EtcdAllCut => self.etcd_all_cut().await,
            Scenario::EtcdAllKilled => self.etcd_all_killed().await,
            Scenario::EtcdCutReplicaFrozen => self.etcd_cut_replica_frozen().await,
            Scenario::FrozenAgent => self.frozen_agent().await,
            Scenario::SlowPromotion => self.slow_promotion().await,
            Scenario::AgentRestart => self.agent_restart().await,
            Scenario::DoubleFailover => self.double_failover().await,
            Scenario::SyncChurn => self.sync_churn().await,
            Scenario::ArchiveContinuity => self.archive_continuity().await,
        }
    }

    async fn vanish(&mut self) -> anyhow::Result<Report> {
        let (old, obs) = self.begin().await?;
        let t0 = Instant::now();
        let fault = self.w.net.vanish(self.w.host_of(&old)?)?;
        let new = obs.wait_new_writable(&old, PROMOTION_WAIT).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        drop(fault);
        let healed = Instant::now();
        let (mut r, _) = self.end(Scenario::Vanish, &old, obs, t0, healed).await?;
        Self::one_promotion(&mut r);
        r.check(new.is_some(), "no new primary while the host was gone");
        Ok(r)
    }

    async fn etcd_isolated(&mut self) -> anyhow::Result<Report> {
        let (old, obs) = self.begin().await?;
        let t0 = Instant::now();
        let fault = self.w.net.cut(self.w.host_of(&old)?, &ETCD)?;
        obs.wait_new_writable(&old, PROMOTION_WAIT).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        drop(fault);
        let healed = Instant::now();
        let (mut r, seen) = self
            .end(Scenario::EtcdIsolated, &old, obs, t0, healed)
            .await?;
        Self::one_promotion(&mut r);
        if let Some((new_at, new)) = seen.new_writable_at(&old, t0) {
            let last_old = seen.last_writable(&old, t0);
            r.check(
                last_old.is_none_or(|l| l < new_at),
                format!("{old} still took writes when {new} was writable"),
            );
        }
        Ok(r)
    }

    async fn frozen_agent(&mut self) -> anyhow::Result<Report> {
        let (old, obs) = self.begin().await?;
        let t0 = Instant::now();
        let frozen = Frozen::new(self.w.agent_pid(&old)? as i32)?;
        tokio::time::sleep(self.hold()).await;
        drop(frozen);
        let healed = Instant::now();
        let (mut r, _) = self
            .end(Scenario::FrozenAgent, &old, obs, t0, healed)
            .await?;
        Self::one_promotion(&mut r);
        Ok(r)
    }

    async fn slow_promotion(&mut self) -> anyhow::Result<Report> {
        let (old, obs) = self.begin().await?;
        let mut frozen = Vec::new();
        for n in self.w.node_names().into_iter().filter(|n| *n != old) {
            let pid = self
                .w
                .startup_pid(&n)
                .with_context(|| format!("no startup process on {n}"))?;
            frozen.push(Frozen::new(pid)?);
        }
        let t0 = Instant::now();
        let fault = self.w.net.vanish(self.w.host_of(&old)?)?;
        tokio::time::sleep(self.w.ttl() * 2).await;
        drop(frozen);
        obs.wait_new_writable(&old, PROMOTION_WAIT).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        drop(fault);
        let healed = Instant::now();
        let (mut r, _) = self
            .end(Scenario::SlowPromotion, &old, obs, t0, healed)
            .await?;
        Self::one_promotion(&mut r);
        Ok(r)
    }

    async fn agent_restart(&mut self) -> anyhow::Result<Report> {
        let (first, obs) = self.begin().await?;
        let t0 = Instant::now();
        let mut failures = Vec::new();
        for delay_ms in [100u64, 500, 1000, 2000, 3000] {
            let old = self.w.wait_healthy(HEAL_WAIT).await?;
            self.w.kill_agent(&old);
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            self.w.start_agent(&old)?;
            if let Err(e) = self.w.wait_healthy(HEAL_WAIT).await {
                failures.push(format!("after a restart {delay_ms} ms later: {e:#}"));
            }
        }
        let healed = Instant::now();
        let (mut r, _) = self
            .end(Scenario::AgentRestart, &first, obs, t0, healed)
            .await?;
        // Promotions are allowed here (the agent is gone for up to 3 s); late acks by the first
        // primary are not counted, it may be primary again.
        r.failures.extend(failures);
        Ok(r)
    }

    async fn double_failover(&mut self) -> anyhow::Result<Report> {
        let (first, obs) = self.begin().await?;
        let t0 = Instant::now();
        let mut failures = Vec::new();
        let mut old = first.clone();
        for round in 1..=3 {
            if round == 3 {
                // The third after the cluster settled.
                old = self.w.wait_healthy(HEAL_WAIT).await?;
            }
            // Sync mode promotes only a standby `/sync` names: a failover needs the primary to
            // have one (without, "no promotion" is the right answer, not a finding).
            if self.sync() && !self.w.wait_sync_standby(Duration::from_secs(10)).await {
                failures.push(format!(
                    "failover {round}: {old} had no synchronous standby within 10 s"
                ));
            }
            self.w.kill_agent(&old);
            if let Some(pid) = self.w.postmaster_pid(&old) {
                super::world::signal(pid, nix::sys::signal::Signal::SIGKILL)?;
            }
            let new = obs.wait_new_writable(&old, PROMOTION_WAIT).await;
            self.w.start_agent(&old)?;
            match new {
                Some(n) => old = n,
                None => {
                    failures.push(format!("failover {round}: no new primary"));
                    break;
                }
            }
        }
        let healed = Instant::now();
        let (mut r, _) = self
            .end(Scenario::DoubleFailover, &first, obs, t0, healed)
            .await?;
        r.check(
            r.healthy_after.is_some_and(|s| s < 60.0),
            format!(
                "every node streaming again took {:?} s (bound 60 s)",
                r.healthy_after
            ),
        );
        r.failures.extend(failures);
        Ok(r)
    }

    async fn sync_churn(&mut self) -> anyhow::Result<Report> {
        let (old, obs) = self.begin().await?;
        let standby = self
            .w
            .sync_standby(&old)
            .await?
            .context("no synchronous standby")?;
        let other = self
            .w
            .node_names()
            .into_iter()
            .find(|n| *n != old && *n != standby)
            .context("no third node")?;
        let t0 = Instant::now();
        let cut = self
            .w
            .net
            .cut(self.w.host_of(&standby)?, &[self.w.host_of(&old)?])?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut moved = false;
        while Instant::now() < deadline {
            // Moved: the DCS's /sync names the other replica (what the election reads),
            // not only PostgreSQL's synchronous_standby_names.
            let named = self.w.sync_key_standbys().await.unwrap_or_default();
            if named.contains(&other) && !named.contains(&standby) {
                moved = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let t_loss = Instant::now();
        let fault = self.w.net.vanish(self.w.host_of(&old)?)?;
        let new = obs.wait_new_writable(&old, PROMOTION_WAIT).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        drop(fault);
        drop(cut);
        let healed = Instant::now();
        let (mut r, seen) = self.end(Scenario::SyncChurn, &old, obs, t0, healed).await?;
        r.to_writable = seen
            .new_writable_at(&old, t_loss)
            .map(|(at, _)| (at - t_loss).as_secs_f64());
        r.check(
            moved,
            format!("/sync did not move from {standby} to {other} within 30 s"),
        );
        if let (Some(n), true) = (&new, moved) {
            r.check(
                *n == other,
                format!("{n} was promoted; only {other} held every acknowledged commit"),
            );
        }
        Ok(r)
    }
}
