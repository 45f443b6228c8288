//! The services around PostgreSQL: the DCS leader is the writable node, the exporter answers
//! `pg_up 1` for every node, PgBouncer's read-write entry reaches the primary.

use std::time::Duration;

use pgha_config::PghaConfig;
use pgha_postgres::connect_params;
use pgha_replication::status::ClusterStatus;

use super::{check, skip, Check, Verdict};

pub(super) async fn dcs(config: &PghaConfig, primary: Option<&str>) -> Check {
    if config.dcs.is_none() {
        return skip("dcs leader", "no [dcs] section");
    }
    use pgha_failover::dcs::Dcs;
    let r = async {
        let dcs = pgha_failover::dcs::EtcdDcs::from_config(config, "pgha-verify").await?;
        anyhow::Ok(dcs.view().await?)
    };
    match r.await {
        Ok(view) => {
            let leader = view.leader.map(|l| l.name);
            match (leader.as_deref(), primary) {
                (Some(l), Some(p)) if l == p => check(
                    "dcs leader",
                    Verdict::Pass,
                    l,
                    "= writable node",
                    format!("{} members registered", view.members.len()),
                ),
                (Some(l), _) => check(
                    "dcs leader",
                    Verdict::Fail,
                    l,
                    "= writable node",
                    format!("the writable node is {}", primary.unwrap_or("none")),
                ),
                (None, _) => check(
                    "dcs leader",
                    Verdict::Fail,
                    "none",
                    "= writable node",
                    "no leader key (agents down or failover in progress)",
                ),
            }
        }
        Err(e) => check(
            "dcs leader",
            Verdict::Fail,
            "unreachable",
            "reachable",
            crate::error_chain(&e),
        ),
    }
}

pub(super) async fn exporter(config: &PghaConfig, status: &ClusterStatus) -> Check {
    let addr = config.monitoring.listen;
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
    {
        Ok(c) => c,
        Err(e) => return check("exporter", Verdict::Fail, "-", "-", e.to_string()),
    };
    let mut down = Vec::new();
    for n in &status.nodes {
        let url = format!("http://{addr}/probe?target={}", n.name);
        match client.get(&url).send().await {
            Ok(r) => {
                let body = r.text().await.unwrap_or_default();
                if !body.lines().any(|l| l.trim() == "pg_up 1") {
                    down.push(n.name.clone());
                }
            }
            Err(e) => {
                return check(
                    "exporter",
                    Verdict::Fail,
                    "not answering",
                    format!("pg_up 1 at {addr}"),
                    format!("{e} (monitoring.listen)"),
                );
            }
        }
    }
    if down.is_empty() {
        check(
            "exporter",
            Verdict::Pass,
            format!("pg_up 1 x{}", status.nodes.len()),
            format!("pg_up 1 at {addr}"),
            "",
        )
    } else {
        check(
            "exporter",
            Verdict::Fail,
            format!("pg_up 0: {}", down.join(",")),
            format!("pg_up 1 at {addr}"),
            "",
        )
    }
}

pub(super) async fn pgbouncer(config: &PghaConfig, primary: Option<&str>) -> Check {
    let Some(pool) = &config.pooling else {
        return skip("pgbouncer", "no [pooling] section");
    };
    let Some(db) = pool.databases.first() else {
        return skip("pgbouncer", "pooling.databases is empty");
    };
    let r = async {
        let params = connect_params(config, &config.nodes[0])?;
        let mut p = params.clone();
        p.host = pool.client_host();
        p.port = pool.listen_port;
        p.database = db.clone();
        p.statement_timeout = None;
        let mut c = p.connect().await?;
        let port: i32 = sqlx::query_scalar("SELECT inet_server_port()")
            .persistent(false)
            .fetch_one(&mut c)
            .await?;
        anyhow::Ok(port)
    };
    let want = primary
        .and_then(|p| config.node(p))
        .map(|n| i32::from(n.port));
    match (r.await, want) {
        (Ok(port), Some(w)) if port == w => check(
            "pgbouncer",
            Verdict::Pass,
            format!("{db} -> :{port}"),
            "the primary",
            "",
        ),
        (Ok(port), _) => check(
            "pgbouncer",
            Verdict::Fail,
            format!("{db} -> :{port}"),
            "the primary",
            "the read-write entry does not reach the writable node",
        ),
        (Err(e), _) => check(
            "pgbouncer",
            Verdict::Fail,
            "-",
            "the primary",
            crate::error_chain(&e),
        ),
    }
}
