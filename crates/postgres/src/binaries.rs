//! Finding the PostgreSQL server binaries.

use std::path::{Path, PathBuf};

use crate::{PgError, Result};

/// Directory holding `postgres`, `pg_ctl`, `initdb`, `pg_basebackup`, `pg_rewind`, `psql`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgBinaries {
    pub(crate) dir: PathBuf,
}

const REQUIRED: [&str; 3] = ["postgres", "pg_ctl", "initdb"];

impl PgBinaries {
    /// Uses `dir`, checking it holds the server binaries.
    pub fn at(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        for tool in REQUIRED {
            if !dir.join(tool).is_file() {
                return Err(PgError::BinDirIncomplete { dir, missing: tool });
            }
        }
        Ok(PgBinaries { dir })
    }

    /// The configured dir if any, else `pg_config --bindir`, else the newest
    /// `/usr/lib/postgresql/<major>/bin`.
    pub fn discover(configured: Option<&Path>) -> Result<Self> {
        if let Some(dir) = configured {
            return Self::at(dir);
        }
        let mut searched = Vec::new();
        if let Ok(out) = std::process::Command::new("pg_config")
            .arg("--bindir")
            .output()
        {
            if out.status.success() {
                let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
                if let Ok(b) = Self::at(&dir) {
                    return Ok(b);
                }
                searched.push(format!("{} (pg_config --bindir)", dir.display()));
            }
        }
        let mut majors: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let major = e.file_name().to_str()?.parse::<u32>().ok()?;
                Some((major, e.path().join("bin")))
            })
            .collect();
        majors.sort();
        for (_, dir) in majors.iter().rev() {
            if let Ok(b) = Self::at(dir) {
                return Ok(b);
            }
        }
        searched.push("/usr/lib/postgresql/*/bin".into());
        Err(PgError::BinariesNotFound {
            searched: searched.join(", "),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of one tool in this directory (`pg_ctl`, `pg_basebackup`, ...).
    pub fn tool(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Major version from `postgres --version` (e.g. 15).
    pub fn major_version(&self) -> Result<u32> {
        let program = self.tool("postgres");
        let out = std::process::Command::new(&program)
            .arg("--version")
            .output()
            .map_err(|source| PgError::Spawn {
                program: program.clone(),
                source,
            })?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.split_whitespace()
            .last()
            .and_then(|v| v.split('.').next())
            .and_then(|m| m.parse().ok())
            .ok_or_else(|| PgError::CommandFailed {
                program: program.display().to_string(),
                action: "--version".into(),
                status: out.status.to_string(),
                stderr: format!("unexpected output `{}`", text.trim()),
            })
    }
}
