//! `verify`: re-read every object of a backup, compare checksums, check the WAL it needs.

use crate::manifest::Manifest;
use crate::repo::Repository;
use crate::restore::{check_pack, decode_chunk};
use crate::wal::wal_key;
use crate::{BackupError, Result};

/// Problems found in one backup; each names the object concerned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    pub id: String,
    pub packs: usize,
    pub bytes: u64,
    pub problems: Vec<String>,
}

/// Verifies backup `id`: manifest checksum, every pack's size and sha256, every chunk's sha256
/// after decompression, and the presence of the WAL from start to stop.
pub async fn verify_backup(repo: &Repository, id: &str) -> Result<VerifyReport> {
    let mut report = VerifyReport {
        id: id.to_owned(),
        ..Default::default()
    };
    let m = match repo.manifest(id).await {
        Ok(m) => m,
        Err(e @ BackupError::Corrupt { .. }) => {
            report.problems.push(e.to_string());
            return Ok(report);
        }
        Err(e) => return Err(e),
    };
    let storage = repo.storage();
    let mut chunks_by_pack: std::collections::HashMap<u32, Vec<crate::manifest::ChunkRef>> =
        Default::default();
    for f in &m.files {
        for c in &f.chunks {
            chunks_by_pack.entry(c.pack).or_default().push(c.clone());
        }
    }
    for p in &m.packs {
        let key = Manifest::pack_key(&m.id, p.id);
        let data = match storage.get(&key).await {
            Ok(d) => d,
            Err(e) => {
                report.problems.push(e.to_string());
                continue;
            }
        };
        let chunks = chunks_by_pack.remove(&p.id).unwrap_or_default();
        let want = p.clone();
        let k = key.clone();
        let r = tokio::task::spawn_blocking(move || -> Result<u64> {
            check_pack(&k, &data, &want)?;
            let mut dec =
                zstd::bulk::Decompressor::new().map_err(BackupError::io("start zstd", &k))?;
            let mut n = 0;
            for c in &chunks {
                n += decode_chunk(&mut dec, &k, &data, c)?.len() as u64;
            }
            Ok(n)
        })
        .await?;
        match r {
            Ok(n) => {
                report.packs += 1;
                report.bytes += n;
            }
            Err(e) => report.problems.push(e.to_string()),
        }
    }
    for name in m.needed_wal() {
        let key = wal_key(&name)?;
        match storage.get(&key).await {
            Ok(data) => {
                if let Err(e) =
                    tokio::task::spawn_blocking(move || crate::wal::decode(&key, &data).map(|_| ()))
                        .await?
                {
                    report.problems.push(e.to_string());
                }
            }
            Err(BackupError::NotFound { .. }) => report.problems.push(format!(
                "WAL segment {name} ({key}) needed for consistency is missing from the archive"
            )),
            Err(e) => report.problems.push(e.to_string()),
        }
    }
    Ok(report)
}

/// Restores backup `id` into a temporary directory, starts it on a free port (recovery to the
/// backup's consistent point), runs a check query, stops it and removes the directory.
/// Returns the check's answer (the number of relations in the `postgres` database).
pub async fn restore_test(
    config: &pgha_config::PghaConfig,
    repo: &Repository,
    id: &str,
    restore_command: String,
    run_as: Option<pgha_postgres::OsUser>,
) -> Result<i64> {
    use pgha_postgres::{PgControl, StopMode};
    let tmp = tempfile::Builder::new()
        .prefix("pgha-restore-test-")
        .tempdir()
        .map_err(BackupError::io("create temp dir in", std::env::temp_dir()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o711))
            .map_err(BackupError::io("chmod", tmp.path()))?;
    }
    if let Some(u) = &run_as {
        // The server writes its log beside the data dir.
        u.chown(tmp.path())?;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(BackupError::io("find a free port on", "127.0.0.1"))?
        .port();
    let opts = crate::RestoreOptions {
        backup: Some(id.to_owned()),
        to: tmp.path().join("data"),
        target: crate::RecoveryTarget::Immediate,
        action: crate::TargetAction::Promote,
        force: false,
        port: Some(port),
        parallel: 0,
        restore_command,
        run_as,
        progress: false,
    };
    let m = crate::restore(repo, &opts).await?;
    let inst = crate::start_and_wait(config, &m, &opts, std::time::Duration::from_secs(300)).await;
    let inst = match inst {
        Ok(i) => i,
        Err(e) => {
            if let Ok(i) = crate::restore::restored_instance(
                config,
                &m,
                &opts.to,
                opts.port,
                opts.run_as.clone(),
            ) {
                i.stop_blocking(StopMode::Immediate);
            }
            return Err(e);
        }
    };
    let answer = async {
        let mut conn = inst.connect().await?;
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_class")
            .fetch_one(&mut conn)
            .await
            .map_err(BackupError::query("restore test instance"))?;
        Ok::<i64, BackupError>(n)
    }
    .await;
    let _ = inst.stop(StopMode::Fast).await;
    answer
}
