//! The repository's storage seam: a flat key space of immutable objects, on a local filesystem
//! or S3, optionally wrapped in client-side encryption.
//!
//! Layout (same on every backend, keys relative to the repository root or S3 prefix):
//! - `backups/<ID>/manifest.json`: written last; a backup without it is incomplete.
//! - `backups/<ID>/pack-<N>`: zstd frames of file chunks (offsets in the manifest).
//! - `wal/<TLI+LOG 16 hex>/<segment>`: archived WAL segments; `wal/<name>` for history files.
//! - `logical/<ID>/...`: pg_dump custom-format dumps and their manifest.

mod encrypted;
mod local;
mod retry;
mod s3;

use std::sync::Arc;

use async_trait::async_trait;
use pgha_config::{BackupSection, Secret};

pub use encrypted::Encrypted;
pub use local::LocalFs;
pub use s3::S3Storage;

use crate::{BackupError, Result};

/// One stored object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
}

/// A place to keep objects. `put` replaces atomically: readers see the old or the new object,
/// never a part.
#[async_trait]
pub trait Storage: Send + Sync + std::fmt::Debug {
    /// Stores `data` under `key`, replacing any object there.
    async fn put(&self, key: &str, data: Vec<u8>) -> Result<()>;
    /// Stores `data` under `key` only if no object is there, atomically: of two concurrent
    /// calls at most one returns `Ok(true)`. `Ok(false)`: an object exists (or is being
    /// written by a concurrent conditional put).
    async fn put_if_absent(&self, key: &str, data: Vec<u8>) -> Result<bool>;
    /// The whole object, or [`BackupError::NotFound`].
    async fn get(&self, key: &str) -> Result<Vec<u8>>;
    /// Every object whose key starts with `prefix`, sorted by key.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>>;
    /// Removes `key`; absent keys are not an error.
    async fn delete(&self, key: &str) -> Result<()>;
    /// Where this is, for messages (`/var/lib/pgha/backup`, `s3://bucket/prefix`).
    fn describe(&self) -> String;

    /// The directory of a local repository (its lock is a `flock` there); `None` on S3.
    fn local_root(&self) -> Option<std::path::PathBuf> {
        None
    }

    /// True when `key` exists.
    async fn exists(&self, key: &str) -> Result<bool> {
        match self.get(key).await {
            Ok(_) => Ok(true),
            Err(BackupError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// The storage `[backup]` describes, encrypted when `encryption_key` is set.
pub fn open(section: &BackupSection) -> Result<Arc<dyn Storage>> {
    let base: Arc<dyn Storage> = match (&section.repository.s3, &section.repository.path) {
        (Some(s3), _) => Arc::new(S3Storage::new(s3)?),
        (None, Some(path)) => Arc::new(LocalFs::new(path)),
        (None, None) => {
            return Err(BackupError::Usage(
                "backup.repository: set path or s3".into(),
            ))
        }
    };
    Ok(match &section.encryption_key {
        Some(src) => Arc::new(Encrypted::new(base, &src.read()?)),
        None => base,
    })
}

/// Wraps `inner` with encryption under `key` (tests and tools that build storage by hand).
pub fn encrypted(inner: Arc<dyn Storage>, key: &Secret) -> Arc<dyn Storage> {
    Arc::new(Encrypted::new(inner, key))
}
