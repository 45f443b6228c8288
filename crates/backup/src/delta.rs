//! `restore --delta`: restore into a data directory that already holds most of the backup (a
//! failed node, a diverged old primary) by rewriting only what differs. Each chunk of each
//! file is read where it would go and compared by sha256 with the manifest; only differing
//! chunks are fetched. Files and directories the backup does not have are removed.

use std::collections::{HashSet, VecDeque};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use crate::manifest::{hex, Manifest};
use crate::{BackupError, Result};

/// (file index, chunk index) of every chunk already in place under `root`, read with
/// `workers` threads. A file of another type or size is not in place (its chunks differ).
pub fn unchanged(root: &Path, m: &Manifest, workers: usize) -> Result<HashSet<(usize, usize)>> {
    let queue: Mutex<VecDeque<usize>> = Mutex::new((0..m.files.len()).collect());
    let found = Mutex::new(HashSet::new());
    let failed: Mutex<Option<BackupError>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..workers.max(1) {
            s.spawn(|| loop {
                let next = queue.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
                let Some(i) = next else { return };
                match chunks_in_place(root, m, i) {
                    Ok(v) => found
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .extend(v.into_iter().map(|c| (i, c))),
                    Err(e) => {
                        failed
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .get_or_insert(e);
                        return;
                    }
                }
            });
        }
    });
    if let Some(e) = failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    Ok(found.into_inner().unwrap_or_else(|p| p.into_inner()))
}

fn chunks_in_place(root: &Path, m: &Manifest, i: usize) -> Result<Vec<usize>> {
    let f = &m.files[i];
    let path = root.join(&f.path);
    let meta = match std::fs::symlink_metadata(&path) {
        Ok(meta) if meta.is_file() => meta,
        _ => return Ok(Vec::new()),
    };
    let file = std::fs::File::open(&path).map_err(BackupError::io("open", &path))?;
    let mut out = Vec::new();
    let mut buf = Vec::new();
    for (k, c) in f.chunks.iter().enumerate() {
        if c.file_offset + c.len > meta.len() {
            continue;
        }
        buf.resize(c.len as usize, 0);
        file.read_exact_at(&mut buf, c.file_offset)
            .map_err(BackupError::io("read", &path))?;
        if hex(&Sha256::digest(&buf)) == c.sha256 {
            out.push(k);
        }
    }
    Ok(out)
}

/// Removes everything under `root` that is neither a file nor a directory of `m` (symlinks
/// are removed as links, never followed). Returns how many entries it removed.
pub fn remove_extra(root: &Path, m: &Manifest) -> Result<usize> {
    let files: HashSet<&str> = m.files.iter().map(|f| f.path.as_str()).collect();
    let dirs: HashSet<&str> = m.dirs.iter().map(String::as_str).collect();
    let mut removed = 0;
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).map_err(BackupError::io("list", &dir))? {
            let e = e.map_err(BackupError::io("list", &dir))?;
            let p = e.path();
            let rel = p
                .strip_prefix(root)
                .map(|r| r.to_string_lossy().into_owned())
                .unwrap_or_default();
            let ft = e.file_type().map_err(BackupError::io("stat", &p))?;
            if ft.is_dir() && dirs.contains(rel.as_str()) {
                stack.push(p);
            } else if ft.is_file() && files.contains(rel.as_str()) {
            } else {
                let r = if ft.is_dir() {
                    std::fs::remove_dir_all(&p)
                } else {
                    std::fs::remove_file(&p)
                };
                r.map_err(BackupError::io("remove", &p))?;
                tracing::debug!(path = %rel, "removed: not in the backup");
                removed += 1;
            }
        }
    }
    Ok(removed)
}
