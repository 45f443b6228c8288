//! `restore --to DIR`: fetch and verify every pack, write the files, then the recovery settings
//! (restore_command, target, action); optionally start the instance and wait for the target.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pgha_postgres::sql::quote_literal;
use pgha_postgres::{ConnectParams, OsUser};
use sha2::{Digest, Sha256};

use crate::manifest::{hex, ChunkRef, Manifest, PackEntry};
use crate::progress::Progress;
use crate::repo::Repository;
use crate::{BackupError, Result};

/// Where recovery stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecoveryTarget {
    /// Replay every archived WAL file.
    Latest,
    /// Stop as soon as the backup is consistent.
    Immediate,
    Time(String),
    Lsn(String),
    Name(String),
}

/// What the server does once the target is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetAction {
    Promote,
    Pause,
    Shutdown,
}

impl TargetAction {
    pub(crate) fn as_setting(self) -> &'static str {
        match self {
            TargetAction::Promote => "promote",
            TargetAction::Pause => "pause",
            TargetAction::Shutdown => "shutdown",
        }
    }
}

/// A restore request.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// Backup id; default: the newest one that finished before a time target, else the newest.
    pub backup: Option<String>,
    pub to: PathBuf,
    pub target: RecoveryTarget,
    pub action: TargetAction,
    pub force: bool,
    /// Into a non-empty directory: rewrite only the chunks that differ, remove what the
    /// backup does not have.
    pub delta: bool,
    /// Port for the restored instance (also moves its socket to /tmp); default: the port in
    /// the backed-up settings.
    pub port: Option<u16>,
    pub parallel: usize,
    /// Shell command the server runs to fetch WAL (`... wal-fetch %f %p`).
    pub restore_command: String,
    /// Owner of the restored files (the server's OS user when we are root).
    pub run_as: Option<OsUser>,
    pub progress: bool,
    /// The restored copy becomes this cluster's primary (an agent's bootstrap from a backup):
    /// keep its WAL archiving on, so the history file of the timeline its promotion starts
    /// reaches the archive; a copy beside the cluster has archiving off.
    pub keep_archiving: bool,
}

/// What a restore wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RestoreStats {
    /// Bytes of chunks fetched and written.
    pub written: u64,
    /// Bytes of chunks already in place (--delta).
    pub kept: u64,
    /// Entries removed because the backup does not have them (--delta).
    pub removed: usize,
}

/// Restores files and recovery settings into `opts.to`; returns the manifest used.
pub async fn restore(repo: &Repository, opts: &RestoreOptions) -> Result<Manifest> {
    restore_counted(repo, opts).await.map(|(m, _)| m)
}

/// [`restore`], also saying how much it wrote and kept.
pub async fn restore_counted(
    repo: &Repository,
    opts: &RestoreOptions,
) -> Result<(Manifest, RestoreStats)> {
    let manifest = choose_backup(repo, opts).await?;
    prepare_dir(
        &opts.to,
        opts.force && !opts.delta,
        opts.delta,
        opts.run_as.as_ref(),
    )?;
    let result = write_backup(repo, &manifest, opts).await;
    if let Err(e) = &result {
        // Leave nothing half-restored that someone could start. A delta restore keeps what
        // it compared (a rerun compares again) but loses pg_control, so nothing starts it.
        let cleanup = if opts.delta {
            let control = opts.to.join("global/pg_control");
            match std::fs::remove_file(&control) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(BackupError::io("remove", &control)(e))
                }
                _ => Ok(()),
            }
        } else {
            clear_dir(&opts.to)
        };
        if let Err(c) = cleanup {
            tracing::error!(dir = %opts.to.display(), "cannot make the half-restored directory unstartable: {c}");
        }
        tracing::debug!("restore failed: {e}");
    }
    let stats = result?;
    write_recovery(&manifest, opts)?;
    if let Some(u) = &opts.run_as {
        u.chown_recursive(&opts.to)?;
    }
    Ok((manifest, stats))
}

async fn choose_backup(repo: &Repository, opts: &RestoreOptions) -> Result<Manifest> {
    if let Some(id) = &opts.backup {
        return repo.manifest(id).await;
    }
    let ids = repo.backup_ids().await?;
    if ids.is_empty() {
        return Err(BackupError::NoBackup);
    }
    if let RecoveryTarget::Time(t) = &opts.target {
        if let Some(target) = parse_time(t) {
            for id in ids.iter().rev() {
                let m = repo.manifest(id).await?;
                if parse_time(&m.finished_at).is_some_and(|f| f <= target) {
                    return Ok(m);
                }
            }
            return Err(BackupError::Usage(format!(
                "no backup finished before the target time {t}; the oldest is {}",
                ids[0]
            )));
        }
        tracing::warn!("cannot parse target time `{t}` here; using the newest backup");
    }
    let newest = ids.last().ok_or(BackupError::NoBackup)?;
    repo.manifest(newest).await
}

/// Parses `2026-11-30 01:15:00[.123][+00|Z]` (UTC only) for choosing a backup.
fn parse_time(s: &str) -> Option<std::time::SystemTime> {
    let t = s.trim().replace(' ', "T");
    let t = t
        .strip_suffix("+00")
        .or_else(|| t.strip_suffix("+00:00"))
        .map(|x| format!("{x}Z"))
        .unwrap_or(t);
    humantime::parse_rfc3339_weak(t.trim_end_matches('Z')).ok()
}

fn prepare_dir(dir: &Path, force: bool, delta: bool, owner: Option<&OsUser>) -> Result<()> {
    if dir.exists() {
        let non_empty = std::fs::read_dir(dir)
            .map_err(BackupError::io("list", dir))?
            .next()
            .is_some();
        if non_empty {
            if !force && !delta {
                return Err(BackupError::DirNotEmpty(dir.to_owned()));
            }
            if let Some(pid) = running_postmaster(dir) {
                return Err(BackupError::Usage(format!(
                    "a server (pid {pid}) is running in {}; stop it first",
                    dir.display()
                )));
            }
            if !delta {
                clear_dir(dir)?;
            }
        }
    } else {
        std::fs::create_dir_all(dir).map_err(BackupError::io("create directory", dir))?;
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(BackupError::io("chmod", dir))?;
    if let Some(u) = owner {
        u.chown(dir)?;
    }
    Ok(())
}

/// The PID of a live postmaster using `dir`, from its postmaster.pid.
fn running_postmaster(dir: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(dir.join("postmaster.pid")).ok()?;
    let pid: i32 = text.lines().next()?.trim().parse().ok()?;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    matches!(comm.trim(), "postgres" | "postmaster").then_some(pid)
}

fn clear_dir(dir: &Path) -> Result<()> {
    for e in std::fs::read_dir(dir).map_err(BackupError::io("list", dir))? {
        let p = e.map_err(BackupError::io("list", dir))?.path();
        let r = if p.is_dir() && !p.is_symlink() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
        r.map_err(BackupError::io("remove", &p))?;
    }
    Ok(())
}

pub(crate) fn dummy_params(port: u16) -> ConnectParams {
    ConnectParams {
        host: "127.0.0.1".into(),
        port,
        user: "postgres".into(),
        password: None,
        database: "postgres".into(),
        application_name: "pgha-backup".into(),
        connect_timeout: Duration::from_secs(3),
        statement_timeout: None,
        ssl_root_cert: None,
    }
}

/// Pack entries (size, sha256) of every backup whose packs `m`'s chunks are in.
pub(crate) async fn pack_table(
    repo: &Repository,
    m: &Manifest,
) -> Result<HashMap<(String, u32), PackEntry>> {
    let mut packs: HashMap<(String, u32), PackEntry> = m
        .packs
        .iter()
        .map(|p| ((m.id.clone(), p.id), p.clone()))
        .collect();
    for dep in m.depends_on() {
        let dm = match repo.manifest(&dep).await {
            Ok(d) => d,
            Err(BackupError::NoSuchBackup(_)) => {
                return Err(BackupError::Corrupt {
                    key: Manifest::key(&m.id),
                    detail: format!("it references chunks of backup {dep}, which is gone"),
                })
            }
            Err(e) => return Err(e),
        };
        for p in dm.packs {
            packs.insert((dep.clone(), p.id), p);
        }
    }
    Ok(packs)
}

async fn write_backup(
    repo: &Repository,
    m: &Manifest,
    opts: &RestoreOptions,
) -> Result<RestoreStats> {
    let root = &opts.to;
    let t0 = Instant::now();
    let packs = pack_table(repo, m).await?;
    let workers = if opts.parallel == 0 {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    } else {
        opts.parallel
    };
    // --delta: chunks already in place stay; what the backup does not have goes.
    let mut removed = 0;
    let in_place = if opts.delta {
        let (r, mm) = (root.clone(), m.clone());
        let (keep, removed_n) = tokio::task::spawn_blocking(move || -> Result<_> {
            let removed = crate::delta::remove_extra(&r, &mm)?;
            Ok((crate::delta::unchanged(&r, &mm, workers)?, removed))
        })
        .await??;
        let total: usize = m.files.iter().map(|f| f.chunks.len()).sum();
        tracing::info!(
            unchanged = keep.len(),
            chunks = total,
            removed = removed_n,
            elapsed_ms = t0.elapsed().as_millis() as u64,
            "delta restore: compared with what is in place"
        );
        removed = removed_n;
        keep
    } else {
        Default::default()
    };
    for d in &m.dirs {
        let p = root.join(d);
        std::fs::create_dir_all(&p).map_err(BackupError::io("create directory", &p))?;
    }
    let mut by_pack: HashMap<(String, u32), Vec<(PathBuf, ChunkRef)>> = HashMap::new();
    let mut skipped = 0u64;
    for (i, f) in m.files.iter().enumerate() {
        let p = root.join(&f.path);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).map_err(BackupError::io("create directory", parent))?;
        }
        let file = if opts.delta && p.is_file() {
            std::fs::OpenOptions::new()
                .write(true)
                .open(&p)
                .map_err(BackupError::io("open", &p))?
        } else {
            std::fs::File::create(&p).map_err(BackupError::io("create", &p))?
        };
        file.set_len(f.size).map_err(BackupError::io("size", &p))?;
        for (k, c) in f.chunks.iter().enumerate() {
            if in_place.contains(&(i, k)) {
                skipped += c.len;
                continue;
            }
            by_pack
                .entry((m.owner(c).to_owned(), c.pack))
                .or_default()
                .push((p.clone(), c.clone()));
        }
    }
    let progress = Progress::start(opts.progress, "restore", m.size);
    let done = progress.counter();
    done.fetch_add(skipped, std::sync::atomic::Ordering::Relaxed);
    let mut set = tokio::task::JoinSet::new();
    let mut result = Ok(());
    let mut order: Vec<(String, u32)> = by_pack.keys().cloned().collect();
    order.sort();
    for pk in order {
        while set.len() >= workers {
            if let Some(r) = set.join_next().await {
                result = result.and(r.map_err(BackupError::from).and_then(|x| x));
            }
        }
        if result.is_err() {
            break;
        }
        let key = Manifest::pack_key(&pk.0, pk.1);
        let Some(want) = packs.get(&pk).cloned() else {
            result = Err(BackupError::Corrupt {
                key: Manifest::key(&m.id),
                detail: format!("chunks refer to {key}, which no manifest lists"),
            });
            break;
        };
        let storage = repo.storage();
        let chunks = by_pack.remove(&pk).unwrap_or_default();
        let done = done.clone();
        set.spawn(async move {
            let data = storage.get(&key).await?;
            tokio::task::spawn_blocking(move || -> Result<()> {
                check_pack(&key, &data, &want)?;
                let mut dec =
                    zstd::bulk::Decompressor::new().map_err(BackupError::io("start zstd", &key))?;
                for (path, c) in chunks {
                    let raw = decode_chunk(&mut dec, &key, &data, &c)?;
                    let f = std::fs::OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .map_err(BackupError::io("open", &path))?;
                    f.write_all_at(&raw, c.file_offset)
                        .map_err(BackupError::io("write", &path))?;
                    done.fetch_add(c.len, std::sync::atomic::Ordering::Relaxed);
                }
                Ok(())
            })
            .await?
        });
    }
    while let Some(r) = set.join_next().await {
        result = result.and(r.map_err(BackupError::from).and_then(|x| x));
    }
    progress.finish();
    result?;
    tracing::info!(
        written = m.size.saturating_sub(skipped),
        elapsed_ms = t0.elapsed().as_millis() as u64,
        "restore: files written"
    );
    Ok(RestoreStats {
        written: m.size.saturating_sub(skipped),
        kept: skipped,
        removed,
    })
}

/// Checks a pack's size and sha256 against the manifest.
pub(crate) fn check_pack(key: &str, data: &[u8], want: &PackEntry) -> Result<()> {
    if data.len() as u64 != want.size {
        return Err(BackupError::Corrupt {
            key: key.to_owned(),
            detail: format!(
                "size {} differs from the manifest's {}",
                data.len(),
                want.size
            ),
        });
    }
    let got = hex(&Sha256::digest(data));
    if got != want.sha256 {
        return Err(BackupError::Corrupt {
            key: key.to_owned(),
            detail: format!("sha256 mismatch (manifest {}, computed {got})", want.sha256),
        });
    }
    Ok(())
}

/// Decompresses one chunk out of its pack and checks its length and sha256.
pub(crate) fn decode_chunk(
    dec: &mut zstd::bulk::Decompressor<'_>,
    key: &str,
    pack: &[u8],
    c: &ChunkRef,
) -> Result<Vec<u8>> {
    let corrupt = |detail: String| BackupError::Corrupt {
        key: key.to_owned(),
        detail,
    };
    let start = c.pack_offset as usize;
    let end = start + c.stored_len as usize;
    let src = pack
        .get(start..end)
        .ok_or_else(|| corrupt(format!("chunk at {start}..{end} is past the end")))?;
    let raw = dec
        .decompress(src, c.len as usize)
        .map_err(|e| corrupt(format!("zstd frame at offset {start}: {e}")))?;
    if raw.len() as u64 != c.len || hex(&Sha256::digest(&raw)) != c.sha256 {
        return Err(corrupt(format!(
            "chunk at offset {start} does not match its sha256"
        )));
    }
    Ok(raw)
}

fn write_recovery(m: &Manifest, opts: &RestoreOptions) -> Result<()> {
    let dir = &opts.to;
    let w = |name: &str, text: &str| -> Result<()> {
        pgha_postgres::files::write_atomic(&dir.join(name), text.as_bytes(), 0o600, None)
            .map_err(BackupError::from)
    };
    w("backup_label", &m.backup_label)?;
    if !m.tablespace_map.is_empty() {
        w("tablespace_map", &m.tablespace_map)?;
    }
    w("recovery.signal", "")?;
    let auto = dir.join("postgresql.auto.conf");
    let mut text = std::fs::read_to_string(&auto).unwrap_or_default();
    let _ = writeln!(text, "{}{}", crate::recover::ADDED_MARK, m.id);
    let _ = writeln!(
        text,
        "restore_command = {}",
        quote_literal(&opts.restore_command)
    );
    let _ = writeln!(text, "recovery_target_timeline = 'latest'");
    match &opts.target {
        RecoveryTarget::Latest => {}
        RecoveryTarget::Immediate => {
            let _ = writeln!(text, "recovery_target = 'immediate'");
        }
        RecoveryTarget::Time(t) => {
            let _ = writeln!(text, "recovery_target_time = {}", quote_literal(t));
        }
        RecoveryTarget::Lsn(l) => {
            let _ = writeln!(text, "recovery_target_lsn = {}", quote_literal(l));
        }
        RecoveryTarget::Name(n) => {
            let _ = writeln!(text, "recovery_target_name = {}", quote_literal(n));
        }
    }
    if opts.target != RecoveryTarget::Latest {
        let _ = writeln!(
            text,
            "recovery_target_action = '{}'",
            opts.action.as_setting()
        );
    }
    // A restored copy is not a replica of the old primary and must not write into the archive
    // the original still uses; turn archiving back on deliberately after checking.
    let _ = writeln!(text, "primary_conninfo = ''");
    let _ = writeln!(text, "primary_slot_name = ''");
    if !opts.keep_archiving {
        let _ = writeln!(text, "archive_mode = 'off'");
    }
    // A restored copy has no standbys: a sync-mode cluster's setting would make its first
    // commit wait forever.
    let _ = writeln!(text, "synchronous_standby_names = ''");
    if let Some(p) = opts.port {
        // A copy beside the cluster: on loopback only. The backed-up node's address may not
        // exist here (found by `cargo xtask faults --scenario archive-continuity`, restoring
        // on another host), and the copy must not be reachable as if it were that node.
        let _ = writeln!(text, "listen_addresses = 'localhost'");
        let _ = writeln!(text, "port = {p}");
        let _ = writeln!(text, "unix_socket_directories = '/tmp'");
        // The backed-up node's certificate paths ([tls]) need not exist on this host, and a
        // copy on loopback needs no TLS: off, with loopback password logins ahead of any
        // `hostssl` or `hostnossl ... reject` line.
        let _ = writeln!(text, "ssl = 'off'");
        let hba = dir.join("pg_hba.conf");
        let old = std::fs::read_to_string(&hba).unwrap_or_default();
        let lines = "# Added by pgha-backup restore: a copy on loopback, without TLS.\n\
            host all all 127.0.0.1/32 scram-sha-256\n\
            host all all ::1/128 scram-sha-256\n";
        w("pg_hba.conf", &format!("{lines}{old}"))?;
    }
    w("postgresql.auto.conf", &text)
}
