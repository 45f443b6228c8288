//! Monitoring for pgha: a postgres_exporter-compatible metric set (same names and labels),
//! honest replication lag and `pgha_*` HA state, custom queries in queries.yml format, and
//! the Prometheus alert rules `pgha render alerts` writes.

pub mod alerts;
pub mod collect;
mod error;
pub mod exporter;
pub mod ha;
pub mod health;
pub mod metrics;
pub mod process;
pub mod queries;
pub mod settings;
pub mod tables;
pub mod version_range;
pub mod web_config;

pub use error::{MonitoringError, Result};
pub use exporter::{Exporter, ScrapeKind};
pub use metrics::MetricSet;
