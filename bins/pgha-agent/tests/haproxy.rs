//! A real HAProxy (Debian 2.6) in front of real agents, configured as Patroni's haproxy.cfg
//! is: the write listener with a bare `option httpchk` (HAProxy sends `OPTIONS / HTTP/1.0`,
//! no Host header), the read listener with `option httpchk OPTIONS /replica`, and
//! `http-check expect status 200`; plus the GET-based variant. Writes reach the leader only,
//! reads the replicas only, before and after a failover.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use pgha_test_support::haproxy::Haproxy;
use pgha_test_support::{free_port, HaCluster};

const T: Duration = Duration::from_secs(40);

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_pgha-agent"))
}

/// Patroni's listener shape, with quick check timings for a test.
fn listener(name: &str, port: u16, check: &str, servers: &str) -> String {
    format!(
        "listen {name}\n    bind 127.0.0.1:{port}\n    {check}\n    http-check expect status 200\n    \
         default-server inter 300ms fall 2 rise 1 on-marked-down shutdown-sessions\n{servers}\n"
    )
}

/// Which node answers through `port`, and whether it is in recovery.
async fn through(h: &HaCluster, port: u16) -> anyhow::Result<(i32, bool)> {
    let mut p = h.cluster.instance("node1")?.connect_params().clone();
    p.host = "127.0.0.1".into();
    p.port = port;
    p.connect_timeout = Duration::from_secs(2);
    let mut c = p.connect().await?;
    Ok(
        sqlx::query_as("SELECT inet_server_port(), pg_is_in_recovery()")
            .fetch_one(&mut c)
            .await?,
    )
}

/// Waits until HAProxy has exactly `want` UP in `proxy`.
async fn wait_up(hp: &Haproxy, proxy: &str, want: &[&str]) -> anyhow::Result<()> {
    let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
    let deadline = Instant::now() + T;
    loop {
        let up: BTreeSet<String> = hp.up(proxy)?.into_iter().collect();
        if up == want {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{proxy}: UP {up:?}, want {want:?}; states {:?}",
            hp.servers()?
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_with_patroni_config_routes_writes_to_leader_and_reads_to_replicas(
) -> anyhow::Result<()> {
    let mut h = HaCluster::start_three(bin(), T).await?;
    // A second agent claiming node2 (on another host it would bind its API fine) refuses to
    // start, naming the first one.
    let dup = std::process::Command::new(bin())
        .arg("--config")
        .arg(h.cluster.config_path())
        .args(["--node", "node2"])
        .output()?;
    let err = String::from_utf8_lossy(&dup.stderr);
    assert!(!dup.status.success(), "second agent of node2 ran: {err}");
    assert!(
        err.contains("another agent already runs node `node2`"),
        "{err}"
    );
    let cfg = h.cluster.config().clone();
    let mut servers = String::new();
    let mut port_of = std::collections::BTreeMap::new();
    for n in &cfg.nodes {
        let api = n.agent_address.unwrap();
        servers.push_str(&format!(
            "    server {} {}:{} maxconn 100 check port {}\n",
            n.name,
            n.host,
            n.port,
            api.port()
        ));
        port_of.insert(i32::from(n.port), n.name.clone());
    }
    let ports: Vec<_> = (0..4).map(|_| free_port("127.0.0.1").unwrap()).collect();
    let (pw, pr, gw, gr) = (ports[0].port, ports[1].port, ports[2].port, ports[3].port);
    let body = format!(
        "defaults\n    mode tcp\n    retries 2\n    timeout client 30m\n    timeout connect 4s\n    \
         timeout server 30m\n    timeout check 5s\n\n{}{}{}{}",
        listener("primary", pw, "option httpchk", &servers),
        listener("replicas", pr, "option httpchk OPTIONS /replica", &servers),
        listener("primary_get", gw, "option httpchk GET /primary", &servers),
        listener("replicas_get", gr, "option httpchk GET /replica?lag=16MB", &servers),
    );
    let hp = Haproxy::start(h.cluster.root(), &body)?;
    drop(ports); // HAProxy holds them now.

    for (w, r) in [("primary", "replicas"), ("primary_get", "replicas_get")] {
        wait_up(&hp, w, &["node1"]).await?;
        wait_up(&hp, r, &["node2", "node3"]).await?;
    }
    for (w, r) in [(pw, pr), (gw, gr)] {
        let (port, rec) = through(&h, w).await?;
        assert_eq!((port_of[&port].as_str(), rec), ("node1", false));
        let mut seen = BTreeSet::new();
        for _ in 0..6 {
            let (port, rec) = through(&h, r).await?;
            assert!(
                rec,
                "the read listener reached a writable node {}",
                port_of[&port]
            );
            seen.insert(port_of[&port].clone());
        }
        assert_eq!(seen.len(), 2, "reads balanced over both replicas: {seen:?}");
    }

    // The leader dies: HAProxy follows the agents to the new leader.
    h.kill_node("node1")?;
    let new = h.wait_single_primary(T, Some("node1")).await?;
    let other = if new == "node2" { "node3" } else { "node2" };
    wait_up(&hp, "primary", &[&new]).await?;
    wait_up(&hp, "primary_get", &[&new]).await?;
    let (port, rec) = through(&h, pw).await?;
    assert_eq!((port_of[&port].as_str(), rec), (new.as_str(), false));
    // The old leader rejoins as a replica and takes reads again.
    h.start_agent("node1")?;
    h.wait_streaming_replica("node1", T).await?;
    h.wait_streaming_replica(other, T).await?;
    wait_up(&hp, "replicas", &["node1", other]).await?;
    wait_up(&hp, "replicas_get", &["node1", other]).await?;
    wait_up(&hp, "primary", &[&new]).await?;
    for _ in 0..4 {
        let (port, rec) = through(&h, pr).await?;
        assert!(
            rec,
            "read listener reached {} after the failover",
            port_of[&port]
        );
    }

    // A switchover back to node1 with Patroni's body, as patronictl sends it to any agent:
    // answered once done, and HAProxy follows.
    let api = cfg.node(other).unwrap().agent_address.unwrap();
    let r = reqwest::Client::new()
        .post(format!("http://{api}/switchover"))
        .json(&serde_json::json!({ "leader": new, "candidate": "node1" }))
        .timeout(T)
        .send()
        .await?;
    let code = r.status().as_u16();
    let text = r.text().await?;
    assert_eq!(
        (code, text.as_str()),
        (200, "Successfully switched over to \"node1\"")
    );
    wait_up(&hp, "primary", &["node1"]).await?;
    let (port, rec) = through(&h, pw).await?;
    assert_eq!((port_of[&port].as_str(), rec), ("node1", false));
    // Both promotions are in the DCS history, as Patroni's /history shows them.
    let hist: serde_json::Value = reqwest::get(format!("http://{api}/history"))
        .await?
        .json()
        .await?;
    let lines = hist.as_array().unwrap();
    assert_eq!(lines.len(), 2, "{hist}");
    assert_eq!(
        lines[0][2], "automatic failover: the lease of node1 ended",
        "{hist}"
    );
    assert_eq!(lines[0][4], new.as_str(), "{hist}");
    assert_eq!(lines[1][2], format!("switchover from {new}"), "{hist}");
    assert_eq!(lines[1][4], "node1", "{hist}");
    assert!(lines[1][0].as_i64() > lines[0][0].as_i64(), "{hist}");
    assert!(lines[0][1].as_u64() > Some(0), "{hist}");
    // The agents log to files: plain text, no colour codes.
    let log = std::fs::read_to_string(h.agent_log("node1"))?;
    assert!(log.contains("agent started"), "{log}");
    assert!(!log.contains('\u{1b}'), "ANSI escape in the agent log");
    Ok(())
}
