//! Agents started on empty data dirs bootstrap the cluster themselves, with real PostgreSQL
//! and etcd: one wins the `initialize` key and runs initdb (data checksums, the superuser's
//! password, the replication role), leads; the others clone from it and stream.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use pgha_failover::dcs::{Dcs, EtcdDcs};
use pgha_test_support::{HaCluster, TestCluster, TEST_FAILOVER_TOML};

const T: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_on_empty_data_dirs_bootstrap_one_cluster() -> anyhow::Result<()> {
    let h = HaCluster::start_empty(
        Path::new(env!("CARGO_BIN_EXE_pgha-agent")),
        TestCluster::builder().replicas(2),
        TEST_FAILOVER_TOML,
    )
    .await?;
    let leader = h.wait_single_primary(T, None).await?;
    for n in h.cluster.node_names() {
        if n != leader {
            h.wait_streaming_replica(&n, T).await?;
        }
    }
    let cfg = h.cluster.config().clone();
    let view = EtcdDcs::from_config(&cfg, "test").await?.view().await?;
    let init = view.initialize.expect("the initialize key");
    assert_eq!(
        (init.by.as_str(), init.done, init.lease),
        (leader.as_str(), true, None)
    );
    // initdb ran with checksums; the superuser's password and the replication role work
    // (the test connects with the password; the replicas stream as the replication role).
    let mut c = h.cluster.conn(&leader).await?;
    let checksums: String = sqlx::query_scalar("SHOW data_checksums")
        .fetch_one(&mut c)
        .await?;
    assert_eq!(checksums, "on");
    let repl: bool = sqlx::query_scalar("SELECT rolreplication FROM pg_roles WHERE rolname = $1")
        .bind(&cfg.replication.user)
        .fetch_one(&mut c)
        .await?;
    assert!(repl);
    // Nothing half-made is left beside the data dirs.
    for n in &cfg.nodes {
        let parent = n.data_dir.parent().unwrap();
        let left: Vec<_> = std::fs::read_dir(parent)?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|f| f.ends_with(".bootstrapping"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
    Ok(())
}
