//! The DCS on etcd v3.

use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, LeaseKeepAliveStream,
    LeaseKeeper, PutOptions, Txn, TxnOp, WatchOptions,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::Arc;

use tokio::sync::{mpsc, Mutex};

use super::conn::Conn;

use pgha_agent_core::dcs::{
    ClusterView, Dcs, DynamicConfig, HistoryEntry, LeaderInfo, LeaderStatus, LeaseId, MemberState,
    SwitchoverRequest, SyncState, MAX_HISTORY,
};
use pgha_agent_core::{CoreError, Result};

use crate::FailoverError;

/// The keep-alive stream of one lease, on the channel of one generation.
struct Keeper {
    lease: LeaseId,
    generation: u64,
    stream: (LeaseKeeper, LeaseKeepAliveStream),
}

/// etcd-backed [`Dcs`] for one agent (`me`) or for an operator command (`me` unused). The
/// channel and how it moves between members: [`super::conn`].
pub struct EtcdDcs {
    conn: Arc<Conn>,
    prefix: String,
    me: String,
    /// Request timeout in ms (`Dcs::set_request_timeout`).
    timeout_ms: std::sync::atomic::AtomicU64,
    keeper: Mutex<Option<Keeper>>,
}

impl std::fmt::Debug for EtcdDcs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdDcs")
            .field("prefix", &self.prefix)
            .field("me", &self.me)
            .finish()
    }
}

/// `[dcs]`'s TLS files and etcd user as connect options. The password is read here and
/// handed to etcd-client only (never logged; `ConnectOptions` is not printed).
fn access_options(d: &pgha_config::DcsSection) -> Result<ConnectOptions, FailoverError> {
    let mut opts = ConnectOptions::new();
    let read = |field: &str, p: &std::path::Path| {
        std::fs::read(p).map_err(|e| FailoverError::DcsSetup {
            field: field.into(),
            reason: format!("{}: {e}", p.display()),
        })
    };
    if let Some(ca) = &d.ca_file {
        let mut tls = etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(read("dcs.ca_file", ca)?));
        if let (Some(c), Some(k)) = (&d.cert_file, &d.key_file) {
            tls = tls.identity(etcd_client::Identity::from_pem(
                read("dcs.cert_file", c)?,
                read("dcs.key_file", k)?,
            ));
        }
        opts = opts.with_tls(tls);
    }
    if let (Some(user), Some(pw)) = (&d.username, &d.password) {
        let secret = pw.read().map_err(|e| FailoverError::DcsSetup {
            field: "dcs.password".into(),
            reason: e.to_string(),
        })?;
        opts = opts.with_user(user.clone(), secret.expose().to_string());
    }
    Ok(opts)
}

impl EtcdDcs {
    /// Connects to `endpoints` with the TLS or user options in `base` (`ConnectOptions::new()`
    /// for none); keys live under `<namespace>/<cluster>/`.
    pub async fn connect_with(
        endpoints: &[String],
        namespace: &str,
        cluster: &str,
        me: &str,
        timeout: Duration,
        base: ConnectOptions,
    ) -> Result<Self> {
        let opts = base
            .with_connect_timeout(timeout)
            .with_timeout(timeout)
            .with_keep_alive(Duration::from_secs(2), timeout)
            // A member cut off from the others answers "no leader" at once instead of
            // letting requests wait for a quorum it cannot reach.
            .with_require_leader(true);
        Ok(EtcdDcs {
            conn: Conn::open(endpoints, opts, timeout, me).await?,
            prefix: format!("{}/{}/", namespace.trim_end_matches('/'), cluster),
            me: me.into(),
            timeout_ms: std::sync::atomic::AtomicU64::new(timeout.as_millis() as u64),
            keeper: Mutex::new(None),
        })
    }

    fn client(&self) -> Client {
        self.conn.get().0
    }

    /// From the config's `[dcs]` and `[failover]` sections.
    pub async fn from_config(
        config: &pgha_config::PghaConfig,
        me: &str,
    ) -> Result<Self, FailoverError> {
        let d = config.dcs.as_ref().ok_or(FailoverError::NoDcs)?;
        Ok(Self::connect_with(
            &d.etcd,
            &d.namespace,
            &config.cluster.name,
            me,
            d.request_timeout,
            access_options(d)?,
        )
        .await?)
    }

    fn key(&self, k: &str) -> String {
        format!("{}{k}", self.prefix)
    }

    async fn bounded<T>(
        &self,
        op: &'static str,
        fut: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T> {
        let ms = self.timeout_ms.load(std::sync::atomic::Ordering::Relaxed);
        let r = match tokio::time::timeout(Duration::from_millis(ms), fut).await {
            Ok(r) => r.map_err(etcd_err(op)),
            Err(_) => Err(CoreError::DcsTimeout { op, ms }),
        };
        if r.is_err() {
            self.conn.failed();
        }
        r
    }

    async fn put_json<T: Serialize>(
        &self,
        op: &'static str,
        key: &str,
        value: &T,
        lease: Option<i64>,
    ) -> Result<()> {
        let body = serde_json::to_vec(value).map_err(|source| CoreError::Decode {
            key: key.into(),
            source,
        })?;
        let opts = lease.map(|l| PutOptions::new().with_lease(l));
        let mut c = self.client();
        self.bounded(op, c.put(self.key(key), body, opts)).await?;
        Ok(())
    }
}

impl EtcdDcs {
    /// The `initialize` key's value: who bootstraps, and whether it is kept for good (the
    /// compare-and-swap of the commit compares against exactly the not-done one).
    fn initialize_value(&self, done: bool) -> String {
        serde_json::json!({"by": self.me, "done": done}).to_string()
    }

    /// The condition of every `sync` write: the leader key on `lease`, and `sync` still at
    /// `revision` (a missing key compares as mod_revision 0).
    fn sync_guard(&self, lease: LeaseId, revision: i64) -> [Compare; 2] {
        [
            Compare::lease(self.key("leader"), CompareOp::Equal, lease),
            Compare::mod_revision(self.key("sync"), CompareOp::Equal, revision),
        ]
    }

    /// Puts `key` only while the leader key is on `lease` (one transaction).
    async fn put_if_leader<T: Serialize>(
        &self,
        op: &'static str,
        key: &str,
        value: &T,
        lease: LeaseId,
    ) -> Result<bool> {
        let body = serde_json::to_vec(value).map_err(|source| CoreError::Decode {
            key: key.into(),
            source,
        })?;
        let txn = Txn::new()
            .when([Compare::lease(self.key("leader"), CompareOp::Equal, lease)])
            .and_then([TxnOp::put(self.key(key), body, None)]);
        let mut c = self.client();
        Ok(self.bounded(op, c.txn(txn)).await?.succeeded())
    }
}

fn etcd_err(op: &'static str) -> impl FnOnce(etcd_client::Error) -> CoreError {
    move |e| CoreError::Dcs {
        op,
        source: Box::new(e),
    }
}

/// etcd says the lease does not exist (expired or revoked): a definite answer.
fn lease_not_found(e: &CoreError) -> bool {
    matches!(e, CoreError::Dcs { source, .. } if source.to_string().contains("lease not found"))
}

fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|source| CoreError::Decode {
        key: key.into(),
        source,
    })
}

/// A key we can do without (status, switchover, a member): unreadable means absent, said in
/// the log.
fn logged<T>(r: Result<T>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!("{e}; read as absent");
            None
        }
    }
}

#[async_trait]
impl Dcs for EtcdDcs {
    async fn grant_session(&self, ttl: Duration) -> Result<LeaseId> {
        let mut c = self.client();
        let secs = ttl.as_secs().max(1) as i64;
        let granted = self
            .bounded("lease grant", c.lease_grant(secs, None))
            .await?;
        *self.keeper.lock().await = None;
        Ok(granted.id())
    }

    /// Bounds every request from now on. The gRPC channel keeps the deadline it was opened
    /// with (`connect_with`'s), so a longer timeout than that applies after a reconnect or
    /// an agent restart; a shorter one at once.
    fn set_request_timeout(&self, timeout: Duration) {
        self.timeout_ms.store(
            timeout.as_millis() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<bool> {
        let (mut c, generation) = self.conn.get();
        let mut k = self.keeper.lock().await;
        if k.as_ref()
            .is_none_or(|k| k.lease != lease || k.generation != generation)
        {
            let opened = self
                .bounded("lease keep-alive", c.lease_keep_alive(lease))
                .await;
            let stream = match opened {
                Err(e) if lease_not_found(&e) => return Ok(false),
                other => other?,
            };
            *k = Some(Keeper {
                lease,
                generation,
                stream,
            });
        }
        let Some(keeper) = k.as_mut() else {
            return Ok(true);
        };
        let (tx, rx) = &mut keeper.stream;
        let fut = async {
            tx.keep_alive().await?;
            rx.message().await
        };
        match self.bounded("lease keep-alive", fut).await {
            Ok(Some(resp)) if resp.ttl() > 0 => Ok(true),
            // ttl 0: the lease expired or was revoked, and every key on it is gone.
            Ok(_) => {
                *k = None;
                Ok(false)
            }
            // etcd's answer, not a failure: the lease expired (while we were cut off).
            Err(e) if lease_not_found(&e) => {
                *k = None;
                Ok(false)
            }
            Err(e) => {
                *k = None;
                Err(e)
            }
        }
    }

    async fn view(&self) -> Result<ClusterView> {
        let mut c = self.client();
        let resp = self
            .bounded(
                "get cluster",
                c.get(self.prefix.clone(), Some(GetOptions::new().with_prefix())),
            )
            .await?;
        let mut view = ClusterView::default();
        for kv in resp.kvs() {
            let Ok(full) = kv.key_str() else { continue };
            let key = full.strip_prefix(&self.prefix).unwrap_or(full);
            match key {
                "leader" => {
                    view.leader = Some(LeaderInfo {
                        name: String::from_utf8_lossy(kv.value()).into_owned(),
                        lease: kv.lease(),
                        revision: kv.mod_revision(),
                    })
                }
                "status" => view.status = logged(decode(full, kv.value())),
                "config" => {
                    view.config_revision = kv.mod_revision();
                    view.config = decode(full, kv.value()).unwrap_or_else(|e| {
                        // Neither a lost `paused` nor a lost `standby_promoted` may act:
                        // an unreadable key stops every automatic action until it is rewritten.
                        tracing::error!(
                            "{e}; acting as paused until `pgha pause`/`resume` rewrites it"
                        );
                        DynamicConfig {
                            paused: true,
                            standby_promoted: false,
                            settings: None,
                        }
                    })
                }
                "switchover" => view.switchover = logged(decode(full, kv.value())),
                "history" => view.history = logged(decode(full, kv.value())).unwrap_or_default(),
                "initialize" => {
                    // Unreadable: somebody initialized; nobody bootstraps over it.
                    let mut i: pgha_agent_core::dcs::Initialize = decode(full, kv.value())
                        .unwrap_or_else(|e| {
                            tracing::error!("{e}; taking the cluster as initialized");
                            pgha_agent_core::dcs::Initialize {
                                by: String::from_utf8_lossy(kv.value()).into_owned(),
                                done: true,
                                lease: None,
                            }
                        });
                    i.lease = (kv.lease() != 0).then(|| kv.lease());
                    view.initialize = Some(i);
                }
                "sync" => {
                    view.sync_revision = kv.mod_revision();
                    view.sync = Some(decode(full, kv.value()).unwrap_or_else(|e| {
                        // No /sync would lift sync mode's restriction: an unreadable one
                        // names no standby, so nobody is promoted until the leader rewrites it.
                        tracing::error!(
                            "{e}; no node may be promoted until the leader rewrites it"
                        );
                        SyncState {
                            leader: String::new(),
                            standbys: vec![],
                            quorum: None,
                        }
                    }))
                }
                k if k.starts_with("members/") => {
                    if let Some(m) = logged(decode::<MemberState>(full, kv.value())) {
                        view.members.insert(m.name.clone(), m);
                    }
                }
                _ => {}
            }
        }
        Ok(view)
    }

    async fn publish_member(&self, lease: LeaseId, member: &MemberState) -> Result<()> {
        self.put_json(
            "publish member",
            &format!("members/{}", member.name),
            member,
            Some(lease),
        )
        .await
    }

    async fn try_acquire_leader(&self, lease: LeaseId) -> Result<bool> {
        let key = self.key("leader");
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key,
                self.me.clone(),
                Some(PutOptions::new().with_lease(lease)),
            )]);
        let mut c = self.client();
        Ok(self
            .bounded("acquire leader", c.txn(txn))
            .await?
            .succeeded())
    }

    async fn try_initialize(&self, lease: LeaseId) -> Result<bool> {
        let key = self.key("initialize");
        let value = self.initialize_value(false);
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key,
                value,
                Some(PutOptions::new().with_lease(lease)),
            )]);
        let mut c = self.client();
        Ok(self
            .bounded("take the initialize key", c.txn(txn))
            .await?
            .succeeded())
    }

    async fn finish_initialize(&self, lease: Option<LeaseId>) -> Result<bool> {
        let key = self.key("initialize");
        let value = self.initialize_value(true);
        let mut c = self.client();
        let Some(lease) = lease else {
            self.bounded("keep the initialize key", c.put(key, value, None))
                .await?;
            return Ok(true);
        };
        // Exactly what try_initialize wrote, on the lease it wrote it with.
        let taken = self.initialize_value(false);
        let txn = Txn::new()
            .when([
                Compare::lease(key.clone(), CompareOp::Equal, lease),
                Compare::value(key.clone(), CompareOp::Equal, taken),
            ])
            .and_then([TxnOp::put(key, value, None)]);
        Ok(self
            .bounded("commit the bootstrap", c.txn(txn))
            .await?
            .succeeded())
    }

    async fn take_over_leader(&self, lease: LeaseId, revision: i64) -> Result<bool> {
        let key = self.key("leader");
        let txn = Txn::new()
            .when([
                Compare::mod_revision(key.clone(), CompareOp::Equal, revision),
                Compare::value(key.clone(), CompareOp::Equal, self.me.clone()),
            ])
            .and_then([TxnOp::put(
                key,
                self.me.clone(),
                Some(PutOptions::new().with_lease(lease)),
            )]);
        let mut c = self.client();
        Ok(self
            .bounded("take over leader", c.txn(txn))
            .await?
            .succeeded())
    }

    async fn release_leader(&self, lease: LeaseId) -> Result<bool> {
        let key = self.key("leader");
        let txn = Txn::new()
            .when([Compare::lease(key.clone(), CompareOp::Equal, lease)])
            .and_then([TxnOp::delete(key, None)]);
        let mut c = self.client();
        Ok(self
            .bounded("release leader", c.txn(txn))
            .await?
            .succeeded())
    }

    async fn revoke_leader(&self, leader: &LeaderInfo) -> Result<bool> {
        // Only if the key is still exactly the one we judged dead.
        let key = self.key("leader");
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.clone(),
                CompareOp::Equal,
                leader.revision,
            )])
            .and_then([TxnOp::delete(key, None)]);
        let mut c = self.client();
        let deleted = self
            .bounded("delete dead leader", c.txn(txn))
            .await?
            .succeeded();
        if deleted && leader.lease != 0 {
            // Its member key goes with its lease; a lease already gone is fine.
            if let Err(e) = self
                .bounded("revoke dead leader lease", c.lease_revoke(leader.lease))
                .await
            {
                tracing::debug!("revoke the dead leader's lease: {e}");
            }
        }
        Ok(deleted)
    }

    async fn end_session(&self, lease: LeaseId) -> Result<()> {
        let mut c = self.client();
        self.bounded("revoke our session lease", c.lease_revoke(lease))
            .await?;
        Ok(())
    }

    async fn put_status(&self, lease: LeaseId, status: &LeaderStatus) -> Result<bool> {
        self.put_if_leader("put status", "status", status, lease)
            .await
    }

    async fn put_config(&self, config: &DynamicConfig, revision: i64) -> Result<bool> {
        let key = self.key("config");
        let value = serde_json::to_vec(config).map_err(|source| CoreError::Decode {
            key: "config".into(),
            source,
        })?;
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.clone(),
                CompareOp::Equal,
                revision,
            )])
            .and_then([TxnOp::put(key, value, None)]);
        let mut c = self.client();
        Ok(self.bounded("put config", c.txn(txn)).await?.succeeded())
    }

    async fn put_switchover(&self, request: &SwitchoverRequest) -> Result<()> {
        self.put_json("put switchover", "switchover", request, None)
            .await
    }

    async fn clear_switchover(&self) -> Result<()> {
        let mut c = self.client();
        self.bounded(
            "clear switchover",
            c.delete(self.key("switchover"), None::<DeleteOptions>),
        )
        .await?;
        Ok(())
    }

    async fn put_sync(&self, lease: LeaseId, sync: &SyncState, revision: i64) -> Result<bool> {
        let body = serde_json::to_vec(sync).map_err(|source| CoreError::Decode {
            key: "sync".into(),
            source,
        })?;
        let txn = Txn::new()
            .when(self.sync_guard(lease, revision))
            .and_then([TxnOp::put(self.key("sync"), body, None)]);
        let mut c = self.client();
        Ok(self.bounded("put sync", c.txn(txn)).await?.succeeded())
    }

    async fn delete_sync(&self, lease: LeaseId, revision: i64) -> Result<bool> {
        let txn = Txn::new()
            .when(self.sync_guard(lease, revision))
            .and_then([TxnOp::delete(self.key("sync"), None)]);
        let mut c = self.client();
        Ok(self.bounded("delete sync", c.txn(txn)).await?.succeeded())
    }

    async fn allocate_timeline(&self, at_least: i64) -> Result<i64> {
        let key = self.key("timeline");
        for _ in 0..10 {
            let mut c = self.client();
            let resp = self
                .bounded("get timeline", c.get(key.clone(), None))
                .await?;
            let (stored, rev) = match resp.kvs().first() {
                Some(kv) => {
                    let text = String::from_utf8_lossy(kv.value());
                    // Reading garbage as 0 would hand out used timelines again.
                    let stored = text
                        .trim()
                        .parse::<i64>()
                        .map_err(|_| CoreError::BadValue {
                            key: key.clone(),
                            value: text.trim().into(),
                            expected: "a timeline number",
                        })?;
                    (stored, kv.mod_revision())
                }
                None => (0, 0),
            };
            let next = (stored + 1).max(at_least);
            let cmp = if rev == 0 {
                Compare::create_revision(key.clone(), CompareOp::Equal, 0)
            } else {
                Compare::mod_revision(key.clone(), CompareOp::Equal, rev)
            };
            let txn =
                Txn::new()
                    .when([cmp])
                    .and_then([TxnOp::put(key.clone(), next.to_string(), None)]);
            if self
                .bounded("allocate timeline", c.txn(txn))
                .await?
                .succeeded()
            {
                return Ok(next);
            }
        }
        Err(CoreError::refused(
            "allocate a timeline",
            "the timeline key kept changing under us",
        ))
    }

    async fn append_history(&self, entry: &HistoryEntry) -> Result<()> {
        let key = self.key("history");
        for _ in 0..10 {
            let mut c = self.client();
            let resp = self
                .bounded("get history", c.get(key.clone(), None))
                .await?;
            let (mut list, rev): (Vec<HistoryEntry>, i64) = match resp.kvs().first() {
                // An unreadable history is replaced rather than blocking every promotion's note.
                Some(kv) => (
                    logged(decode(&key, kv.value())).unwrap_or_default(),
                    kv.mod_revision(),
                ),
                None => (Vec::new(), 0),
            };
            list.push(entry.clone());
            let over = list.len().saturating_sub(MAX_HISTORY);
            list.drain(..over);
            let value = serde_json::to_vec(&list).map_err(|e| CoreError::Dcs {
                op: "encode history",
                source: e.into(),
            })?;
            let cmp = if rev == 0 {
                Compare::create_revision(key.clone(), CompareOp::Equal, 0)
            } else {
                Compare::mod_revision(key.clone(), CompareOp::Equal, rev)
            };
            let txn = Txn::new()
                .when([cmp])
                .and_then([TxnOp::put(key.clone(), value, None)]);
            if self
                .bounded("append history", c.txn(txn))
                .await?
                .succeeded()
            {
                return Ok(());
            }
        }
        Err(CoreError::refused(
            "append history",
            "the history key kept changing under us",
        ))
    }

    async fn watch(&self) -> Result<mpsc::Receiver<()>> {
        let mut c = self.client();
        let mut stream = self
            .bounded(
                "watch",
                c.watch(self.prefix.clone(), Some(WatchOptions::new().with_prefix())),
            )
            .await?;
        let (tx, rx) = mpsc::channel(16);
        let prefix = self.prefix.clone();
        tokio::spawn(async move {
            while let Ok(Some(resp)) = stream.message().await {
                // Members and status change every loop; waking on them would make every agent
                // tick on every other agent's publish. Only decisions-relevant keys wake.
                let relevant = resp.events().iter().any(|ev| {
                    ev.kv().and_then(|kv| kv.key_str().ok()).is_some_and(|k| {
                        let k = k.strip_prefix(prefix.as_str()).unwrap_or(k);
                        matches!(k, "leader" | "switchover" | "config" | "sync")
                    })
                });
                if relevant && tx.try_send(()).is_err() && tx.is_closed() {
                    break;
                }
            }
        });
        Ok(rx)
    }
}
