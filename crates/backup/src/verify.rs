//! `verify`: re-read every object of a backup, compare checksums, check the WAL it needs;
//! re-read every object of the WAL archive and check that every kept backup can replay from
//! its start to the archive's end (see [`crate::archive`]).

use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};

use crate::archive::{classify, parse_history, ArchiveIndex, WalKind};
use crate::manifest::{ChunkRef, Manifest};
use crate::repo::Repository;
use crate::restore::{check_pack, decode_chunk};
use crate::wal::wal_key;
use crate::wal::WAL;
use crate::{BackupError, Result};

/// Problems found in one backup; each names the object concerned.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
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
    // Every pack the backup's chunks are in: its own, and for diff/incr those of the backups
    // it references (so that verifying one backup proves it restorable).
    let packs = match crate::restore::pack_table(repo, &m).await {
        Ok(p) => p,
        Err(e @ BackupError::Corrupt { .. }) => {
            report.problems.push(e.to_string());
            return Ok(report);
        }
        Err(e) => return Err(e),
    };
    let mut chunks_by_pack: std::collections::BTreeMap<(String, u32), Vec<ChunkRef>> =
        Default::default();
    for p in &m.packs {
        chunks_by_pack.entry((m.id.clone(), p.id)).or_default();
    }
    for f in &m.files {
        for c in &f.chunks {
            chunks_by_pack
                .entry((m.owner(c).to_owned(), c.pack))
                .or_default()
                .push(c.clone());
        }
    }
    for (pk, chunks) in chunks_by_pack {
        let key = Manifest::pack_key(&pk.0, pk.1);
        let Some(want) = packs.get(&pk).cloned() else {
            report
                .problems
                .push(format!("chunks refer to {key}, which no manifest lists"));
            continue;
        };
        let data = match storage.get(&key).await {
            Ok(d) => d,
            Err(e) => {
                report.problems.push(e.to_string());
                continue;
            }
        };
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

/// What [`verify_archive`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveReport {
    /// Objects read and checked.
    pub objects: usize,
    /// Their decoded size.
    pub bytes: u64,
    pub timelines: Vec<u32>,
    /// The newest segment of the newest timeline.
    pub end: Option<String>,
    /// Each names the object, timeline or backup concerned.
    pub problems: Vec<String>,
    /// Objects that vanished while `expire` held the repository lock.
    pub skipped: Vec<String>,
}

/// Reads every object under `wal/` (checksum, zstd frame, encryption tag) with `workers` in
/// parallel, parses the history files, and checks each of `backups` for gaps up to the end of
/// the archive and every timeline for its history file.
pub async fn verify_archive(
    repo: &Repository,
    backups: &[Manifest],
    workers: usize,
    progress: bool,
) -> Result<ArchiveReport> {
    let storage = repo.storage();
    let seg_size = backups.first().map_or(16 << 20, |m| m.wal_segment_size);
    let objects = storage.list(WAL).await?;
    let total: u64 = objects.iter().map(|o| o.size).sum();
    let bar = crate::progress::Progress::start(progress, "verify WAL", total);
    let done = bar.counter();
    let workers = if workers == 0 {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    } else {
        workers
    };
    let mut report = ArchiveReport {
        objects: objects.len(),
        ..Default::default()
    };
    let mut index = ArchiveIndex::from_listing(&objects, seg_size);
    let mut set = tokio::task::JoinSet::new();
    let mut results = Vec::new();
    for o in objects {
        while set.len() >= workers {
            if let Some(r) = set.join_next().await {
                results.push(r?);
            }
        }
        let storage = storage.clone();
        let done = done.clone();
        set.spawn(async move {
            let r = match storage.get(&o.key).await {
                Ok(data) => {
                    let key = o.key.clone();
                    tokio::task::spawn_blocking(move || crate::wal::decode(&key, &data))
                        .await
                        .map_err(BackupError::from)
                        .and_then(|x| x)
                }
                Err(e) => Err(e),
            };
            done.fetch_add(o.size, Ordering::Relaxed);
            (o.key, r)
        });
    }
    while let Some(r) = set.join_next().await {
        results.push(r?);
    }
    bar.finish();
    let locked = crate::lock::holder(storage.as_ref()).await?;
    for (key, r) in results {
        match r {
            Ok(raw) => {
                report.bytes += raw.len() as u64;
                let name = key.rsplit('/').next().unwrap_or("");
                if let WalKind::History { tli } = classify(name, seg_size) {
                    match parse_history(&String::from_utf8_lossy(&raw)) {
                        Ok(h) => index.add_history(tli, h),
                        Err(e) => report
                            .problems
                            .push(format!("{key}: bad history file: {e}")),
                    }
                }
            }
            Err(BackupError::NotFound { .. }) if locked.is_some() => report.skipped.push(key),
            Err(BackupError::NotFound { .. }) => report.problems.push(format!(
                "{key} was listed but is gone (removed while verifying?)"
            )),
            Err(e) => report.problems.push(e.to_string()),
        }
    }
    conclude(&mut report, &index, backups);
    Ok(report)
}

/// The timelines, the end, missing history files and every backup's gaps, from `index`.
fn conclude(report: &mut ArchiveReport, index: &ArchiveIndex, backups: &[Manifest]) {
    report.timelines = index.timelines().into_iter().collect();
    report.end = index.end();
    report.problems.extend(index.missing_histories());
    for m in backups {
        report.problems.extend(index.gaps_for(m));
    }
}

/// Key of the stored result of the last full `verify` (read by `pgha verify`).
pub const LAST_VERIFY: &str = "state/last-verify.json";

/// The stored result of a whole-repository verify.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyResult {
    /// Unix seconds when it finished.
    pub finished: u64,
    pub backups: Vec<VerifyReport>,
    pub archive: ArchiveReport,
}

impl VerifyResult {
    pub fn ok(&self) -> bool {
        self.archive.problems.is_empty() && self.backups.iter().all(|b| b.problems.is_empty())
    }

    /// Every problem, backups first.
    pub fn problems(&self) -> Vec<String> {
        self.backups
            .iter()
            .flat_map(|b| b.problems.iter().cloned())
            .chain(self.archive.problems.iter().cloned())
            .collect()
    }
}

/// Stores `r` as the last verify result.
pub async fn store_result(repo: &Repository, r: &VerifyResult) -> Result<()> {
    let data = serde_json::to_vec_pretty(r).map_err(|e| BackupError::Corrupt {
        key: LAST_VERIFY.into(),
        detail: format!("cannot serialize: {e}"),
    })?;
    repo.storage().put(LAST_VERIFY, data).await
}

/// The last verify result, if one was stored.
pub async fn last_result(repo: &Repository) -> Result<Option<VerifyResult>> {
    match repo.storage().get(LAST_VERIFY).await {
        Ok(d) => serde_json::from_slice(&d)
            .map(Some)
            .map_err(|e| BackupError::Corrupt {
                key: LAST_VERIFY.into(),
                detail: format!("bad JSON: {e}"),
            }),
        Err(BackupError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The archive's continuity from a listing alone (no object is read): the cheap check of
/// `pgha verify`. History files are read (they are small) to follow timelines.
pub async fn archive_gaps(repo: &Repository, backups: &[Manifest]) -> Result<ArchiveReport> {
    let storage = repo.storage();
    let seg_size = backups.first().map_or(16 << 20, |m| m.wal_segment_size);
    let objects = storage.list(WAL).await?;
    let mut index = ArchiveIndex::from_listing(&objects, seg_size);
    let mut report = ArchiveReport {
        objects: objects.len(),
        ..Default::default()
    };
    for (tli, key) in crate::archive::history_keys(&objects, seg_size) {
        match storage.get(&key).await {
            Ok(data) => match crate::wal::decode(&key, &data)
                .map_err(|e| e.to_string())
                .and_then(|raw| parse_history(&String::from_utf8_lossy(&raw)))
            {
                Ok(h) => index.add_history(tli, h),
                Err(e) => report.problems.push(format!("{key}: {e}")),
            },
            Err(e) => report.problems.push(e.to_string()),
        }
    }
    conclude(&mut report, &index, backups);
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
        delta: false,
        port: Some(port),
        parallel: 0,
        restore_command,
        run_as,
        progress: false,
        keep_archiving: false,
    };
    let m = crate::restore(repo, &opts).await?;
    let inst = crate::start_and_wait(config, &m, &opts, std::time::Duration::from_secs(300)).await;
    let inst = match inst {
        Ok(i) => i,
        Err(e) => {
            if let Ok(i) =
                crate::restored_instance(config, &m, &opts.to, opts.port, opts.run_as.clone())
            {
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
    if let Err(e) = inst.stop(StopMode::Fast).await {
        tracing::warn!(
            "cannot stop the restore-test instance (its directory is removed anyway): {e}"
        );
    }
    answer
}
