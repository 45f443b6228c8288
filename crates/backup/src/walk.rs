//! Which files of a data dir go into a base backup (the same exclusions as pg_basebackup).

use std::path::Path;

use crate::{BackupError, Result};

/// Directories kept empty: their contents are rebuilt or not needed after restore.
const EMPTY_DIRS: &[&str] = &[
    "pg_wal",
    "pg_replslot",
    "pg_dynshmem",
    "pg_notify",
    "pg_serial",
    "pg_snapshots",
    "pg_stat_tmp",
    "pg_subtrans",
];

/// Top-level files never copied (pg_backup_stop returns backup_label and tablespace_map).
const SKIP_FILES: &[&str] = &[
    "postmaster.pid",
    "postmaster.opts",
    "backup_label",
    "backup_label.old",
    "tablespace_map",
    "recovery.signal",
    "standby.signal",
    "current_logfiles",
];

/// A regular file to copy, with its size when listed.
#[derive(Debug, Clone)]
pub struct ListedFile {
    pub path: String,
    pub size: u64,
}

/// Directories (parents first) and regular files of `data_dir` to back up, paths relative.
pub fn list_data_dir(data_dir: &Path) -> Result<(Vec<String>, Vec<ListedFile>)> {
    let mut dirs = Vec::new();
    let mut files = Vec::new();
    walk(data_dir, "", &mut dirs, &mut files)?;
    Ok((dirs, files))
}

fn skipped_name(name: &str) -> bool {
    name == "pg_internal.init" || name.starts_with("pgsql_tmp") || name.starts_with(".pgha-tmp-")
}

fn walk(root: &Path, rel: &str, dirs: &mut Vec<String>, files: &mut Vec<ListedFile>) -> Result<()> {
    let dir = if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    };
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .map_err(BackupError::io("list", &dir))?
        .collect::<std::io::Result<_>>()
        .map_err(BackupError::io("list", &dir))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        if skipped_name(&name) || (rel.is_empty() && SKIP_FILES.contains(&name.as_str())) {
            continue;
        }
        let path = e.path();
        let rel_path = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            // Dropped while we list: nothing to copy.
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => return Err(BackupError::io("stat", &path)(err)),
        };
        let ft = meta.file_type();
        if rel == "pg_tblspc" {
            return Err(BackupError::Usage(format!(
                "tablespaces are not supported by pgha-backup yet ({} exists)",
                path.display()
            )));
        }
        if ft.is_dir() || (ft.is_symlink() && rel.is_empty() && name == "pg_wal") {
            dirs.push(rel_path.clone());
            if !(rel.is_empty() && EMPTY_DIRS.contains(&name.as_str())) {
                walk(root, &rel_path, dirs, files)?;
            }
        } else if ft.is_file() {
            files.push(ListedFile {
                path: rel_path,
                size: meta.len(),
            });
        }
    }
    Ok(())
}
