//! Observation independent of the agents: a sampler that asks every node
//! `pg_is_in_recovery()` every 50 ms, and two writers that record every acknowledged INSERT,
//! one through a libpq-style multi-host URL with `target_session_attrs=read-write`, one
//! pinned to the first primary over a direct connection.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use pgha_postgres::ConnectParams;
use pgha_router::url::MultiHostUrl;
use sqlx::PgConnection;

/// An acknowledged insert: id, when, the node that acknowledged it.
#[derive(Debug, Clone)]
pub struct Ack {
    pub id: i64,
    pub at: Instant,
    pub node: String,
}

/// One round of the sampler: when it started and the nodes that answered "not in recovery".
#[derive(Debug, Clone)]
pub struct Sample {
    pub at: Instant,
    pub writable: Vec<String>,
    /// Nodes that gave no answer within the round's timeout.
    pub silent: Vec<String>,
}

#[derive(Debug, Default)]
pub struct Observed {
    pub samples: Vec<Sample>,
    pub acks: Vec<Ack>,
}

impl Observed {
    /// Samples with more than one writable node.
    pub fn two_writable(&self) -> usize {
        self.samples.iter().filter(|s| s.writable.len() > 1).count()
    }

    /// The writable nodes in the order they were first seen writable alone, starting with the
    /// node writable before the fault (each change is a promotion).
    pub fn writers(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for s in &self.samples {
            if let [one] = s.writable.as_slice() {
                if out.last() != Some(one) {
                    out.push(one.clone());
                }
            }
        }
        out
    }

    /// The first sample at or after `t` with a node other than `old` writable.
    pub fn new_writable_at(&self, old: &str, t: Instant) -> Option<(Instant, String)> {
        self.samples.iter().filter(|s| s.at >= t).find_map(|s| {
            s.writable
                .iter()
                .find(|n| *n != old)
                .map(|n| (s.at, n.clone()))
        })
    }

    /// The last sample at or after `t` in which `node` was writable.
    pub fn last_writable(&self, node: &str, t: Instant) -> Option<Instant> {
        self.samples
            .iter()
            .rev()
            .find(|s| s.at >= t && s.writable.iter().any(|n| n == node))
            .map(|s| s.at)
    }

    /// Acknowledgements by `node` after `t`.
    pub fn acks_by_after(&self, node: &str, t: Instant) -> usize {
        self.acks
            .iter()
            .filter(|a| a.node == node && a.at > t)
            .count()
    }
}

/// Sampler and writers running until [`Observer::finish`].
#[derive(Debug)]
pub struct Observer {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    samples: Arc<Mutex<Vec<Sample>>>,
    acks: Arc<Mutex<Vec<Ack>>>,
}

impl Observer {
    /// `nodes`: every node; `url`: the multi-host URL of the routed writer; `pinned`: the node
    /// the direct writer sticks to; `next_id`: ids shared by every trial of a world.
    pub fn start(
        nodes: Vec<(String, ConnectParams)>,
        url: MultiHostUrl,
        pinned: &str,
        next_id: Arc<AtomicI64>,
    ) -> Observer {
        let stop = Arc::new(AtomicBool::new(false));
        let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
        let acks: Arc<Mutex<Vec<Ack>>> = Arc::default();
        let mut tasks = vec![tokio::spawn(sampler(
            nodes.clone(),
            samples.clone(),
            stop.clone(),
        ))];
        let pinned = nodes
            .iter()
            .find(|(n, _)| n == pinned)
            .map(|(n, p)| Target::Direct(n.clone(), p.clone()));
        if let Some(t) = pinned {
            tasks.push(tokio::spawn(writer(
                t,
                next_id.clone(),
                acks.clone(),
                stop.clone(),
            )));
        }
        let names = nodes
            .iter()
            .map(|(n, p)| ((p.host.clone(), p.port), n.clone()))
            .collect();
        tasks.push(tokio::spawn(writer(
            Target::Url(url, names),
            next_id,
            acks.clone(),
            stop.clone(),
        )));
        Observer {
            stop,
            tasks,
            samples,
            acks,
        }
    }

    /// Waits until a sample shows a node other than `old` writable; that node.
    pub async fn wait_new_writable(&self, old: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let since = Instant::now();
        while Instant::now() < deadline {
            let found = self.samples.lock().ok().and_then(|v| {
                v.iter()
                    .rev()
                    .take_while(|s| s.at >= since)
                    .find_map(|s| s.writable.iter().find(|n| *n != old).cloned())
            });
            if found.is_some() {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// Stops the sampler and the writers; what they saw.
    pub async fn finish(self) -> Observed {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            if let Err(e) = t.await {
                eprintln!("faults: an observer task failed: {e}");
            }
        }
        fn take<T>(m: &Mutex<Vec<T>>) -> Vec<T> {
            m.lock()
                .map(|mut v| std::mem::take(&mut *v))
                .unwrap_or_default()
        }
        Observed {
            samples: take(&self.samples),
            acks: take(&self.acks),
        }
    }
}

const ROUND: Duration = Duration::from_millis(50);
/// A node that does not answer within this counts as silent for the round.
const ANSWER: Duration = Duration::from_millis(250);

async fn sampler(
    nodes: Vec<(String, ConnectParams)>,
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: Arc<AtomicBool>,
) {
    let mut conns: Vec<Option<PgConnection>> = nodes.iter().map(|_| None).collect();
    while !stop.load(Ordering::Relaxed) {
        let at = Instant::now();
        let rounds = nodes
            .iter()
            .zip(conns.iter_mut())
            .map(|((_, p), c)| ask(p, c));
        let answers = join_all(rounds).await;
        let mut s = Sample {
            at,
            writable: Vec::new(),
            silent: Vec::new(),
        };
        for ((n, _), a) in nodes.iter().zip(answers) {
            match a {
                Some(false) => s.writable.push(n.clone()),
                Some(true) => {}
                None => s.silent.push(n.clone()),
            }
        }
        if let Ok(mut v) = samples.lock() {
            v.push(s);
        }
        tokio::time::sleep(ROUND.saturating_sub(at.elapsed())).await;
    }
}

/// `pg_is_in_recovery()` on a kept connection (made anew when it failed).
async fn ask(p: &ConnectParams, conn: &mut Option<PgConnection>) -> Option<bool> {
    let r = tokio::time::timeout(ANSWER, async {
        if conn.is_none() {
            *conn = Some(p.connect().await.ok()?);
        }
        let c = conn.as_mut()?;
        sqlx::query_scalar::<_, bool>("SELECT pg_is_in_recovery()")
            .fetch_one(c)
            .await
            .ok()
    })
    .await;
    match r {
        Ok(Some(v)) => Some(v),
        _ => {
            *conn = None;
            None
        }
    }
}

enum Target {
    /// Always this node (a client with a stale address).
    Direct(String, ConnectParams),
    /// The first host of the URL that accepts read-write sessions, as libpq picks it;
    /// (host, port) to node name.
    Url(
        MultiHostUrl,
        std::collections::HashMap<(String, u16), String>,
    ),
}

impl Target {
    async fn connect(&self) -> Option<(String, PgConnection)> {
        use sqlx::ConnectOptions;
        match self {
            Target::Direct(n, p) => Some((n.clone(), p.connect().await.ok()?)),
            Target::Url(url, names) => {
                for h in &url.hosts {
                    let opts = url.options_for(h);
                    let Ok(Ok(mut c)) =
                        tokio::time::timeout(Duration::from_millis(500), opts.connect()).await
                    else {
                        continue;
                    };
                    let ro: Result<String, _> = sqlx::query_scalar("SHOW transaction_read_only")
                        .fetch_one(&mut c)
                        .await;
                    if matches!(ro.as_deref(), Ok("off")) {
                        let name = names
                            .get(&(h.host.clone(), h.port))
                            .cloned()
                            .unwrap_or_else(|| h.to_string());
                        return Some((name, c));
                    }
                }
                None
            }
        }
    }
}

/// Inserts one row every ~10 ms until `stop`, recording every acknowledged id.
async fn writer(
    target: Target,
    next_id: Arc<AtomicI64>,
    acks: Arc<Mutex<Vec<Ack>>>,
    stop: Arc<AtomicBool>,
) {
    let mut conn: Option<(String, PgConnection)> = None;
    while !stop.load(Ordering::Relaxed) {
        if conn.is_none() {
            conn = target.connect().await;
        }
        if let Some((n, c)) = conn.as_mut() {
            let id = next_id.fetch_add(1, Ordering::Relaxed);
            let r = tokio::time::timeout(
                Duration::from_secs(2),
                sqlx::query("INSERT INTO faults (id) VALUES ($1)")
                    .bind(id)
                    .execute(&mut *c),
            )
            .await;
            match r {
                Ok(Ok(_)) => {
                    if let Ok(mut a) = acks.lock() {
                        a.push(Ack {
                            id,
                            at: Instant::now(),
                            node: n.clone(),
                        });
                    }
                }
                _ => conn = None,
            }
        } else {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Acknowledged ids missing on `node`.
pub async fn lost_on(p: &ConnectParams, acks: &[Ack]) -> anyhow::Result<usize> {
    let mut c = p.connect().await?;
    let present: Vec<i64> = sqlx::query_scalar("SELECT id FROM faults")
        .fetch_all(&mut c)
        .await?;
    let present: HashSet<i64> = present.into_iter().collect();
    Ok(acks.iter().filter(|a| !present.contains(&a.id)).count())
}
