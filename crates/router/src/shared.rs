//! The router's state shared by its handles and its health task: the nodes, who is primary,
//! node selection, connection acquisition that follows a failover, and the health round.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use sqlx::pool::PoolConnection;
use sqlx::Postgres;
use tokio::sync::{watch, Notify};
use tokio::time::Instant as TokioInstant;

use pgha_postgres::Lsn;

use crate::discovery::{no_nodes, Discovery};
use crate::error::is_failover_error;
use crate::metrics::RouterMetrics;
use crate::node::{Node, Role};
use crate::{Fallback, ReaderPolicy, Result, RouterError, RouterOptions};

/// The nodes and the current writer; replaced as a whole, read on every call.
#[derive(Debug, Clone, Default)]
pub(crate) struct View {
    pub nodes: Arc<[Arc<Node>]>,
    pub primary: Option<Arc<Node>>,
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub opts: RouterOptions,
    pub discovery: Arc<dyn Discovery>,
    view: RwLock<View>,
    /// Bumped after every health round.
    round_done: watch::Sender<u64>,
    /// Wakes the health task for an immediate round.
    pub round_wanted: Arc<Notify>,
    pub metrics: RouterMetrics,
    rr: AtomicUsize,
    pub cancel: tokio_util::sync::CancellationToken,
}

/// Outcome of waiting on one node's acquire.
enum Acquired {
    Conn(PoolConnection<Postgres>),
    /// The node lost its seat (down, demoted, lagging) while we waited.
    Moved,
    Failed(sqlx::Error),
}

impl Shared {
    pub(crate) fn new(
        opts: RouterOptions,
        discovery: Arc<dyn Discovery>,
        cancel: tokio_util::sync::CancellationToken,
    ) -> Shared {
        Shared {
            opts,
            discovery,
            view: RwLock::new(View::default()),
            round_done: watch::channel(0).0,
            round_wanted: Arc::new(Notify::new()),
            metrics: RouterMetrics::default(),
            rr: AtomicUsize::new(0),
            cancel,
        }
    }

    pub(crate) fn view(&self) -> View {
        match self.view.read() {
            Ok(v) => v.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    pub(crate) fn primary(&self) -> Option<Arc<Node>> {
        match self.view.read() {
            Ok(v) => v.primary.clone(),
            Err(p) => p.into_inner().primary.clone(),
        }
    }

    fn set_view(&self, f: impl FnOnce(&mut View)) {
        let mut g = match self.view.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        f(&mut g);
    }

    fn is_primary(&self, node: &Arc<Node>) -> bool {
        self.primary().is_some_and(|p| Arc::ptr_eq(&p, node))
    }

    /// Asks the health task for a round now.
    pub(crate) fn request_round(&self) {
        RouterMetrics::inc(&self.metrics.rediscoveries);
        self.round_wanted.notify_one();
    }

    /// A node failed a call in a way that says it may be gone or demoted: take it out of
    /// service until the next probe, and probe at once.
    pub(crate) fn suspect(&self, node: &Arc<Node>, why: &sqlx::Error) {
        RouterMetrics::inc(&self.metrics.failover_errors);
        node.suspect(why.to_string());
        if self.is_primary(node) {
            tracing::warn!(node = %node.name, error = %why, "writer failed; looking for the primary");
            self.set_view(|v| {
                if v.primary.as_ref().is_some_and(|p| Arc::ptr_eq(p, node)) {
                    v.primary = None;
                }
            });
        }
        self.request_round();
    }

    /// Waits for the next completed health round (asking for one), or `deadline`.
    async fn next_round(&self, deadline: TokioInstant) -> bool {
        let mut rx = self.round_done.subscribe();
        self.request_round();
        tokio::select! {
            r = rx.changed() => r.is_ok(),
            _ = tokio::time::sleep_until(deadline) => false,
            _ = self.cancel.cancelled() => false,
        }
    }

    /// Acquires on `node`, giving up once the node no longer `keeps_seat` after a health
    /// round. No timer per call (a timer per query costs a cross-thread wakeup in tokio): the
    /// health task's watchdog notices acquires that stopped finishing and probes at once.
    async fn acquire_on(
        &self,
        node: &Arc<Node>,
        keeps_seat: impl Fn(&Shared, &Arc<Node>) -> bool,
    ) -> Acquired {
        let _waiting = node.waiting();
        let acq = node.pool.acquire();
        tokio::pin!(acq);
        let mut rx = self.round_done.subscribe();
        loop {
            tokio::select! {
                biased;
                r = &mut acq => return match r {
                    Ok(c) => Acquired::Conn(c),
                    Err(e) => Acquired::Failed(e),
                },
                r = rx.changed() => {
                    if r.is_err() || !keeps_seat(self, node) {
                        return Acquired::Moved;
                    }
                }
            }
        }
    }

    /// True when some node has acquires waiting that stopped finishing.
    pub(crate) fn any_stuck(&self) -> bool {
        // Check every node (each call also advances its watchdog mark).
        self.view()
            .nodes
            .iter()
            .fold(false, |acc, n| n.stuck() | acc)
    }

    /// A connection to the current primary, waiting up to `failover_wait` for one to appear.
    pub(crate) async fn acquire_primary(&self) -> Result<(Arc<Node>, PoolConnection<Postgres>)> {
        let deadline = TokioInstant::now() + self.opts.failover_wait;
        loop {
            if let Some(node) = self.primary() {
                match self.acquire_on(&node, |s, n| s.is_primary(n)).await {
                    Acquired::Conn(c) => {
                        RouterMetrics::inc(&self.metrics.writes);
                        return Ok((node, c));
                    }
                    Acquired::Moved => continue,
                    Acquired::Failed(e) if is_failover_error(&e) => self.suspect(&node, &e),
                    Acquired::Failed(e) => {
                        return Err(RouterError::Query {
                            node: node.name.clone(),
                            source: e,
                        })
                    }
                }
            }
            if TokioInstant::now() >= deadline || !self.next_round(deadline).await {
                return Err(self.no_primary());
            }
            if self.primary().is_none() {
                // Nobody is primary yet (failover in progress): do not spin on probes.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    fn no_primary(&self) -> RouterError {
        self.no_primary_after(self.opts.failover_wait)
    }

    /// The error of a caller that does not wait for a primary.
    pub(crate) fn no_primary_now(&self) -> RouterError {
        self.no_primary_after(Duration::ZERO)
    }

    fn no_primary_after(&self, waited: Duration) -> RouterError {
        let nodes = self
            .view()
            .nodes
            .iter()
            .map(|n| format!("{} {:?}", n.name, n.state()))
            .collect::<Vec<_>>()
            .join(", ");
        RouterError::NoPrimary { nodes, waited }
    }

    /// Picks a replica that serves reads and has replayed `min_lsn`, per the reader policy.
    fn pick_replica(&self, min_lsn: Option<Lsn>) -> Option<Arc<Node>> {
        let view = match self.view.read() {
            Ok(v) => v.nodes.clone(),
            Err(p) => p.into_inner().nodes.clone(),
        };
        let ok = |n: &Arc<Node>| {
            n.serves_reads() && min_lsn.is_none_or(|m| n.lsn().is_some_and(|l| l >= m))
        };
        match self.opts.reader_policy {
            ReaderPolicy::LeastLag => view
                .iter()
                .filter(|n| ok(n))
                .min_by_key(|n| n.lag_bytes())
                .cloned(),
            policy => {
                let count = view.iter().filter(|n| ok(n)).count();
                if count == 0 {
                    return None;
                }
                let k = match policy {
                    ReaderPolicy::Random => rand::random_range(0..count),
                    _ => self.rr.fetch_add(1, Relaxed) % count,
                };
                view.iter().filter(|n| ok(n)).nth(k).cloned()
            }
        }
    }

    /// A connection for a read: a qualifying replica, else the fallback.
    pub(crate) async fn acquire_reader(&self) -> Result<(Arc<Node>, PoolConnection<Postgres>)> {
        loop {
            let Some(node) = self.pick_replica(None) else {
                return self.read_fallback(self.opts.fallback).await;
            };
            match self.acquire_on(&node, |_, n| n.serves_reads()).await {
                Acquired::Conn(c) => {
                    RouterMetrics::inc(&self.metrics.reads_replica);
                    return Ok((node, c));
                }
                Acquired::Moved => {}
                Acquired::Failed(e) if is_failover_error(&e) => self.suspect(&node, &e),
                Acquired::Failed(e) => {
                    return Err(RouterError::Query {
                        node: node.name.clone(),
                        source: e,
                    })
                }
            }
        }
    }

    async fn read_fallback(
        &self,
        fallback: Fallback,
    ) -> Result<(Arc<Node>, PoolConnection<Postgres>)> {
        match fallback {
            Fallback::Primary => {
                RouterMetrics::inc(&self.metrics.reads_primary_fallback);
                self.acquire_primary().await
            }
            Fallback::Error => {
                RouterMetrics::inc(&self.metrics.reads_refused);
                Err(RouterError::NoReplica {
                    bound: self.opts.bound_text(),
                })
            }
        }
    }

    /// A connection for a read that must see everything up to `lsn`.
    pub(crate) async fn acquire_replayed(
        &self,
        lsn: Lsn,
    ) -> Result<(Arc<Node>, PoolConnection<Postgres>)> {
        let ryw = self.opts.read_your_writes;
        // Known to be there already: no extra round trip.
        if let Some(node) = self.pick_replica(Some(lsn)) {
            if let Ok(Ok(c)) =
                tokio::time::timeout(self.opts.suspect_after, node.pool.acquire()).await
            {
                RouterMetrics::inc(&self.metrics.token_reads_replica);
                return Ok((node, c));
            }
        }
        // Ask the most advanced qualifying replica, on the connection the read will use:
        // replay only moves forward, so once it reached `lsn` the read sees the write.
        let started = Instant::now();
        let best = {
            let view = self.view();
            view.nodes
                .iter()
                .filter(|n| n.serves_reads())
                .max_by_key(|n| n.lsn())
                .cloned()
        };
        if let Some(node) = best {
            if let Ok(Ok(mut c)) =
                tokio::time::timeout(self.opts.suspect_after, node.pool.acquire()).await
            {
                loop {
                    let at: Option<Lsn> =
                        match sqlx::query_scalar("SELECT pg_last_wal_replay_lsn()")
                            .fetch_one(&mut *c)
                            .await
                        {
                            Ok(v) => v,
                            Err(e) => {
                                if is_failover_error(&e) {
                                    self.suspect(&node, &e);
                                }
                                break;
                            }
                        };
                    if let Some(at) = at {
                        node.saw_lsn(at);
                        if at >= lsn {
                            RouterMetrics::inc(&self.metrics.token_reads_waited);
                            return Ok((node, c));
                        }
                    } else {
                        break; // not a replica any more
                    }
                    if started.elapsed() >= ryw.wait {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }
        match ryw.then {
            Fallback::Primary => {
                RouterMetrics::inc(&self.metrics.token_reads_primary);
                self.acquire_primary().await
            }
            Fallback::Error => Err(RouterError::NotReplayed {
                lsn,
                waited: ryw.wait,
            }),
        }
    }

    /// Refreshes the member list from discovery, keeping the nodes (and their pools) that did
    /// not change.
    pub(crate) async fn refresh_members(&self) -> Result<()> {
        let members = self.discovery.members().await?;
        if members.is_empty() {
            return Err(no_nodes(self.discovery.as_ref()));
        }
        let old = self.view();
        let same = old.nodes.len() == members.len()
            && old
                .nodes
                .iter()
                .zip(&members)
                .all(|(n, m)| n.same_member(m));
        if same {
            return Ok(());
        }
        let nodes: Vec<Arc<Node>> = members
            .iter()
            .map(|m| {
                old.nodes
                    .iter()
                    .find(|n| n.same_member(m))
                    .cloned()
                    .unwrap_or_else(|| Arc::new(Node::new(m, &self.opts)))
            })
            .collect();
        tracing::info!(members = %members.iter().map(|m| m.name.as_str()).collect::<Vec<_>>().join(","), "router members");
        self.set_view(|v| {
            v.primary = v
                .primary
                .take()
                .filter(|p| nodes.iter().any(|n| Arc::ptr_eq(n, p)));
            v.nodes = nodes.into();
        });
        Ok(())
    }

    /// One health round: probe every node at once, pick the primary, compute lag, decide who
    /// serves reads.
    pub(crate) async fn health_round(&self) {
        RouterMetrics::inc(&self.metrics.health_rounds);
        if let Err(e) = self.refresh_members().await {
            tracing::warn!(error = %e, "discovery failed; keeping the last member list");
        }
        let view = self.view();
        let probes = futures_util::future::join_all(
            view.nodes.iter().map(|n| n.probe(self.opts.check_timeout)),
        )
        .await;
        // The writer: a node not in recovery; with two (a split brain after a manual promotion),
        // the higher timeline wins, then the current writer.
        let mut primary: Option<(usize, i64)> = None;
        for (i, p) in probes.iter().enumerate() {
            if let Ok(p) = p {
                if !p.in_recovery {
                    let tli = p.timeline.unwrap_or(0);
                    let better = match primary {
                        None => true,
                        Some((_, best)) if tli > best => true,
                        Some((_, best)) if tli == best => view
                            .primary
                            .as_ref()
                            .is_some_and(|cur| Arc::ptr_eq(cur, &view.nodes[i])),
                        _ => false,
                    };
                    if better {
                        primary = Some((i, tli));
                    }
                }
            }
        }
        // Lag is measured against the primary; without one, against the most advanced node, so
        // replicas keep serving reads while a failover is under way.
        let reference = match primary {
            Some((i, _)) => probes[i].as_ref().ok().and_then(|p| p.lsn),
            None => probes
                .iter()
                .filter_map(|p| p.as_ref().ok().and_then(|p| p.lsn))
                .max(),
        };
        for (i, (node, p)) in view.nodes.iter().zip(&probes).enumerate() {
            match p {
                Err(e) => {
                    if node.state() != crate::NodeState::Down {
                        tracing::warn!(node = %node.name, error = %e, "node down");
                    }
                    RouterMetrics::inc(&self.metrics.probe_failures);
                    node.record_down(e.clone());
                }
                Ok(p) if !p.in_recovery => {
                    // A second primary that lost the election above serves nothing.
                    let is_writer = primary.is_some_and(|(w, _)| w == i);
                    if is_writer {
                        node.record_ok(Role::Primary, p.lsn, 0, Duration::ZERO, true, p.timeline);
                    } else {
                        node.record_down(format!(
                            "also claims to be primary (timeline {:?}); ignored",
                            p.timeline
                        ));
                    }
                }
                Ok(p) => {
                    let lag_bytes = match (reference, p.lsn) {
                        (Some(r), Some(l)) => r.bytes_since(l),
                        _ => u64::MAX,
                    };
                    let lag = if lag_bytes == 0 {
                        Duration::ZERO
                    } else {
                        Duration::from_secs_f64(p.replay_age_seconds.unwrap_or(0.0).max(0.0))
                    };
                    let within = self.opts.max_lag_bytes.is_none_or(|b| lag_bytes <= b)
                        && self.opts.max_lag.is_none_or(|t| lag <= t);
                    node.record_ok(Role::Replica, p.lsn, lag_bytes, lag, within, None);
                }
            }
        }
        let new_primary = primary.map(|(i, _)| view.nodes[i].clone());
        let changed = match (&view.primary, &new_primary) {
            (Some(a), Some(b)) => !Arc::ptr_eq(a, b),
            (None, None) => false,
            _ => true,
        };
        if changed {
            if let Some(p) = &new_primary {
                RouterMetrics::inc(&self.metrics.primary_changes);
                tracing::info!(node = %p.name, "writes go to new primary");
            } else {
                tracing::warn!("no primary reachable");
            }
        }
        self.set_view(|v| {
            if Arc::ptr_eq(&v.nodes, &view.nodes) {
                v.primary = new_primary;
            }
        });
        self.round_done.send_modify(|g| *g += 1);
    }
}

/// The health task: a round every `health_interval`, at once when asked (at most one every
/// 20 ms), and at once when the watchdog (every `suspect_after`) sees acquires on a node stop
/// finishing; until the token is cancelled or the router is dropped.
pub(crate) async fn health_task(shared: std::sync::Weak<Shared>, wake: Arc<Notify>) {
    loop {
        let Some(s) = shared.upgrade() else { return };
        let started = TokioInstant::now();
        s.health_round().await;
        let next_round = started + s.opts.health_interval;
        let tick = s.opts.suspect_after;
        let cancel = s.cancel.clone();
        drop(s);
        loop {
            let at = (TokioInstant::now() + tick).min(next_round);
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep_until(at) => {
                    if TokioInstant::now() >= next_round {
                        break;
                    }
                    let Some(s) = shared.upgrade() else { return };
                    if s.any_stuck() {
                        RouterMetrics::inc(&s.metrics.rediscoveries);
                        break;
                    }
                }
                _ = wake.notified() => {
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep_until(started + Duration::from_millis(20)) => {}
                    }
                    break;
                }
            }
        }
    }
}
