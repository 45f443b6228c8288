//! A frozen agent (SIGSTOP), not a killed one, with real PostgreSQL, etcd and agents: its
//! supervisor kills PostgreSQL before the lease can expire, no write is acknowledged by the
//! old primary once another node is writable, and after SIGCONT the old primary rejoins.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use pgha_test_support::HaCluster;

const T: Duration = Duration::from_secs(40);
/// TEST_FAILOVER_TOML's lease.
const TTL: Duration = Duration::from_secs(3);

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_pgha-agent"))
}

/// (when, the nodes that answered `pg_is_in_recovery() = false`)
type Samples = Arc<Mutex<Vec<(Instant, Vec<String>)>>>;

/// SIGCONT on drop: the fault never outlives the test.
struct Thaw(i32);

impl Drop for Thaw {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.0), Signal::SIGCONT);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_leader_agent_never_leaves_two_writable_primaries() -> anyhow::Result<()> {
    let h = HaCluster::start_three(bin(), T).await?;
    let mut c = h.cluster.conn("node1").await?;
    sqlx::query("CREATE TABLE t (id bigint PRIMARY KEY)")
        .execute(&mut c)
        .await?;
    drop(c);

    // A client pinned to node1 over a direct connection; a sampler of every node.
    let stop = Arc::new(AtomicBool::new(false));
    let acks: Arc<Mutex<Vec<(i64, Instant)>>> = Arc::default();
    let mut p1 = h.cluster.instance("node1")?.connect_params().clone();
    p1.connect_timeout = Duration::from_millis(300);
    let writer = {
        let (stop, acks) = (stop.clone(), acks.clone());
        tokio::spawn(async move {
            let mut id = 0i64;
            let mut conn = None;
            while !stop.load(Ordering::Relaxed) {
                if conn.is_none() {
                    conn = p1.connect().await.ok();
                }
                if let Some(c) = conn.as_mut() {
                    id += 1;
                    let r = tokio::time::timeout(
                        Duration::from_secs(1),
                        sqlx::query("INSERT INTO t VALUES ($1)").bind(id).execute(c),
                    )
                    .await;
                    match r {
                        Ok(Ok(_)) => acks.lock().unwrap().push((id, Instant::now())),
                        _ => conn = None,
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let samples: Samples = Arc::default();
    let sampler = {
        let (stop, samples) = (stop.clone(), samples.clone());
        let h2: Vec<_> = h
            .cluster
            .node_names()
            .into_iter()
            .map(|n| {
                let mut p = h.cluster.instance(&n).unwrap().connect_params().clone();
                p.connect_timeout = Duration::from_millis(300);
                (n, p)
            })
            .collect();
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let at = Instant::now();
                let mut w = Vec::new();
                for (n, p) in &h2 {
                    if let Ok(mut c) = p.connect().await {
                        if let Ok(false) =
                            sqlx::query_scalar::<_, bool>("SELECT pg_is_in_recovery()")
                                .fetch_one(&mut c)
                                .await
                        {
                            w.push(n.clone());
                        }
                    }
                }
                samples.lock().unwrap().push((at, w));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;

    let pid = h.agents["node1"].pid().unwrap() as i32;
    let frozen_at = Instant::now();
    kill(Pid::from_raw(pid), Signal::SIGSTOP)?;
    let thaw = Thaw(pid);
    tokio::time::sleep(TTL * 3).await;
    drop(thaw);

    // Another node took over; the old primary comes back as a replica.
    let new = h.wait_single_primary(T, Some("node1")).await?;
    h.wait_streaming_replica("node1", T).await?;
    stop.store(true, Ordering::Relaxed);
    writer.await?;
    sampler.await?;

    let samples = samples.lock().unwrap().clone();
    let two: Vec<_> = samples.iter().filter(|s| s.1.len() > 1).collect();
    assert!(
        two.is_empty(),
        "two writable nodes at {} samples: {:?}",
        two.len(),
        two.first()
    );
    let old_stopped = samples
        .iter()
        .find(|s| s.0 > frozen_at && !s.1.iter().any(|n| n == "node1"))
        .map(|s| s.0 - frozen_at)
        .expect("node1 stopped taking writes");
    assert!(
        old_stopped < TTL,
        "the supervisor must stop node1 before its lease can expire ({old_stopped:?} after the freeze)"
    );
    // A sample can miss node1 by a slow connect; the pinned writer's acknowledgements cannot
    // lie: node1's last one came before its lease could expire.
    let last_ack = acks
        .lock()
        .unwrap()
        .iter()
        .map(|a| a.1)
        .filter(|t| *t > frozen_at)
        .max();
    if let Some(t) = last_ack {
        assert!(
            t - frozen_at < TTL,
            "node1 acknowledged a write {:?} after the freeze (lease {TTL:?})",
            t - frozen_at
        );
    }
    let new_writable = samples
        .iter()
        .find(|s| s.0 > frozen_at && s.1.contains(&new))
        .map(|s| s.0)
        .expect("a new primary was seen");
    let late: Vec<_> = acks
        .lock()
        .unwrap()
        .iter()
        .filter(|a| a.1 > new_writable)
        .copied()
        .collect();
    assert!(
        late.is_empty(),
        "node1 acknowledged writes after {new} was writable: {late:?}"
    );
    let log = std::fs::read_to_string(h.cluster.instance("node1")?.log_file())?;
    assert!(
        log.contains("pgha supervisor: the agent did not renew its deadline"),
        "node1's server log names the supervisor's kill"
    );
    Ok(())
}
