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
use tokio::sync::{mpsc, Mutex};

use super::{
    ClusterView, Dcs, LeaderInfo, LeaderStatus, MemberState, Session, SwitchoverRequest, SyncState,
};
use crate::{FailoverError, Result};

#[derive(Default)]
struct LeaseState {
    id: Option<i64>,
    keeper: Option<(LeaseKeeper, LeaseKeepAliveStream)>,
}

/// etcd-backed [`Dcs`] for one agent (`me`) or for an operator command (`me` unused).
pub struct EtcdDcs {
    client: Client,
    prefix: String,
    me: String,
    ttl_secs: i64,
    timeout: Duration,
    lease: Mutex<LeaseState>,
}

impl std::fmt::Debug for EtcdDcs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdDcs")
            .field("prefix", &self.prefix)
            .field("me", &self.me)
            .finish()
    }
}

impl EtcdDcs {
    /// Connects to `endpoints`; keys live under `<namespace>/<cluster>/`.
    pub async fn connect(
        endpoints: &[String],
        namespace: &str,
        cluster: &str,
        me: &str,
        ttl: Duration,
        timeout: Duration,
    ) -> Result<Self> {
        let opts = ConnectOptions::new()
            .with_connect_timeout(timeout)
            .with_timeout(timeout)
            .with_keep_alive(Duration::from_secs(2), timeout);
        let client = tokio::time::timeout(timeout * 3, Client::connect(endpoints, Some(opts)))
            .await
            .map_err(|_| FailoverError::DcsTimeout {
                op: "connect",
                ms: (timeout * 3).as_millis() as u64,
            })?
            .map_err(FailoverError::etcd("connect"))?;
        Ok(EtcdDcs {
            client,
            prefix: format!("{}/{}/", namespace.trim_end_matches('/'), cluster),
            me: me.into(),
            ttl_secs: ttl.as_secs().max(1) as i64,
            timeout,
            lease: Mutex::new(LeaseState::default()),
        })
    }

    /// From the config's `[dcs]` and `[failover]` sections.
    pub async fn from_config(config: &pgha_config::PghaConfig, me: &str) -> Result<Self> {
        let d = config.dcs.as_ref().ok_or(FailoverError::NoDcs)?;
        Self::connect(
            &d.etcd,
            &d.namespace,
            &config.cluster.name,
            me,
            config.failover.ttl,
            d.request_timeout,
        )
        .await
    }

    fn key(&self, k: &str) -> String {
        format!("{}{k}", self.prefix)
    }

    async fn bounded<T>(
        &self,
        op: &'static str,
        fut: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => r.map_err(FailoverError::etcd(op)),
            Err(_) => Err(FailoverError::DcsTimeout {
                op,
                ms: self.timeout.as_millis() as u64,
            }),
        }
    }

    async fn put_json<T: Serialize>(
        &self,
        op: &'static str,
        key: &str,
        value: &T,
        lease: Option<i64>,
    ) -> Result<()> {
        let body = serde_json::to_vec(value).map_err(|source| FailoverError::Decode {
            key: key.into(),
            source,
        })?;
        let opts = lease.map(|l| PutOptions::new().with_lease(l));
        let mut c = self.client.clone();
        self.bounded(op, c.put(self.key(key), body, opts)).await?;
        Ok(())
    }

    async fn lease_id(&self) -> Result<i64> {
        if let Some(id) = self.lease.lock().await.id {
            return Ok(id);
        }
        self.keep_alive().await?;
        self.lease.lock().await.id.ok_or(FailoverError::DcsTimeout {
            op: "lease grant",
            ms: 0,
        })
    }

    async fn grant(&self, st: &mut LeaseState) -> Result<()> {
        let mut c = self.client.clone();
        let granted = self
            .bounded("lease grant", c.lease_grant(self.ttl_secs, None))
            .await?;
        st.id = Some(granted.id());
        st.keeper = None;
        Ok(())
    }
}

fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|source| FailoverError::Decode {
        key: key.into(),
        source,
    })
}

#[async_trait]
impl Dcs for EtcdDcs {
    async fn keep_alive(&self) -> Result<Session> {
        let mut st = self.lease.lock().await;
        let Some(id) = st.id else {
            self.grant(&mut st).await?;
            return Ok(Session::Replaced);
        };
        if st.keeper.is_none() {
            let mut c = self.client.clone();
            st.keeper = Some(
                self.bounded("lease keep-alive", c.lease_keep_alive(id))
                    .await?,
            );
        }
        let result = match st.keeper.as_mut() {
            Some((keeper, stream)) => {
                let fut = async {
                    keeper.keep_alive().await?;
                    stream.message().await
                };
                self.bounded("lease keep-alive", fut).await
            }
            None => return Ok(Session::Kept),
        };
        match result {
            Ok(Some(resp)) if resp.ttl() > 0 => Ok(Session::Kept),
            Ok(_) => {
                // ttl 0: the lease expired or was revoked, and every key on it is gone.
                self.grant(&mut st).await?;
                Ok(Session::Replaced)
            }
            Err(e) => {
                st.keeper = None;
                Err(e)
            }
        }
    }

    async fn view(&self) -> Result<ClusterView> {
        let mut c = self.client.clone();
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
                "status" => view.status = decode(full, kv.value()).ok(),
                "config" => {
                    view.config_revision = kv.mod_revision();
                    view.config = decode(full, kv.value()).unwrap_or_else(|e| {
                        // Neither a lost `paused` nor a lost `standby_promoted` may act:
                        // an unreadable key stops every automatic action until it is rewritten.
                        tracing::error!(
                            "{e}; acting as paused until `pgha pause`/`resume` rewrites it"
                        );
                        super::DynamicConfig {
                            paused: true,
                            standby_promoted: false,
                        }
                    })
                }
                "switchover" => view.switchover = decode(full, kv.value()).ok(),
                "sync" => view.sync = decode(full, kv.value()).ok(),
                k if k.starts_with("members/") => {
                    if let Ok(m) = decode::<MemberState>(full, kv.value()) {
                        view.members.insert(m.name.clone(), m);
                    }
                }
                _ => {}
            }
        }
        Ok(view)
    }

    async fn publish_member(&self, member: &MemberState) -> Result<()> {
        let lease = self.lease_id().await?;
        self.put_json(
            "publish member",
            &format!("members/{}", member.name),
            member,
            Some(lease),
        )
        .await
    }

    async fn try_acquire_leader(&self) -> Result<bool> {
        let lease = self.lease_id().await?;
        let key = self.key("leader");
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key,
                self.me.clone(),
                Some(PutOptions::new().with_lease(lease)),
            )]);
        let mut c = self.client.clone();
        Ok(self
            .bounded("acquire leader", c.txn(txn))
            .await?
            .succeeded())
    }

    async fn release_leader(&self) -> Result<()> {
        let key = self.key("leader");
        let txn = Txn::new()
            .when([Compare::value(
                key.clone(),
                CompareOp::Equal,
                self.me.clone(),
            )])
            .and_then([TxnOp::delete(key, None)]);
        let mut c = self.client.clone();
        self.bounded("release leader", c.txn(txn)).await?;
        Ok(())
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
        let mut c = self.client.clone();
        let deleted = self
            .bounded("delete dead leader", c.txn(txn))
            .await?
            .succeeded();
        if deleted && leader.lease != 0 {
            // Its member key goes with its lease; a lease already gone is fine.
            let _ = self
                .bounded("revoke dead leader lease", c.lease_revoke(leader.lease))
                .await;
        }
        Ok(deleted)
    }

    async fn put_status(&self, status: &LeaderStatus) -> Result<()> {
        self.put_json("put status", "status", status, None).await
    }

    async fn put_config(&self, config: &super::DynamicConfig, revision: i64) -> Result<bool> {
        let key = self.key("config");
        let value = serde_json::to_vec(config).map_err(|source| FailoverError::Decode {
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
        let mut c = self.client.clone();
        Ok(self.bounded("put config", c.txn(txn)).await?.succeeded())
    }

    async fn put_switchover(&self, request: &SwitchoverRequest) -> Result<()> {
        self.put_json("put switchover", "switchover", request, None)
            .await
    }

    async fn clear_switchover(&self) -> Result<()> {
        let mut c = self.client.clone();
        self.bounded(
            "clear switchover",
            c.delete(self.key("switchover"), None::<DeleteOptions>),
        )
        .await?;
        Ok(())
    }

    async fn put_sync(&self, sync: &SyncState) -> Result<()> {
        self.put_json("put sync", "sync", sync, None).await
    }

    async fn watch(&self) -> Result<mpsc::Receiver<()>> {
        let mut c = self.client.clone();
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
