//! pgha-backup against real PostgreSQL and a real S3 server (moto): backup then restore gives
//! identical data, PITR stops exactly at the target, a flipped byte fails verify and restore,
//! wal-push is idempotent, retention removes only what no kept backup needs, schedule publishes
//! its metric, logical dumps restore. The same suite runs on the local and the S3 repository.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::{backup_id, err, out, Env};
use pgha_backup_core::storage;
use pgha_test_support::free_port;

async fn suite(s3: bool, encrypt: bool) -> anyhow::Result<()> {
    let env = Env::start(s3, encrypt).await?;
    // ~17 MB in accounts: several 8 MB chunks.
    env.sql("CREATE TABLE accounts (id int PRIMARY KEY, v text)")
        .await?;
    env.sql("INSERT INTO accounts SELECT g, md5(g::text) || md5((g*7)::text) FROM generate_series(1, 150000) g").await?;
    env.sql("CREATE TABLE small (id int PRIMARY KEY, v text)")
        .await?;
    env.sql("INSERT INTO small SELECT g, 'row ' || g FROM generate_series(1, 100) g")
        .await?;
    env.sql("CREATE TABLE pitr (id int PRIMARY KEY)").await?;
    let before = env.checksums(None).await?;

    // Backup.
    let o = env.ok(&["backup", "--no-progress"]);
    assert!(o.contains("complete") && o.contains("MB stored"), "{o}");
    let b1 = backup_id(&o);

    // PITR: set A, note the time, set B; restoring to the time gives exactly set A.
    env.sql("INSERT INTO pitr SELECT generate_series(1, 100)")
        .await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = env
        .scalar(None, "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'")
        .await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    env.sql("INSERT INTO pitr SELECT generate_series(101, 200)")
        .await?;
    env.archive_now().await?;

    let port = free_port("127.0.0.1")?;
    let dir = env.work.path().join("r/pitr");
    let _guard = env.restored(&dir, port.port);
    let o = env.ok(&[
        "restore",
        "--to",
        dir.to_str().unwrap(),
        "--target-time",
        &t,
        "--start",
        "--port",
        &port.port.to_string(),
        "--no-progress",
    ]);
    assert!(o.contains("promoted"), "{o}");
    let rows = env
        .scalar(
            Some(port.port),
            "SELECT count(*)::text || ' ' || max(id)::text FROM pitr",
        )
        .await?;
    assert_eq!(
        rows, "100 100",
        "PITR to {t} must give exactly the first set"
    );
    assert_eq!(
        env.checksums(Some(port.port)).await?,
        before,
        "restored tables differ"
    );
    drop(_guard);

    // Non-empty target refused without --force.
    let o = env.run(&["restore", "--to", dir.to_str().unwrap()]);
    assert!(
        !o.status.success() && err(&o).contains("not empty; pass --force"),
        "{}",
        err(&o)
    );

    // wal-push: identical re-push succeeds, different content under the same name fails loudly.
    let seg = env
        .scalar(None, "SELECT last_archived_wal FROM pg_stat_archiver")
        .await?;
    let segdir = env.work.path().join("seg");
    std::fs::create_dir_all(&segdir)?;
    let segpath = segdir.join(&seg);
    env.ok(&["wal-fetch", &seg, segpath.to_str().unwrap()]);
    env.ok(&["wal-push", segpath.to_str().unwrap()]);
    let mut bytes = std::fs::read(&segpath)?;
    bytes[1000] ^= 0x55;
    std::fs::write(&segpath, &bytes)?;
    let o = env.run(&["wal-push", segpath.to_str().unwrap()]);
    assert!(!o.status.success(), "conflicting push succeeded");
    assert!(
        err(&o).contains("already archived with different content"),
        "{}",
        err(&o)
    );
    let o = env.run(&[
        "wal-fetch",
        "0000000100000000000000AB",
        segdir.join("x").to_str().unwrap(),
    ]);
    assert!(
        o.status.code() == Some(1) && err(&o).contains("not in the archive"),
        "{}",
        err(&o)
    );
    // A stored segment damaged in the repository (with encryption: its GCM tag fails) makes
    // wal-fetch abort recovery (255), never answer "not archived" (1).
    let mut plain = env.section();
    plain.encryption_key = None;
    let plain = storage::open(&plain)?;
    let seg_key = pgha_backup_core::wal::wal_key(&seg)?;
    let good = plain.get(&seg_key).await?;
    let mut bad = good.clone();
    let at = bad.len() - 100;
    bad[at] ^= 0x04;
    plain.put(&seg_key, bad).await?;
    let o = env.run(&["wal-fetch", &seg, segdir.join("y").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(255), "{}", err(&o));
    assert!(err(&o).contains(&seg_key), "{}", err(&o));
    plain.put(&seg_key, good).await?;
    env.ok(&["wal-fetch", &seg, segdir.join("y").to_str().unwrap()]);

    // A flipped byte: verify names the object, restore refuses and leaves nothing behind.
    let o = env.ok(&["verify", &b1]);
    assert!(o.contains("OK"), "{o}");
    let mut raw = env.section();
    raw.encryption_key = None;
    let raw = storage::open(&raw)?;
    let key = format!("backups/{b1}/pack-00000");
    let original = raw.get(&key).await?;
    let mut flipped = original.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x01;
    raw.put(&key, flipped).await?;
    let o = env.run(&["verify", &b1]);
    assert!(!o.status.success(), "verify passed a flipped byte");
    assert!(
        out(&o).contains(&key),
        "verify must name {key}: {}",
        out(&o)
    );
    let dir2 = env.work.path().join("r/bad");
    let o = env.run(&["restore", "--to", dir2.to_str().unwrap(), "--backup", &b1]);
    assert!(!o.status.success(), "restore used a corrupt backup");
    assert!(
        err(&o).contains(&key),
        "restore must name {key}: {}",
        err(&o)
    );
    assert_eq!(
        std::fs::read_dir(&dir2)?.count(),
        0,
        "half-restored files left behind"
    );
    raw.put(&key, original).await?;

    // Retention (full = 1): nothing to remove while b1 is the only backup; a scheduled run
    // takes b2 and expires b1 and the WAL only b1 needed.
    let o = env.ok(&["expire", "--dry-run"]);
    assert!(o.contains(&format!("kept 1 backup(s): {b1}")), "{o}");
    env.sql("INSERT INTO small VALUES (101, 'after b1')")
        .await?;
    let o = env.ok(&["schedule", "--once"]);
    assert!(o.contains("scheduled run done"), "{o}");
    let list: serde_json::Value = serde_json::from_str(&env.ok(&["list", "--json"]))?;
    let backups = list["backups"].as_array().unwrap();
    assert_eq!(backups.len(), 1, "{list}");
    let b2 = backups[0]["id"].as_str().unwrap().to_owned();
    assert_ne!(b2, b1);
    let start_wal = backups[0]["start_wal"].as_str().unwrap();
    let first_wal = list["wal"]["first"].as_str().unwrap();
    assert!(
        first_wal[..24] >= start_wal[..],
        "WAL {first_wal} before {start_wal} kept"
    );
    assert!(
        first_wal[..24] == start_wal[..],
        "WAL from {start_wal} (needed by {b2}) removed; first is {first_wal}"
    );
    let metrics = std::fs::read_to_string(env.work.path().join("metrics.prom"))?;
    let line = metrics
        .lines()
        .find(|l| l.starts_with("pgha_backup_last_success_timestamp_seconds{"))
        .unwrap();
    let ts: f64 = line.rsplit(' ').next().unwrap().parse()?;
    assert!(ts > 1.7e9, "{line}");

    // b2 verifies, restores and answers queries (restore test).
    let o = env.ok(&["verify", "--restore-test"]);
    assert!(o.contains(&format!("backup {b2}: restore test OK")), "{o}");

    // Logical dump and restore.
    env.ok(&["logical", "--db", "postgres"]);
    let small = env.checksums(None).await?;
    env.sql("DROP TABLE small").await?;
    env.ok(&["restore", "--logical", "--db", "postgres"]);
    assert_eq!(env.checksums(None).await?, small);
    let list = env.ok(&["list"]);
    assert!(list.contains(&b2) && list.contains("logical"), "{list}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_repository_suite() -> anyhow::Result<()> {
    suite(false, false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_repository_suite_encrypted() -> anyhow::Result<()> {
    suite(true, true).await
}

#[test]
fn bad_arguments_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let base = "[cluster]\nname = \"t\"\n[[nodes]]\nname = \"node1\"\nhost = \"127.0.0.1\"\ndata_dir = \"/nonexistent/data\"\n";
    let run = |cfg: &str, args: &[&str]| {
        let p = dir.path().join("pgha.toml");
        std::fs::write(&p, cfg).unwrap();
        let o = Command::new(env!("CARGO_BIN_EXE_pgha-backup"))
            .arg("--config")
            .arg(&p)
            .args(args)
            .output()
            .unwrap();
        (o.status.code().unwrap(), err(&o))
    };
    let with_repo = format!(
        "{base}[backup.repository]\npath = \"{}\"\n",
        dir.path().join("repo").display()
    );

    let (code, e) = run(base, &["list"]);
    assert_eq!(code, 1);
    assert!(e.contains("has no [backup] section"), "{e}");

    let (code, e) = run(&with_repo, &["restore"]);
    assert_eq!(code, 2);
    assert!(e.contains("--to"), "{e}");

    let (code, e) = run(
        &with_repo,
        &[
            "restore",
            "--to",
            "/x",
            "--target-time",
            "2026-01-01",
            "--target-lsn",
            "0/1",
        ],
    );
    assert_eq!(code, 2);
    assert!(e.contains("cannot be used with"), "{e}");

    let (code, e) = run(&with_repo, &["restore", "--to", "/x", "--target-lsn", "zz"]);
    assert_eq!(code, 1);
    assert!(e.contains("zz"), "{e}");

    let (code, e) = run(
        &with_repo,
        &["restore", "--to", "/x", "--target-action", "pause"],
    );
    assert_eq!(code, 1);
    assert!(e.contains("needs a target"), "{e}");

    let (code, e) = run(&with_repo, &["restore", "--to", "/x"]);
    assert_eq!(code, 1);
    assert!(e.contains("holds no complete backup"), "{e}");

    let (code, e) = run(
        &with_repo,
        &["wal-push", "/nonexistent/000000010000000000000001"],
    );
    assert_eq!(code, 1);
    assert!(e.contains("/nonexistent/000000010000000000000001"), "{e}");

    let (code, e) = run(
        &format!(
            "{base}[backup]\nschedule = [\"0 25 * * *\"]\n[backup.repository]\npath = \"/tmp/x\"\n"
        ),
        &["list"],
    );
    assert_eq!(code, 1);
    assert!(
        e.contains("backup.schedule[0]") && e.contains("`25` is not in 0..=23"),
        "{e}"
    );

    let (code, e) = run(
        &format!("{base}[backup.repository]\npath = \"relative\"\n[backup.retention]\nfull = 0\n"),
        &["list"],
    );
    assert_eq!(code, 1);
    assert!(e.contains("backup.retention.full: 0"), "{e}");
}
