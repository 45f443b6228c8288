//! Writing files so nothing is half-written: temp file in the same dir, fsync, rename, fsync dir.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::{OsUser, PgError, Result};

/// Atomically replaces `path` with `contents`, with `mode`, owned by `owner` when given.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32, owner: Option<&OsUser>) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".pgha-tmp-")
        .tempfile_in(dir)
        .map_err(PgError::io("create temp file in", dir))?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(PgError::io("chmod", tmp.path().to_owned()))?;
    if let Some(u) = owner {
        u.chown(tmp.path())?;
    }
    tmp.write_all(contents)
        .map_err(PgError::io("write", path))?;
    tmp.as_file()
        .sync_all()
        .map_err(PgError::io("fsync", path))?;
    tmp.persist(path).map_err(|e| PgError::Io {
        action: "rename into place",
        path: path.to_owned(),
        source: e.error,
    })?;
    if let Ok(d) = std::fs::File::open(dir) {
        // Best effort: some filesystems refuse fsync on a directory; the rename is still atomic.
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_whole_file_with_mode() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.conf");
        write_atomic(&p, b"one", 0o600, None).unwrap();
        write_atomic(&p, b"two", 0o640, None).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "two");
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o640
        );
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "temp file left behind"
        );
    }
}
