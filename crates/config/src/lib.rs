//! The one `pgha.toml` that describes a cluster: typed model, layered loading and validation.
//!
//! Loading goes file first, then `PGHA_<SECTION>__<KEY>` environment overrides (see [`load`]).
//! [`PghaConfig::validate`] reports every problem at once, each with its field path.
//! Later sections (dcs, backup, monitoring, pooling) are added as `Option<Section>` fields on
//! [`PghaConfig`], so a file without them keeps loading.

mod backup;
mod bootstrap;
pub mod dynamic;
mod error;
mod load;
mod model;
mod net;
pub mod reference;
mod router;
mod secret;
mod standby;
mod tls;
mod units;
mod validate;
mod validate_logical;

pub use backup::{BackupSection, RepositoryConfig, RetentionConfig, S3Config};
pub use bootstrap::{BootstrapMethod, BootstrapSection};
pub use dynamic::DynamicSettings;
pub use error::{error_chain, ConfigError, Result, ValidationError, ValidationErrors};
pub use load::{load, load_from_str, ConfigSource, LoadedConfig};
pub use model::{
    AlertThresholds, ClusterSection, DcsSection, FailoverSection, LogicalSlotSpec,
    MonitoringSection, NodeConfig, PghaConfig, PoolMode, PoolingSection, PostgresSection,
    ReplicationMode, ReplicationSection, SlotKind, SlotMatcher,
};
pub use net::IpNet;
pub use router::{RouterFallback, RouterReaderPolicy, RouterSection};
pub use secret::{Secret, SecretError, SecretSource};
pub use standby::StandbyClusterSection;
pub use tls::{TlsSection, TLS_INSTALLED_CA, TLS_INSTALLED_CERT, TLS_INSTALLED_KEY};
pub use units::ByteSize;
