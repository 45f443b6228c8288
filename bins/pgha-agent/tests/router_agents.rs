//! The router fed by the agents' `/cluster` endpoint (real agents, etcd, PostgreSQL): it finds
//! every registered node, follows an automatic failover without a restart, and drops a node
//! whose agent is gone from the DCS.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use pgha_router::{AgentMembers, Discovery, Router, RouterOptions};
use pgha_test_support::{HaCluster, TestCluster, TEST_FAILOVER_TOML};

const T: Duration = Duration::from_secs(40);

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_pgha-agent"))
}

fn port_of(h: &HaCluster, node: &str) -> i32 {
    i32::from(h.cluster.config().node(node).unwrap().port)
}

async fn wait_for<F: Fn() -> bool>(what: &str, f: F) -> anyhow::Result<()> {
    let deadline = Instant::now() + T;
    while !f() {
        anyhow::ensure!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_built_from_the_agents_follows_a_failover_and_the_dcs_membership(
) -> anyhow::Result<()> {
    let b = TestCluster::builder().replicas(2);
    let mut h = HaCluster::start(bin(), b, TEST_FAILOVER_TOML).await?;
    assert_eq!(h.wait_single_primary(T, None).await?, "node1");
    for n in ["node2", "node3"] {
        h.wait_streaming_replica(n, T).await?;
    }

    // Discovery alone: every node registered in the DCS, with its PostgreSQL address.
    let discovery = AgentMembers::from_config(h.cluster.config(), None)?;
    let mut names: Vec<String> = discovery
        .members()
        .await?
        .into_iter()
        .map(|m| {
            let n = h.cluster.config().node(&m.name).unwrap();
            assert_eq!(m.address, format!("{}:{}", n.host, n.port));
            m.name
        })
        .collect();
    names.sort();
    assert_eq!(names, ["node1", "node2", "node3"]);

    let router = Router::builder()
        .agents(h.cluster.config(), None)
        .options(RouterOptions {
            health_interval: Duration::from_millis(100),
            check_timeout: Duration::from_secs(2),
            failover_wait: Duration::from_secs(20),
            max_connections: 4,
            ..RouterOptions::default()
        })
        .build()
        .await?;
    let on: i32 = sqlx::query_scalar("SELECT inet_server_port()")
        .fetch_one(router.writer())
        .await?;
    assert_eq!(on, port_of(&h, "node1"));
    sqlx::query("CREATE TABLE t (id int)")
        .execute(router.writer())
        .await?;

    // The primary dies; its agent too. The agents elect a new primary; the router follows.
    h.kill_node("node1")?;
    let new = h.wait_single_primary(T, Some("node1")).await?;
    let deadline = Instant::now() + T;
    let on = loop {
        let r = router
            .idempotent(|| async {
                sqlx::query_scalar::<_, i32>(
                    "INSERT INTO t VALUES (1) RETURNING inet_server_port()",
                )
                .fetch_one(router.writer())
                .await
            })
            .await;
        match r {
            Ok(p) => break p,
            Err(e) => {
                anyhow::ensure!(Instant::now() < deadline, "no write after failover: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(on, port_of(&h, &new), "writes go to the new primary {new}");

    // node1's member key expires with its agent's lease: the router drops it.
    wait_for("node1 to leave the router's members", || {
        router.nodes().iter().all(|n| n.name != "node1")
    })
    .await?;
    assert_eq!(router.nodes().len(), 2, "{:?}", router.nodes());

    // With only one agent answering, discovery still works (the agents are asked at once).
    let survivor = ["node2", "node3"].into_iter().find(|n| *n != new).unwrap();
    h.kill_node(survivor)?;
    wait_for("the stopped replica's agent to leave the DCS", || {
        router.nodes().iter().all(|n| n.name != survivor)
    })
    .await?;
    let members = discovery.members().await?;
    assert_eq!(
        members.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(),
        [new.as_str()]
    );
    router.close().await;
    Ok(())
}

#[tokio::test]
async fn agent_discovery_errors_name_the_agents() {
    // Nothing listens on a port we just reserved and released.
    let reserved = pgha_local_cluster::free_port("127.0.0.1").unwrap();
    let port = reserved.port;
    let d = AgentMembers::new(
        [format!("127.0.0.1:{port}")],
        sqlx::postgres::PgConnectOptions::new(),
    )
    .unwrap();
    let e = d.members().await.unwrap_err().to_string();
    assert!(e.contains(&format!("127.0.0.1:{port}")), "{e}");
    assert!(AgentMembers::new(
        Vec::<String>::new(),
        sqlx::postgres::PgConnectOptions::new()
    )
    .unwrap_err()
    .to_string()
    .contains("no agent address"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tls_the_agent_api_is_https_and_the_router_connects_with_verify_full(
) -> anyhow::Result<()> {
    let b = TestCluster::builder().replicas(1).tls();
    let h = HaCluster::start(bin(), b, TEST_FAILOVER_TOML).await?;
    assert_eq!(h.wait_single_primary(T, None).await?, "node1");
    h.wait_streaming_replica("node2", T).await?;
    let config = h.cluster.config();
    let agent = config.node("node1").unwrap().agent_address.unwrap();

    // HTTPS with the cluster CA answers; plain HTTP on the same port does not.
    let api = pgha_tls::AgentApiClient::new(config, Duration::from_secs(2))?;
    assert_eq!(api.scheme, "https");
    // PostgreSQL is writable a tick before the agent has seen it so (until then /primary is
    // 503): the agent must say 200 within a few ticks.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = api.client.get(api.url(agent, "/primary")).send().await?;
        if r.status().as_u16() == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "GET /primary on the leader still answers {} after 5 s",
            r.status()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let plain = reqwest::Client::new()
        .get(format!("http://{agent}/primary"))
        .timeout(Duration::from_secs(2))
        .send()
        .await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());

    // The router discovers the nodes over HTTPS and its sessions are TLS.
    let router = Router::builder().agents(config, None).build().await?;
    let ssl: bool = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(router.writer())
        .await?;
    assert!(ssl);
    assert_eq!(router.nodes().len(), 2);
    router.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_token_guards_mutations_and_restricted_reads_and_never_reaches_the_log(
) -> anyhow::Result<()> {
    const TOKEN: &str = "agent-Api-Token-5150";
    let secrets = tempfile::tempdir()?;
    let token_file = secrets.path().join("api.token");
    std::fs::write(&token_file, TOKEN)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600))?;
    }
    let toml = format!(
        "{TEST_FAILOVER_TOML}api_token = {{ file = \"{}\" }}\napi_restrict_reads = true\n",
        token_file.display()
    );
    let h = HaCluster::start(bin(), TestCluster::builder().replicas(1), &toml).await?;
    assert_eq!(h.wait_single_primary(T, None).await?, "node1");
    let agent = h
        .cluster
        .config()
        .node("node1")
        .unwrap()
        .agent_address
        .unwrap();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()?;
    let code = |r: reqwest::Response| r.status().as_u16();

    // Health checks stay open for load balancers (200 once the agent sees itself leading);
    // informational reads need the token.
    let deadline = Instant::now() + T;
    while code(http.get(format!("http://{agent}/primary")).send().await?) != 200 {
        anyhow::ensure!(Instant::now() < deadline, "/primary never answered 200");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        code(http.get(format!("http://{agent}/cluster")).send().await?),
        401
    );
    let ok = http
        .get(format!("http://{agent}/cluster"))
        .bearer_auth(TOKEN)
        .send()
        .await?;
    assert_eq!(code(ok), 200);
    // Discovery from the config presents the token.
    assert_eq!(
        AgentMembers::from_config(h.cluster.config(), None)?
            .members()
            .await?
            .len(),
        2
    );

    // Mutations: no token and a wrong one (same length, last byte differs) are refused.
    let pause = format!("http://{agent}/pause");
    assert_eq!(code(http.post(&pause).send().await?), 401);
    let wrong = format!("{}X", &TOKEN[..TOKEN.len() - 1]);
    assert_eq!(
        code(http.post(&pause).bearer_auth(&wrong).send().await?),
        401
    );
    assert_eq!(
        code(http.post(&pause).bearer_auth(TOKEN).send().await?),
        200
    );
    // The agent's view catches up within a loop.
    let deadline = Instant::now() + T;
    loop {
        let body: serde_json::Value = http
            .get(format!("http://{agent}/cluster"))
            .bearer_auth(TOKEN)
            .send()
            .await?
            .json()
            .await?;
        if body["view"]["config"]["paused"] == true {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "not paused: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Refusals were logged, the token never was.
    let log = std::fs::read_to_string(h.agent_log("node1"))?;
    assert!(log.contains("refused unauthenticated"), "{log}");
    assert!(
        !log.contains(TOKEN) && !log.contains(&wrong),
        "the agent log holds the token"
    );
    Ok(())
}
