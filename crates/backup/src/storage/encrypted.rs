//! Client-side encryption of every object (AES-256-GCM, a random 96-bit nonce per object).
//!
//! Stored form: `PGHAENC1` + nonce (12 bytes) + ciphertext with its 16-byte tag. The 256-bit key
//! is SHA-256 of the configured secret. The object key is bound as associated data, so an object
//! copied under another name fails to decrypt.

use std::sync::Arc;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use async_trait::async_trait;
use pgha_config::Secret;
use sha2::{Digest, Sha256};

use super::{ObjectInfo, Storage};
use crate::{BackupError, Result};

const MAGIC: &[u8; 8] = b"PGHAENC1";

/// Encrypting wrapper around another storage.
pub struct Encrypted {
    inner: Arc<dyn Storage>,
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for Encrypted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encrypted")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl Encrypted {
    pub fn new(inner: Arc<dyn Storage>, key: &Secret) -> Self {
        let digest = Sha256::digest(key.expose().as_bytes());
        let cipher = Aes256Gcm::new(&digest);
        Encrypted { inner, cipher }
    }
}

impl Encrypted {
    fn seal(&self, key: &str, data: &[u8]) -> Result<Vec<u8>> {
        let nonce: [u8; 12] = rand::random();
        let ct = self
            .cipher
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
}

#[async_trait]
impl Storage for Encrypted {
    async fn put(&self, key: &str, data: Vec<u8>) -> Result<()> {
        let sealed = self.seal(key, &data)?;
        self.inner.put(key, sealed).await
    }

    async fn put_if_absent(&self, key: &str, data: Vec<u8>) -> Result<bool> {
        let sealed = self.seal(key, &data)?;
        self.inner.put_if_absent(key, sealed).await
    }

    async fn get(&self, key: &str) -> Result<Vec<u8>> {
        let raw = self.inner.get(key).await?;
        if raw.len() < MAGIC.len() + 12 + 16 || &raw[..MAGIC.len()] != MAGIC {
            return Err(BackupError::Corrupt {
                key: key.to_owned(),
                detail: "not an encrypted object (repository written without encryption?)".into(),
            });
        }
        let (nonce, ct) = raw[MAGIC.len()..].split_at(12);
        self.cipher
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
