//! `wal-push` that keeps up with a busy primary: when PostgreSQL asks to archive one segment,
//! the next ready ones (`pg_wal/archive_status/*.ready`) are pushed with it, in parallel. For
//! each of those a marker `pg_wal/pgha-pushed/<name>` holding the sha256 of what was stored is
//! written once the object is stored; when PostgreSQL then asks for that segment, a file whose
//! sha256 matches its marker is answered at once, without the network.
//!
//! PostgreSQL's archiver runs one archive_command at a time per server, in segment order, and
//! a `.ready` segment is complete and never rewritten, so pushing it early is safe. A marker
//! whose sha256 does not match (a file recreated under the name) is ignored: the segment is
//! pushed normally, and the conditional put decides.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::manifest::hex;
use crate::storage::Storage;
use crate::wal::{push_counted, PushOutcome};
use crate::{BackupError, Result};

/// Directory of the markers, beside the segments.
pub const PUSHED_DIR: &str = "pgha-pushed";

fn is_wal_name(n: &str) -> bool {
    !n.is_empty()
        && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '.')
        && !n.ends_with(".partial")
}

async fn file_sha(path: &Path) -> Result<String> {
    let p = path.to_owned();
    tokio::task::spawn_blocking(move || -> Result<String> {
        let data = std::fs::read(&p).map_err(BackupError::io("read", &p))?;
        Ok(hex(&Sha256::digest(&data)))
    })
    .await?
}

/// Archives the segment at `path` and up to `parallel - 1` further ready segments at once.
pub async fn push_batch(
    storage: Arc<dyn Storage>,
    path: &Path,
    parallel: usize,
) -> Result<PushOutcome> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| BackupError::Usage(format!("`{}` names no file", path.display())))?;
    let wal_dir = path
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_owned);
    let markers = wal_dir.join(PUSHED_DIR);
    let marker = markers.join(&name);
    if let Ok(recorded) = std::fs::read_to_string(&marker) {
        let matches = file_sha(path).await? == recorded.trim();
        remove_marker(&marker);
        if matches {
            tracing::info!(%name, "pushed ahead by an earlier call");
            return Ok(PushOutcome::AlreadyArchived);
        }
        tracing::warn!(%name, "its push-ahead marker does not match the file: pushing it again");
    }
    clean_older(&markers, &name);
    if parallel <= 1 {
        return push_counted(storage.as_ref(), path).await.map(|(o, _)| o);
    }
    let ahead = ready_after(&wal_dir, &name, parallel - 1);
    let mut set = tokio::task::JoinSet::new();
    for next in ahead {
        let s = storage.clone();
        let p = wal_dir.join(&next);
        let m = markers.clone();
        set.spawn(async move {
            match push_counted(s.as_ref(), &p).await {
                Ok((_, sum)) => {
                    if let Err(e) = write_marker(&m, &next, &sum) {
                        tracing::warn!(segment = %next, "pushed ahead, but cannot record it (it is pushed again when asked): {e}");
                    }
                }
                // PostgreSQL asks for it later; that push reports the error.
                Err(e) => tracing::warn!(segment = %next, "push ahead failed: {e}"),
            }
        });
    }
    let main = push_counted(storage.as_ref(), path).await;
    while let Some(r) = set.join_next().await {
        if let Err(e) = r {
            tracing::warn!("a push-ahead task failed: {e}");
        }
    }
    main.map(|(o, _)| o)
}

/// Up to `n` names after `name` whose `.ready` file exists and that have no marker yet.
fn ready_after(wal_dir: &Path, name: &str, n: usize) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(wal_dir.join("archive_status")) else {
        return Vec::new();
    };
    let mut v: Vec<String> = rd
        .flatten()
        .filter_map(|e| {
            let f = e.file_name().to_string_lossy().into_owned();
            f.strip_suffix(".ready").map(str::to_owned)
        })
        .filter(|f| f.as_str() > name && is_wal_name(f))
        .filter(|f| !wal_dir.join(PUSHED_DIR).join(f).exists())
        .collect();
    v.sort();
    v.truncate(n);
    v
}

fn write_marker(dir: &Path, name: &str, sum: &str) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(BackupError::io("create directory", dir))?;
    pgha_postgres::files::write_atomic(&dir.join(name), sum.as_bytes(), 0o600, None)?;
    Ok(())
}

fn remove_marker(p: &Path) {
    if let Err(e) = std::fs::remove_file(p) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(marker = %p.display(), "cannot remove: {e}");
        }
    }
}

/// Removes markers of names before `name`: PostgreSQL archived those without asking us again
/// (a restart, a segment it found done), so they can only mislead.
fn clean_older(dir: &Path, name: &str) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        if e.file_name().to_string_lossy().as_ref() < name {
            remove_marker(&e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::LocalFs;

    fn seg(n: u32) -> String {
        format!("0000000100000000{n:08X}")
    }

    #[tokio::test]
    async fn ready_segments_are_pushed_ahead_and_answered_from_their_markers() {
        let data = tempfile::tempdir().unwrap();
        let wal = data.path().join("pg_wal");
        std::fs::create_dir_all(wal.join("archive_status")).unwrap();
        for n in 1..=5 {
            std::fs::write(wal.join(seg(n)), vec![n as u8; 4096]).unwrap();
            std::fs::write(
                wal.join("archive_status").join(format!("{}.ready", seg(n))),
                "",
            )
            .unwrap();
        }
        let repo = tempfile::tempdir().unwrap();
        let s: Arc<dyn Storage> = Arc::new(LocalFs::new(repo.path()));
        let o = push_batch(s.clone(), &wal.join(seg(1)), 3).await.unwrap();
        assert_eq!(o, PushOutcome::Stored);
        // 2 and 3 went along, 4 and 5 did not.
        for n in 1..=5 {
            let key = crate::wal::wal_key(&seg(n)).unwrap();
            assert_eq!(s.exists(&key).await.unwrap(), n <= 3, "segment {n}");
        }
        assert!(wal.join(PUSHED_DIR).join(seg(2)).exists());
        // Asked for 2: answered from the marker (an empty repository would fail otherwise).
        let empty: Arc<dyn Storage> = Arc::new(LocalFs::new(repo.path().join("none")));
        assert_eq!(
            push_batch(empty.clone(), &wal.join(seg(2)), 1)
                .await
                .unwrap(),
            PushOutcome::AlreadyArchived
        );
        assert!(!wal.join(PUSHED_DIR).join(seg(2)).exists(), "marker kept");
        // A file that changed under its marker is pushed again (here: into the empty one).
        std::fs::write(wal.join(seg(3)), b"other content").unwrap();
        assert_eq!(
            push_batch(empty.clone(), &wal.join(seg(3)), 1)
                .await
                .unwrap(),
            PushOutcome::Stored
        );
        // Markers before the asked-for name are stale and go.
        write_marker(&wal.join(PUSHED_DIR), &seg(1), "x").unwrap();
        push_batch(s, &wal.join(seg(4)), 1).await.unwrap();
        assert!(!wal.join(PUSHED_DIR).join(seg(1)).exists());
    }
}
