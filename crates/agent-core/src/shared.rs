//! What the agent loop shares with its HTTP API: a snapshot it publishes every tick, counters,
//! and the channel through which the API's messages reach the loop.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use serde::Serialize;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

use crate::dcs::{ClusterView, MemberState};
use crate::inputs::Event;
use crate::ports::{PromiseStore, WallClock};

/// What the API serves; replaced every tick.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Snapshot {
    pub name: String,
    /// This agent holds the leader key on its live session.
    pub is_leader: bool,
    pub dcs_reachable: bool,
    pub paused: bool,
    /// The agent's role and the reason of its last decision.
    pub role: String,
    pub reason: String,
    pub member: Option<MemberState>,
    pub view: Option<ClusterView>,
    /// When the loop published this (the API's `/liveness`; a stale snapshot claims no lead).
    #[serde(skip)]
    pub at: Option<Instant>,
    /// Wall time (ms since epoch) of the last successful DCS round-trip.
    pub dcs_last_seen_ms: Option<u64>,
    /// The config the loop runs with (pgha.toml with the DCS's cluster settings over it).
    #[serde(skip)]
    pub config: Option<Arc<pgha_config::PghaConfig>>,
    /// What the last reload of pgha.toml refused (None: it applied, or none was asked).
    pub reload_error: Option<String>,
    /// When a scheduled restart is due (wall clock, ms since the epoch); None: none scheduled.
    pub scheduled_restart_ms: Option<u64>,
    /// Slots pgha neither manages nor ignores (`physical:` or `logical:` name).
    pub unknown_slots: Vec<String>,
}

/// State shared between the loop and the HTTP API.
#[derive(Debug)]
pub struct Shared {
    pub snapshot: RwLock<Snapshot>,
    pub promotions: AtomicU64,
    pub fencings: AtomicU64,
    /// Restarts an operator asked for that completed (`POST /restart` waits on it).
    pub restarts: AtomicU64,
    /// Wakes the loop early (API commands, events).
    pub wake: Notify,
    /// A reload of pgha.toml was asked for (SIGHUP, `POST /reload`).
    reload: AtomicBool,
    events: mpsc::UnboundedSender<Event>,
    /// The latest failsafe promise (also sent as an event): the executor checks it right
    /// before taking the key, so a promise made after this tick's gather still holds.
    promised_until: Mutex<Option<Instant>>,
    quarantine: std::time::Duration,
    store: Arc<dyn PromiseStore>,
    clock: Arc<dyn WallClock>,
}

impl Shared {
    /// The shared state and the receiving end of its events (the agent loop's).
    /// A promise a previous run of this agent recorded in `store` still binds it: it arrives
    /// as the first event.
    pub fn new(
        quarantine: std::time::Duration,
        store: Arc<dyn PromiseStore>,
        clock: Arc<dyn WallClock>,
    ) -> (Arc<Self>, mpsc::UnboundedReceiver<Event>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let now = Instant::now();
        let inherited = store.load().and_then(|until_ms| {
            let left = until_ms.saturating_sub(clock.now_ms());
            (left > 0).then(|| now + std::time::Duration::from_millis(left))
        });
        if let Some(until) = inherited {
            tracing::info!(
                "a failsafe promise of a previous run holds for {:?}: no lease before",
                until.duration_since(now)
            );
            if tx.send(Event::PromiseInherited { until }).is_err() {
                tracing::debug!("no receiver for the inherited failsafe promise");
            }
        }
        (
            Arc::new(Shared {
                snapshot: RwLock::new(Snapshot::default()),
                promotions: AtomicU64::new(0),
                fencings: AtomicU64::new(0),
                restarts: AtomicU64::new(0),
                wake: Notify::new(),
                reload: AtomicBool::new(false),
                events: tx,
                promised_until: Mutex::new(inherited),
                quarantine,
                store,
                clock,
            }),
            rx,
        )
    }

    pub fn snapshot(&self) -> Snapshot {
        self.snapshot.read().map(|s| s.clone()).unwrap_or_default()
    }

    pub fn publish(&self, snap: Snapshot) {
        if let Ok(mut s) = self.snapshot.write() {
            *s = snap;
        }
    }

    /// Asks the loop to reload pgha.toml before its next tick.
    pub fn request_reload(&self) {
        self.reload.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// Whether a reload was asked for since the last call.
    pub fn take_reload(&self) -> bool {
        self.reload.swap(false, Ordering::SeqCst)
    }

    pub fn count_promotion(&self) {
        self.promotions.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_restart(&self) {
        self.restarts.fetch_add(1, Ordering::Relaxed);
    }

    /// Delivers an operator's request to the loop and wakes it.
    pub fn request(&self, e: Event) {
        if self.events.send(e).is_err() {
            tracing::warn!("agent loop gone: request not delivered");
        }
        self.wake.notify_one();
    }

    pub fn count_fencing(&self) {
        self.fencings.fetch_add(1, Ordering::Relaxed);
    }

    /// The leader, cut off from the DCS, asks whether it may keep serving (POST /failsafe).
    /// Yes only while this agent cannot reach the DCS either and does not lead; then it
    /// promises not to take the lease for `promise` (what the leader's lease needs: its TTL
    /// may differ from ours while a changed TTL spreads), at least
    /// `Timings::failsafe_quarantine`. Ok: until when.
    pub fn confirm_failsafe(
        &self,
        leader: &str,
        promise: Option<std::time::Duration>,
    ) -> Result<Instant, &'static str> {
        let snap = self.snapshot();
        if snap.dcs_reachable || snap.is_leader {
            return Err("this node reaches the DCS: no failsafe");
        }
        let at = Instant::now();
        let length = promise.map_or(self.quarantine, |p| p.max(self.quarantine));
        let until_ms = self.clock.now_ms() + length.as_millis() as u64;
        if let Err(e) = self.store.save(until_ms) {
            // A promise that would not survive a restart of this agent is no promise.
            tracing::warn!("failsafe promise not recorded ({e}): refused");
            return Err("this node cannot record the failsafe promise");
        }
        let until = at + length;
        if let Ok(mut p) = self.promised_until.lock() {
            *p = Some(p.map_or(until, |old| old.max(until)));
        }
        if self
            .events
            .send(Event::FailsafeConfirmed {
                leader: leader.into(),
                at,
                until,
            })
            .is_err()
        {
            tracing::warn!("agent loop gone: failsafe confirmation not delivered");
        }
        self.wake.notify_one();
        tracing::info!(leader = %leader, promise = ?length, "confirmed failsafe: DCS unreachable here too");
        Ok(until)
    }

    /// A failsafe promise still holds now.
    pub fn promised(&self, now: Instant) -> bool {
        self.promised_until
            .lock()
            .ok()
            .and_then(|p| *p)
            .is_some_and(|until| now < until)
    }
}
