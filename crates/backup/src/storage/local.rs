//! Local filesystem backend: one file per object under the repository directory.
//!
//! Objects are written to a temp file in the same directory, fsynced and renamed, so a reader
//! never sees a partial object. When we run as root, new files and directories are given to the
//! owner of the repository directory: `wal-push` runs as the server's OS user and must be able
//! to write where `backup` (often root) created directories.

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use async_trait::async_trait;

use super::{ObjectInfo, Storage};
use crate::{BackupError, Result};

/// A repository in a local directory.
#[derive(Debug, Clone)]
pub struct LocalFs {
    root: PathBuf,
}

impl LocalFs {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalFs { root: root.into() }
    }

    fn path(&self, key: &str) -> Result<PathBuf> {
        if key.is_empty()
            || key
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(BackupError::Usage(format!("invalid object key `{key}`")));
        }
        Ok(self.root.join(key))
    }

    /// uid/gid to give new entries to, when we are root and the root dir belongs to someone else.
    fn owner(&self) -> Option<(u32, u32)> {
        if !nix::unistd::geteuid().is_root() {
            return None;
        }
        let m = std::fs::metadata(&self.root).ok()?;
        (m.uid() != 0).then_some((m.uid(), m.gid()))
    }

    fn create_dirs(&self, dir: &Path) -> Result<()> {
        if dir.is_dir() {
            return Ok(());
        }
        if let Some(parent) = dir.parent() {
            if parent != self.root && parent.starts_with(&self.root) {
                self.create_dirs(parent)?;
            } else if !parent.exists() {
                std::fs::create_dir_all(parent)
                    .map_err(BackupError::io("create directory", parent))?;
            }
        }
        match std::fs::create_dir(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
            Err(e) => return Err(BackupError::io("create directory", dir)(e)),
        }
        if let Some((uid, gid)) = self.owner() {
            std::os::unix::fs::chown(dir, Some(uid), Some(gid))
                .map_err(BackupError::io("chown", dir))?;
        }
        Ok(())
    }

    /// Writes `data` to a temp file beside `key`'s path (fsynced, owned and moded like an
    /// object) and puts it in place: renamed over any object, or with `if_absent` hard-linked,
    /// which fails when the name exists. Returns false when it did.
    fn put_blocking(&self, key: &str, data: &[u8], if_absent: bool) -> Result<bool> {
        let path = self.path(key)?;
        let dir = path.parent().unwrap_or(&self.root).to_path_buf();
        self.create_dirs(&dir)?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".tmp-")
            .tempfile_in(&dir)
            .map_err(BackupError::io("create temp file in", &dir))?;
        tmp.write_all(data)
            .map_err(BackupError::io("write", &path))?;
        tmp.as_file()
            .sync_all()
            .map_err(BackupError::io("fsync", &path))?;
        if let Some((uid, gid)) = self.owner() {
            std::os::unix::fs::chown(tmp.path(), Some(uid), Some(gid))
                .map_err(BackupError::io("chown", &path))?;
        }
        {
            use std::os::unix::fs::PermissionsExt;
            tmp.as_file()
                .set_permissions(std::fs::Permissions::from_mode(0o640))
                .map_err(BackupError::io("chmod", &path))?;
        }
        if if_absent {
            match std::fs::hard_link(tmp.path(), &path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
                Err(e) => return Err(BackupError::io("link into place", &path)(e)),
            }
            // `tmp` is removed when dropped; the object stays under its name.
        } else {
            tmp.persist(&path).map_err(|e| BackupError::Io {
                action: "rename into place",
                path: path.clone(),
                source: e.error,
            })?;
        }
        if let Ok(d) = std::fs::File::open(&dir) {
            // The rename or link is atomic either way; fsync makes it durable.
            if let Err(e) = d.sync_all() {
                tracing::warn!(dir = %dir.display(), "fsync of the directory failed: {e}");
            }
        }
        Ok(true)
    }

    fn list_blocking(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        // Walk only the directory the prefix names (up to its last '/').
        let dir_part = prefix.rfind('/').map_or("", |i| &prefix[..i]);
        let start = if dir_part.is_empty() {
            self.root.clone()
        } else {
            self.root.join(dir_part)
        };
        let mut out = Vec::new();
        let mut stack = vec![start];
        while let Some(dir) = stack.pop() {
            let rd = match std::fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(BackupError::io("list", &dir)(e)),
            };
            for entry in rd {
                let entry = entry.map_err(BackupError::io("list", &dir))?;
                let name = entry.file_name();
                if name.to_string_lossy().starts_with(".tmp-") {
                    continue;
                }
                let p = entry.path();
                let ft = entry.file_type().map_err(BackupError::io("stat", &p))?;
                if ft.is_dir() {
                    stack.push(p);
                } else if ft.is_file() {
                    let Ok(rel) = p.strip_prefix(&self.root) else {
                        continue;
                    };
                    let key = rel.to_string_lossy().into_owned();
                    if key.starts_with(prefix) {
                        let size = entry.metadata().map_err(BackupError::io("stat", &p))?.len();
                        out.push(ObjectInfo { key, size });
                    }
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn delete_blocking(&self, key: &str) -> Result<()> {
        let path = self.path(key)?;
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(BackupError::io("remove", &path)(e)),
        }
        // Remove directories left empty, up to the root.
        let mut dir = path.parent();
        while let Some(d) = dir {
            if d == self.root || !d.starts_with(&self.root) || std::fs::remove_dir(d).is_err() {
                break;
            }
            dir = d.parent();
        }
        Ok(())
    }
}

#[async_trait]
impl Storage for LocalFs {
    async fn put(&self, key: &str, data: Vec<u8>) -> Result<()> {
        let me = self.clone();
        let key = key.to_owned();
        tokio::task::spawn_blocking(move || me.put_blocking(&key, &data, false))
            .await?
            .map(|_| ())
    }

    async fn put_if_absent(&self, key: &str, data: Vec<u8>) -> Result<bool> {
        let me = self.clone();
        let key = key.to_owned();
        tokio::task::spawn_blocking(move || me.put_blocking(&key, &data, true)).await?
    }

    async fn get(&self, key: &str) -> Result<Vec<u8>> {
        let path = self.path(key)?;
        match tokio::fs::read(&path).await {
            Ok(d) => Ok(d),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(BackupError::NotFound {
                key: key.to_owned(),
                repo: self.describe(),
            }),
            Err(e) => Err(BackupError::io("read", path)(e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let me = self.clone();
        let prefix = prefix.to_owned();
        tokio::task::spawn_blocking(move || me.list_blocking(&prefix)).await?
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let me = self.clone();
        let key = key.to_owned();
        tokio::task::spawn_blocking(move || me.delete_blocking(&key)).await?
    }

    async fn exists(&self, key: &str) -> Result<bool> {
        Ok(self.path(key)?.is_file())
    }

    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    fn local_root(&self) -> Option<PathBuf> {
        Some(self.root.clone())
    }
}
