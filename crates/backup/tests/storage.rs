//! The storage suite, run on the local filesystem and on a real S3 server (moto): round trips,
//! listing by prefix, NotFound, multipart-sized objects, manifest-last listing, encryption.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

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
    assert!(e.contains("decryption of x/secret failed"), "{e}");
    let mut flipped = stored.clone();
    let n = flipped.len() - 1;
    flipped[n] ^= 1;
    raw.put("x/secret", flipped).await.unwrap();
    assert!(enc.get("x/secret").await.is_err());
    // Prefixes keep repositories apart in one bucket.
    assert!(raw
        .list("")
        .await
        .unwrap()
        .iter()
        .all(|o| !o.key.starts_with("plain")));
}
