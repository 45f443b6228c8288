//! Instance control and the local-cluster lifecycle: restart is harmless, a stale
//! postmaster.pid is cleared, a port in use and a non-empty target dir give clear errors.
#![allow(clippy::unwrap_used)]

use pgha_postgres::{PgControl, ProcessState, StopMode};
use pgha_test_support::TestCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_all_twice_is_harmless_and_stale_pid_file_is_cleared() -> anyhow::Result<()> {
    let c = TestCluster::start(1).await?;
    c.start_all().await?;
    c.start_all().await?;
    let r = c.instance("node2")?;
    r.stop(StopMode::Immediate).await?;
    assert_eq!(r.state().await?, ProcessState::Stopped);
    // A pid file naming a live process that is not postgres (PID reused after a reboot).
    let me = std::process::id();
    std::fs::write(
        r.data_dir().join("postmaster.pid"),
        format!("{me}\n{}\n", r.data_dir().display()),
    )?;
    c.start_all().await?;
    assert!(matches!(r.state().await?, ProcessState::Running { .. }));
    c.wait_streaming(std::time::Duration::from_secs(30)).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_in_use_names_the_node_and_port() -> anyhow::Result<()> {
    let c = TestCluster::start(1).await?;
    let r = c.instance("node2")?;
    r.stop(StopMode::Fast).await?;
    let port = c.config().node("node2").unwrap().port;
    let _squatter = std::net::TcpListener::bind(("127.0.0.1", port))?;
    let err = r.start().await.unwrap_err().to_string();
    assert!(
        err.contains(&format!("port {port}")) && err.contains("node2") && err.contains("in use"),
        "{err}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_refuses_a_non_empty_data_dir() -> anyhow::Result<()> {
    let c = TestCluster::start(1).await?;
    let cfg = c.config();
    let (primary, replica) = (&cfg.nodes[0], &cfg.nodes[1]);
    let inst = c.instance("node2")?;
    let err = pgha_replication::bootstrap_replica(
        cfg,
        replica,
        primary,
        &inst,
        c.instance("node1")?.connect_params(),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("not empty"), "{err}");
    // And the running replica was left alone.
    assert!(matches!(inst.state().await?, ProcessState::Running { .. }));
    Ok(())
}
