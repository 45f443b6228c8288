//! The simulated etcd as one agent's client sees it: trips over its link, timeouts, leases.

use std::time::Duration;

use async_trait::async_trait;
use rand::Rng;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::Handle;
use crate::dcs::{
    ClusterView, Dcs, DynamicConfig, LeaderInfo, LeaderStatus, LeaseId, MemberState,
    SwitchoverRequest, SyncState,
};
use crate::{CoreError, Result};

/// One agent's (or operator's) DCS client.
#[derive(Debug, Clone)]
pub struct SimDcs {
    pub h: Handle,
    /// The request timeout in ms (`Dcs::set_request_timeout` changes it).
    pub timeout_ms: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl SimDcs {
    /// Runs `f` at the DCS after the request's trip there, answers after the trip back; a
    /// partition or an outage costs the full timeout (or is refused at once). A request whose
    /// trip there outlasts the client's timeout is, in half the draws, still applied when it
    /// arrives (etcd commits a proposal the client gave up on): a read right after the
    /// timeout may not see it yet.
    async fn op<T: Send + 'static>(
        &self,
        name: &'static str,
        f: impl FnOnce(&mut crate::sim::world::World, Instant) -> T + Send + 'static,
    ) -> Result<T> {
        self.h.gate.pass().await;
        let (there, back, down) = {
            let mut w = self.h.lock();
            let slow = w.net.dcs_slow;
            let (a, b) = match slow {
                Some(max) => {
                    let m = max.as_millis() as u64;
                    (w.delay(1, m), w.delay(1, m))
                }
                None => (w.delay(1, 3), w.delay(1, 3)),
            };
            let down = if w.net.dcs_cut.contains(&self.h.me) {
                Some(false)
            } else {
                w.net.dcs_down
            };
            (a, b, down)
        };
        let ms = self.timeout_ms.load(std::sync::atomic::Ordering::Relaxed);
        let late = there > Duration::from_millis(ms) && self.h.lock().rng.random_bool(0.5);
        let timeout = Duration::from_millis(ms);
        match down {
            Some(true) => {
                self.h.pause(Duration::from_millis(1)).await;
                return Err(CoreError::Dcs {
                    op: name,
                    source: "connection refused".into(),
                });
            }
            Some(false) => {
                self.h.pause(timeout).await;
                return Err(CoreError::DcsTimeout { op: name, ms });
            }
            None => {}
        }
        let world = self.h.world.clone();
        let fut = async move {
            tokio::time::sleep(there).await;
            let r = {
                let mut w = match world.lock() {
                    Ok(g) => g,
                    Err(p) => p.into_inner(),
                };
                let now = Instant::now();
                if w.dcs.expire(now) {
                    w.dcs.notify();
                }
                f(&mut w, now)
            };
            tokio::time::sleep(back).await;
            r
        };
        let r = if late {
            let (tx, rx) = tokio::sync::oneshot::channel();
            tokio::spawn(async move {
                if tx.send(fut.await).is_err() {
                    // The client gave up; the request was applied all the same.
                }
            });
            match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(r)) => Ok(r),
                _ => Err(()),
            }
        } else {
            tokio::time::timeout(timeout, fut).await.map_err(|_| ())
        };
        self.h.gate.pass().await;
        r.map_err(|_| CoreError::DcsTimeout { op: name, ms })
    }
}

#[async_trait]
impl Dcs for SimDcs {
    async fn grant_session(&self, ttl: Duration) -> Result<LeaseId> {
        self.op("lease grant", move |w, now| w.dcs.grant(now, ttl))
            .await
    }

    fn set_request_timeout(&self, timeout: Duration) {
        self.timeout_ms.store(
            timeout.as_millis() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<bool> {
        self.op("lease keep-alive", move |w, now| {
            match w.dcs.leases.get_mut(&lease) {
                Some((exp, ttl)) => {
                    *exp = now + *ttl;
                    true
                }
                None => false,
            }
        })
        .await
    }

    async fn view(&self) -> Result<ClusterView> {
        self.op("get cluster", |w, _| w.dcs.view()).await
    }

    async fn publish_member(&self, lease: LeaseId, member: &MemberState) -> Result<()> {
        let m = member.clone();
        self.op("publish member", move |w, _| {
            if w.dcs.lease_alive(lease) {
                w.dcs.members.insert(m.name.clone(), (m, lease));
                Ok(())
            } else {
                Err(CoreError::simulated("publish member", "lease not found"))
            }
        })
        .await?
    }

    async fn try_acquire_leader(&self, lease: LeaseId) -> Result<bool> {
        let me = self.h.me.clone();
        self.op("acquire leader", move |w, now| {
            if w.dcs.leader.is_some() || !w.dcs.lease_alive(lease) {
                return false;
            }
            w.dcs.set_leader(&me, lease);
            w.log(now, &me, "DCS: took the leader key");
            w.dcs.notify();
            true
        })
        .await
    }

    async fn take_over_leader(&self, lease: LeaseId, revision: i64) -> Result<bool> {
        let me = self.h.me.clone();
        self.op("take over leader", move |w, now| {
            let ok = w
                .dcs
                .leader
                .as_ref()
                .is_some_and(|(n, _, r)| *n == me && *r == revision)
                && w.dcs.lease_alive(lease);
            if ok {
                w.dcs.set_leader(&me, lease);
                w.log(now, &me, "DCS: took over the leader key with a new lease");
                w.dcs.notify();
            }
            ok
        })
        .await
    }

    async fn release_leader(&self, lease: LeaseId) -> Result<bool> {
        let me = self.h.me.clone();
        self.op("release leader", move |w, now| {
            let ours = w.dcs.leader.as_ref().is_some_and(|(_, l, _)| *l == lease);
            if ours {
                w.dcs.leader = None;
                w.dcs.revision += 1;
                w.log(now, &me, "DCS: released the leader key");
                w.dcs.notify();
            }
            ours
        })
        .await
    }

    async fn try_initialize(&self, lease: LeaseId) -> Result<bool> {
        let me = self.h.me.clone();
        self.op("take initialize", move |w, now| {
            if w.dcs.initialize.is_some() || !w.dcs.lease_alive(lease) {
                return false;
            }
            w.dcs.initialize = Some((
                crate::dcs::Initialize {
                    by: me.clone(),
                    done: false,
                    lease: None,
                },
                Some(lease),
            ));
            w.dcs.revision += 1;
            w.dcs.notify();
            w.log(now, &me, "DCS: took the initialize key");
            true
        })
        .await
    }

    async fn finish_initialize(&self, lease: Option<LeaseId>) -> Result<bool> {
        let me = self.h.me.clone();
        self.op("finish initialize", move |w, now| {
            if let Some(lease) = lease {
                let ours = matches!(
                    &w.dcs.initialize,
                    Some((i, Some(l))) if i.by == me && !i.done && *l == lease
                ) && w.dcs.lease_alive(lease);
                if !ours {
                    return false;
                }
            }
            w.dcs.initialize = Some((
                crate::dcs::Initialize {
                    by: me.clone(),
                    done: true,
                    lease: None,
                },
                None,
            ));
            w.dcs.revision += 1;
            w.dcs.notify();
            w.log(now, &me, "DCS: the initialize key is kept for good");
            true
        })
        .await
    }

    async fn end_session(&self, lease: LeaseId) -> Result<()> {
        self.op("revoke our session", move |w, _| {
            w.dcs.drop_lease(lease);
            w.dcs.notify();
        })
        .await
    }

    async fn revoke_leader(&self, leader: &LeaderInfo) -> Result<bool> {
        let l = leader.clone();
        let me = self.h.me.clone();
        self.op("delete dead leader", move |w, now| {
            let same = w
                .dcs
                .leader
                .as_ref()
                .is_some_and(|(_, _, r)| *r == l.revision);
            if same {
                w.dcs.leader = None;
                w.dcs.revision += 1;
                w.dcs.drop_lease(l.lease);
                w.log(now, &me, format!("DCS: revoked {}'s lease", l.name));
                if let Some(n) = w.nodes.get(&l.name).filter(|n| n.pg.running) {
                    // The fast path's evidence (resets from every observer, a stale member
                    // key) was wrong: a documented limitation, not a violation.
                    let boot = n.pg.boot;
                    w.checker.misjudged.insert((l.name.clone(), boot));
                    w.log(
                        now,
                        "CHECK",
                        format!(
                            "LIMITATION: the fast path revoked {} while its PostgreSQL ran",
                            l.name
                        ),
                    );
                    w.checker
                        .limitations
                        .push(format!("fast path revoked live leader {}", l.name));
                }
                w.dcs.notify();
            }
            same
        })
        .await
    }

    async fn put_status(&self, lease: LeaseId, status: &LeaderStatus) -> Result<bool> {
        let s = status.clone();
        self.op("put status", move |w, _| {
            let ours = w.dcs.leader.as_ref().is_some_and(|(_, l, _)| *l == lease);
            if ours {
                w.dcs.status = Some(s);
            }
            ours
        })
        .await
    }

    async fn put_config(&self, config: &DynamicConfig, revision: i64) -> Result<bool> {
        let c = config.clone();
        self.op("put config", move |w, _| {
            if w.dcs.config_revision != revision {
                return false;
            }
            w.dcs.revision += 1;
            w.dcs.config_revision = w.dcs.revision;
            w.dcs.config = c;
            w.dcs.notify();
            true
        })
        .await
    }

    async fn put_switchover(&self, request: &SwitchoverRequest) -> Result<()> {
        let r = request.clone();
        self.op("put switchover", move |w, _| {
            w.dcs.switchover = Some(r);
            w.dcs.notify();
        })
        .await
    }

    async fn clear_switchover(&self) -> Result<()> {
        self.op("clear switchover", |w, _| w.dcs.switchover = None)
            .await
    }

    async fn delete_sync(&self, lease: LeaseId, revision: i64) -> Result<bool> {
        let me = self.h.me.clone();
        self.op("delete sync", move |w, now| {
            let ours = w.dcs.leader.as_ref().is_some_and(|(_, l, _)| *l == lease);
            if !ours || w.dcs.sync_revision != revision {
                return false;
            }
            w.log(now, &me, "DCS: /sync deleted");
            w.dcs.revision += 1;
            w.dcs.sync_revision = 0;
            w.dcs.sync = None;
            w.sync_deleted();
            w.dcs.notify();
            true
        })
        .await
    }

    async fn put_sync(&self, lease: LeaseId, sync: &SyncState, revision: i64) -> Result<bool> {
        let s = sync.clone();
        let me = self.h.me.clone();
        self.op("put sync", move |w, now| {
            let ours = w.dcs.leader.as_ref().is_some_and(|(_, l, _)| *l == lease);
            if !ours {
                return false;
            }
            if w.dcs.sync_revision != revision {
                w.log(
                    now,
                    &me,
                    format!(
                        "DCS: /sync = {:?} refused: at revision {}, not {revision}",
                        s.standbys, w.dcs.sync_revision
                    ),
                );
                return false;
            }
            w.log(now, &me, format!("DCS: /sync = {:?}", s.standbys));
            w.dcs.revision += 1;
            w.dcs.sync_revision = w.dcs.revision;
            w.dcs.sync = Some(s);
            w.dcs.notify();
            true
        })
        .await
    }

    async fn allocate_timeline(&self, at_least: i64) -> Result<i64> {
        self.op("allocate timeline", move |w, _| {
            w.dcs.timeline = (w.dcs.timeline + 1).max(at_least);
            w.dcs.timeline
        })
        .await
    }

    async fn append_history(&self, entry: &crate::dcs::HistoryEntry) -> Result<()> {
        let entry = entry.clone();
        self.op("append history", move |w, _| {
            w.dcs.history.push(entry);
            let over = w.dcs.history.len().saturating_sub(crate::dcs::MAX_HISTORY);
            w.dcs.history.drain(..over);
        })
        .await
    }

    async fn watch(&self) -> Result<mpsc::Receiver<()>> {
        let me = self.h.me.clone();
        self.op("watch", move |w, _| {
            let (tx, rx) = mpsc::channel(16);
            w.dcs.watchers.push((me, tx));
            rx
        })
        .await
    }
}
