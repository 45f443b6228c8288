//! `wal-push` (archive_command) and `wal-fetch` (restore_command).
//!
//! Stored form of a WAL file: `PGHAWAL1` + sha256 of the raw file (32 bytes) + one zstd frame.
//! Pushing a file whose name is archived already succeeds when the content is identical (the
//! server retries after a crash) and fails loudly when it differs (two clusters sharing one
//! archive, or corruption).

use std::path::Path;

use sha2::{Digest, Sha256};

use crate::manifest::hex;
use crate::storage::Storage;
use crate::{BackupError, Result};

const MAGIC: &[u8; 8] = b"PGHAWAL1";
/// zstd level for WAL: fast enough to keep up with a busy primary.
const WAL_LEVEL: i32 = 1;
/// Key prefix of the WAL archive.
pub const WAL: &str = "wal/";

/// Repository key of WAL file `name` (segment, history, backup history or partial file).
pub fn wal_key(name: &str) -> Result<String> {
    if name.is_empty()
        || name.contains('/')
        || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '.')
    {
        return Err(BackupError::Usage(format!(
            "`{name}` is not a WAL file name (expected e.g. 000000010000000000000003 or 00000002.history)"
        )));
    }
    if name.len() >= 24 && name[..24].chars().all(|c| c.is_ascii_hexdigit()) {
        Ok(format!("{WAL}{}/{name}", &name[..16]))
    } else {
        Ok(format!("{WAL}{name}"))
    }
}

/// What `push` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    Stored,
    AlreadyArchived,
}

/// Archives the WAL file at `path` (as the server passes `%p`).
pub async fn push(storage: &dyn Storage, path: &Path) -> Result<PushOutcome> {
    push_counted(storage, path).await.map(|(o, _)| o)
}

/// [`push`], also returning the sha256 (hex) of the file's content.
pub async fn push_counted(storage: &dyn Storage, path: &Path) -> Result<(PushOutcome, String)> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| BackupError::Usage(format!("`{}` names no file", path.display())))?;
    let key = wal_key(&name)?;
    let raw = tokio::fs::read(path)
        .await
        .map_err(BackupError::io("read", path))?;
    let (sum, encoded) = tokio::task::spawn_blocking(move || -> Result<([u8; 32], Vec<u8>)> {
        let sum: [u8; 32] = Sha256::digest(&raw).into();
        let z =
            zstd::bulk::compress(&raw, WAL_LEVEL).map_err(BackupError::io("compress", "WAL"))?;
        let mut out = Vec::with_capacity(40 + z.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&sum);
        out.extend_from_slice(&z);
        Ok((sum, out))
    })
    .await??;
    // A conditional put: of two pushes of different content under one name (two clusters
    // sharing an archive, a diverged old primary) at most one is stored; the other compares.
    for _ in 0..5 {
        if storage.put_if_absent(&key, encoded.clone()).await? {
            return Ok((PushOutcome::Stored, hex(&sum)));
        }
        match storage.get(&key).await {
            Ok(existing) => {
                let archived = header_sum(&key, &existing)?;
                if archived == sum {
                    tracing::info!(%name, "already archived with identical content");
                    return Ok((PushOutcome::AlreadyArchived, hex(&sum)));
                }
                return Err(BackupError::WalConflict {
                    name,
                    archived: hex(&archived),
                    local: hex(&sum),
                });
            }
            // A concurrent conditional put still in flight (S3 409): try again.
            Err(BackupError::NotFound { .. }) => {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e),
        }
    }
    Err(BackupError::Storage {
        op: "conditional put",
        key,
        repo: storage.describe(),
        message: "the object is neither storable nor readable (a concurrent writer?)".into(),
        transient: false,
    })
}

fn header_sum(key: &str, data: &[u8]) -> Result<[u8; 32]> {
    if data.len() < 40 || &data[..8] != MAGIC {
        return Err(BackupError::Corrupt {
            key: key.to_owned(),
            detail: "not a pgha WAL object (bad header)".into(),
        });
    }
    let mut s = [0u8; 32];
    s.copy_from_slice(&data[8..40]);
    Ok(s)
}

/// Decodes and checks a stored WAL object.
pub fn decode(key: &str, data: &[u8]) -> Result<Vec<u8>> {
    let want = header_sum(key, data)?;
    let raw = zstd::stream::decode_all(&data[40..]).map_err(|e| BackupError::Corrupt {
        key: key.to_owned(),
        detail: format!("zstd: {e}"),
    })?;
    let got: [u8; 32] = Sha256::digest(&raw).into();
    if got != want {
        return Err(BackupError::Corrupt {
            key: key.to_owned(),
            detail: format!(
                "sha256 mismatch (recorded {}, computed {})",
                hex(&want),
                hex(&got)
            ),
        });
    }
    Ok(raw)
}

/// Restores WAL file `name` to `dest` (`%f` and `%p`). [`BackupError::NotFound`] when the
/// archive does not have it (the server then tries elsewhere or ends recovery).
pub async fn fetch(storage: &dyn Storage, name: &str, dest: &Path) -> Result<()> {
    let key = wal_key(name)?;
    let data = storage.get(&key).await?;
    let raw = tokio::task::spawn_blocking(move || decode(&key, &data)).await??;
    let tmp = dest.with_extension("pgha-tmp");
    tokio::fs::write(&tmp, &raw)
        .await
        .map_err(BackupError::io("write", &tmp))?;
    tokio::fs::rename(&tmp, dest)
        .await
        .map_err(BackupError::io("rename into place", dest))?;
    Ok(())
}

/// For segment `name` that the archive does not have: a later segment of the same timeline
/// that it does have, which makes the missing one a gap rather than the archive's end.
/// `None` for non-segment names (history probes are expected to miss) and at the real end.
pub async fn later_segment(storage: &dyn Storage, name: &str) -> Result<Option<String>> {
    if name.len() != 24 || !name.chars().all(|c| c.is_ascii_hexdigit()) {
        return Ok(None);
    }
    let name = name.to_ascii_uppercase();
    let objects = storage.list(&format!("{WAL}{}", &name[..8])).await?;
    Ok(objects
        .into_iter()
        .filter_map(|o| o.key.rsplit('/').next().map(str::to_owned))
        .filter(|n| n.len() == 24 && n[..8] == name[..8] && *n > name)
        .min())
}
