//! The agent's channel to etcd, and how it moves to another member.
//!
//! etcd-client does not re-establish a gRPC channel or a keep-alive stream that broke in a
//! partition (etcdv3/etcd-client#54: "you should reconnect by yourself"), and its balanced
//! channel kept sending a share of the requests to a member that was gone (seen by
//! `cargo xtask faults --scenario etcd-leader-kill`: every third request failed). So after a
//! failed request a new channel to the next member that answers and knows a leader is dialed
//! **in the background**: no request ever waits for a dial (with every member unreachable,
//! dialing took longer than a lease renewal may: `etcd-all-cut` in sync mode fenced the
//! primary). Requests use the current channel meanwhile.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use etcd_client::{Client, ConnectOptions};
use pgha_agent_core::{CoreError, Result};

pub(super) struct Conn {
    /// The channel, and its generation (a keep-alive stream of another one is reopened).
    client: RwLock<(Client, u64)>,
    endpoints: Vec<String>,
    opts: ConnectOptions,
    timeout: Duration,
    me: String,
    /// The member the last dial chose.
    current: AtomicUsize,
    generation: AtomicU64,
    /// A dial runs (at most one at a time).
    dialing: AtomicBool,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("endpoints", &self.endpoints)
            .field("current", &self.current)
            .finish_non_exhaustive()
    }
}

impl Conn {
    /// A channel balanced over every endpoint (made lazily: an agent starts while etcd is
    /// down); the first failure moves it to one member.
    pub(super) async fn open(
        endpoints: &[String],
        opts: ConnectOptions,
        timeout: Duration,
        me: &str,
    ) -> Result<Arc<Conn>> {
        let client = Client::connect(endpoints, Some(opts.clone()))
            .await
            .map_err(|e| CoreError::Dcs {
                op: "connect",
                source: Box::new(e),
            })?;
        Ok(Arc::new(Conn {
            client: RwLock::new((client, 0)),
            endpoints: endpoints.to_vec(),
            opts,
            timeout,
            me: me.into(),
            current: AtomicUsize::new(endpoints.len().saturating_sub(1)),
            generation: AtomicU64::new(0),
            dialing: AtomicBool::new(false),
        }))
    }

    /// The current channel and its generation.
    pub(super) fn get(&self) -> (Client, u64) {
        match self.client.read() {
            Ok(c) => c.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// A request on the current channel failed: dial the next member in the background.
    pub(super) fn failed(self: &Arc<Self>) {
        if self.dialing.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            me.redial().await;
            me.dialing.store(false, Ordering::Release);
        });
    }

    async fn redial(&self) {
        let n = self.endpoints.len();
        let start = (self.current.load(Ordering::Relaxed) + 1) % n.max(1);
        for k in 0..n {
            let i = (start + k) % n;
            let ep = &self.endpoints[i];
            let probe = async {
                let mut c = Client::connect([ep], Some(self.opts.clone())).await?;
                let st = c.status().await?;
                Ok::<_, etcd_client::Error>((c, st.leader()))
            };
            match tokio::time::timeout(self.timeout, probe).await {
                Ok(Ok((c, leader))) if leader != 0 => {
                    let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
                    match self.client.write() {
                        Ok(mut w) => *w = (c, generation),
                        Err(p) => *p.into_inner() = (c, generation),
                    }
                    self.current.store(i, Ordering::Relaxed);
                    tracing::info!(node = %self.me, endpoint = %ep, "reconnected to etcd");
                    return;
                }
                Ok(Ok(_)) => tracing::debug!(endpoint = %ep, "etcd member knows no leader"),
                Ok(Err(e)) => tracing::debug!(endpoint = %ep, "etcd member unusable: {e}"),
                Err(_) => tracing::debug!(endpoint = %ep, "etcd member did not answer in time"),
            }
        }
        tracing::debug!(node = %self.me, "no etcd member answers; the next failure tries again");
    }
}
