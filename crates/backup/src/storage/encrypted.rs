//! Client-side encryption of every object (AES-256-GCM, a random 96-bit nonce per object).
//!
//! Stored form: `PGHAENC1` + nonce (12 bytes) + ciphertext with its 16-byte tag. The object key
//! is bound as associated data, so an object copied under another name fails to decrypt.
//!
//! The 256-bit key comes from the configured secret:
//! - 64 hexadecimal characters (`openssl rand -hex 32`): used as the key itself;
//! - anything else is a passphrase, stretched with Argon2id (19 MiB, 2 passes, OWASP's
//!   recommended minimum) and the repository's random salt.
//!
//! The salt, the parameters and a check value (a known text sealed with the key) are kept in
//! the plain object `encryption.json`, created with a conditional put by the first writer. A
//! wrong key is reported once, before any object is read. Repositories written before the KDF
//! (key = SHA-256 of the secret) stay readable: an object that fails with the derived key is
//! tried with that legacy key.

use std::sync::Arc;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use async_trait::async_trait;
use pgha_config::Secret;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;

use super::{ObjectInfo, Storage};
use crate::manifest::hex;
use crate::{BackupError, Result};

const MAGIC: &[u8; 8] = b"PGHAENC1";
/// The plain object describing how the key is derived.
pub const KEY_INFO: &str = "encryption.json";
const CHECK_TEXT: &[u8] = b"pgha repository key check v1";
/// Argon2id parameters for new repositories.
const M_KIB: u32 = 19 * 1024;
const PASSES: u32 = 2;
const LANES: u32 = 1;

/// How the key of a repository is derived (stored as [`KEY_INFO`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct KeyInfo {
    version: u32,
    /// `argon2id` or `raw`.
    kdf: String,
    m_kib: u32,
    passes: u32,
    lanes: u32,
    /// Hex.
    salt: String,
    /// Hex of [`CHECK_TEXT`] sealed with the key.
    check: String,
}

struct Keys {
    cipher: Aes256Gcm,
    /// SHA-256 of the secret: repositories written before the KDF.
    legacy: Aes256Gcm,
}

/// Encrypting wrapper around another storage.
pub struct Encrypted {
    inner: Arc<dyn Storage>,
    secret: Secret,
    keys: OnceCell<Keys>,
}

impl std::fmt::Debug for Encrypted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encrypted")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

fn raw_key(secret: &str) -> Option<[u8; 32]> {
    let s = secret.trim();
    if s.len() != 64 || !s.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let mut k = [0u8; 32];
    for (i, b) in k.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(k)
}

fn unhex(key: &str, s: &str) -> Result<Vec<u8>> {
    let bad = || BackupError::Corrupt {
        key: key.to_owned(),
        detail: format!("`{s}` is not hex"),
    };
    if !s.len().is_multiple_of(2) {
        return Err(bad());
    }
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| bad()))
        .collect()
}

fn derive(secret: &Secret, info: &KeyInfo) -> Result<[u8; 32]> {
    match info.kdf.as_str() {
        "raw" => raw_key(secret.expose()).ok_or_else(|| {
            BackupError::Usage(format!(
                "the repository's {KEY_INFO} says its key is a raw 256-bit key, but backup.encryption_key is not 64 hexadecimal characters"
            ))
        }),
        "argon2id" => {
            let corrupt = |detail: String| BackupError::Corrupt {
                key: KEY_INFO.into(),
                detail,
            };
            let salt = unhex(KEY_INFO, &info.salt)?;
            let params = argon2::Params::new(info.m_kib, info.passes, info.lanes, Some(32))
                .map_err(|e| corrupt(format!("bad Argon2 parameters: {e}")))?;
            let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
            let mut out = [0u8; 32];
            a.hash_password_into(secret.expose().as_bytes(), &salt, &mut out)
                .map_err(|e| corrupt(format!("Argon2: {e}")))?;
            Ok(out)
        }
        other => Err(BackupError::Corrupt {
            key: KEY_INFO.into(),
            detail: format!("unknown key derivation `{other}` (expected argon2id or raw)"),
        }),
    }
}

fn seal(cipher: &Aes256Gcm, key: &str, data: &[u8]) -> Result<Vec<u8>> {
    let nonce: [u8; 12] = rand::random();
    let ct = cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: data,
                aad: key.as_bytes(),
            },
        )
        .map_err(|_| BackupError::Corrupt {
            key: key.to_owned(),
            detail: "encryption failed".into(),
        })?;
    let mut out = Vec::with_capacity(MAGIC.len() + nonce.len() + ct.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    Ok(out)
}

fn open(cipher: &Aes256Gcm, key: &str, raw: &[u8]) -> Result<Vec<u8>> {
    if raw.len() < MAGIC.len() + 12 + 16 || &raw[..MAGIC.len()] != MAGIC {
        return Err(BackupError::Corrupt {
            key: key.to_owned(),
            detail: "not an encrypted object (repository written without encryption?)".into(),
        });
    }
    let (nonce, ct) = raw[MAGIC.len()..].split_at(12);
    cipher
        .decrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: ct,
                aad: key.as_bytes(),
            },
        )
        .map_err(|_| BackupError::Decrypt {
            key: key.to_owned(),
        })
}

impl Encrypted {
    pub fn new(inner: Arc<dyn Storage>, key: &Secret) -> Self {
        Encrypted {
            inner,
            secret: key.clone(),
            keys: OnceCell::new(),
        }
    }

    /// The repository's keys: its key description read (or, in a new repository, created),
    /// the key derived and checked against it.
    async fn keys(&self) -> Result<&Keys> {
        self.keys.get_or_try_init(|| self.load_keys()).await
    }

    async fn load_keys(&self) -> Result<Keys> {
        let legacy = Aes256Gcm::new(&Sha256::digest(self.secret.expose().as_bytes()));
        for _ in 0..3 {
            let info = match self.inner.get(KEY_INFO).await {
                Ok(data) => {
                    serde_json::from_slice::<KeyInfo>(&data).map_err(|e| BackupError::Corrupt {
                        key: KEY_INFO.into(),
                        detail: format!("bad JSON: {e}"),
                    })?
                }
                Err(BackupError::NotFound { .. }) => {
                    let (info, key) = self.new_info().await?;
                    let body =
                        serde_json::to_vec_pretty(&info).map_err(|e| BackupError::Corrupt {
                            key: KEY_INFO.into(),
                            detail: format!("cannot serialize: {e}"),
                        })?;
                    if self.inner.put_if_absent(KEY_INFO, body).await? {
                        tracing::info!(repo = %self.inner.describe(), kdf = %info.kdf, "encryption key description created");
                        return Ok(Keys {
                            cipher: Aes256Gcm::new(&key.into()),
                            legacy,
                        });
                    }
                    // Another writer created it first: use theirs.
                    continue;
                }
                Err(e) => return Err(e),
            };
            let secret = self.secret.clone();
            let i2 = info.clone();
            let key = tokio::task::spawn_blocking(move || derive(&secret, &i2)).await??;
            let cipher = Aes256Gcm::new(&key.into());
            let check = unhex(KEY_INFO, &info.check)?;
            return match open(&cipher, KEY_INFO, &check) {
                Ok(t) if t == CHECK_TEXT => Ok(Keys { cipher, legacy }),
                _ => Err(BackupError::Usage(format!(
                    "backup.encryption_key is not the key of the repository {} (its {KEY_INFO} check value does not open with it)",
                    self.inner.describe()
                ))),
            };
        }
        Err(BackupError::Usage(format!(
            "cannot read or create {KEY_INFO} in {}",
            self.inner.describe()
        )))
    }

    async fn new_info(&self) -> Result<(KeyInfo, [u8; 32])> {
        let salt: [u8; 16] = rand::random();
        let mut info = KeyInfo {
            version: 1,
            kdf: if raw_key(self.secret.expose()).is_some() {
                "raw".into()
            } else {
                "argon2id".into()
            },
            m_kib: M_KIB,
            passes: PASSES,
            lanes: LANES,
            salt: hex(&salt),
            check: String::new(),
        };
        let secret = self.secret.clone();
        let i2 = info.clone();
        let key = tokio::task::spawn_blocking(move || derive(&secret, &i2)).await??;
        info.check = hex(&seal(&Aes256Gcm::new(&key.into()), KEY_INFO, CHECK_TEXT)?);
        Ok((info, key))
    }
}

#[async_trait]
impl Storage for Encrypted {
    async fn put(&self, key: &str, data: Vec<u8>) -> Result<()> {
        let sealed = seal(&self.keys().await?.cipher, key, &data)?;
        self.inner.put(key, sealed).await
    }

    async fn put_if_absent(&self, key: &str, data: Vec<u8>) -> Result<bool> {
        let sealed = seal(&self.keys().await?.cipher, key, &data)?;
        self.inner.put_if_absent(key, sealed).await
    }

    async fn get(&self, key: &str) -> Result<Vec<u8>> {
        let keys = self.keys().await?;
        let raw = self.inner.get(key).await?;
        match open(&keys.cipher, key, &raw) {
            Err(BackupError::Decrypt { .. }) => open(&keys.legacy, key, &raw).inspect(|_| {
                tracing::debug!(%key, "object written before the key derivation (legacy key)");
            }),
            other => other,
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        self.inner.list(prefix).await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.inner.delete(key).await
    }

    async fn exists(&self, key: &str) -> Result<bool> {
        self.inner.exists(key).await
    }

    fn describe(&self) -> String {
        format!("{} (encrypted)", self.inner.describe())
    }

    fn local_root(&self) -> Option<std::path::PathBuf> {
        self.inner.local_root()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::LocalFs;

    fn enc(dir: &std::path::Path, secret: &str) -> Encrypted {
        Encrypted::new(Arc::new(LocalFs::new(dir)), &Secret::new(secret))
    }

    async fn info(dir: &std::path::Path) -> KeyInfo {
        let data = LocalFs::new(dir).get(KEY_INFO).await.unwrap();
        serde_json::from_slice(&data).unwrap()
    }

    #[tokio::test]
    async fn a_passphrase_is_stretched_with_argon2id_and_a_wrong_one_is_named_up_front() {
        let dir = tempfile::tempdir().unwrap();
        enc(dir.path(), "correct horse")
            .put("a", b"x".to_vec())
            .await
            .unwrap();
        let i = info(dir.path()).await;
        assert_eq!(
            (i.kdf.as_str(), i.m_kib, i.passes),
            ("argon2id", M_KIB, PASSES)
        );
        assert_eq!(i.salt.len(), 32);
        // Same passphrase, new process: reads it.
        assert_eq!(
            enc(dir.path(), "correct horse").get("a").await.unwrap(),
            b"x"
        );
        let e = enc(dir.path(), "wrong")
            .get("a")
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("is not the key of the repository"), "{e}");
        // The salt is the repository's: another repository with the same passphrase derives
        // another key.
        let other = tempfile::tempdir().unwrap();
        enc(other.path(), "correct horse")
            .put("a", b"x".to_vec())
            .await
            .unwrap();
        assert_ne!(info(other.path()).await.salt, i.salt);
    }

    #[tokio::test]
    async fn a_hex_key_is_used_raw() {
        let dir = tempfile::tempdir().unwrap();
        let k = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        enc(dir.path(), k).put("a", b"x".to_vec()).await.unwrap();
        assert_eq!(info(dir.path()).await.kdf, "raw");
        assert_eq!(enc(dir.path(), k).get("a").await.unwrap(), b"x");
    }

    #[tokio::test]
    async fn objects_written_with_the_legacy_sha256_key_stay_readable() {
        let dir = tempfile::tempdir().unwrap();
        let legacy = Aes256Gcm::new(&Sha256::digest(b"pass"));
        let plain = LocalFs::new(dir.path());
        plain
            .put("old", seal(&legacy, "old", b"before the KDF").unwrap())
            .await
            .unwrap();
        let e = enc(dir.path(), "pass");
        assert_eq!(e.get("old").await.unwrap(), b"before the KDF");
        e.put("new", b"after".to_vec()).await.unwrap();
        // New objects use the derived key, not the legacy one.
        let raw = plain.get("new").await.unwrap();
        assert!(open(&legacy, "new", &raw).is_err());
        assert_eq!(e.get("new").await.unwrap(), b"after");
    }
}
