//! The second site of `cargo xtask cluster up --sites 2`: a standby cluster in
//! `<state>/site-b` with its own etcd (its own DCS scope). Its standby leader streams from site
//! A's writable node through the `site_b` slot and falls back to site A's WAL archive
//! (`pgha-backup wal-fetch`). Both sites share this machine's loopback: no added latency.

use std::path::{Path, PathBuf};

use anyhow::Context;
use pgha_local_cluster::{ClusterSpec, LocalCluster, PortReservation, StandbySpec, CONFIG_FILE};
use pgha_postgres::StopMode;

use crate::agents;

/// The slot site A keeps for site B.
pub const SITE_B_SLOT: &str = "site_b";

pub fn site_b_dir(root: &Path) -> PathBuf {
    root.join("site-b")
}

/// restore_command fetching site A's archived WAL with the copy of pgha-backup the server user
/// can run.
pub fn restore_command(site_a_root: &Path) -> String {
    format!(
        "'{}' --config '{}' wal-fetch %f %p",
        site_a_root.join("bin/pgha-backup").display(),
        site_a_root.join(CONFIG_FILE).display()
    )
}

/// The spec of a standby site of `site_a`, with `replicas` replicas beside its standby leader.
pub fn standby_spec(
    name: &str,
    dir: &Path,
    site_a: &LocalCluster,
    etcd_url: &str,
    replicas: usize,
    failover_toml: &str,
    exporter: Option<&PortReservation>,
) -> ClusterSpec {
    let mut spec = ClusterSpec::new(name, dir);
    spec.replicas = replicas;
    // With TLS, site B's certificates come from site A's CA (copied at creation).
    spec.tls = site_a.config().tls.is_some();
    spec.parameters = site_a.config().postgres.parameters.clone();
    // Site B does not archive into site A's repository before it is promoted (a standby does
    // not archive), and nothing configures its own archive yet.
    spec.parameters.remove("archive_mode");
    spec.parameters.remove("archive_command");
    let slot = site_a
        .config()
        .replication
        .permanent_slots
        .iter()
        .any(|s| s == SITE_B_SLOT)
        .then(|| SITE_B_SLOT.to_owned());
    spec.standby = Some(StandbySpec {
        primary_root: site_a.root().to_owned(),
        slot,
        restore_command: site_a
            .config()
            .backup
            .as_ref()
            .map(|_| restore_command(site_a.root())),
        primary_hosts: None,
    });
    spec.extra_toml = format!("[dcs]\netcd = [\"{etcd_url}\"]\n\n[failover]\n{failover_toml}");
    if let Some(p) = exporter {
        spec.extra_toml.push_str(&format!(
            "\n[monitoring]\nlisten = \"127.0.0.1:{}\"\n",
            p.port
        ));
    }
    spec
}

/// Creates (first time) or starts site B beside the running site A.
pub async fn up(site_a: &LocalCluster, bin_dir: &Path) -> anyhow::Result<LocalCluster> {
    let dir = site_b_dir(site_a.root());
    let cluster = if dir.join(CONFIG_FILE).exists() {
        agents::ensure_etcd(&dir)?;
        LocalCluster::open(&dir)?
    } else {
        eprintln!(
            "xtask: creating site B (a standby cluster of site A, its own etcd) in {}",
            dir.display()
        );
        std::fs::create_dir_all(&dir)?;
        let etcd_url = agents::ensure_etcd(&dir)?;
        if !site_a
            .config()
            .replication
            .permanent_slots
            .iter()
            .any(|s| s == SITE_B_SLOT)
        {
            eprintln!("xtask: site A keeps no `{SITE_B_SLOT}` slot (created without --sites 2): site B streams without one and bridges gaps from the archive");
        }
        let exporter = pgha_local_cluster::free_port("127.0.0.1")?;
        let spec = standby_spec(
            "local_b",
            &dir,
            site_a,
            &etcd_url,
            1,
            "ttl = \"8s\"\nloop_wait = \"500ms\"\n",
            Some(&exporter),
        );
        let c = LocalCluster::create(&spec).await.with_context(|| {
            format!(
                "create site B in {}; `cargo xtask cluster down --purge` and retry",
                dir.display()
            )
        })?;
        c.stop_all(StopMode::Fast).await?;
        c
    };
    agents::ensure_agents(&dir, &cluster, bin_dir).await?;
    crate::services::ensure_exporter(&dir, cluster.config(), &cluster.config_path(), bin_dir)?;
    Ok(cluster)
}
