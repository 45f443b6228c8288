//! The repository as a whole: backups listed by their manifests (written last), incomplete
//! backups detected, WAL objects enumerated.

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::manifest::{Manifest, BACKUPS};
use crate::storage::Storage;
use crate::Result;

/// A repository on some storage.
#[derive(Debug, Clone)]
pub struct Repository {
    storage: Arc<dyn Storage>,
}

impl Repository {
    pub fn new(storage: Arc<dyn Storage>) -> Self {
        Repository { storage }
    }

    pub fn storage(&self) -> Arc<dyn Storage> {
        self.storage.clone()
    }

    /// Ids of complete backups (those with a manifest), oldest first.
    pub async fn backup_ids(&self) -> Result<Vec<String>> {
        let (complete, _) = self.scan().await?;
        Ok(complete)
    }

    /// Ids of backups without a manifest: interrupted (or running right now).
    pub async fn incomplete_ids(&self) -> Result<Vec<String>> {
        let (_, incomplete) = self.scan().await?;
        Ok(incomplete)
    }

    async fn scan(&self) -> Result<(Vec<String>, Vec<String>)> {
        let objs = self.storage.list(BACKUPS).await?;
        let mut all = BTreeSet::new();
        let mut complete = BTreeSet::new();
        for o in objs {
            let Some(rest) = o.key.strip_prefix(BACKUPS) else {
                continue;
            };
            let Some((id, name)) = rest.split_once('/') else {
                continue;
            };
            all.insert(id.to_owned());
            if name == "manifest.json" {
                complete.insert(id.to_owned());
            }
        }
        let incomplete = all.difference(&complete).cloned().collect();
        Ok((complete.into_iter().collect(), incomplete))
    }

    /// The manifest of backup `id`, checked.
    pub async fn manifest(&self, id: &str) -> Result<Manifest> {
        let key = Manifest::key(id);
        let data = match self.storage.get(&key).await {
            Ok(d) => d,
            Err(crate::BackupError::NotFound { .. }) => {
                return Err(crate::BackupError::NoSuchBackup(id.to_owned()))
            }
            Err(e) => return Err(e),
        };
        Manifest::decode(&key, &data)
    }

    /// Every complete backup's manifest, oldest first.
    pub async fn manifests(&self) -> Result<Vec<Manifest>> {
        let mut out = Vec::new();
        for id in self.backup_ids().await? {
            out.push(self.manifest(&id).await?);
        }
        Ok(out)
    }
}
