//! Cluster-wide settings in the DCS with real agents, etcd and PostgreSQL: the leader seeds
//! them from pgha.toml; `pgha edit-config` and Patroni's `PATCH /config` reach every node's
//! PostgreSQL (reloaded, or pending a restart, as `pg_settings` says); a refused edit writes
//! nothing; SIGHUP reloads tags and refuses a change that needs a restart.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use pgha_failover::dcs::{ClusterView, Dcs, EtcdDcs};
use pgha_test_support::HaCluster;

const T: Duration = Duration::from_secs(40);

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_pgha-agent"))
}

/// `pgha <args>` in this process (the CLI's own parsing and code path).
async fn pgha(h: &HaCluster, args: &[&str]) -> ExitCode {
    let config = h.cluster.config_path();
    let mut argv = vec!["pgha", "-c", config.to_str().unwrap()];
    argv.extend_from_slice(args);
    pgha::run(pgha::cli::Cli::try_parse_from(argv).unwrap()).await
}

async fn until<F, Fut>(what: &str, mut f: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let deadline = Instant::now() + T;
    loop {
        match f().await {
            Ok(true) => return Ok(()),
            Ok(false) | Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Ok(false) => anyhow::bail!("{what}: not within {T:?}"),
            Err(e) => anyhow::bail!("{what}: {e:#}"),
        }
    }
}

async fn show(h: &HaCluster, node: &str, setting: &str) -> anyhow::Result<String> {
    let mut c = h.cluster.conn(node).await?;
    Ok(sqlx::query_scalar(&format!("SHOW {setting}"))
        .fetch_one(&mut c)
        .await?)
}

async fn patroni(api: std::net::SocketAddr) -> anyhow::Result<serde_json::Value> {
    Ok(reqwest::get(format!("http://{api}/patroni"))
        .await?
        .json()
        .await?)
}

/// The granted TTL of the lease under the leader key and each member key.
async fn lease_ttls(
    etcd: &mut etcd_client::Client,
) -> anyhow::Result<std::collections::BTreeMap<String, i64>> {
    let kvs = etcd
        .get("", Some(etcd_client::GetOptions::new().with_all_keys()))
        .await?;
    let mut granted = std::collections::BTreeMap::new();
    for kv in kvs.kvs() {
        let key = kv.key_str()?.to_owned();
        if (key.ends_with("/leader") || key.contains("/members/")) && kv.lease() != 0 {
            let t = etcd.lease_time_to_live(kv.lease(), None).await?;
            granted.insert(key, t.granted_ttl());
        }
    }
    Ok(granted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_settings_reach_every_node_and_sighup_reloads_tags() -> anyhow::Result<()> {
    let h = HaCluster::start_three(bin(), T).await?;
    let cfg = h.cluster.config().clone();
    let names = ["node1", "node2", "node3"];
    let dcs = EtcdDcs::from_config(&cfg, "test").await?;
    let view = || async { Ok::<ClusterView, anyhow::Error>(dcs.view().await?) };

    // The leader wrote pgha.toml's values into the DCS.
    until("settings seeded", || async {
        Ok(view().await?.config.settings.is_some())
    })
    .await?;

    // `pgha edit-config`: a reloadable parameter and one that needs a restart.
    let max_conn = show(&h, "node2", "max_connections").await?;
    assert_ne!(max_conn, "150");
    let code = pgha(
        &h,
        &[
            "edit-config",
            "--pg",
            "work_mem=12MB",
            "--pg",
            "max_connections=150",
            "--force",
        ],
    )
    .await;
    assert_eq!(code, ExitCode::SUCCESS);
    for n in names {
        until(&format!("{n}: work_mem 12MB"), || async {
            Ok(show(&h, n, "work_mem").await? == "12MB")
        })
        .await?;
    }
    // Truth from PostgreSQL: max_connections waits for a restart on every node, and the
    // agents publish it (`pgha list`'s PENDING RESTART column, Patroni's pending_restart).
    until("pending restart published", || async {
        let v = view().await?;
        Ok(names.iter().all(|n| {
            v.members
                .get(*n)
                .is_some_and(|m| m.pending_restart == ["max_connections"])
        }))
    })
    .await?;
    assert_eq!(show(&h, "node2", "max_connections").await?, max_conn);
    let rows = pgha_failover::ops::list_rows(&cfg, &view().await?);
    assert_eq!(rows[0][8], "PENDING RESTART");
    assert!(
        rows[1..].iter().all(|r| r[8] == "max_connections"),
        "{rows:?}"
    );
    let api3 = cfg.node("node3").unwrap().agent_address.unwrap();
    let doc = patroni(api3).await?;
    assert_eq!(doc["pending_restart"], true, "{doc}");

    // `pgha restart --pending`: every node, replicas first, the leader keeping its lease (no
    // failover, same timeline); the pending setting is live afterwards.
    let tl = |v: &ClusterView| v.members["node1"].timeline;
    let tl_before = tl(&view().await?);
    assert_eq!(
        pgha(&h, &["restart", "--pending", "--force"]).await,
        ExitCode::SUCCESS
    );
    for n in names {
        assert_eq!(show(&h, n, "max_connections").await?, "150", "{n}");
    }
    let v = view().await?;
    assert_eq!(v.leader.as_ref().map(|l| l.name.as_str()), Some("node1"));
    assert_eq!(tl(&v), tl_before, "a restart is no failover");
    assert!(v.history.is_empty(), "{:?}", v.history);
    until("pending restart cleared", || async {
        let v = view().await?;
        Ok(names
            .iter()
            .all(|n| v.members[*n].pending_restart.is_empty()))
    })
    .await?;
    // Nothing pending any more: --pending skips every node.
    assert_eq!(
        pgha(&h, &["restart", "--pending", "--force"]).await,
        ExitCode::SUCCESS
    );
    // The leader cannot be reinitialized; a replica can, and streams again.
    assert_eq!(
        pgha(&h, &["reinit", "node1", "--force"]).await,
        ExitCode::FAILURE
    );
    assert_eq!(
        pgha(&h, &["reinit", "node3", "--force"]).await,
        ExitCode::SUCCESS
    );
    let data3 = h.cluster.instance("node3")?.data_dir().to_owned();
    until("node3 moved aside", || async {
        let parent = data3.parent().unwrap();
        Ok(std::fs::read_dir(parent)?
            .flatten()
            .any(|e| e.file_name().to_string_lossy().contains("diverged")))
    })
    .await?;
    h.wait_streaming_replica("node3", T).await?;
    assert_eq!(pgha(&h, &["reload"]).await, ExitCode::SUCCESS);

    // A refused edit (a key that is not dynamic, a parameter pgha manages) writes nothing.
    let before = view().await?.config;
    let code = pgha(
        &h,
        &[
            "edit-config",
            "--set",
            "synchronous_mode=maybe",
            "--pg",
            "port=1",
            "--force",
        ],
    )
    .await;
    assert_eq!(code, ExitCode::FAILURE);
    assert_eq!(view().await?.config, before);

    // Patroni's PATCH /config body, sent to a replica's agent, reaches every node too.
    let api2 = cfg.node("node2").unwrap().agent_address.unwrap();
    let r = reqwest::Client::new()
        .patch(format!("http://{api2}/config"))
        .body(r#"{"postgresql":{"parameters":{"work_mem":"16MB"}}}"#)
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().await?);
    for n in names {
        until(&format!("{n}: work_mem 16MB"), || async {
            Ok(show(&h, n, "work_mem").await? == "16MB")
        })
        .await?;
    }
    // A scheduled restart shows in /patroni (Patroni's `scheduled_restart`); DELETE /restart
    // cancels it (200), and a second DELETE finds nothing scheduled (Patroni's 404).
    let http = reqwest::Client::new();
    let r = http
        .post(format!("http://{api2}/restart"))
        .body(r#"{"schedule":"2999-01-01T00:00:00+00:00"}"#)
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 202, "{}", r.text().await?);
    until("node2: scheduled_restart in /patroni", || async {
        Ok(patroni(api2).await?["scheduled_restart"]["schedule"]
            .as_str()
            .is_some_and(|s| s.starts_with("2999-01-01")))
    })
    .await?;
    let del = async || -> anyhow::Result<(u16, String)> {
        let r = http.delete(format!("http://{api2}/restart")).send().await?;
        Ok((r.status().as_u16(), r.text().await?))
    };
    assert_eq!(del().await?, (200, "scheduled restart deleted".into()));
    until("node2: scheduled_restart gone from /patroni", || async {
        Ok(patroni(api2).await?.get("scheduled_restart").is_none())
    })
    .await?;
    assert_eq!(del().await?, (404, "no restarts are scheduled".into()));
    let got: serde_json::Value = reqwest::get(format!("http://{api2}/config"))
        .await?
        .json()
        .await?;
    // The patch merged into the seeded document (pgha.toml's parameters stay).
    let params = &got["postgresql"]["parameters"];
    assert_eq!(
        (&params["work_mem"], &params["max_connections"]),
        (&serde_json::json!("16MB"), &serde_json::json!("150")),
        "{got}"
    );

    // Dynamic timings: `pgha edit-config --set ttl=8` moves every agent to an 8 s lease (each
    // grants a new one and moves its keys onto it), the leader keeping its key by a
    // compare-and-swap: same leader, same timeline, no failover, writes on.
    let leader_before = view().await?.leader.unwrap();
    let code = pgha(
        &h,
        &[
            "edit-config",
            "--set",
            "ttl=8",
            "--set",
            "loop_wait=1",
            "--force",
        ],
    )
    .await;
    assert_eq!(code, ExitCode::SUCCESS);
    let endpoints = cfg.dcs.as_ref().unwrap().etcd.clone();
    let mut etcd = etcd_client::Client::connect(endpoints, None).await?;
    let deadline = Instant::now() + T;
    loop {
        let granted = lease_ttls(&mut etcd).await?;
        if granted.len() == 4 && granted.values().all(|t| *t == 8) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not every key on an 8 s lease: {granted:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let v = view().await?;
    let leader = v.leader.as_ref().unwrap();
    assert_eq!(leader.name, leader_before.name);
    assert_ne!(leader.lease, leader_before.lease, "the leader key moved");
    assert_eq!(tl(&v), tl_before, "a new lease is no failover");
    assert!(v.history.is_empty(), "{:?}", v.history);
    let mut c = h.cluster.conn("node1").await?;
    sqlx::query("CREATE TABLE IF NOT EXISTS timings_probe (x int)")
        .execute(&mut c)
        .await?;
    // The agents' own loop period follows: /patroni shows the new loop_wait on a replica.
    until("node2 publishes loop_wait 1 s", || async {
        Ok(view().await?.members["node2"].loop_wait_ms == Some(1000))
    })
    .await?;

    // SIGHUP: node3's tags change live; a restart-only change is refused.
    let path = h.cluster.config_path();
    let original = std::fs::read_to_string(&path)?;
    let tagged = original.replacen(
        "name = \"node3\"\n",
        "name = \"node3\"\ntags = { zone = \"b\" }\n",
        1,
    );
    assert_ne!(
        tagged,
        original,
        "node3's table not found in {}",
        path.display()
    );
    std::fs::write(&path, &tagged)?;
    let pid3 = h.agents["node3"].pid().unwrap() as i32;
    kill(Pid::from_raw(pid3), Signal::SIGHUP)?;
    until("node3 tagged", || async {
        Ok(patroni(api3).await?["tags"]["zone"] == "b")
    })
    .await?;
    let slower = tagged.replacen(
        "postgres_restart_timeout = \"1s\"\n",
        "postgres_restart_timeout = \"1s\"\nsafety_margin = \"800ms\"\n",
        1,
    );
    assert_ne!(slower, tagged);
    std::fs::write(&path, slower)?;
    kill(Pid::from_raw(pid3), Signal::SIGHUP)?;
    until("reload refused", || async {
        let e = patroni(api3).await?["pgha"]["reload_error"].clone();
        Ok(e.as_str().is_some_and(|e| e.contains("[failover]")))
    })
    .await?;
    assert_eq!(patroni(api3).await?["tags"]["zone"], "b");
    std::fs::write(&path, original)?;
    let log = std::fs::read_to_string(h.agent_log("node3"))?;
    assert!(log.contains("reload refused"), "{log}");

    // A clean stop (SIGTERM) revokes the agent's session: its member key goes at once, not a
    // lease TTL (8 s) later, so its restart is not taken for a second agent of the node.
    let mut h = h;
    h.agents
        .get_mut("node3")
        .unwrap()
        .terminate(Duration::from_secs(20));
    let stopped = Instant::now();
    assert!(
        !view().await?.members.contains_key("node3"),
        "member key left behind"
    );
    assert!(stopped.elapsed() < Duration::from_secs(1));
    let t = Instant::now();
    h.start_agent("node3")?;
    h.wait_streaming_replica("node3", T).await?;
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "restart took {:?}",
        t.elapsed()
    );
    Ok(())
}

/// `member_slots_ttl` set in the DCS: the slot of a node whose agent and PostgreSQL are gone
/// is dropped on the primary once its member key has been gone that long (its WAL no longer
/// piles up there); the node comes back, gets its slot again and streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_slots_ttl_drops_a_departed_nodes_slot_and_it_comes_back_and_unknown_slots_are_reported(
) -> anyhow::Result<()> {
    let mut h = HaCluster::start_three(bin(), T).await?;
    let cfg = h.cluster.config().clone();
    let dcs = EtcdDcs::from_config(&cfg, "test").await?;
    let primary = h.wait_single_primary(T, None).await?;
    let gone = if primary == "node3" { "node2" } else { "node3" };
    h.wait_streaming_replica(gone, T).await?;
    until("settings seeded", || async {
        Ok(dcs.view().await?.config.settings.is_some())
    })
    .await?;
    let code = pgha(
        &h,
        &["edit-config", "--set", "member_slots_ttl=2s", "--force"],
    )
    .await;
    assert_eq!(code, ExitCode::SUCCESS);
    let params = h.cluster.instance(&primary)?.connect_params().clone();
    let has_slot = |name: &'static str| {
        let params = params.clone();
        async move {
            let mut c = params.connect().await?;
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1",
            )
            .bind(name)
            .fetch_one(&mut c)
            .await?;
            anyhow::Ok(n == 1)
        }
    };
    let slot = || has_slot(gone);
    assert!(slot().await?, "{gone} has a slot on {primary}");
    // A slot pgha does not know (an operator's tool's): reported, never dropped.
    let mut c = params.connect().await?;
    sqlx::query("SELECT pg_create_physical_replication_slot('backup_tool')")
        .execute(&mut c)
        .await?;
    let api = cfg.node(&primary).unwrap().agent_address.unwrap();
    until("the unknown slot reported in GET /patroni", || async {
        let d: serde_json::Value = reqwest::get(format!("http://{api}/patroni"))
            .await?
            .json()
            .await?;
        Ok(d["unknown_slots"] == serde_json::json!(["physical:backup_tool"]))
    })
    .await?;
    let metrics = reqwest::get(format!("http://{api}/metrics"))
        .await?
        .text()
        .await?;
    assert!(
        metrics.contains(&format!(
            "pgha_unknown_replication_slots{{node=\"{primary}\"}} 1"
        )),
        "{metrics}"
    );
    // Every series the Grafana dashboards (docs/grafana) take from the agents is served.
    let theirs = pgha_test_support::dashboards::series_of("agent");
    assert!(theirs.len() >= 8, "{theirs:?}");
    for (file, name) in &theirs {
        assert!(
            metrics.contains(&format!("\n{name}{{")),
            "{file} queries {name}, which the agent does not serve:\n{metrics}"
        );
    }
    // Ignored at runtime (Patroni's dynamic `ignore_slots`): no longer reported.
    let code = pgha(
        &h,
        &[
            "edit-config",
            "--set",
            r#"ignore_slots=[{"name":"backup_tool","type":"physical"}]"#,
            "--force",
        ],
    )
    .await;
    assert_eq!(code, ExitCode::SUCCESS);
    until("the ignored slot no longer reported", || async {
        let d: serde_json::Value = reqwest::get(format!("http://{api}/patroni"))
            .await?
            .json()
            .await?;
        Ok(d.get("unknown_slots").is_none())
    })
    .await?;

    h.kill_node(gone)?;
    let killed = Instant::now();
    until(&format!("{gone}'s member key gone"), || async {
        Ok(!dcs.view().await?.members.contains_key(gone))
    })
    .await?;
    until(&format!("{gone}'s slot dropped"), || async {
        Ok(!slot().await?)
    })
    .await?;
    let dropped_after = killed.elapsed();

    h.start_agent(gone)?;
    until(&format!("{gone}'s slot back"), || async { slot().await }).await?;
    h.wait_streaming_replica(gone, T).await?;
    assert!(
        has_slot("backup_tool").await?,
        "pgha dropped a slot it does not know"
    );
    eprintln!("slot of {gone} dropped {dropped_after:?} after it was killed");
    Ok(())
}
