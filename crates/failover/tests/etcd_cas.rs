//! The leader-bound compare-and-swaps of [`EtcdDcs`] against a real etcd: what makes a write
//! that timed out and is applied late harmless.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use pgha_failover::dcs::{Dcs, EtcdDcs, SyncState};
use pgha_local_cluster::EtcdServer;

fn sync(standbys: &[&str]) -> SyncState {
    SyncState {
        leader: "node1".into(),
        standbys: standbys.iter().map(|s| s.to_string()).collect(),
        quorum: None,
    }
}

/// `/sync` is written only at the revision the writer read: an older write arriving after a
/// newer one (etcd applies a request the client gave up on) is refused instead of naming
/// standbys again that are no longer synchronous.
#[tokio::test]
async fn a_sync_write_from_an_older_view_is_refused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let etcd = EtcdServer::start(&dir.path().join("etcd"))?;
    let d = EtcdDcs::connect_with(
        std::slice::from_ref(&etcd.client_url),
        "/pgha",
        "cas",
        "node1",
        Duration::from_secs(5),
        etcd_client::ConnectOptions::new(),
    )
    .await?;
    let lease = d.grant_session(Duration::from_secs(10)).await?;
    assert!(d.try_acquire_leader(lease).await?);

    let v0 = d.view().await?;
    assert_eq!((v0.sync.clone(), v0.sync_revision), (None, 0));
    // Adding node3 (read at revision 0), then a retry of it from the same view.
    assert!(d.put_sync(lease, &sync(&["node2", "node3"]), 0).await?);
    assert!(
        !d.put_sync(lease, &sync(&["node2", "node3"]), 0).await?,
        "a second write from the view without /sync must not land"
    );
    let v1 = d.view().await?;
    assert!(v1.sync_revision > 0);
    // node2 left: /sync drops it.
    assert!(
        d.put_sync(lease, &sync(&["node3"]), v1.sync_revision)
            .await?
    );
    // The write of revision 0's view, applied late, must not bring node2 back.
    assert!(!d.put_sync(lease, &sync(&["node2", "node3"]), 0).await?);
    assert!(
        !d.put_sync(lease, &sync(&["node2", "node3"]), v1.sync_revision)
            .await?
    );
    let v2 = d.view().await?;
    assert_eq!(v2.sync, Some(sync(&["node3"])));
    assert!(v2.sync_revision > v1.sync_revision);

    // Not the leader any more: refused even at the current revision.
    assert!(d.release_leader(lease).await?);
    assert!(!d.put_sync(lease, &sync(&[]), v2.sync_revision).await?);
    assert_eq!(d.view().await?.sync, Some(sync(&["node3"])));
    Ok(())
}
