//! `cargo xtask bench backup`: pgbench at scale 50; our backup and restore-until-ready vs
//! pgBackRest (compress-type=zst, process-max=2) vs `pg_dump | gzip` and its restore, measured
//! in the same run on the same cluster; times, repository sizes, MB/s and ratios (medians).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use pgha_local_cluster::{free_port, ClusterSpec, LocalCluster};
use pgha_postgres::OsUser;

use super::median;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// pgbench scale (50 is about 755 MB).
    #[arg(long, default_value_t = 50)]
    scale: u32,
    /// Repetitions of each measurement; medians are reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Cargo profile to build pgha-backup with (`release`, or `dev` for a quick look).
    #[arg(long, default_value = "release")]
    profile: String,
    /// pgbench_accounts.filler: `blank` (pgbench's, all spaces: flatters compression) or
    /// `random` (hex digits, rewritten after loading).
    #[arg(long, value_enum, default_value = "blank")]
    filler: Filler,
    /// Seconds of `pgbench -c 8` per tool in the WAL archiving phase (0 skips it).
    #[arg(long, default_value_t = 60)]
    wal_seconds: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Filler {
    Blank,
    Random,
}

pub(super) fn sh(cmd: &mut Command, what: &str) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("run {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A command run as the server's OS user (pgBackRest, pg_ctl).
pub(super) fn as_postgres(user: &Option<OsUser>, program: impl AsRef<std::ffi::OsStr>) -> Command {
    use std::os::unix::process::CommandExt;
    let mut c = Command::new(program);
    c.current_dir("/");
    if let Some(u) = user {
        c.uid(u.uid)
            .gid(u.gid)
            .env("HOME", &u.home)
            .env("USER", &u.name);
    }
    c
}

pub(super) fn du(path: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        if let Ok(rd) = std::fs::read_dir(&p) {
            for e in rd.flatten() {
                match e.file_type() {
                    Ok(t) if t.is_dir() => stack.push(e.path()),
                    Ok(t) if t.is_file() => total += e.metadata().map(|m| m.len()).unwrap_or(0),
                    _ => {}
                }
            }
        }
    }
    total
}

fn chown(user: &Option<OsUser>, p: &Path) -> anyhow::Result<()> {
    if let Some(u) = user {
        u.chown(p)?;
    }
    Ok(())
}

/// Waits until a server on `port` answers and has left recovery.
pub(super) async fn wait_promoted(
    cluster: &LocalCluster,
    port: u16,
    timeout: Duration,
) -> anyhow::Result<()> {
    let mut params = cluster.instance("node1")?.connect_params().clone();
    params.port = port;
    let t = Instant::now();
    loop {
        if let Ok(mut c) = params.connect().await {
            if let Ok(false) = sqlx::query_scalar::<_, bool>("SELECT pg_is_in_recovery()")
                .fetch_one(&mut c)
                .await
            {
                return Ok(());
            }
        }
        if t.elapsed() > timeout {
            bail!("restored server on port {port} not ready within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub(super) fn pg_stop(user: &Option<OsUser>, bin: &Path, dir: &Path) {
    let _ = as_postgres(user, bin.join("pg_ctl"))
        .arg("stop")
        .arg("-D")
        .arg(dir)
        .args(["-m", "immediate", "-w"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

pub async fn run(
    Args {
        scale,
        runs,
        profile,
        filler,
        wal_seconds,
    }: Args,
) -> anyhow::Result<ExitCode> {
    crate::deps::ensure_postgres()?;
    crate::deps::ensure_pgbackrest()?;
    eprintln!("bench backup: building pgha-backup ({profile})");
    sh(
        crate::cargo().args(["build", "--profile", &profile, "-p", "pgha-backup"]),
        "cargo build -p pgha-backup",
    )?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target"));
    let built = target
        .join(if profile == "dev" { "debug" } else { &profile })
        .join("pgha-backup");

    let root = std::env::temp_dir().join(format!("pgha-bench-backup-{}", std::process::id()));
    std::fs::create_dir_all(&root)?;
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o711))?;
    let user = OsUser::for_server("postgres")?;
    let result = bench(&root, &built, &user, (scale, runs, filler, wal_seconds)).await;
    let _ = std::fs::remove_dir_all(&root);
    result
}

async fn bench(
    root: &Path,
    built: &Path,
    user: &Option<OsUser>,
    opts: (u32, usize, Filler, u64),
) -> anyhow::Result<ExitCode> {
    let work = root.join("work");
    std::fs::create_dir_all(&work)?;
    chown(user, &work)?;
    let bin = work.join("pgha-backup");
    std::fs::copy(built, &bin)?;
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755))?;

    let mut spec = ClusterSpec::new("bench", root.join("cluster"));
    spec.replicas = 0;
    spec.parameters.insert("archive_mode".into(), "on".into());
    spec.parameters
        .insert("archive_command".into(), "/bin/true".into());
    spec.parameters
        .insert("shared_buffers".into(), "128MB".into());
    spec.parameters.insert("max_wal_size".into(), "2GB".into());
    let cluster = LocalCluster::create(&spec)
        .await
        .context("create bench cluster")?;
    let r = measure(&cluster, &work, &bin, user, opts).await;
    cluster.purge().await.ok();
    r
}

#[allow(clippy::too_many_lines)]
async fn measure(
    cluster: &LocalCluster,
    work: &Path,
    bin: &Path,
    user: &Option<OsUser>,
    (scale, runs, filler, wal_seconds): (u32, usize, Filler, u64),
) -> anyhow::Result<ExitCode> {
    let node = cluster.first_node().clone();
    let inst = cluster.instance(&node.name)?;
    let pgbin = inst.bins().dir().to_path_buf();
    let params = inst.connect_params().clone();
    let password = params
        .password
        .as_ref()
        .map(|p| p.expose().to_owned())
        .unwrap_or_default();
    let cfg = cluster.config_path();

    eprintln!("bench backup: pgbench -i -s {scale}");
    let t = Instant::now();
    sh(
        Command::new(pgbin.join("pgbench"))
            .args([
                "-i",
                "-q",
                "-s",
                &scale.to_string(),
                "-h",
                &params.host,
                "-p",
                &params.port.to_string(),
                "-U",
                &params.user,
                "postgres",
            ])
            .env("PGPASSWORD", &password),
        "pgbench -i",
    )?;
    eprintln!("bench backup: loaded in {:.1} s", t.elapsed().as_secs_f64());
    let mut conn = params.connect().await?;
    if filler == Filler::Random {
        eprintln!("bench backup: rewriting pgbench_accounts.filler with random hex digits");
        sqlx::query("ALTER TABLE pgbench_accounts ALTER filler TYPE character(84) USING md5(random()::text) || md5(random()::text) || substr(md5(random()::text), 1, 20)")
            .execute(&mut conn)
            .await?;
        sqlx::query("VACUUM FREEZE pgbench_accounts")
            .execute(&mut conn)
            .await?;
    }
    let db_size: i64 = sqlx::query_scalar("SELECT pg_database_size('postgres')")
        .fetch_one(&mut conn)
        .await?;
    let db_mb = db_size as f64 / 1e6;

    // Repositories and configs.
    let ours_repo = work.join("ours-repo");
    std::fs::create_dir_all(&ours_repo)?;
    chown(user, &ours_repo)?;
    let mut text = std::fs::read_to_string(&cfg)?;
    text += &format!(
        "\n[backup]\ncompression_level = 3\nparallel = 2\nmetrics_file = \"{}\"\n[backup.repository]\npath = \"{}\"\n",
        work.join("metrics.prom").display(),
        ours_repo.display()
    );
    std::fs::write(&cfg, text)?;
    let pgbr_repo = work.join("pgbr-repo");
    for d in [
        "pgbr-repo",
        "pgbr-repo-block",
        "pgbr-log",
        "pgbr-lock",
        "pgbr-spool",
    ] {
        std::fs::create_dir_all(work.join(d))?;
        chown(user, &work.join(d))?;
    }
    let pgbr_conf = work.join("pgbackrest.conf");
    let socket = node
        .socket_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("/var/run/postgresql"));
    std::fs::write(
        &pgbr_conf,
        format!(
            "[global]\nrepo1-path={}\nrepo1-retention-full=100\nrepo2-path={}-block\nrepo2-retention-full=100\nrepo2-bundle=y\nrepo2-block=y\nbeta=y\ncompress-type=zst\nprocess-max=2\nstart-fast=y\nlog-level-console=warn\nlog-level-file=off\nlog-path={}\nlock-path={}\nspool-path={}\n\n[bench]\npg1-path={}\npg1-port={}\npg1-socket-path={}\npg1-user=postgres\n",
            pgbr_repo.display(),
            pgbr_repo.display(),
            work.join("pgbr-log").display(),
            work.join("pgbr-lock").display(),
            work.join("pgbr-spool").display(),
            node.data_dir.display(),
            node.port,
            socket.display()
        ),
    )?;
    std::fs::set_permissions(&pgbr_conf, std::fs::Permissions::from_mode(0o644))?;
    let pgbr = |args: &[&str]| {
        let mut c = as_postgres(user, "pgbackrest");
        c.arg(format!("--config={}", pgbr_conf.display()))
            .arg("--stanza=bench")
            .args(args);
        c
    };
    // Both archives receive every segment, so each tool's backups are restorable.
    let archive = format!(
        "{} --config {} wal-push %p && pgbackrest --config={} --stanza=bench archive-push %p",
        bin.display(),
        cfg.display(),
        pgbr_conf.display()
    );
    sh(&mut pgbr(&["stanza-create"]), "pgbackrest stanza-create")?;
    sqlx::query(&format!(
        "ALTER SYSTEM SET archive_command = '{}'",
        archive.replace('\'', "''")
    ))
    .execute(&mut conn)
    .await?;
    sqlx::query("SELECT pg_reload_conf()")
        .execute(&mut conn)
        .await?;
    sqlx::query("CHECKPOINT").execute(&mut conn).await?;
    sqlx::query("SELECT pg_switch_wal()")
        .execute(&mut conn)
        .await?;
    sh(&mut pgbr(&["check"]), "pgbackrest check")?;

    let restore_root = work.join("restores");
    std::fs::create_dir_all(&restore_root)?;
    chown(user, &restore_root)?;
    let mut ours_b = Vec::new();
    let mut ours_r = Vec::new();
    let mut pgbr_b = Vec::new();
    let mut pgbr_r = Vec::new();
    let mut dump_b = Vec::new();
    let mut dump_r = Vec::new();
    let mut ours_size = 0;
    let mut pgbr_size = 0;
    let mut dump_size = 0;
    for run in 1..=runs.max(1) {
        // Ours: backup.
        let t = Instant::now();
        sh(
            Command::new(bin)
                .arg("--config")
                .arg(&cfg)
                .args(["backup", "--no-progress"]),
            "pgha-backup backup",
        )?;
        ours_b.push(t.elapsed().as_secs_f64());
        let newest = std::fs::read_dir(ours_repo.join("backups"))?
            .flatten()
            .map(|e| e.path())
            .max()
            .context("no backup dir")?;
        ours_size = du(&newest);
        // Ours: restore until the server is promoted and answers.
        let port = free_port("127.0.0.1")?;
        let dir = restore_root.join(format!("ours{run}"));
        let t = Instant::now();
        sh(
            Command::new(bin)
                .arg("--config")
                .arg(&cfg)
                .args(["restore", "--to"])
                .arg(&dir)
                .args([
                    "--immediate",
                    "--start",
                    "--port",
                    &port.port.to_string(),
                    "--no-progress",
                ]),
            "pgha-backup restore",
        )?;
        wait_promoted(cluster, port.port, Duration::from_secs(300)).await?;
        ours_r.push(t.elapsed().as_secs_f64());
        pg_stop(user, &pgbin, &dir);
        let _ = std::fs::remove_dir_all(&dir);

        // pgBackRest: backup.
        let t = Instant::now();
        sh(
            &mut pgbr(&["--repo=1", "--type=full", "backup"]),
            "pgbackrest backup",
        )?;
        pgbr_b.push(t.elapsed().as_secs_f64());
        let label = std::fs::read_dir(pgbr_repo.join("backup/bench"))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.is_dir()
                    && p.file_name()
                        .is_some_and(|n| n.to_string_lossy().ends_with('F'))
            })
            .max()
            .context("no pgBackRest backup")?;
        pgbr_size = du(&label);
        // pgBackRest: restore, start, until promoted and answering.
        let port = free_port("127.0.0.1")?;
        let dir = restore_root.join(format!("pgbr{run}"));
        let t = Instant::now();
        sh(
            &mut pgbr(&[
                &format!("--pg1-path={}", dir.display()),
                "--repo=1",
                "--type=immediate",
                "--target-action=promote",
                "restore",
            ]),
            "pgbackrest restore",
        )?;
        sh(
            as_postgres(user, pgbin.join("pg_ctl"))
                .arg("start")
                .arg("-D")
                .arg(&dir)
                .arg("-l")
                .arg(dir.with_extension("log"))
                .arg("-o")
                .arg(format!("-p {} -k /tmp -c archive_mode=off", port.port))
                .args(["-w", "-t", "300", "-s"]),
            "pg_ctl start (pgBackRest restore)",
        )?;
        wait_promoted(cluster, port.port, Duration::from_secs(300)).await?;
        pgbr_r.push(t.elapsed().as_secs_f64());
        pg_stop(user, &pgbin, &dir);
        let _ = std::fs::remove_dir_all(&dir);

        // pg_dump | gzip and its restore into a new database.
        let dump = work.join("dump.sql.gz");
        let t = Instant::now();
        sh(
            Command::new("bash")
                .args(["-o", "pipefail", "-c"])
                .arg(format!(
                    "{} -h {} -p {} -U {} postgres | gzip > {}",
                    pgbin.join("pg_dump").display(),
                    params.host,
                    params.port,
                    params.user,
                    dump.display()
                ))
                .env("PGPASSWORD", &password),
            "pg_dump | gzip",
        )?;
        dump_b.push(t.elapsed().as_secs_f64());
        dump_size = std::fs::metadata(&dump)?.len();
        let db = format!("restore{run}");
        sqlx::query(&format!("CREATE DATABASE {db}"))
            .execute(&mut conn)
            .await?;
        let t = Instant::now();
        sh(
            Command::new("bash")
                .args(["-o", "pipefail", "-c"])
                .arg(format!(
                    "gunzip -c {} | {} -q -X -v ON_ERROR_STOP=1 -h {} -p {} -U {} -d {db} > /dev/null",
                    dump.display(),
                    pgbin.join("psql").display(),
                    params.host,
                    params.port,
                    params.user
                ))
                .env("PGPASSWORD", &password),
            "gunzip | psql",
        )?;
        dump_r.push(t.elapsed().as_secs_f64());
        sqlx::query(&format!("DROP DATABASE {db}"))
            .execute(&mut conn)
            .await?;
        eprintln!(
            "run {run}: ours {:.2} s / {:.2} s, pgBackRest {:.2} s / {:.2} s, pg_dump|gzip {:.2} s / {:.2} s",
            ours_b[run - 1], ours_r[run - 1], pgbr_b[run - 1], pgbr_r[run - 1], dump_b[run - 1], dump_r[run - 1]
        );
    }
    let (ob, or, pb, pr, db_, dr) = (
        median(&mut ours_b),
        median(&mut ours_r),
        median(&mut pgbr_b),
        median(&mut pgbr_r),
        median(&mut dump_b),
        median(&mut dump_r),
    );
    let mb = |b: u64| b as f64 / 1e6;
    println!(
        "\nbench backup: pgbench scale {scale} ({db_mb:.0} MB database), median of {} run(s)",
        ours_b.len()
    );
    println!("| tool | backup s | backup MB/s | repo MB | restore until ready s | backup vs pgBackRest | restore vs pgBackRest | repo vs pgBackRest |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (name, b, r, size) in [
        ("pgha-backup (zstd 3, 2 workers)", ob, or, ours_size),
        ("pgBackRest 2.45 (zst, process-max=2)", pb, pr, pgbr_size),
        ("pg_dump \\| gzip (restore: psql)", db_, dr, dump_size),
    ] {
        println!(
            "| {name} | {b:.2} | {:.0} | {:.1} | {r:.2} | {:.2}x | {:.2}x | {:.2}x |",
            db_mb / b,
            mb(size),
            b / pb,
            r / pr,
            size as f64 / pgbr_size.max(1) as f64
        );
    }
    println!("(goal: pgha-backup backup and restore <= 0.80x pgBackRest, repo <= 1.00x; repo sizes are the base backup without WAL)");

    let f = super::backup_incr::run(&super::backup_incr::Ctx {
        cluster,
        bin,
        cfg: &cfg,
        pgbr_conf: &pgbr_conf,
        user,
        pgbin: &pgbin,
        ours_repo: &ours_repo,
        pgbr_repo: &pgbr_repo,
        restore_root: &restore_root,
        scale,
    })
    .await?;
    println!(
        "\nafter updating {} rows (5 %) of pgbench_accounts; the delta restore is of a copy that diverged by as much",
        f.changed_rows
    );
    println!("| tool | incr backup s | incr MB | delta restore until ready s | delta vs its full restore | incr time vs pgBackRest | incr size vs pgBackRest | delta vs pgBackRest |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    println!(
        "| pgha-backup | {:.2} | {:.1} | {:.2} | {:.2}x | {:.2}x | {:.2}x | {:.2}x |",
        f.ours_incr_s,
        mb(f.ours_incr_bytes),
        f.ours_delta_s,
        f.ours_delta_s / or,
        f.ours_incr_s / f.pgbr_incr_s,
        f.ours_incr_bytes as f64 / f.pgbr_incr_bytes.max(1) as f64,
        f.ours_delta_s / f.pgbr_delta_s
    );
    println!(
        "| pgBackRest (block incremental) | {:.2} | {:.1} | {:.2} | {:.2}x | 1.00x | 1.00x | 1.00x |",
        f.pgbr_incr_s,
        mb(f.pgbr_incr_bytes),
        f.pgbr_delta_s,
        f.pgbr_delta_s / pr
    );
    println!(
        "(goals: incr time and size <= 1.00x pgBackRest; delta restore <= 0.50x a full restore)"
    );
    if wal_seconds == 0 {
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!("bench backup: WAL archiving under pgbench -c 8 for {wal_seconds} s per tool");
    let ours_cmd = format!("{} --config {} wal-push %p", bin.display(), cfg.display());
    let ow = super::backup_wal::run(cluster, &pgbin, &ours_cmd, wal_seconds).await?;
    let pgbr_cmd = format!(
        "pgbackrest --config={} --stanza=bench --archive-async --process-max=2 archive-push %p",
        pgbr_conf.display()
    );
    let pw = super::backup_wal::run(cluster, &pgbin, &pgbr_cmd, wal_seconds).await?;
    println!("\nWAL archiving under pgbench -c 8 for {wal_seconds} s (segments waiting = archive_status/*.ready, sampled every 250 ms)");
    println!("| tool | pgbench tps | segments written | max waiting | waiting at the end | drained in s |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    for (name, w) in [
        ("pgha-backup wal-push (archive_push_parallel = 4)", ow),
        ("pgBackRest archive-push (async, process-max=2)", pw),
    ] {
        println!(
            "| {name} | {:.0} | {} | {} | {} | {:.2} |",
            w.tps, w.segments, w.max_behind, w.end_behind, w.drain_s
        );
    }
    println!("(goal: pgha-backup never more than 2 segments waiting)");
    Ok(ExitCode::SUCCESS)
}
