//! Scenario `archive-continuity`: WAL archiving keeps up through a failover.
//!
//! A base backup, a few segment switches under the writers, then the primary's host vanishes.
//! After the failover the new primary switches segments until the archiver is past the end;
//! then `pgha verify` (backup and archive check) and `pgha-backup verify` must both pass, and
//! a copy restored to the latest point (following the new timeline) must hold every
//! acknowledged write of a sync cluster (async: the count is reported).

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use pgha_postgres::{LocalInstance, PgBinaries, PgControl, StopMode};

use super::observe::lost_on;
use super::scenarios::{Report, Run, Scenario};

/// A restored copy, stopped when this guard drops.
struct Restored(LocalInstance);

impl Drop for Restored {
    fn drop(&mut self) {
        self.0.stop_blocking(StopMode::Immediate);
    }
}

/// Port of the restored copy (on the client host's loopback; nothing else listens there).
const RESTORE_PORT: u16 = 5499;

impl Run<'_> {
    async fn tool(&self, bin: &str, args: &[&str]) -> anyhow::Result<std::process::Output> {
        let cfg = self.w.cluster.config_path();
        // pgha-backup from the copy the server user can run: a restore's restore_command
        // names the running executable (the build's target dir may be closed to that user).
        let path = if bin == "pgha-backup" {
            self.w.root().join("bin/pgha-backup")
        } else {
            self.w.bin(bin)
        };
        let out = tokio::time::timeout(
            Duration::from_secs(300),
            tokio::process::Command::new(path)
                .arg("--config")
                .arg(&cfg)
                .args(args)
                .output(),
        )
        .await
        .with_context(|| format!("{bin} {} did not finish within 300 s", args.join(" ")))??;
        Ok(out)
    }

    async fn sql(&self, node: &str, q: &str) -> anyhow::Result<String> {
        let mut c = self.w.params_of(node)?.connect().await?;
        let v: String = sqlx::query_scalar(q).fetch_one(&mut c).await?;
        Ok(v)
    }

    /// Switches `node` to a new segment and waits until the archiver has the one it closed.
    async fn archived_through_now(&self, node: &str) -> anyhow::Result<String> {
        let closed = self
            .sql(node, "SELECT pg_walfile_name(pg_switch_wal())")
            .await?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let last = self
                .sql(
                    node,
                    "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver",
                )
                .await?;
            // Same timeline and a later or equal segment: compare the whole name.
            if last.len() == 24 && last >= closed {
                return Ok(closed);
            }
            if Instant::now() > deadline {
                bail!("{node} did not archive {closed} within 60 s (last archived: {last:?})");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub(super) async fn archive_continuity(&mut self) -> anyhow::Result<Report> {
        let (old, obs) = self.begin().await?;
        let mut failures = Vec::new();
        let out = self
            .tool("pgha-backup", &["backup", "--no-progress"])
            .await?;
        if !out.status.success() {
            bail!(
                "pgha-backup backup failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // Segments of the old timeline that only the archive keeps.
        for _ in 0..4 {
            self.sql(&old, "SELECT pg_switch_wal()::text").await?;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let t0 = Instant::now();
        let fault = self.w.net.vanish(self.w.host_of(&old)?)?;
        let new = obs.wait_new_writable(&old, Duration::from_secs(60)).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        drop(fault);
        let healed = Instant::now();
        let (mut r, seen) = self
            .end(Scenario::ArchiveContinuity, &old, obs, t0, healed)
            .await?;
        let Some(new) = new else {
            r.failures.push("no new primary".into());
            return Ok(r);
        };
        match self.archived_through_now(&new).await {
            Ok(_) => {}
            Err(e) => failures.push(format!("{e:#}")),
        }
        // pgha verify: its backup check says the archive is continuous since the backup, and
        // its archive check finds no gap from the backup through the new timeline.
        let out = self.tool("pgha", &["verify", "--json"]).await?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        for name in ["backup", "archive"] {
            let c = v["checks"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["name"] == name))
                .cloned();
            let pass = c
                .as_ref()
                .and_then(|c| c["verdict"].as_str())
                .is_some_and(|x| x.eq_ignore_ascii_case("pass"));
            if !pass {
                failures.push(format!(
                    "pgha verify: {name} check {}",
                    c.map_or("missing".into(), |c| c.to_string())
                ));
            }
        }
        let out = self.tool("pgha-backup", &["verify"]).await?;
        if !out.status.success() {
            failures.push(format!(
                "pgha-backup verify failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        // Restore to the latest point beside the cluster and count the acknowledged writes.
        // The server user writes the copy and its log (`<dir>.log`) there.
        let parent = self.w.root().join("restores");
        std::fs::create_dir_all(&parent)?;
        if let Some(u) =
            pgha_postgres::OsUser::for_server(&self.w.cluster.config().postgres.os_user)?
        {
            u.chown(&parent)?;
        }
        let dir = parent.join("latest");
        let port = RESTORE_PORT.to_string();
        let to = dir.display().to_string();
        let config = self.w.cluster.config();
        let mut params = self.w.params_of(&new)?;
        params.host = "127.0.0.1".into();
        params.port = RESTORE_PORT;
        let restored = Restored(LocalInstance::new(
            "restored",
            &dir,
            dir.with_extension("log"),
            PgBinaries::discover(config.postgres.bin_dir.as_deref())?,
            pgha_postgres::OsUser::for_server(&config.postgres.os_user)?,
            params.clone(),
        ));
        let out = self
            .tool(
                "pgha-backup",
                &[
                    "restore",
                    "--to",
                    &to,
                    "--latest",
                    "--start",
                    "--port",
                    &port,
                    "--no-progress",
                    "--force",
                ],
            )
            .await?;
        if out.status.success() {
            let missing = lost_on(&params, &seen.acks).await?;
            if missing > 0 && self.sync() {
                failures.push(format!(
                    "the copy restored to the latest point lacks {missing} of {} acknowledged writes",
                    seen.acks.len()
                ));
            }
            r.restored_missing = Some(missing);
        } else {
            failures.push(format!(
                "pgha-backup restore --latest failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        if let Err(e) = restored.0.stop(StopMode::Immediate).await {
            eprintln!("faults: stop the restored copy: {e}");
        }
        drop(restored);
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            eprintln!("faults: remove {}: {e}", dir.display());
        }
        Self::one_promotion(&mut r);
        r.failures.extend(failures);
        Ok(r)
    }
}
