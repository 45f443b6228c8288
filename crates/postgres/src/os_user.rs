//! The unprivileged OS user PostgreSQL runs as, and the file ownership that goes with it.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::{PgError, Result};

/// An OS account (from the passwd database).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OsUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
    /// Supplementary groups, for permission checks.
    pub groups: Vec<u32>,
}

impl OsUser {
    /// Looks `name` up.
    pub fn lookup(name: &str) -> Result<OsUser> {
        let user = nix::unistd::User::from_name(name)
            .ok()
            .flatten()
            .ok_or_else(|| PgError::NoSuchUser { name: name.into() })?;
        let cname =
            std::ffi::CString::new(name).map_err(|_| PgError::NoSuchUser { name: name.into() })?;
        let groups = nix::unistd::getgrouplist(&cname, user.gid)
            .map(|g| g.into_iter().map(|g| g.as_raw()).collect())
            .unwrap_or_default();
        Ok(OsUser {
            name: user.name,
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            home: user.dir,
            groups,
        })
    }

    /// The user server processes must run as: `name` when we are root (PostgreSQL refuses root),
    /// `None` (run as ourselves) otherwise.
    pub fn for_server(name: &str) -> Result<Option<OsUser>> {
        if nix::unistd::geteuid().is_root() {
            Self::lookup(name).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Gives `path` and everything under it to this user.
    pub fn chown_recursive(&self, path: &Path) -> Result<()> {
        std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid))
            .map_err(PgError::io("chown", path))?;
        let meta = std::fs::symlink_metadata(path).map_err(PgError::io("stat", path))?;
        if meta.is_dir() {
            for entry in std::fs::read_dir(path).map_err(PgError::io("read dir", path))? {
                let entry = entry.map_err(PgError::io("read dir", path))?;
                self.chown_recursive(&entry.path())?;
            }
        }
        Ok(())
    }

    /// Gives `path` alone to this user.
    pub fn chown(&self, path: &Path) -> Result<()> {
        std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid))
            .map_err(PgError::io("chown", path))
    }

    /// Checks this user can reach `path`: every existing ancestor directory must grant it search
    /// permission. Catches the usual trap of a data dir under `/root`.
    pub fn check_traversable(&self, path: &Path) -> Result<()> {
        let mut dir = PathBuf::new();
        let components: Vec<_> = path.components().collect();
        // Every ancestor, not the final component (it may not exist yet).
        for comp in components.iter().take(components.len().saturating_sub(1)) {
            dir.push(comp);
            let Ok(meta) = std::fs::metadata(&dir) else {
                break;
            };
            let mode = meta.permissions().mode();
            let ok = if meta.uid() == self.uid {
                mode & 0o100 != 0
            } else if meta.gid() == self.gid || self.groups.contains(&meta.gid()) {
                mode & 0o010 != 0
            } else {
                mode & 0o001 != 0
            };
            if !ok && self.uid != 0 {
                return Err(PgError::NotTraversable {
                    path: path.to_owned(),
                    user: self.name.clone(),
                    blocking: dir,
                });
            }
        }
        Ok(())
    }
}

/// Creates `dir` (and parents) if missing and, when `owner` is given, gives the directories we
/// created to that user with mode 0700.
pub(crate) fn create_owned_dir(dir: &Path, owner: Option<&OsUser>) -> Result<()> {
    let mut missing = Vec::new();
    let mut cur = Some(dir);
    while let Some(d) = cur {
        if d.exists() {
            break;
        }
        missing.push(d.to_path_buf());
        cur = d.parent();
    }
    std::fs::create_dir_all(dir).map_err(PgError::io("create directory", dir))?;
    for d in missing.iter().rev() {
        if let Some(u) = owner {
            u.chown(d)?;
        }
    }
    if !missing.is_empty() {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(PgError::io("chmod", dir))?;
    }
    Ok(())
}
