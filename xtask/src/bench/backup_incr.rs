//! The second phase of `cargo xtask bench backup`: after the full backups, about 5 % of
//! pgbench_accounts is updated (a contiguous range of aids: the recent rows are the hot ones),
//! then an incremental backup of each tool (ours `--type incr`, pgBackRest `--type=incr` with
//! block incremental, in its repo2 with bundles and blocks, whose full backup is taken just
//! before the update), then a delta restore of a copy that diverged by as much (ours
//! `restore --delta`, pgBackRest `--delta restore`), each until the copy is promoted.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;
use pgha_local_cluster::{free_port, LocalCluster};
use pgha_postgres::OsUser;

use super::backup::{as_postgres, du, pg_stop, sh, wait_promoted};

/// What phase 2 needs of phase 1.
pub struct Ctx<'a> {
    pub cluster: &'a LocalCluster,
    pub bin: &'a Path,
    pub cfg: &'a Path,
    pub pgbr_conf: &'a Path,
    pub user: &'a Option<OsUser>,
    pub pgbin: &'a Path,
    pub ours_repo: &'a Path,
    pub pgbr_repo: &'a Path,
    pub restore_root: &'a Path,
    pub scale: u32,
}

/// Seconds and bytes of each measurement.
#[derive(Debug, Default)]
pub struct Figures {
    pub ours_incr_s: f64,
    pub ours_incr_bytes: u64,
    pub pgbr_incr_s: f64,
    pub pgbr_incr_bytes: u64,
    pub ours_delta_s: f64,
    pub pgbr_delta_s: f64,
    pub changed_rows: u64,
}

impl Ctx<'_> {
    fn pgbr(&self, args: &[&str]) -> Command {
        let mut c = as_postgres(self.user, "pgbackrest");
        c.arg(format!("--config={}", self.pgbr_conf.display()))
            .arg("--stanza=bench")
            .args(args);
        c
    }

    fn ours(&self, args: &[&str]) -> Command {
        let mut c = Command::new(self.bin);
        c.arg("--config").arg(self.cfg).args(args);
        c
    }

    /// Runs `q` on the server at `port` (the primary when None).
    async fn sql(&self, port: Option<u16>, q: &str) -> anyhow::Result<()> {
        let mut p = self
            .cluster
            .instance(&self.cluster.first_node().name)?
            .connect_params()
            .clone();
        if let Some(port) = port {
            p.port = port;
        }
        let mut c = p.connect().await?;
        sqlx::query(q)
            .execute(&mut c)
            .await
            .with_context(|| q.to_owned())?;
        Ok(())
    }

    fn update(&self, delta: i32) -> String {
        format!(
            "UPDATE pgbench_accounts SET abalance = abalance + {delta} WHERE aid <= {}",
            self.rows_changed()
        )
    }

    fn rows_changed(&self) -> u64 {
        u64::from(self.scale) * 100_000 / 20
    }

    fn newest(dir: &Path, suffix: &str) -> anyhow::Result<PathBuf> {
        std::fs::read_dir(dir)?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.is_dir()
                    && p.file_name()
                        .is_some_and(|n| n.to_string_lossy().ends_with(suffix))
            })
            .max()
            .with_context(|| format!("no backup in {}", dir.display()))
    }
}

/// Phase 2; returns the figures.
pub async fn run(c: &Ctx<'_>) -> anyhow::Result<Figures> {
    let mut f = Figures {
        changed_rows: c.rows_changed(),
        ..Default::default()
    };
    eprintln!(
        "bench backup: updating {} rows of pgbench_accounts (5 %)",
        f.changed_rows
    );
    sh(
        &mut c.pgbr(&["--repo=2", "--type=full", "backup"]),
        "pgbackrest backup --repo=2 (block incremental's full)",
    )?;
    c.sql(None, &c.update(1)).await?;
    c.sql(None, "CHECKPOINT").await?;

    let t = Instant::now();
    sh(
        &mut c.ours(&["backup", "--type", "incr", "--no-progress"]),
        "pgha-backup backup --type incr",
    )?;
    f.ours_incr_s = t.elapsed().as_secs_f64();
    f.ours_incr_bytes = du(&Ctx::newest(&c.ours_repo.join("backups"), "")?);

    let t = Instant::now();
    sh(
        &mut c.pgbr(&["--repo=2", "--type=incr", "backup"]),
        "pgbackrest backup --type=incr",
    )?;
    f.pgbr_incr_s = t.elapsed().as_secs_f64();
    f.pgbr_incr_bytes = du(&Ctx::newest(
        &c.pgbr_repo
            .with_file_name("pgbr-repo-block")
            .join("backup/bench"),
        "I",
    )?);
    eprintln!(
        "incr: ours {:.2} s {:.1} MB, pgBackRest {:.2} s {:.1} MB",
        f.ours_incr_s,
        f.ours_incr_bytes as f64 / 1e6,
        f.pgbr_incr_s,
        f.pgbr_incr_bytes as f64 / 1e6
    );

    // Ours: a copy of the newest backup, diverged by another 5 %, then delta-restored.
    let port = free_port("127.0.0.1")?.port;
    let dir = c.restore_root.join("ours-delta");
    let start = |extra: &[&str]| {
        let mut v = vec![
            "restore".to_owned(),
            "--to".into(),
            dir.display().to_string(),
            "--immediate".into(),
            "--start".into(),
            "--port".into(),
            port.to_string(),
            "--no-progress".into(),
        ];
        v.extend(extra.iter().map(|s| (*s).to_owned()));
        v
    };
    let args = start(&[]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    sh(&mut c.ours(&refs), "pgha-backup restore")?;
    wait_promoted(c.cluster, port, Duration::from_secs(300)).await?;
    c.sql(Some(port), &c.update(-1)).await?;
    c.sql(Some(port), "CHECKPOINT").await?;
    pg_stop(c.user, c.pgbin, &dir);
    let args = start(&["--delta", "-v"]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let t = Instant::now();
    let o = c
        .ours(&refs)
        .output()
        .context("pgha-backup restore --delta")?;
    anyhow::ensure!(
        o.status.success(),
        "pgha-backup restore --delta failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    // Where the time goes: the restore's own phase lines.
    for l in String::from_utf8_lossy(&o.stderr).lines() {
        if l.contains("elapsed_ms") {
            eprintln!("  {l}");
        }
    }
    wait_promoted(c.cluster, port, Duration::from_secs(300)).await?;
    f.ours_delta_s = t.elapsed().as_secs_f64();
    if let Some(l) = out.lines().find(|l| l.contains("delta:")) {
        eprintln!("ours{l}");
    }
    pg_stop(c.user, c.pgbin, &dir);
    let _ = std::fs::remove_dir_all(&dir);

    // pgBackRest: the same with --delta.
    let port = free_port("127.0.0.1")?.port;
    let dir = c.restore_root.join("pgbr-delta");
    let pg_start = |dir: &Path| {
        sh(
            as_postgres(c.user, c.pgbin.join("pg_ctl"))
                .arg("start")
                .arg("-D")
                .arg(dir)
                .arg("-l")
                .arg(dir.with_extension("log"))
                .arg("-o")
                .arg(format!("-p {port} -k /tmp -c archive_mode=off"))
                .args(["-w", "-t", "300", "-s"]),
            "pg_ctl start (pgBackRest restore)",
        )
    };
    let path = format!("--pg1-path={}", dir.display());
    sh(
        &mut c.pgbr(&[
            &path,
            "--type=immediate",
            "--target-action=promote",
            "restore",
        ]),
        "pgbackrest restore",
    )?;
    pg_start(&dir)?;
    wait_promoted(c.cluster, port, Duration::from_secs(300)).await?;
    c.sql(Some(port), &c.update(-1)).await?;
    c.sql(Some(port), "CHECKPOINT").await?;
    pg_stop(c.user, c.pgbin, &dir);
    let t = Instant::now();
    sh(
        &mut c.pgbr(&[
            &path,
            "--repo=2",
            "--delta",
            "--type=immediate",
            "--target-action=promote",
            "restore",
        ]),
        "pgbackrest --delta restore",
    )?;
    pg_start(&dir)?;
    wait_promoted(c.cluster, port, Duration::from_secs(300)).await?;
    f.pgbr_delta_s = t.elapsed().as_secs_f64();
    pg_stop(c.user, c.pgbin, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!(
        "delta restore: ours {:.2} s, pgBackRest {:.2} s",
        f.ours_delta_s, f.pgbr_delta_s
    );
    Ok(f)
}
