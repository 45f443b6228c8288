//! Damage is never restored silently (real PostgreSQL, local repository): a flipped byte in
//! an archived WAL segment fails `verify` naming the object, makes `wal-fetch` exit 255 (not
//! 1, which PostgreSQL reads as "not archived" and ends recovery on), and makes
//! `restore --latest --start` fail naming it without promoting a copy that lacks the rest. A
//! deleted segment is named as a gap by `verify` and also stops the restore. Once repaired,
//! the same restore holds every row; a damaged manifest fails verify and restore by name.
//! `backup` and `expire` exclude each other.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;

use common::{backup_id, err, out, Env};
use pgha_backup_core::storage;
use pgha_test_support::free_port;

/// Restores the newest backup to the archive's end into `dir` and starts it; the output.
fn restore_latest(env: &Env, dir: &Path, port: u16) -> std::process::Output {
    env.run(&[
        "restore",
        "--to",
        dir.to_str().unwrap(),
        "--force",
        "--start",
        "--port",
        &port.to_string(),
        "--wait-timeout",
        "60s",
        "--no-progress",
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_or_missing_wal_stops_recovery_instead_of_ending_it() -> anyhow::Result<()> {
    let env = Env::start(false, false).await?;
    // As in a sync-mode cluster (commits stay local here so that the primary itself does
    // not wait): the restored copy must not inherit a standby it will never have.
    env.sql("ALTER SYSTEM SET synchronous_commit = 'local'")
        .await?;
    env.sql("ALTER SYSTEM SET synchronous_standby_names = 'ghost'")
        .await?;
    env.sql("SELECT pg_reload_conf()").await?;
    env.sql("CREATE TABLE t (id int PRIMARY KEY)").await?;
    let b1 = backup_id(&env.ok(&["backup", "--no-progress"]));
    // Three segments of rows that exist only in the archive.
    let mut segs = Vec::new();
    for k in 0..3 {
        segs.push(
            env.scalar(None, "SELECT pg_walfile_name(pg_current_wal_lsn())")
                .await?,
        );
        env.sql(&format!(
            "INSERT INTO t SELECT generate_series({}, {})",
            k * 1000 + 1,
            (k + 1) * 1000
        ))
        .await?;
        env.archive_now().await?;
    }
    let v: serde_json::Value = serde_json::from_str(&env.ok(&["verify", "--json"]))?;
    assert_eq!(v["archive"]["problems"], serde_json::json!([]), "{v}");
    assert!(v["archive"]["objects"].as_u64().unwrap() >= 4, "{v}");

    // Flip one byte of the middle segment's stored object.
    let raw = storage::open(&env.section())?;
    let victim = &segs[1];
    let key = pgha_backup_core::wal::wal_key(victim)?;
    let original = raw.get(&key).await?;
    let mut flipped = original.clone();
    let at = 40 + (flipped.len() - 40) / 2;
    flipped[at] ^= 0x10;
    raw.put(&key, flipped).await?;

    let o = env.run(&["verify"]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "verify passed a flipped WAL byte: {}",
        out(&o)
    );
    assert!(
        out(&o).contains(&key) && out(&o).contains("WAL archive: FAILED"),
        "verify must name {key}: {}",
        out(&o)
    );
    let fetched = env.work.path().join("fetched");
    let o = env.run(&["wal-fetch", victim, fetched.to_str().unwrap()]);
    assert_eq!(
        o.status.code(),
        Some(255),
        "wal-fetch of a corrupt object must abort recovery (exit > 125): {}",
        err(&o)
    );
    assert!(err(&o).contains(&key), "{}", err(&o));
    assert!(!fetched.exists(), "a corrupt segment was written to %p");
    let o = env.run(&[
        "wal-fetch",
        "0000000100000000000000AB",
        fetched.to_str().unwrap(),
    ]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "not archived is exit 1: {}",
        err(&o)
    );

    let port = free_port("127.0.0.1")?.port;
    let dir = env.work.path().join("r/latest");
    let guard = env.restored(&dir, port);
    let o = restore_latest(&env, &dir, port);
    assert!(
        !o.status.success(),
        "restore promoted past a corrupt segment: {}",
        out(&o)
    );
    assert!(
        err(&o).contains("aborted") && err(&o).contains(victim.as_str()),
        "restore must say recovery aborted at {victim}: {}",
        err(&o)
    );
    assert!(
        dir.join("recovery.signal").exists(),
        "the copy was promoted (recovery.signal gone)"
    );
    assert!(
        !dir.join("postmaster.pid").exists(),
        "the copy is still running"
    );

    // A missing segment (the object deleted) is a gap: named by verify, and it stops the
    // restore too, although wal-fetch of it alone is "not archived".
    raw.delete(&key).await?;
    let o = env.run(&["verify", &b1]);
    assert_eq!(o.status.code(), Some(1), "{}", out(&o));
    assert!(
        out(&o).contains(&format!("segment {victim} is missing")),
        "verify must name the gap at {victim}: {}",
        out(&o)
    );
    let o = restore_latest(&env, &dir, port);
    assert!(!o.status.success(), "restore ended at a gap: {}", out(&o));
    assert!(err(&o).contains("a gap in the archive"), "{}", err(&o));

    // Repaired: the same restore reaches the end and has every row.
    raw.put(&key, original).await?;
    env.ok(&["verify"]);
    let o = restore_latest(&env, &dir, port);
    assert!(o.status.success(), "{}{}", out(&o), err(&o));
    assert_eq!(
        env.scalar(Some(port), "SELECT count(*)::text FROM t")
            .await?,
        "3000"
    );
    assert_eq!(
        env.scalar(Some(port), "SHOW synchronous_standby_names")
            .await?,
        "",
        "the copy kept the backed-up node's synchronous standbys"
    );
    drop(guard);

    // A damaged manifest: verify fails naming it, restore refuses naming it.
    let mkey = format!("backups/{b1}/manifest.json");
    let good = raw.get(&mkey).await?;
    let mut bad = good.clone();
    bad[good.len() / 3] ^= 0x02;
    raw.put(&mkey, bad).await?;
    let o = env.run(&["verify", &b1]);
    assert_eq!(o.status.code(), Some(1), "{}", out(&o));
    assert!(
        out(&o).contains(&mkey),
        "verify must name {mkey}: {}",
        out(&o)
    );
    let o = env.run(&[
        "restore",
        "--to",
        dir.to_str().unwrap(),
        "--force",
        "--backup",
        &b1,
    ]);
    assert!(!o.status.success(), "restore used a damaged manifest");
    assert!(err(&o).contains(&mkey), "{}", err(&o));
    raw.put(&mkey, good).await?;

    // The stored result of the whole-repository verify is what `pgha verify` reads.
    let repo = pgha_backup_core::Repository::new(raw.clone());
    let last = pgha_backup_core::verify::last_result(&repo).await?.unwrap();
    assert!(last.ok(), "{last:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_and_expire_exclude_each_other() -> anyhow::Result<()> {
    let env = Env::start(false, false).await?;
    // Enough data that the backup takes a moment.
    env.sql(
        "CREATE TABLE big AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 400000) g",
    )
    .await?;
    let first = backup_id(&env.ok(&["backup", "--no-progress"]));
    // While a backup runs, expire is refused naming it (and removes nothing).
    let backup = std::process::Command::new(&env.bin)
        .arg("--config")
        .arg(&env.cfg)
        .args(["backup", "--no-progress"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let raw = storage::open(&env.section())?;
    let mut refused = None;
    for _ in 0..200 {
        if pgha_backup_core::lock::holder(raw.as_ref())
            .await?
            .is_some()
        {
            refused = Some(env.run(&["expire"]));
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let o = refused.expect("the backup never held the lock");
    assert!(
        !o.status.success(),
        "expire ran during a backup: {}",
        out(&o)
    );
    assert!(err(&o).contains("is locked by backup (pid"), "{}", err(&o));
    let done = backup.wait_with_output()?;
    assert!(done.status.success(), "{}", err(&done));
    let second = backup_id(&out(&done));
    assert_ne!(first, second, "two backups got one id");
    // Two backups within one second get distinct ids.
    let third = backup_id(&env.ok(&["backup", "--no-progress"]));
    let fourth = backup_id(&env.ok(&["backup", "--no-progress"]));
    assert_ne!(third, fourth);
    // And expire, free again, applies retention (full = 1).
    let o = env.ok(&["expire"]);
    assert!(o.contains(&format!("kept 1 backup(s): {fourth}")), "{o}");
    Ok(())
}
