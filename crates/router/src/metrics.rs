//! Counters and gauges of a router, as plain atomics a metrics exporter can read.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Counters since the router started. Read them with [`RouterMetrics::snapshot`].
#[derive(Debug, Default)]
pub struct RouterMetrics {
    pub(crate) writes: AtomicU64,
    pub(crate) reads_replica: AtomicU64,
    pub(crate) reads_primary_fallback: AtomicU64,
    pub(crate) reads_refused: AtomicU64,
    pub(crate) token_reads_replica: AtomicU64,
    pub(crate) token_reads_waited: AtomicU64,
    pub(crate) token_reads_primary: AtomicU64,
    pub(crate) failover_errors: AtomicU64,
    pub(crate) rediscoveries: AtomicU64,
    pub(crate) primary_changes: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) health_rounds: AtomicU64,
    pub(crate) probe_failures: AtomicU64,
}

/// A copy of [`RouterMetrics`] at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct MetricsSnapshot {
    /// Connections handed out for writes.
    pub writes: u64,
    /// Reads served by a replica.
    pub reads_replica: u64,
    /// Reads sent to the primary because no replica qualified.
    pub reads_primary_fallback: u64,
    /// Reads refused because no replica qualified and the fallback is off.
    pub reads_refused: u64,
    /// Token reads served by a replica that had already replayed the write.
    pub token_reads_replica: u64,
    /// Token reads that had to wait for a replica to replay the write.
    pub token_reads_waited: u64,
    /// Token reads served by the primary.
    pub token_reads_primary: u64,
    /// Errors that mean the primary moved (25006, connection errors).
    pub failover_errors: u64,
    /// Health rounds started at once because of an error or a slow acquire.
    pub rediscoveries: u64,
    /// Times the writer seat went to a node (the first primary found at start counts).
    pub primary_changes: u64,
    /// Idempotent calls retried after a failover error.
    pub retries: u64,
    /// Health rounds run.
    pub health_rounds: u64,
    /// Node probes that failed (node marked down).
    pub probe_failures: u64,
}

impl RouterMetrics {
    pub(crate) fn inc(c: &AtomicU64) {
        c.fetch_add(1, Relaxed);
    }

    /// Current values.
    pub fn snapshot(&self) -> MetricsSnapshot {
        MetricsSnapshot {
            writes: self.writes.load(Relaxed),
            reads_replica: self.reads_replica.load(Relaxed),
            reads_primary_fallback: self.reads_primary_fallback.load(Relaxed),
            reads_refused: self.reads_refused.load(Relaxed),
            token_reads_replica: self.token_reads_replica.load(Relaxed),
            token_reads_waited: self.token_reads_waited.load(Relaxed),
            token_reads_primary: self.token_reads_primary.load(Relaxed),
            failover_errors: self.failover_errors.load(Relaxed),
            rediscoveries: self.rediscoveries.load(Relaxed),
            primary_changes: self.primary_changes.load(Relaxed),
            retries: self.retries.load(Relaxed),
            health_rounds: self.health_rounds.load(Relaxed),
            probe_failures: self.probe_failures.load(Relaxed),
        }
    }
}
