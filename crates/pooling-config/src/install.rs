//! Writing pgbouncer.ini and userlist.txt atomically, owned by the user PgBouncer runs as.

use std::path::{Path, PathBuf};

use pgha_config::PoolingSection;
use pgha_postgres::{files::write_atomic, OsUser};

use crate::{PoolingError, RenderedConfig, Result};

/// Where the files went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstalledFiles {
    pub ini: PathBuf,
    pub userlist: PathBuf,
}

/// Writes both files (temp file, fsync, rename): the ini 0640 and the userlist 0600, both owned
/// by `pooling.os_user` when we are root. The userlist goes first so a reload never sees an ini
/// naming users the userlist lacks.
pub fn install(pool: &PoolingSection, rendered: &RenderedConfig) -> Result<InstalledFiles> {
    let owner = OsUser::for_server(&pool.os_user)?;
    for p in [&pool.userlist_path, &pool.ini_path] {
        ensure_parent(p, owner.as_ref())?;
    }
    write_atomic(
        &pool.userlist_path,
        rendered.userlist.as_bytes(),
        0o600,
        owner.as_ref(),
    )?;
    if let Some(tls) = &rendered.tls {
        for (from, to, mode) in &tls.copies {
            ensure_parent(to, owner.as_ref())?;
            let bytes = std::fs::read(from).map_err(PoolingError::io(
                "read [tls] file (create it with `pgha tls init`)",
                from,
            ))?;
            write_atomic(to, &bytes, *mode, owner.as_ref())?;
        }
    }
    write_atomic(
        &pool.ini_path,
        rendered.ini.as_bytes(),
        0o640,
        owner.as_ref(),
    )?;
    if let Some(u) = &owner {
        u.check_traversable(&pool.ini_path)?;
    }
    Ok(InstalledFiles {
        ini: pool.ini_path.clone(),
        userlist: pool.userlist_path.clone(),
    })
}

/// Creates a missing parent dir (0750, given to `owner`) so PgBouncer can also put its log there.
fn ensure_parent(path: &Path, owner: Option<&OsUser>) -> Result<()> {
    let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) else {
        return Ok(());
    };
    if dir.exists() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(PoolingError::io("create directory", dir))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750))
            .map_err(PoolingError::io("chmod", dir))?;
    }
    if let Some(u) = owner {
        u.chown(dir)?;
    }
    Ok(())
}
