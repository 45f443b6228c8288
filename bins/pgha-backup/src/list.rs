//! `list [--json]`: backups (with sizes and WAL range), incomplete backups, WAL archive, dumps.

use pgha_backup_core::manifest::Manifest;
use pgha_backup_core::wal::WAL;
use pgha_backup_core::Repository;
use serde_json::json;

fn summary(m: &Manifest) -> serde_json::Value {
    json!({
        "id": m.id, "type": m.kind, "reference": m.reference, "depends_on": m.depends_on(),
        "node": m.node, "timeline": m.timeline,
        "start_lsn": m.start_lsn, "stop_lsn": m.stop_lsn,
        "start_wal": m.start_wal, "stop_wal": m.stop_wal,
        "started_at": m.started_at, "finished_at": m.finished_at,
        "size": m.size, "stored_size": m.stored_size,
        "files": m.files.len(), "packs": m.packs.len(),
        "compression": m.compression, "encrypted": m.encrypted,
        "from_standby": m.from_standby, "pg_version": m.pg_version,
    })
}

pub async fn run(repo: &Repository, json: bool) -> anyhow::Result<()> {
    let manifests = repo.manifests().await?;
    let incomplete = repo.incomplete_ids().await?;
    let storage = repo.storage();
    let wal = storage.list(WAL).await?;
    let wal_bytes: u64 = wal.iter().map(|o| o.size).sum();
    let logical = pgha_backup_core::logical::list(storage.as_ref()).await?;
    let first = wal
        .first()
        .map(|o| o.key.rsplit('/').next().unwrap_or("").to_owned());
    let last = wal
        .last()
        .map(|o| o.key.rsplit('/').next().unwrap_or("").to_owned());
    if json {
        let v = json!({
            "repository": storage.describe(),
            "backups": manifests.iter().map(summary).collect::<Vec<_>>(),
            "incomplete": incomplete,
            "wal": { "files": wal.len(), "bytes": wal_bytes, "first": first, "last": last },
            "logical": logical,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("Repository {}", storage.describe());
    println!(
        "{:<20} {:<5} {:<20} {:<8} {:>3} {:<12} {:<12} {:>10} {:>10}  FINISHED",
        "BACKUP",
        "TYPE",
        "REFERENCE",
        "NODE",
        "TL",
        "START LSN",
        "STOP LSN",
        "SIZE MB",
        "STORED MB"
    );
    for m in &manifests {
        println!(
            "{:<20} {:<5} {:<20} {:<8} {:>3} {:<12} {:<12} {:>10.1} {:>10.1}  {}",
            m.id,
            m.kind,
            m.reference.as_deref().unwrap_or("-"),
            m.node,
            m.timeline,
            m.start_lsn,
            m.stop_lsn,
            m.size as f64 / 1e6,
            m.stored_size as f64 / 1e6,
            m.finished_at
        );
    }
    if manifests.is_empty() {
        println!("(no complete backup)");
    }
    for id in &incomplete {
        println!("{id:<18} INCOMPLETE (interrupted; removed by the next backup or expire)");
    }
    println!(
        "WAL archive: {} file(s), {:.1} MB{}",
        wal.len(),
        wal_bytes as f64 / 1e6,
        match (&first, &last) {
            (Some(f), Some(l)) => format!(", {f} .. {l}"),
            _ => String::new(),
        }
    );
    for d in &logical {
        println!(
            "logical {:<30} db {:<12} {:>8.1} MB stored  {}",
            d.id,
            d.database,
            d.stored_size as f64 / 1e6,
            d.finished_at
        );
    }
    Ok(())
}
