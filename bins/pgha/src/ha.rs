//! `pgha list|history|switchover|failover|pause|resume`: operator actions through the DCS.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use pgha_config::PghaConfig;
use pgha_failover::dcs::{Dcs, EtcdDcs, RequestKind};
use pgha_failover::ops;

async fn dcs(config: &PghaConfig) -> anyhow::Result<EtcdDcs> {
    EtcdDcs::from_config(config, "pgha-cli")
        .await
        .context("connect to the DCS ([dcs] etcd endpoints)")
}

pub async fn list(config: &PghaConfig, json: bool) -> anyhow::Result<()> {
    let d = dcs(config).await?;
    let view = d.view().await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&view)?);
        return Ok(());
    }
    let rows = ops::list_rows(config, &view);
    let mut widths = [0usize; 9];
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let paused = if view.config.paused { ", PAUSED" } else { "" };
    let paused = match (&config.standby_cluster, view.config.standby_promoted) {
        (Some(s), false) => format!("{paused}, STANDBY CLUSTER of {}", s.primary_hosts.join(",")),
        (Some(_), true) => format!("{paused}, promoted from standby cluster"),
        (None, _) => paused.to_owned(),
    };
    println!(
        "Cluster {} (leader {}{paused})",
        config.cluster.name,
        view.leader
            .as_ref()
            .map(|l| l.name.as_str())
            .unwrap_or("NONE")
    );
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
    if let Some(s) = &view.switchover {
        println!("pending {:?} to {}", s.kind, s.to);
    }
    Ok(())
}

/// `pgha topology`: the replication tree.
pub async fn topology(config: &PghaConfig) -> anyhow::Result<()> {
    let view = dcs(config).await?.view().await?;
    println!("Cluster {}", config.cluster.name);
    for l in pgha_failover::topology::lines(config, &view) {
        println!("{l}");
    }
    Ok(())
}

/// `pgha history`: one line per promotion, oldest first.
pub async fn history(config: &PghaConfig, json: bool) -> anyhow::Result<()> {
    let view = dcs(config).await?.view().await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&view.history)?);
        return Ok(());
    }
    if view.history.is_empty() {
        println!("no promotion recorded in cluster {}", config.cluster.name);
        return Ok(());
    }
    println!(
        "{:<4} {:<6} {:<12} {:<20} {:<10} REASON",
        "TL", "NEW TL", "LSN", "TIME (UTC)", "LEADER"
    );
    for h in &view.history {
        let at = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(h.at_ms));
        println!(
            "{:<4} {:<6} {:<12} {:<20} {:<10} {}",
            h.timeline.map_or("-".into(), |t| t.to_string()),
            h.new_timeline,
            h.lsn.map_or("-".into(), |l| l.to_string()),
            at.to_string().trim_end_matches('Z').replace('T', " "),
            h.leader,
            h.reason
        );
    }
    Ok(())
}

/// `--at`: an RFC 3339 time or a delay from now.
pub(crate) fn parse_at(at: &str) -> anyhow::Result<u64> {
    let t = match humantime::parse_duration(at) {
        Ok(d) => SystemTime::now() + d,
        Err(_) => humantime::parse_rfc3339_weak(at).with_context(|| {
            format!("--at {at}: expected an RFC 3339 time (2026-12-01T02:00:00Z) or a delay (30s)")
        })?,
    };
    Ok(t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0))
}

async fn run_request(
    config: &PghaConfig,
    kind: RequestKind,
    to: &str,
    at: Option<u64>,
    no_wait: bool,
) -> anyhow::Result<()> {
    let d = dcs(config).await?;
    let t = Instant::now();
    let req = ops::request(&d, config, kind, to, at).await?;
    println!(
        "{:?} to {to} requested (leader was {})",
        req.kind,
        req.from.as_deref().unwrap_or("none")
    );
    if no_wait || at.is_some() {
        return Ok(());
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let v = d.view().await?;
        if v.leader.as_ref().is_some_and(|l| l.name == to)
            && v.members
                .get(to)
                .is_some_and(|m| m.role == pgha_failover::dcs::MemberRole::Primary)
        {
            println!("{to} is the leader ({:.2} s)", t.elapsed().as_secs_f64());
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{to} did not become the leader within 60 s; see `pgha list` and the agents' logs"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn switchover(
    config: &PghaConfig,
    to: Option<&str>,
    at: Option<&str>,
    no_wait: bool,
) -> anyhow::Result<()> {
    let at = at.map(parse_at).transpose()?;
    let to = match to {
        Some(t) => t.to_string(),
        None => {
            let view = dcs(config).await?.view().await?;
            ops::pick_candidate(config, &view).context(
                "no healthy streaming replica within maximum_lag_on_failover to hand over to \
                 (see `pgha list`); name one with --to",
            )?
        }
    };
    run_request(config, RequestKind::Switchover, &to, at, no_wait).await
}

/// `pgha switchover --cancel`.
pub async fn cancel_switchover(config: &PghaConfig) -> anyhow::Result<()> {
    let d = dcs(config).await?;
    if ops::cancel_switchover(&d).await? {
        println!("scheduled switchover removed");
        Ok(())
    } else {
        bail!("no switchover is scheduled")
    }
}

pub async fn failover(config: &PghaConfig, to: &str, no_wait: bool) -> anyhow::Result<()> {
    run_request(config, RequestKind::Failover, to, None, no_wait).await
}

pub async fn pause(config: &PghaConfig, paused: bool) -> anyhow::Result<()> {
    let d = dcs(config).await?;
    ops::set_paused(&d, paused).await?;
    println!(
        "{}",
        if paused {
            "paused: no automatic failover until `pgha resume`"
        } else {
            "resumed"
        }
    );
    Ok(())
}

/// `pgha promote-cluster`: the standby site becomes the primary site.
pub async fn promote_cluster(
    config: &PghaConfig,
    no_wait: bool,
    force: bool,
    timeout: Duration,
) -> anyhow::Result<()> {
    let d = dcs(config).await?;
    let t = Instant::now();
    ops::promote_cluster(&d, config, force).await?;
    println!(
        "cluster {}: promotion to primary site requested",
        config.cluster.name
    );
    if no_wait {
        return Ok(());
    }
    let deadline = Instant::now() + timeout;
    loop {
        let st = pgha_replication::ClusterStatus::collect(config).await?;
        if let Some(w) = st.writable.first() {
            let lsn = st.node(w).and_then(|n| n.lsn);
            println!(
                "{w} is writable at {} ({:.2} s); remove [standby_cluster] from pgha.toml at the next change",
                lsn.map(|l| l.to_string()).unwrap_or_else(|| "?".into()),
                t.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "no node became writable within {timeout:?}; see `pgha list` and the agents' logs"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `pgha demote-cluster`: this site follows the other one again.
pub async fn demote_cluster(config: &PghaConfig, force: bool) -> anyhow::Result<()> {
    let d = dcs(config).await?;
    ops::demote_cluster(&d, config, force).await?;
    println!(
        "cluster {}: a standby cluster again; start its agents: the standby leader copies the primary site",
        config.cluster.name
    );
    Ok(())
}
