//! `pgha render`: the settings files pgha would apply, written for review.

use std::path::Path;

use anyhow::{bail, Context};
use pgha_config::PghaConfig;
use pgha_replication::{RenderedNode, CLUSTER_CONF, NODE_CONF};

use crate::cli::RenderArgs;

pub async fn run(config: &PghaConfig, args: &RenderArgs) -> anyhow::Result<()> {
    let primary_name = match &args.primary {
        Some(p) => p.clone(),
        None => {
            // The live primary when one answers, so replicas are rendered pointing at it.
            let live = pgha_replication::ClusterStatus::collect(config)
                .await
                .ok()
                .and_then(|s| s.primary);
            match live {
                Some(p) => p,
                None => {
                    eprintln!(
                        "note: no live primary answered; rendering replicas of {}",
                        config.nodes[0].name
                    );
                    config.nodes[0].name.clone()
                }
            }
        }
    };
    let primary = config
        .node(&primary_name)
        .with_context(|| format!("--primary {primary_name}: no such node in the config"))?;
    if let Some(n) = &args.node {
        if config.node(n).is_none() {
            bail!("--node {n}: no such node in the config");
        }
    }
    for node in config
        .nodes
        .iter()
        .filter(|n| args.node.as_ref().is_none_or(|w| w == &n.name))
    {
        let upstream = (node.name != primary.name).then_some(primary);
        let r = RenderedNode::render(config, node, upstream);
        let dir = args.out.join(&node.name);
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        write(&dir, CLUSTER_CONF, &r.cluster_conf)?;
        write(&dir, NODE_CONF, &r.node_conf)?;
        write(&dir, "pg_hba.conf", &r.hba)?;
        println!(
            "{}: {} ({})",
            node.name,
            dir.display(),
            if upstream.is_some() {
                "replica"
            } else {
                "primary"
            }
        );
    }
    Ok(())
}

fn write(dir: &Path, name: &str, text: &str) -> anyhow::Result<()> {
    let path = dir.join(name);
    pgha_postgres::files::write_atomic(&path, text.as_bytes(), 0o644, None)
        .with_context(|| format!("write {}", path.display()))
}
