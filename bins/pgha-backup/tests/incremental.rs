//! Incremental and differential backups and delta restore against real PostgreSQL: after a
//! change of about 5 % of a table, `backup --type incr` stores a small fraction of a full
//! backup and references the rest; `verify` reads everything a backup needs; a restore of
//! the newest (diff) backup to the latest point equals the primary; a copy that diverged is
//! brought back by `restore --delta` rewriting only what differs; retention keeps what a kept
//! backup references. A backup from a standby of a TLS cluster restores to the primary's
//! latest point, and the copy starts without the node's certificate files.
#![allow(clippy::unwrap_used)]

mod common;

use common::{backup_id, err, out, Env};
use pgha_postgres::PgControl;
use pgha_test_support::free_port;

fn stored(list: &serde_json::Value, id: &str) -> u64 {
    list["backups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["id"] == id)
        .unwrap_or_else(|| panic!("{id} not listed: {list}"))["stored_size"]
        .as_u64()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incr_and_diff_store_only_changes_and_delta_restore_rewrites_only_differences(
) -> anyhow::Result<()> {
    let env = Env::start(false, false).await?;
    // ~30 MB of rows that do not compress to nothing.
    env.sql("CREATE TABLE accounts (id int PRIMARY KEY, v text)")
        .await?;
    env.sql("INSERT INTO accounts SELECT g, md5(g::text) || md5((g*7)::text) FROM generate_series(1, 300000) g").await?;
    env.sql("CREATE TABLE small (id int PRIMARY KEY, v text)")
        .await?;
    env.sql("INSERT INTO small VALUES (1, 'one')").await?;
    env.sql("VACUUM FREEZE").await?;
    let full = backup_id(&env.ok(&["backup", "--no-progress"]));

    // About 5 % of the rows, contiguous (recent rows are the hot ones). The new versions are
    // as wide as the old, so they do not fit in the pages' leftover space (a narrower value
    // would land in nearly every page, as the free space map points there).
    env.sql("UPDATE accounts SET v = md5((id*13)::text) || md5(id::text) WHERE id <= 15000")
        .await?;
    let o = env.ok(&["backup", "--type", "incr", "--no-progress"]);
    assert!(o.contains(&format!("incr of {full}")), "{o}");
    let incr = backup_id(&o);
    env.sql("INSERT INTO small VALUES (2, 'two')").await?;
    let o = env.ok(&["backup", "--type", "diff", "--no-progress"]);
    assert!(o.contains(&format!("diff of {full}")), "{o}");
    let diff = backup_id(&o);
    let list: serde_json::Value = serde_json::from_str(&env.ok(&["list", "--json"]))?;
    let (f, i, d) = (
        stored(&list, &full),
        stored(&list, &incr),
        stored(&list, &diff),
    );
    assert!(
        i * 4 < f && d * 4 < f,
        "incr {i} B and diff {d} B should be well under a quarter of the full {f} B"
    );
    env.archive_now().await?;
    let o = env.ok(&["verify"]);
    assert!(o.contains(&format!("backup {incr}: OK")), "{o}");
    let primary = env.checksums(None).await?;

    // The newest backup (a diff) restores as if it were full, to the latest point.
    let port = free_port("127.0.0.1")?.port;
    let dir = env.work.path().join("r/copy");
    let guard = env.restored(&dir, port);
    let args = |extra: &[&str]| {
        let mut v = vec![
            "restore".to_owned(),
            "--to".into(),
            dir.display().to_string(),
            "--start".into(),
            "--port".into(),
            port.to_string(),
            "--no-progress".into(),
        ];
        v.extend(extra.iter().map(|s| (*s).to_owned()));
        v
    };
    let run = |extra: &[&str]| {
        let a = args(extra);
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        env.run(&refs)
    };
    let o = run(&[]);
    assert!(o.status.success(), "{}{}", out(&o), err(&o));
    assert_eq!(env.checksums(Some(port)).await?, primary);

    // The copy diverges (writes of its own, a stray file), then is stopped; a delta restore
    // of the same backup rewrites only what differs and removes the stray file.
    env.scalar(
        Some(port),
        "WITH u AS (UPDATE small SET v = 'diverged' RETURNING 1) SELECT count(*)::text FROM u",
    )
    .await?;
    guard.0.stop(pgha_postgres::StopMode::Fast).await?;
    std::fs::write(dir.join("stray"), "not in the backup")?;
    let o = run(&["--delta", "--backup", &diff]);
    assert!(o.status.success(), "{}{}", out(&o), err(&o));
    let text = out(&o);
    let line = text
        .lines()
        .find(|l| l.contains("delta:"))
        .unwrap_or_else(|| panic!("no delta line: {text}"));
    let nums: Vec<f64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    let (kept, written) = (nums[0], nums[1]);
    assert!(
        written * 2.0 < kept,
        "delta rewrote {written} MB and kept {kept} MB: {line}"
    );
    assert!(!dir.join("stray").exists(), "the stray file stayed");
    assert_eq!(
        env.checksums(Some(port)).await?,
        primary,
        "the delta-restored copy differs from the primary"
    );
    drop(guard);

    // Retention (full = 1) with a second full backup: the old full goes only with the
    // incr and diff that reference it.
    let full2 = backup_id(&env.ok(&["backup", "--no-progress"]));
    let o = env.ok(&["expire"]);
    assert!(o.contains(&format!("kept 1 backup(s): {full2}")), "{o}");
    for gone in [&full, &incr, &diff] {
        assert!(o.contains(&format!("removed backup {gone}")), "{o}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_from_a_standby_of_a_tls_cluster_restores_without_its_certificates(
) -> anyhow::Result<()> {
    let env = Env::start_with(false, false, 1, true).await?;
    env.sql("CREATE TABLE t (id int PRIMARY KEY)").await?;
    env.sql("INSERT INTO t SELECT generate_series(1, 1000)")
        .await?;
    pgha_test_support::TestCluster::eventually(
        std::time::Duration::from_secs(30),
        "node2 replays the rows",
        || async {
            let mut c = env.cluster.conn("node2").await?;
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM t")
                .fetch_one(&mut c)
                .await
                .unwrap_or(0);
            Ok((n == 1000).then_some(()))
        },
    )
    .await?;
    let o = env.ok(&["backup", "--from-standby", "--no-progress"]);
    assert!(o.contains("node node2"), "not taken from the standby: {o}");
    let list: serde_json::Value = serde_json::from_str(&env.ok(&["list", "--json"]))?;
    assert_eq!(list["backups"][0]["from_standby"], true, "{list}");
    env.sql("INSERT INTO t SELECT generate_series(1001, 2000)")
        .await?;
    env.archive_now().await?;

    // The copy must not need the backed-up node's (node2's) certificate files: move them away
    // while it starts (the running node2 has them loaded).
    let tls_dir = env
        .cluster
        .config()
        .node("node2")
        .unwrap()
        .tls_install_dir();
    assert!(tls_dir.join(pgha_config::TLS_INSTALLED_CERT).exists());
    let moved = tls_dir.with_extension("moved");
    std::fs::rename(&tls_dir, &moved)?;
    struct Back(std::path::PathBuf, std::path::PathBuf);
    impl Drop for Back {
        fn drop(&mut self) {
            if let Err(e) = std::fs::rename(&self.0, &self.1) {
                eprintln!("cannot move {} back: {e}", self.0.display());
            }
        }
    }
    let back = Back(moved, tls_dir);
    let port = free_port("127.0.0.1")?.port;
    let dir = env.work.path().join("r/standby");
    let guard = env.restored(&dir, port);
    let o = env.run(&[
        "restore",
        "--to",
        dir.to_str().unwrap(),
        "--start",
        "--port",
        &port.to_string(),
        "--no-progress",
    ]);
    drop(back);
    assert!(o.status.success(), "{}{}", out(&o), err(&o));
    assert_eq!(
        env.scalar(Some(port), "SELECT count(*)::text FROM t")
            .await?,
        "2000"
    );
    drop(guard);
    Ok(())
}
