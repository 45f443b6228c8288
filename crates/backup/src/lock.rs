//! The repository lock: `backup` and `expire` of one repository exclude each other (and two
//! backups exclude each other), so that `expire` never removes a backup still being written.
//!
//! - Local repository: an exclusive `flock` on `<repo>/lock`. The kernel drops it when the
//!   holder dies, so a crashed holder never blocks anyone; the file's text names the holder for
//!   messages, and a holder that died without clearing it is reported when the lock is taken.
//! - S3: the object `lock.json` created with a conditional put (`If-None-Match: *`), holding
//!   an owner token, the holder and an expiry that a background task renews every TTL/3. A lock
//!   past its expiry belongs to a dead or frozen holder and is broken with a warning. A holder
//!   that finds its lock gone or taken over marks it lost: [`RepoLock::check`] then fails, and
//!   a backup checks it before storing its manifest.

use std::io::{Read, Seek, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::storage::Storage;
use crate::{BackupError, Result};

/// Key of the lock object on object stores.
pub const LOCK_KEY: &str = "lock.json";
/// File name of the lock in a local repository.
pub const LOCK_FILE: &str = "lock";
/// Lifetime of an object lock without renewal.
pub const TTL: Duration = Duration::from_secs(60);

/// Who holds (or held) the lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// Random, to tell our lock from a successor's.
    pub token: String,
    pub host: String,
    pub pid: u32,
    /// What it is doing: `backup`, `expire`.
    pub purpose: String,
    /// Unix seconds.
    pub since: u64,
    /// Unix seconds; 0 for a local lock (the kernel tracks its life).
    pub expires: u64,
}

impl Holder {
    fn new(purpose: &str, ttl: Option<Duration>) -> Holder {
        let now = unix_now();
        Holder {
            token: format!("{:032x}", rand::random::<u128>()),
            host: std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| "localhost".into()),
            pid: std::process::id(),
            purpose: purpose.to_owned(),
            since: now,
            expires: ttl.map_or(0, |t| now + t.as_secs()),
        }
    }

    /// `backup (pid 42 on db1, since 12 s)`.
    pub fn describe(&self) -> String {
        format!(
            "{} (pid {} on {}, for {} s)",
            self.purpose,
            self.pid,
            self.host,
            unix_now().saturating_sub(self.since)
        )
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn pid_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

enum Held {
    Flock(std::fs::File),
    Object {
        storage: Arc<dyn Storage>,
        token: String,
        renew: tokio::task::JoinHandle<()>,
        lost: Arc<AtomicBool>,
    },
}

/// A held repository lock; [`RepoLock::release`] it (a dropped one is released by the kernel
/// locally and expires after [`TTL`] on S3).
pub struct RepoLock {
    held: Option<Held>,
    repo: String,
}

impl std::fmt::Debug for RepoLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RepoLock")
            .field("repo", &self.repo)
            .finish()
    }
}

/// Takes the lock of `storage`'s repository for `purpose`, or fails at once with
/// [`BackupError::Locked`] naming the holder.
pub async fn acquire(storage: &Arc<dyn Storage>, purpose: &str) -> Result<RepoLock> {
    let repo = storage.describe();
    if let Some(root) = storage.local_root() {
        let purpose = purpose.to_owned();
        let file = tokio::task::spawn_blocking(move || flock(&root, &purpose, &repo)).await??;
        return Ok(RepoLock {
            held: Some(Held::Flock(file)),
            repo: storage.describe(),
        });
    }
    let me = Holder::new(purpose, Some(TTL));
    for _ in 0..3 {
        if storage.put_if_absent(LOCK_KEY, encode(&me)?).await? {
            let lost = Arc::new(AtomicBool::new(false));
            let renew = tokio::spawn(renew(storage.clone(), me.clone(), lost.clone()));
            return Ok(RepoLock {
                held: Some(Held::Object {
                    storage: storage.clone(),
                    token: me.token,
                    renew,
                    lost,
                }),
                repo,
            });
        }
        let other = match read_holder(storage.as_ref()).await? {
            Some(h) => h,
            // Released between our put and our read: try again.
            None => continue,
        };
        if other.expires > unix_now() {
            return Err(BackupError::Locked {
                repo,
                holder: other.describe(),
            });
        }
        tracing::warn!(
            repo = %repo,
            "breaking the stale lock of {}: it expired {} s ago without renewal (holder dead or frozen)",
            other.describe(),
            unix_now().saturating_sub(other.expires)
        );
        storage.delete(LOCK_KEY).await?;
    }
    Err(BackupError::Locked {
        repo,
        holder: "another process (the lock changed hands while we tried)".into(),
    })
}

fn flock(root: &std::path::Path, purpose: &str, repo: &str) -> Result<std::fs::File> {
    std::fs::create_dir_all(root).map_err(BackupError::io("create directory", root))?;
    let path = root.join(LOCK_FILE);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(BackupError::io("open lock file", &path))?;
    let mut text = String::new();
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            // Best effort: the holder may be writing its text right now.
            let _ = file.read_to_string(&mut text);
            let holder = serde_json::from_str::<Holder>(&text)
                .map_or_else(|_| "another process".to_owned(), |h| h.describe());
            return Err(BackupError::Locked {
                repo: repo.to_owned(),
                holder,
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(BackupError::io("lock", &path)(e)),
    }
    file.read_to_string(&mut text)
        .map_err(BackupError::io("read", &path))?;
    if let Ok(prev) = serde_json::from_str::<Holder>(&text) {
        tracing::warn!(
            repo,
            "the previous holder of the lock, {}, ended without releasing it{}; taking it",
            prev.describe(),
            if pid_alive(prev.pid) {
                ""
            } else {
                " (no longer running)"
            }
        );
    }
    let me = Holder::new(purpose, None);
    file.set_len(0)
        .map_err(BackupError::io("truncate", &path))?;
    file.rewind().map_err(BackupError::io("seek", &path))?;
    file.write_all(&encode(&me)?)
        .map_err(BackupError::io("write", &path))?;
    Ok(file)
}

fn encode(h: &Holder) -> Result<Vec<u8>> {
    serde_json::to_vec(h).map_err(|e| BackupError::Corrupt {
        key: LOCK_KEY.into(),
        detail: format!("cannot serialize the lock: {e}"),
    })
}

async fn read_holder(storage: &dyn Storage) -> Result<Option<Holder>> {
    match storage.get(LOCK_KEY).await {
        Ok(data) => serde_json::from_slice(&data)
            .map(Some)
            .map_err(|e| BackupError::Corrupt {
                key: LOCK_KEY.into(),
                detail: format!("not a pgha lock: {e}"),
            }),
        Err(BackupError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The current holder, if the repository is locked (for `verify` and messages).
pub async fn holder(storage: &dyn Storage) -> Result<Option<Holder>> {
    if let Some(root) = storage.local_root() {
        let path = root.join(LOCK_FILE);
        let Ok(mut file) = std::fs::File::open(&path) else {
            return Ok(None);
        };
        return Ok(match file.try_lock_shared() {
            // Nobody holds it exclusively.
            Ok(()) => None,
            Err(_) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                serde_json::from_str(&text).ok()
            }
        });
    }
    Ok(read_holder(storage)
        .await?
        .filter(|h| h.expires > unix_now()))
}

async fn renew(storage: Arc<dyn Storage>, mut me: Holder, lost: Arc<AtomicBool>) {
    loop {
        tokio::time::sleep(TTL / 3).await;
        match read_holder(storage.as_ref()).await {
            Ok(Some(h)) if h.token == me.token => {}
            Ok(other) => {
                tracing::error!(
                    "the repository lock was taken over ({}); this run must not finish",
                    other.map_or_else(|| "removed".to_owned(), |h| h.describe())
                );
                lost.store(true, Ordering::SeqCst);
                return;
            }
            Err(e) => {
                // The expiry is 3 renewals away: the next one may succeed.
                tracing::warn!("cannot read the repository lock to renew it: {e}");
                continue;
            }
        }
        me.expires = unix_now() + TTL.as_secs();
        match encode(&me) {
            Ok(data) => {
                if let Err(e) = storage.put(LOCK_KEY, data).await {
                    tracing::warn!("cannot renew the repository lock: {e}");
                }
            }
            Err(e) => tracing::error!("{e}"),
        }
    }
}

impl RepoLock {
    /// Fails when the lock was lost (expired and taken over while we ran).
    pub fn check(&self) -> Result<()> {
        match &self.held {
            Some(Held::Object { lost, .. }) if lost.load(Ordering::SeqCst) => {
                Err(BackupError::Locked {
                    repo: self.repo.clone(),
                    holder: "another process, after ours expired".into(),
                })
            }
            _ => Ok(()),
        }
    }

    /// Releases the lock; a failure is logged (the lock then expires or dies with us).
    pub async fn release(mut self) {
        match self.held.take() {
            Some(Held::Flock(file)) => {
                if let Err(e) = file.set_len(0) {
                    tracing::warn!(repo = %self.repo, "cannot clear the lock file: {e}");
                }
                drop(file);
            }
            Some(Held::Object {
                storage,
                token,
                renew,
                ..
            }) => {
                renew.abort();
                match read_holder(storage.as_ref()).await {
                    Ok(Some(h)) if h.token == token => {
                        if let Err(e) = storage.delete(LOCK_KEY).await {
                            tracing::warn!(repo = %self.repo, "cannot remove the lock (it expires in {} s): {e}", TTL.as_secs());
                        }
                    }
                    Ok(_) => {
                        tracing::warn!(repo = %self.repo, "our lock was already gone or taken over")
                    }
                    Err(e) => {
                        tracing::warn!(repo = %self.repo, "cannot read the lock to release it: {e}")
                    }
                }
            }
            None => {}
        }
    }
}

impl Drop for RepoLock {
    fn drop(&mut self) {
        if let Some(Held::Object { renew, .. }) = &self.held {
            renew.abort();
        }
    }
}
