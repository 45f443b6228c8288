//! `backup`: a full base backup. pg_backup_start/pg_backup_stop over one session; in between,
//! N workers read the data files in chunks, checksum and zstd-compress them into pack objects
//! that are uploaded while the next ones are filled (nothing is staged on local disk).

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use pgha_config::PghaConfig;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::manifest::{backup_id, hex, segment_name, ChunkRef, FileEntry, Manifest, PackEntry};
use crate::node::pick_node;
use crate::progress::Progress;
use crate::storage::Storage;
use crate::walk::{list_data_dir, ListedFile};
use crate::{BackupError, Result};

/// Uncompressed size of one chunk of a large file: the unit of compression, of checksums and
/// of what a diff or incr backup stores again. 1 MiB: an update of a few percent of a table
/// dirties a few percent of its chunks, and zstd's window at our levels is about as large.
pub const CHUNK: u64 = 1 << 20;
/// A pack is uploaded once its compressed size reaches this.
pub const PACK_TARGET: usize = 16 << 20;

/// What a backup stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackupKind {
    /// Every chunk.
    #[default]
    Full,
    /// Chunks that differ from the newest full backup; the rest is referenced.
    Diff,
    /// Chunks that differ from the newest backup of any kind.
    Incr,
}

impl BackupKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BackupKind::Full => "full",
            BackupKind::Diff => "diff",
            BackupKind::Incr => "incr",
        }
    }
}

/// How to take a backup.
#[derive(Debug, Clone)]
pub struct BackupOptions {
    pub kind: BackupKind,
    pub node: Option<String>,
    pub from_standby: bool,
    /// Workers; 0 = one per core.
    pub parallel: usize,
    pub level: i32,
    /// Draw a progress line on stderr (only when it is a terminal).
    pub progress: bool,
    pub encrypted: bool,
}

/// Takes a full backup into `storage`; returns its manifest once the manifest is stored.
pub async fn take_backup(
    config: &PghaConfig,
    storage: Arc<dyn Storage>,
    opts: &BackupOptions,
) -> Result<Manifest> {
    let lock = crate::lock::acquire(&storage, "backup").await?;
    let r = take_locked(config, storage, opts, &lock).await;
    lock.release().await;
    r
}

/// A free backup id for a backup started at `started`: its time, with `-2`, `-3` ... when a
/// backup of that second exists (a small cluster backs up in well under a second).
async fn unique_id(storage: &dyn Storage, started: SystemTime) -> Result<String> {
    let base = backup_id(started);
    let mut id = base.clone();
    let mut n = 1;
    while storage.exists(&Manifest::key(&id)).await? {
        n += 1;
        id = format!("{base}-{n}");
    }
    Ok(id)
}

async fn take_locked(
    config: &PghaConfig,
    storage: Arc<dyn Storage>,
    opts: &BackupOptions,
    lock: &crate::lock::RepoLock,
) -> Result<Manifest> {
    let started = SystemTime::now();
    // Under the lock no other backup runs: what has no manifest was interrupted.
    crate::expire::remove_incomplete(&crate::repo::Repository::new(storage.clone())).await?;
    let id = unique_id(storage.as_ref(), started).await?;
    let reference =
        reference_for(&crate::repo::Repository::new(storage.clone()), opts.kind).await?;
    let mut c = pick_node(config, opts.node.as_deref(), opts.from_standby).await?;
    let q = BackupError::query(&c.node.name);
    let (data_dir, pg_version, sysid, seg_size): (String, String, String, i64) = sqlx::query_as(
        "SELECT current_setting('data_directory'), current_setting('server_version'),
                (SELECT system_identifier::text FROM pg_control_system()),
                (SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size')",
    )
    .fetch_one(&mut c.conn)
    .await
    .map_err(q)?;
    sqlx::query("SET statement_timeout = 0")
        .execute(&mut c.conn)
        .await
        .map_err(BackupError::query(&c.node.name))?;
    let start_lsn: String = sqlx::query_scalar("SELECT pg_backup_start($1, true)::text")
        .bind(format!("pgha-backup {id}"))
        .fetch_one(&mut c.conn)
        .await
        .map_err(BackupError::query(&c.node.name))?;
    tracing::info!(%id, node = %c.node.name, %start_lsn, "backup started");

    let reference = match reference {
        Some(r) if r.system_identifier != sysid => {
            tracing::warn!(
                reference = %r.id,
                "the newest backup is of another cluster (system identifier {} here, {} there): taking a full backup",
                sysid,
                r.system_identifier
            );
            None
        }
        other => other,
    };
    let kind = if reference.is_some() {
        opts.kind
    } else {
        BackupKind::Full
    };
    let chunks_of_ref = reference.as_ref().map(reference_chunks);
    let copied = copy_data_dir(
        Path::new(&data_dir),
        &id,
        storage.clone(),
        opts,
        chunks_of_ref,
    )
    .await;
    // Always end backup mode, also when the copy failed.
    let stop: std::result::Result<(String, String, Option<String>), sqlx::Error> =
        sqlx::query_as("SELECT lsn::text, labelfile, spcmapfile FROM pg_backup_stop(true)")
            .fetch_one(&mut c.conn)
            .await;
    let (dirs, files, packs, size) = copied?;
    let (stop_lsn, label, spcmap) = stop.map_err(BackupError::query(&c.node.name))?;
    let seg_size = seg_size.max(1) as u64;
    let (timeline, start_wal) = parse_label(&label)?;
    let stop_wal = segment_name(timeline, prev_segno(&stop_lsn, seg_size)?, seg_size);
    let stored_size = packs.iter().map(|p| p.size).sum();
    let manifest = Manifest {
        version: 1,
        id: id.clone(),
        node: c.node.name.clone(),
        pg_version,
        system_identifier: sysid,
        timeline,
        start_lsn,
        stop_lsn,
        start_wal,
        stop_wal,
        wal_segment_size: seg_size,
        started_at: humantime::format_rfc3339_seconds(started).to_string(),
        finished_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        from_standby: opts.from_standby,
        kind: kind.as_str().into(),
        reference: reference.as_ref().map(|r| r.id.clone()),
        compression: format!("zstd:{}", opts.level),
        encrypted: opts.encrypted,
        size,
        stored_size,
        backup_label: label,
        tablespace_map: spcmap.unwrap_or_default(),
        dirs,
        files,
        packs,
    };
    // Stored only while we still hold the lock: an expire that broke an expired lock may be
    // removing this backup's packs.
    lock.check()?;
    storage.put(&Manifest::key(&id), manifest.encode()?).await?;
    tracing::info!(%id, "backup complete");
    Ok(manifest)
}

/// The backup a diff (newest full) or incr (newest of any kind) is compared with; `None` for
/// a full backup, or when there is none (the backup is then full, as pgBackRest does).
async fn reference_for(
    repo: &crate::repo::Repository,
    kind: BackupKind,
) -> Result<Option<Manifest>> {
    if kind == BackupKind::Full {
        return Ok(None);
    }
    let mut manifests = repo.manifests().await?;
    if kind == BackupKind::Diff {
        manifests.retain(|m| m.kind == "full");
    }
    let r = manifests.pop();
    if r.is_none() {
        tracing::warn!(
            "no {} backup to compare with: taking a full backup",
            if kind == BackupKind::Diff {
                "full"
            } else {
                "earlier"
            }
        );
    }
    Ok(r)
}

/// The chunks of `r` by (path, offset), each naming the backup whose pack holds it.
fn reference_chunks(r: &Manifest) -> RefChunks {
    let mut map = HashMap::new();
    for f in &r.files {
        for c in &f.chunks {
            let mut c2 = c.clone();
            c2.backup = Some(r.owner(c).to_owned());
            map.insert((f.path.clone(), c.file_offset), c2);
        }
    }
    map
}

/// Chunks of a reference backup by (file path, offset).
type RefChunks = HashMap<(String, u64), ChunkRef>;

/// (timeline, start WAL file) from backup_label.
fn parse_label(label: &str) -> Result<(u32, String)> {
    let mut tl = None;
    let mut wal = None;
    for line in label.lines() {
        if let Some(rest) = line.strip_prefix("START TIMELINE: ") {
            tl = rest.trim().parse::<u32>().ok();
        }
        if let Some(rest) = line.strip_prefix("START WAL LOCATION: ") {
            wal = rest
                .split("(file ")
                .nth(1)
                .map(|s| s.trim_end_matches(')').trim().to_owned());
        }
    }
    match (tl, wal) {
        (Some(t), Some(w)) => Ok((t, w)),
        _ => Err(BackupError::Corrupt {
            key: "backup_label".into(),
            detail: format!("cannot find START TIMELINE / START WAL LOCATION in:\n{label}"),
        }),
    }
}

/// Segment number holding the byte before `lsn` (as pg_walfile_name does).
fn prev_segno(lsn: &str, seg_size: u64) -> Result<u64> {
    let v: pgha_postgres::Lsn = lsn.parse()?;
    Ok(v.0.saturating_sub(1) / seg_size)
}

type Copied = (Vec<String>, Vec<FileEntry>, Vec<PackEntry>, u64);

struct Job {
    file: usize,
    offset: u64,
    /// None: to the end of the file.
    len: Option<u64>,
}

async fn copy_data_dir(
    data_dir: &Path,
    id: &str,
    storage: Arc<dyn Storage>,
    opts: &BackupOptions,
    reference: Option<RefChunks>,
) -> Result<Copied> {
    let (dirs, listed) = list_data_dir(data_dir)?;
    let total: u64 = listed.iter().map(|f| f.size).sum();
    let mut jobs = Vec::new();
    for (i, f) in listed.iter().enumerate() {
        let mut off = 0;
        while f.size > off + CHUNK {
            jobs.push(Job {
                file: i,
                offset: off,
                len: Some(CHUNK),
            });
            off += CHUNK;
        }
        jobs.push(Job {
            file: i,
            offset: off,
            len: None,
        });
    }
    let workers = if opts.parallel == 0 {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    } else {
        opts.parallel
    };
    let (tx, mut rx) = mpsc::channel::<(u32, Vec<u8>)>(workers);
    // Uploads run while workers fill the next packs.
    let up_storage = storage.clone();
    let up_id = id.to_owned();
    let uploader = tokio::spawn(async move {
        let mut set = tokio::task::JoinSet::new();
        while let Some((pack, data)) = rx.recv().await {
            while set.len() >= workers {
                if let Some(r) = set.join_next().await {
                    r??;
                }
            }
            let s = up_storage.clone();
            let key = Manifest::pack_key(&up_id, pack);
            set.spawn(async move { s.put(&key, data).await });
        }
        while let Some(r) = set.join_next().await {
            r??;
        }
        Ok::<(), BackupError>(())
    });
    let progress = Progress::start(opts.progress, "backup", total);
    let ctx = Arc::new(CopyCtx {
        root: data_dir.to_owned(),
        files: listed,
        jobs,
        next_job: AtomicUsize::new(0),
        next_pack: AtomicU32::new(0),
        done: progress.counter(),
        level: opts.level,
        reference,
        results: Mutex::new((Vec::new(), Vec::new())),
        failed: Mutex::new(None),
    });
    let wctx = ctx.clone();
    let copy = tokio::task::spawn_blocking(move || {
        std::thread::scope(|s| {
            for _ in 0..workers {
                let tx = tx.clone();
                let ctx = &wctx;
                s.spawn(move || {
                    if let Err(e) = worker(ctx, &tx) {
                        let mut f = ctx.failed.lock().unwrap_or_else(|p| p.into_inner());
                        f.get_or_insert(e);
                    }
                });
            }
        });
        drop(tx);
    });
    let copy_result = copy.await;
    let up_result = uploader.await;
    progress.finish();
    copy_result?;
    if let Some(e) = ctx.failed.lock().unwrap_or_else(|p| p.into_inner()).take() {
        return Err(e);
    }
    up_result??;
    let (mut chunks, mut packs) =
        std::mem::take(&mut *ctx.results.lock().unwrap_or_else(|p| p.into_inner()));
    chunks.sort_by_key(|(f, c)| (*f, c.file_offset));
    packs.sort_by_key(|p: &PackEntry| p.id);
    let mut files: Vec<FileEntry> = ctx
        .files
        .iter()
        .map(|f| FileEntry {
            path: f.path.clone(),
            size: 0,
            chunks: Vec::new(),
        })
        .collect();
    for (f, c) in chunks {
        files[f].size = files[f].size.max(c.file_offset + c.len);
        files[f].chunks.push(c);
    }
    let size = files.iter().map(|f| f.size).sum();
    Ok((dirs, files, packs, size))
}

/// Chunks (with their file index) and packs the workers produced.
type WorkerResults = (Vec<(usize, ChunkRef)>, Vec<PackEntry>);

struct CopyCtx {
    root: PathBuf,
    files: Vec<ListedFile>,
    jobs: Vec<Job>,
    next_job: AtomicUsize,
    next_pack: AtomicU32,
    done: Arc<AtomicU64>,
    level: i32,
    /// diff/incr: the reference's chunks; an identical chunk is referenced, not stored.
    reference: Option<RefChunks>,
    results: Mutex<WorkerResults>,
    failed: Mutex<Option<BackupError>>,
}

struct OpenPack {
    id: u32,
    buf: Vec<u8>,
}

fn worker(ctx: &CopyCtx, tx: &mpsc::Sender<(u32, Vec<u8>)>) -> Result<()> {
    let mut comp = zstd::bulk::Compressor::new(ctx.level)
        .map_err(BackupError::io("start zstd", "compressor"))?;
    let mut pack = OpenPack {
        id: ctx.next_pack.fetch_add(1, Ordering::Relaxed),
        buf: Vec::with_capacity(PACK_TARGET + CHUNK as usize),
    };
    let mut chunks = Vec::new();
    let mut packs = Vec::new();
    let mut data = Vec::with_capacity(CHUNK as usize);
    let mut open: Option<(usize, std::fs::File)> = None;
    loop {
        if ctx.failed.lock().map(|f| f.is_some()).unwrap_or(true) {
            return Ok(());
        }
        let i = ctx.next_job.fetch_add(1, Ordering::Relaxed);
        let Some(job) = ctx.jobs.get(i) else { break };
        let path = ctx.root.join(&ctx.files[job.file].path);
        if open.as_ref().map(|(f, _)| *f) != Some(job.file) {
            match std::fs::File::open(&path) {
                Ok(f) => open = Some((job.file, f)),
                // Dropped during the backup: WAL replay recreates or removes it.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(BackupError::io("open", &path)(e)),
            }
        }
        let Some((_, file)) = open.as_ref() else {
            continue;
        };
        data.clear();
        match job.len {
            Some(len) => {
                data.resize(len as usize, 0);
                let mut got = 0;
                while got < data.len() {
                    let n = file
                        .read_at(&mut data[got..], job.offset + got as u64)
                        .map_err(BackupError::io("read", &path))?;
                    if n == 0 {
                        break;
                    }
                    got += n;
                }
                data.truncate(got);
            }
            None => {
                let mut f = file;
                std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(job.offset))
                    .map_err(BackupError::io("seek", &path))?;
                f.read_to_end(&mut data)
                    .map_err(BackupError::io("read", &path))?;
            }
        }
        if data.is_empty() {
            continue;
        }
        let sha = hex(&Sha256::digest(&data));
        let same = ctx.reference.as_ref().and_then(|r| {
            r.get(&(ctx.files[job.file].path.clone(), job.offset))
                .filter(|c| c.len == data.len() as u64 && c.sha256 == sha)
        });
        if let Some(c) = same {
            chunks.push((job.file, c.clone()));
            ctx.done.fetch_add(data.len() as u64, Ordering::Relaxed);
            continue;
        }
        let compressed = comp
            .compress(&data)
            .map_err(BackupError::io("compress", &path))?;
        chunks.push((
            job.file,
            ChunkRef {
                backup: None,
                pack: pack.id,
                pack_offset: pack.buf.len() as u64,
                stored_len: compressed.len() as u64,
                file_offset: job.offset,
                len: data.len() as u64,
                sha256: sha,
            },
        ));
        pack.buf.extend_from_slice(&compressed);
        ctx.done.fetch_add(data.len() as u64, Ordering::Relaxed);
        if pack.buf.len() >= PACK_TARGET {
            let next = OpenPack {
                id: ctx.next_pack.fetch_add(1, Ordering::Relaxed),
                buf: Vec::with_capacity(PACK_TARGET + CHUNK as usize),
            };
            let full = std::mem::replace(&mut pack, next);
            packs.push(send_pack(full, tx)?);
        }
    }
    if !pack.buf.is_empty() {
        packs.push(send_pack(pack, tx)?);
    }
    let mut r = ctx.results.lock().unwrap_or_else(|p| p.into_inner());
    r.0.extend(chunks);
    r.1.extend(packs);
    Ok(())
}

fn send_pack(pack: OpenPack, tx: &mpsc::Sender<(u32, Vec<u8>)>) -> Result<PackEntry> {
    let entry = PackEntry {
        id: pack.id,
        size: pack.buf.len() as u64,
        sha256: hex(&Sha256::digest(&pack.buf)),
    };
    tx.blocking_send((pack.id, pack.buf))
        .map_err(|_| BackupError::Task("the uploader stopped (see the storage error)".into()))?;
    Ok(entry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn backups_of_one_second_get_distinct_ids() {
        let dir = tempfile::tempdir().unwrap();
        let s = crate::storage::LocalFs::new(dir.path());
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
        let mut seen = Vec::new();
        for _ in 0..3 {
            let id = unique_id(&s, t).await.unwrap();
            s.put(&Manifest::key(&id), b"x".to_vec()).await.unwrap();
            seen.push(id);
        }
        assert_eq!(
            seen,
            [
                "20270115T080000Z",
                "20270115T080000Z-2",
                "20270115T080000Z-3"
            ]
        );
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "ids sort by time");
    }
}
