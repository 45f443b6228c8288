//! `pgha restart`, `pgha reinit`, `pgha reload`: requests to the nodes' agents (their API,
//! with `failover.api_token`), which carry them out between jobs, also while paused.

use std::io::{BufRead, IsTerminal, Write};
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{bail, Context};
use pgha_config::PghaConfig;
use pgha_failover::dcs::{Dcs, EtcdDcs};

/// The agent's answer to an immediate restart comes once PostgreSQL is back (up to 60 s).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(75);

#[derive(Debug)]
pub struct RestartOptions<'a> {
    pub pending: bool,
    pub scheduled: Option<&'a str>,
    pub role: Option<&'a str>,
    pub force: bool,
}

fn confirm(question: &str, force: bool) -> anyhow::Result<bool> {
    if force {
        return Ok(true);
    }
    if !std::io::stdin().is_terminal() {
        bail!("standard input is not a terminal, so nobody can confirm: pass --force");
    }
    print!("{question} [y/N] ");
    std::io::stdout().flush().context("flush standard output")?;
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("read the answer")?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes"))
}

/// `names`, checked against the config; every node when empty, the leader last.
async fn targets(config: &PghaConfig, names: &[String]) -> anyhow::Result<Vec<String>> {
    for n in names {
        if config.node(n).is_none() {
            let all: Vec<&str> = config.nodes.iter().map(|n| n.name.as_str()).collect();
            bail!(
                "`{n}` is not a node of this cluster (nodes: {})",
                all.join(", ")
            );
        }
    }
    if !names.is_empty() {
        return Ok(names.to_vec());
    }
    let view = EtcdDcs::from_config(config, "pgha-cli")
        .await
        .context("connect to the DCS ([dcs] etcd endpoints)")?
        .view()
        .await?;
    let leader = view.leader.map(|l| l.name);
    let mut all: Vec<String> = config.nodes.iter().map(|n| n.name.clone()).collect();
    all.sort_by_key(|n| Some(n) == leader.as_ref());
    Ok(all)
}

/// POSTs `body` to `path` on `node`'s agent: (status, answer).
async fn post(
    config: &PghaConfig,
    node: &str,
    path: &str,
    body: String,
) -> anyhow::Result<(u16, String)> {
    let n = config.node(node).context("node not in the config")?;
    let addr = n
        .agent_address
        .with_context(|| format!("nodes.{node}.agent_address is not set: no agent API to ask"))?;
    let api = pgha_tls::AgentApiClient::new(config, REQUEST_TIMEOUT)?;
    let mut req = api.client.post(api.url(addr, path)).body(body);
    if let Some(t) = &config.failover.api_token {
        req = req.bearer_auth(t.read()?.expose());
    }
    let r = req
        .send()
        .await
        .with_context(|| format!("{node}'s agent at {addr}"))?;
    let code = r.status().as_u16();
    Ok((code, r.text().await.unwrap_or_default().trim().to_string()))
}

/// What an agent's answer means.
enum Answer {
    Done,
    /// The request does not apply to this node (`--pending`, `--role`).
    Skipped,
    Refused,
}

/// POSTs to every node in turn, each answer on a line; Err naming the nodes that refused or
/// could not be asked.
async fn each(
    config: &PghaConfig,
    nodes: &[String],
    path: &str,
    body: &str,
    judge: impl Fn(u16, &str) -> Answer,
) -> anyhow::Result<()> {
    let mut failed = Vec::new();
    for n in nodes {
        match post(config, n, path, body.to_string()).await {
            Ok((code, text)) => match judge(code, &text) {
                Answer::Done => println!("{n}: {text}"),
                Answer::Skipped => println!("{n}: skipped ({text})"),
                Answer::Refused => {
                    println!("{n}: refused ({code}): {text}");
                    failed.push(n.clone());
                }
            },
            Err(e) => {
                println!("{n}: {}", crate::error_chain(&e));
                failed.push(n.clone());
            }
        }
    }
    if !failed.is_empty() {
        bail!("not done on {}", failed.join(", "));
    }
    Ok(())
}

/// 2xx codes in `ok` are done, everything else refused.
fn expect(ok: u16) -> impl Fn(u16, &str) -> Answer {
    move |code, _| {
        if code == ok {
            Answer::Done
        } else {
            Answer::Refused
        }
    }
}

pub async fn restart(
    config: &PghaConfig,
    names: &[String],
    o: &RestartOptions<'_>,
) -> anyhow::Result<()> {
    let nodes = targets(config, names).await?;
    let mut body = serde_json::Map::new();
    if o.pending {
        body.insert("restart_pending".into(), true.into());
    }
    if let Some(r) = o.role {
        body.insert("role".into(), r.into());
    }
    let when = match o.scheduled {
        Some(at) => {
            let ms = crate::ha::parse_at(at)?;
            let t = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms));
            body.insert("schedule".into(), t.to_string().into());
            format!(" at {t}")
        }
        None => " now".into(),
    };
    if !confirm(
        &format!("Restart PostgreSQL on {}{when}?", nodes.join(", ")),
        o.force,
    )? {
        println!("nothing done");
        return Ok(());
    }
    // 503 "restart conditions are not satisfied" for --pending/--role on a node they exclude
    // is an answer, not a failure.
    let filtered = o.pending || o.role.is_some();
    let body = serde_json::Value::Object(body).to_string();
    each(config, &nodes, "/restart", &body, |code, text| match code {
        200 | 202 => Answer::Done,
        503 if filtered && text == "restart conditions are not satisfied" => Answer::Skipped,
        _ => Answer::Refused,
    })
    .await
}

pub async fn reinit(config: &PghaConfig, node: &str, force: bool) -> anyhow::Result<()> {
    let nodes = targets(config, &[node.to_string()]).await?;
    if !confirm(
        &format!("Wipe {node}'s data dir (moved aside) and clone it afresh from the leader?"),
        force,
    )? {
        println!("nothing done");
        return Ok(());
    }
    each(config, &nodes, "/reinitialize", "", expect(200)).await
}

pub async fn reload(config: &PghaConfig, names: &[String]) -> anyhow::Result<()> {
    let nodes = targets(config, names).await?;
    each(config, &nodes, "/reload", "", expect(202)).await
}
