//! `logical`: pg_dump custom-format dumps kept in the same repository (zstd-compressed parts
//! with a manifest written last), and their restore with pg_restore.
//!
//! Keys: `logical/<ID>-<DB>/part-<N>` and `logical/<ID>-<DB>/manifest.json`. The dump streams
//! through: pg_dump's stdout is cut into parts that are uploaded as they fill.

use std::process::Stdio;
use std::sync::Arc;
use std::time::SystemTime;

use pgha_config::PghaConfig;
use pgha_postgres::{ConnectParams, PgBinaries};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::manifest::{backup_id, hex};
use crate::storage::Storage;
use crate::{BackupError, Result};

/// Key prefix of logical dumps.
pub const LOGICAL: &str = "logical/";
const PART: usize = 16 << 20;

/// One logical dump.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogicalManifest {
    /// `<time>-<db>`.
    pub id: String,
    pub database: String,
    pub node: String,
    pub started_at: String,
    pub finished_at: String,
    /// pg_dump output bytes.
    pub size: u64,
    pub stored_size: u64,
    pub parts: Vec<LogicalPart>,
}

/// A part of the dump: zstd of `len` bytes of pg_dump output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogicalPart {
    pub len: u64,
    pub stored_len: u64,
    /// sha256 of the stored (compressed) bytes.
    pub sha256: String,
}

fn part_key(id: &str, n: usize) -> String {
    format!("{LOGICAL}{id}/part-{n:05}")
}

fn manifest_key(id: &str) -> String {
    format!("{LOGICAL}{id}/manifest.json")
}

fn env_password(cmd: &mut tokio::process::Command, params: &ConnectParams) {
    // The password reaches the child through its environment, never its command line.
    if let Some(p) = &params.password {
        cmd.env("PGPASSWORD", p.expose());
    }
    cmd.envs(params.libpq_tls_env());
}

/// Dumps `database` from the primary (or `node`) into the repository.
pub async fn dump(
    config: &PghaConfig,
    storage: Arc<dyn Storage>,
    node: Option<&str>,
    database: &str,
) -> Result<LogicalManifest> {
    let c = crate::node::pick_node(config, node, false).await?;
    let bins = PgBinaries::discover(config.postgres.bin_dir.as_deref())?;
    let started = SystemTime::now();
    let id = format!("{}-{database}", backup_id(started));
    let mut cmd = tokio::process::Command::new(bins.tool("pg_dump"));
    cmd.args([
        "-Fc",
        "-Z0",
        "-h",
        &c.params.host,
        "-p",
        &c.params.port.to_string(),
        "-U",
        &c.params.user,
        "-d",
        database,
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    env_password(&mut cmd, &c.params);
    let mut child = cmd
        .spawn()
        .map_err(BackupError::io("run", bins.tool("pg_dump")))?;
    let mut out = child
        .stdout
        .take()
        .ok_or_else(|| BackupError::Task("pg_dump has no stdout".into()))?;
    let mut parts = Vec::new();
    let mut size = 0u64;
    loop {
        let mut buf = Vec::with_capacity(PART);
        while buf.len() < PART {
            let n = (&mut out)
                .take((PART - buf.len()) as u64)
                .read_to_end(&mut buf)
                .await
                .map_err(BackupError::io("read output of", "pg_dump"))?;
            if n == 0 {
                break;
            }
        }
        if buf.is_empty() {
            break;
        }
        let len = buf.len() as u64;
        size += len;
        let z = tokio::task::spawn_blocking(move || zstd::bulk::compress(&buf, 3))
            .await?
            .map_err(BackupError::io("compress", "dump"))?;
        let part = LogicalPart {
            len,
            stored_len: z.len() as u64,
            sha256: hex(&Sha256::digest(&z)),
        };
        storage.put(&part_key(&id, parts.len()), z).await?;
        parts.push(part);
    }
    let output = child
        .wait_with_output()
        .await
        .map_err(BackupError::io("wait for", "pg_dump"))?;
    if !output.status.success() {
        return Err(BackupError::Command {
            program: "pg_dump".into(),
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    let m = LogicalManifest {
        id: id.clone(),
        database: database.to_owned(),
        node: c.node.name.clone(),
        started_at: humantime::format_rfc3339_seconds(started).to_string(),
        finished_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        size,
        stored_size: parts.iter().map(|p| p.stored_len).sum(),
        parts,
    };
    let body = serde_json::to_vec_pretty(&m).map_err(|e| BackupError::Task(e.to_string()))?;
    storage.put(&manifest_key(&id), body).await?;
    Ok(m)
}

/// Complete logical dumps, oldest first.
pub async fn list(storage: &dyn Storage) -> Result<Vec<LogicalManifest>> {
    let mut out = Vec::new();
    for o in storage.list(LOGICAL).await? {
        if o.key.ends_with("/manifest.json") {
            let data = storage.get(&o.key).await?;
            out.push(
                serde_json::from_slice(&data).map_err(|e| BackupError::Corrupt {
                    key: o.key.clone(),
                    detail: e.to_string(),
                })?,
            );
        }
    }
    Ok(out)
}

/// Restores dump `id` (default: the newest of `database`) into `target_db` with pg_restore
/// (`--clean --if-exists`), streaming the parts into its stdin after checking each.
pub async fn restore(
    config: &PghaConfig,
    storage: Arc<dyn Storage>,
    node: Option<&str>,
    id: Option<&str>,
    database: Option<&str>,
    target_db: Option<&str>,
) -> Result<LogicalManifest> {
    let all = list(storage.as_ref()).await?;
    let m = match id {
        Some(id) => all
            .into_iter()
            .find(|m| m.id == id)
            .ok_or_else(|| BackupError::NoSuchBackup(id.to_owned()))?,
        None => all
            .into_iter()
            .rev()
            .find(|m| database.is_none_or(|d| d == m.database))
            .ok_or_else(|| {
                BackupError::Usage(
                    "no logical dump in the repository (run `pgha-backup logical`)".into(),
                )
            })?,
    };
    let c = crate::node::pick_node(config, node, false).await?;
    let bins = PgBinaries::discover(config.postgres.bin_dir.as_deref())?;
    let db = target_db.unwrap_or(&m.database);
    let mut cmd = tokio::process::Command::new(bins.tool("pg_restore"));
    cmd.args([
        "--clean",
        "--if-exists",
        "--no-owner",
        "-h",
        &c.params.host,
        "-p",
        &c.params.port.to_string(),
        "-U",
        &c.params.user,
        "-d",
        db,
    ])
    .stdin(Stdio::piped())
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    env_password(&mut cmd, &c.params);
    let mut child = cmd
        .spawn()
        .map_err(BackupError::io("run", bins.tool("pg_restore")))?;
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| BackupError::Task("pg_restore has no stdin".into()))?;
    let feed = async {
        for (n, p) in m.parts.iter().enumerate() {
            let key = part_key(&m.id, n);
            let z = storage.get(&key).await?;
            if hex(&Sha256::digest(&z)) != p.sha256 {
                return Err(BackupError::Corrupt {
                    key,
                    detail: "sha256 mismatch".into(),
                });
            }
            let raw = tokio::task::spawn_blocking(move || zstd::stream::decode_all(&z[..]))
                .await?
                .map_err(|e| BackupError::Corrupt {
                    key: part_key(&m.id, n),
                    detail: e.to_string(),
                })?;
            stdin
                .write_all(&raw)
                .await
                .map_err(BackupError::io("write to", "pg_restore"))?;
        }
        drop(stdin);
        Ok(())
    };
    let fed = feed.await;
    let output = child
        .wait_with_output()
        .await
        .map_err(BackupError::io("wait for", "pg_restore"))?;
    fed?;
    if !output.status.success() {
        return Err(BackupError::Command {
            program: "pg_restore".into(),
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(m)
}
