//! LocalNode's data-dir handling around a bootstrap, without a server.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pgha_agent_core::ports::PgNode;
use pgha_agent_core::CoreError;
use pgha_config::{NodeConfig, PghaConfig};
use pgha_postgres::{LocalInstance, SupervisedInstance};

use super::LocalNode;
use crate::first::FirstPrimary;

/// Makes a data dir with a file in it, then fails (a restore that broke halfway).
#[derive(Debug, Default)]
struct FailsHalfway(AtomicUsize);

#[async_trait]
impl FirstPrimary for FailsHalfway {
    fn describe(&self) -> String {
        "a restore that fails halfway".into()
    }

    async fn make(
        &self,
        _: &PghaConfig,
        _: &NodeConfig,
        instance: &LocalInstance,
    ) -> pgha_agent_core::Result<()> {
        let n = self.0.fetch_add(1, Ordering::SeqCst);
        std::fs::create_dir_all(instance.data_dir()).unwrap();
        std::fs::write(instance.data_dir().join("base.partial"), n.to_string()).unwrap();
        Err(CoreError::refused("test restore", "broke halfway"))
    }
}

fn siblings(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn failed_bootstraps_remove_their_own_dir_and_keep_a_foreign_one_aside() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let cfg: PghaConfig = pgha_config::load_from_str(
        &format!(
            "[cluster]\nname = \"t\"\n\n[replication]\npassword = {{ env = \"PGHA_TEST_UNSET\" }}\n\n\
             [[nodes]]\nname = \"node1\"\nhost = \"127.0.0.1\"\nport = 5432\ndata_dir = \"{}\"\n",
            data.display()
        ),
        "test.toml",
    )
    .unwrap();
    let node = cfg.nodes[0].clone();
    let local = LocalInstance::from_config(&cfg, &node).unwrap();
    let first = Arc::new(FailsHalfway::default());
    let pg = LocalNode::new(
        Arc::new(cfg),
        node,
        SupervisedInstance::new(local),
        Duration::from_secs(1),
    )
    .with_first_primary(first.clone());
    // A dir that is not ours (no marker): kept aside, never removed.
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("operator-file"), "keep").unwrap();
    assert!(pg.bootstrap().await.is_err());
    let aside: Vec<String> = siblings(tmp.path())
        .into_iter()
        .filter(|f| f.starts_with("data.incomplete-"))
        .collect();
    assert_eq!(aside.len(), 1, "{:?}", siblings(tmp.path()));
    assert!(tmp.path().join(&aside[0]).join("operator-file").exists());
    // Our own failed tries: each removes the previous one's dir, nothing piles up.
    assert!(pg.bootstrap().await.is_err());
    assert!(pg.bootstrap().await.is_err());
    assert_eq!(first.0.load(Ordering::SeqCst), 3);
    assert_eq!(
        siblings(tmp.path()),
        vec![
            "data".to_string(),
            "data.bootstrapping".into(),
            aside[0].clone()
        ]
    );
    assert_eq!(
        std::fs::read_to_string(data.join("base.partial")).unwrap(),
        "2"
    );
}
