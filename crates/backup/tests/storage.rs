//! The storage suite, run on the local filesystem and on a real S3 server (moto): round trips,
//! listing by prefix, NotFound, multipart-sized objects, manifest-last listing, encryption.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use pgha_backup_core::lock;
use pgha_backup_core::storage::{self, LocalFs, S3Storage};
use pgha_backup_core::{BackupError, Repository, Storage};
use pgha_config::{S3Config, Secret, SecretSource};
use pgha_test_support::moto::MotoServer;

async fn suite(s: Arc<dyn Storage>) {
    // Round trip, replace, exists, NotFound.
    s.put(
        "wal/0000000100000000/000000010000000000000001",
        b"one".to_vec(),
    )
    .await
    .unwrap();
    s.put(
        "wal/0000000100000000/000000010000000000000001",
        b"two".to_vec(),
    )
    .await
    .unwrap();
    assert_eq!(
        s.get("wal/0000000100000000/000000010000000000000001")
            .await
            .unwrap(),
        b"two"
    );
    assert!(s
        .exists("wal/0000000100000000/000000010000000000000001")
        .await
        .unwrap());
    assert!(!s.exists("wal/none").await.unwrap());
    match s.get("wal/none").await {
        Err(BackupError::NotFound { key, .. }) => assert_eq!(key, "wal/none"),
        other => panic!("expected NotFound, got {other:?}"),
    }
    // Large object (multipart on S3) keeps every byte.
    let big: Vec<u8> = (0..(20u32 << 20)).map(|i| (i % 251) as u8).collect();
    s.put("backups/20260101T000000Z/pack-00000", big.clone())
        .await
        .unwrap();
    assert_eq!(
        s.get("backups/20260101T000000Z/pack-00000").await.unwrap(),
        big
    );

    // Manifest-last: a backup without its manifest is listed as incomplete only.
    s.put("backups/20260101T000000Z/manifest.json", b"{}".to_vec())
        .await
        .unwrap();
    s.put("backups/20260102T000000Z/pack-00000", b"partial".to_vec())
        .await
        .unwrap();
    let repo = Repository::new(s.clone());
    assert_eq!(repo.backup_ids().await.unwrap(), vec!["20260101T000000Z"]);
    assert_eq!(
        repo.incomplete_ids().await.unwrap(),
        vec!["20260102T000000Z"]
    );

    // Listing by prefix, sorted, with sizes.
    let l = s.list("backups/20260101T000000Z/").await.unwrap();
    let keys: Vec<_> = l.iter().map(|o| (o.key.as_str(), o.size)).collect();
    assert_eq!(keys[0].0, "backups/20260101T000000Z/manifest.json");
    assert_eq!(keys[1].0, "backups/20260101T000000Z/pack-00000");
    assert_eq!(l.len(), 2);
    assert_eq!(s.list("wal/").await.unwrap().len(), 1);

    // Delete, also of absent keys.
    s.delete("backups/20260102T000000Z/pack-00000")
        .await
        .unwrap();
    s.delete("backups/20260102T000000Z/pack-00000")
        .await
        .unwrap();
    assert!(repo.incomplete_ids().await.unwrap().is_empty());

    // Conditional put: refused over an existing object (small and multipart-sized), and of
    // eight concurrent puts of different content under one name exactly one lands.
    assert!(!s
        .put_if_absent(
            "wal/0000000100000000/000000010000000000000001",
            b"three".to_vec()
        )
        .await
        .unwrap());
    assert_eq!(
        s.get("wal/0000000100000000/000000010000000000000001")
            .await
            .unwrap(),
        b"two"
    );
    assert!(!s
        .put_if_absent("backups/20260101T000000Z/pack-00000", big.clone())
        .await
        .unwrap());
    assert!(s.put_if_absent("c/big", big.clone()).await.unwrap());
    assert_eq!(s.get("c/big").await.unwrap(), big);
    // Concurrent conditional puts of one key: exactly one wins, in every round. Bodies of
    // 1 MiB widen the server's window between its check and its store (plain moto, whose
    // check is not atomic, let two win in 2 of 60 such rounds).
    for round in 0..6 {
        let key = format!("c/race-{round}");
        let mut racers = tokio::task::JoinSet::new();
        for i in 0..8u8 {
            let (s, key) = (s.clone(), key.clone());
            racers
                .spawn(async move { (i, s.put_if_absent(&key, vec![i; 1 << 20]).await.unwrap()) });
        }
        let winners: Vec<u8> = racers
            .join_all()
            .await
            .into_iter()
            .filter_map(|(i, won)| won.then_some(i))
            .collect();
        assert_eq!(winners.len(), 1, "round {round}: winners {winners:?}");
        assert_eq!(s.get(&key).await.unwrap(), vec![winners[0]; 1 << 20]);
    }

    // The repository lock: one holder; the second is refused naming the first; free again
    // after release.
    let l = lock::acquire(&s, "backup").await.unwrap();
    let e = lock::acquire(&s, "expire").await.unwrap_err();
    assert!(
        matches!(e, BackupError::Locked { .. })
            && e.to_string()
                .contains(&format!("backup (pid {}", std::process::id())),
        "{e}"
    );
    let h = lock::holder(s.as_ref()).await.unwrap().expect("held");
    assert_eq!(h.purpose, "backup");
    l.check().unwrap();
    l.release().await;
    assert!(lock::holder(s.as_ref()).await.unwrap().is_none());
    lock::acquire(&s, "expire").await.unwrap().release().await;
}

#[tokio::test]
async fn local_storage() {
    let dir = tempfile::tempdir().unwrap();
    suite(Arc::new(LocalFs::new(dir.path().join("repo")))).await;
    let enc = tempfile::tempdir().unwrap();
    suite(storage::encrypted(
        Arc::new(LocalFs::new(enc.path())),
        &Secret::new("k1"),
    ))
    .await;
}

/// A local lock dies with its holder: a process that held it and was killed leaves the
/// repository lockable, and the next holder is told who ended without releasing it.
#[test]
fn a_killed_local_holder_does_not_block_the_repository() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lock");
    let text = serde_json::json!({"token": "t", "host": "h", "pid": 999999, "purpose": "backup", "since": 1, "expires": 0});
    std::fs::write(&path, serde_json::to_vec(&text).unwrap()).unwrap();
    // flock(1) holds it (and its `sleep` inherits it) in a process group we then kill.
    use std::os::unix::process::CommandExt;
    let mut child = std::process::Command::new("flock")
        .arg(&path)
        .arg("sleep")
        .arg("30")
        .process_group(0)
        .spawn()
        .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let s: Arc<dyn Storage> = Arc::new(LocalFs::new(dir.path()));
    let held = rt.block_on(async {
        for _ in 0..50 {
            if lock::holder(s.as_ref()).await.unwrap().is_some() {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        false
    });
    assert!(held, "flock(1) did not take the lock");
    let e = rt.block_on(lock::acquire(&s, "expire")).unwrap_err();
    assert!(
        e.to_string().contains("locked by backup (pid 999999"),
        "{e}"
    );
    let killed = std::process::Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", child.id())])
        .status()
        .unwrap();
    assert!(killed.success());
    child.wait().unwrap();
    // `sleep` is flock's child, not ours: it is killed with the group but may still be on its
    // way out (its descriptors close at exit), so give the kernel a bounded moment.
    let l = rt.block_on(async {
        let mut last = None;
        for _ in 0..100 {
            match lock::acquire(&s, "expire").await {
                Ok(l) => return l,
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("the lock stayed held 5 s after its holders were killed: {last:?}");
    });
    rt.block_on(l.release());
}

#[tokio::test]
async fn local_keys_cannot_escape_the_repository() {
    let dir = tempfile::tempdir().unwrap();
    let s = LocalFs::new(dir.path());
    let e = s.put("../evil", vec![1]).await.unwrap_err().to_string();
    assert!(e.contains("invalid object key"), "{e}");
}

fn s3_config(m: &MotoServer, prefix: &str) -> S3Config {
    std::env::set_var("PGHA_TEST_S3_KEY", "testing");
    S3Config {
        bucket: "store".into(),
        region: "us-east-1".into(),
        endpoint: Some(m.endpoint()),
        prefix: prefix.into(),
        path_style: true,
        access_key_id: SecretSource::Env {
            env: "PGHA_TEST_S3_KEY".into(),
        },
        secret_access_key: SecretSource::Env {
            env: "PGHA_TEST_S3_KEY".into(),
        },
    }
}

#[tokio::test]
async fn s3_storage_and_encryption() {
    let m = MotoServer::start().unwrap();
    m.create_bucket("store").unwrap();
    suite(Arc::new(S3Storage::new(&s3_config(&m, "plain")).unwrap())).await;
    let raw: Arc<dyn Storage> = Arc::new(S3Storage::new(&s3_config(&m, "enc/")).unwrap());
    let enc = storage::encrypted(raw.clone(), &Secret::new("k1"));
    suite(enc.clone()).await;
    // Stored bytes are not the plaintext; a wrong key or a flipped byte fails, naming the key.
    enc.put("x/secret", b"attack at dawn".to_vec())
        .await
        .unwrap();
    let stored = raw.get("x/secret").await.unwrap();
    assert!(!stored.windows(6).any(|w| w == b"attack"));
    let wrong = storage::encrypted(raw.clone(), &Secret::new("k2"));
    let e = wrong.get("x/secret").await.unwrap_err().to_string();
    assert!(e.contains("is not the key of the repository"), "{e}");
    let mut flipped = stored.clone();
    let n = flipped.len() - 1;
    flipped[n] ^= 1;
    raw.put("x/secret", flipped).await.unwrap();
    assert!(enc.get("x/secret").await.is_err());
    // An object lock past its expiry (a dead or frozen holder) is broken; a live one is not.
    let stale = serde_json::json!({"token": "t", "host": "elsewhere", "pid": 1, "purpose": "backup", "since": 1, "expires": 2});
    raw.put(lock::LOCK_KEY, serde_json::to_vec(&stale).unwrap())
        .await
        .unwrap();
    let l = lock::acquire(&raw, "expire").await.unwrap();
    assert_eq!(
        lock::holder(raw.as_ref()).await.unwrap().unwrap().purpose,
        "expire"
    );
    l.release().await;
    // Prefixes keep repositories apart in one bucket.
    assert!(raw
        .list("")
        .await
        .unwrap()
        .iter()
        .all(|o| !o.key.starts_with("plain")));
}
