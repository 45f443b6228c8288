//! The typed model of `pgha.toml`. Each section is its own struct so later sections slot in.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{BackupSection, ByteSize, IpNet, SecretSource};

/// The whole cluster description.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PghaConfig {
    pub cluster: ClusterSection,
    #[serde(default)]
    pub postgres: PostgresSection,
    #[serde(default)]
    pub replication: ReplicationSection,
    /// The distributed configuration store holding the leader lease (needed by the agents).
    #[serde(default)]
    pub dcs: Option<DcsSection>,
    #[serde(default)]
    pub failover: FailoverSection,
    /// `[pooling]`: PgBouncer in front of the cluster (pgha-pgbouncer); absent = no pooler.
    #[serde(default)]
    pub pooling: Option<PoolingSection>,
    /// `[monitoring]`: the Prometheus exporter, alert thresholds, OpenTelemetry export.
    #[serde(default)]
    pub monitoring: MonitoringSection,
    /// The PostgreSQL nodes; order is only the display order, roles are discovered live.
    pub nodes: Vec<NodeConfig>,
    /// Services embedding `pgha-router`: application role and routing policy.
    #[serde(default)]
    pub router: Option<crate::RouterSection>,
    /// Base backups, WAL archive, retention, schedule (`pgha-backup`).
    #[serde(default)]
    pub backup: Option<BackupSection>,
    /// `[tls]`: TLS on every connection; absent = plain TCP (scram-sha-256 still required).
    #[serde(default)]
    pub tls: Option<crate::TlsSection>,
    /// `[standby_cluster]`: this cluster is a standby site of another pgha cluster.
    #[serde(default)]
    pub standby_cluster: Option<crate::StandbyClusterSection>,
    /// `[bootstrap]`: how the agents make a new cluster's first primary (initdb, or a backup).
    #[serde(default)]
    pub bootstrap: crate::BootstrapSection,
}

/// `[dcs]`: where the leader lease and member states live.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DcsSection {
    /// etcd v3 client endpoints, e.g. `["http://127.0.0.1:2379"]`.
    pub etcd: Vec<String>,
    /// Key prefix; the cluster's keys live under `<namespace>/<cluster.name>/`.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Longest one DCS request may take before it counts as failed.
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// CA (PEM) that signed etcd's server certificates; required with `https://` endpoints
    /// (`pgha tls init`'s `ca.crt` can be it).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for etcd's `--client-cert-auth`; with `key_file`.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// Private key (PEM) of `cert_file`.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// etcd user (etcd's `auth enable`); with `password`.
    #[serde(default)]
    pub username: Option<String>,
    /// The etcd user's password: `{ file = "..." }` or `{ env = "..." }`, never inline.
    #[serde(default)]
    pub password: Option<SecretSource>,
}

fn default_namespace() -> String {
    "/pgha".into()
}

fn default_request_timeout() -> Duration {
    Duration::from_secs(1)
}

/// `[failover]`: timings and rules of the per-node agents. `ttl`, `loop_wait`,
/// `maximum_lag_on_failover`, `failsafe` and `postgres_restart_timeout` (with
/// `dcs.request_timeout` and `postgres.parameters`) seed the cluster settings in the DCS:
/// once the cluster runs, the DCS copy wins and `pgha edit-config` changes them for every node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FailoverSection {
    /// Leader lease: others may take over this long after the primary's last renewal
    /// (whole seconds, at least 2s).
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// Agent loop period: renew the lease, publish state, decide.
    #[serde(with = "humantime_serde")]
    pub loop_wait: Duration,
    /// A replica further behind the last known primary position is not promoted automatically.
    pub maximum_lag_on_failover: ByteSize,
    /// Sync mode: a synchronous standby whose flushed WAL is further behind the primary's
    /// position than this is swapped for a streaming standby within it (Patroni's
    /// `maximum_lag_on_syncnode`); without one, non-strict mode drops it (commits stop
    /// waiting for it). Unset: never (the default).
    #[serde(default)]
    pub maximum_lag_on_syncnode: Option<ByteSize>,
    /// DCS unreachable: the primary keeps serving only while every replica's agent confirms it
    /// cannot reach the DCS either; otherwise it stops itself before its lease can expire.
    pub failsafe: bool,
    /// When the leader's PostgreSQL port and agent port both refuse connections (the processes
    /// are gone while their host answers), revoke its lease at once instead of waiting the TTL.
    pub fast_dead_detection: bool,
    /// The supervisor that owns PostgreSQL kills it this long before the leader lease could
    /// expire for the other nodes, when the agent stopped renewing the lease (frozen, wedged,
    /// stalled). Covers the kill itself and clock-rate differences between hosts.
    #[serde(with = "humantime_serde")]
    pub safety_margin: Duration,
    /// How long the primary's agent tries to restart a crashed PostgreSQL before releasing the lease.
    #[serde(with = "humantime_serde")]
    pub postgres_restart_timeout: Duration,
    /// Sync mode: keep commits waiting when no standby can be synchronous (else sync is
    /// suspended and no failover is allowed until a standby is synchronous again).
    pub sync_strict: bool,
    /// Token required by mutating agent API calls (switchover, failover, pause, resume, failsafe).
    /// Required when an agent listens on a non-loopback address (unless
    /// `api_allow_unauthenticated`): `POST /failover` ignores the lag bound.
    pub api_token: Option<SecretSource>,
    /// Accept unauthenticated mutating API calls on non-loopback agent addresses (not
    /// recommended: anyone who reaches port 8008 can then fail the cluster over).
    pub api_allow_unauthenticated: bool,
    /// Also require the token on the agent API's informational reads (`/`, `/cluster`,
    /// `/metrics`); the health checks (`/primary`, `/replica`, `/read-only`, `/health`) stay
    /// open for load balancers.
    pub api_restrict_reads: bool,
}

impl Default for FailoverSection {
    fn default() -> Self {
        FailoverSection {
            ttl: Duration::from_secs(8),
            loop_wait: Duration::from_millis(500),
            maximum_lag_on_failover: ByteSize(1 << 20),
            maximum_lag_on_syncnode: None,
            failsafe: true,
            fast_dead_detection: true,
            safety_margin: Duration::from_secs(1),
            postgres_restart_timeout: Duration::from_secs(3),
            sync_strict: false,
            api_token: None,
            api_allow_unauthenticated: false,
            api_restrict_reads: false,
        }
    }
}

/// `[cluster]`: identity of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// Cluster name: shown in process titles and used as the DCS namespace by later sections.
    pub name: String,
}

/// `[postgres]`: how to run and reach every instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresSection {
    /// Directory of the server binaries; found automatically when absent
    /// (`pg_config --bindir`, then the newest `/usr/lib/postgresql/*/bin`).
    pub bin_dir: Option<PathBuf>,
    /// OS user that owns the data dirs and runs the servers (PostgreSQL refuses root).
    pub os_user: String,
    /// Database superuser our tools connect as.
    pub superuser: String,
    /// The superuser's password; required for TCP connections (scram-sha-256).
    pub superuser_password: Option<SecretSource>,
    /// Database to connect to for control and status queries.
    pub database: String,
    /// Timeout for one connection attempt from our tools.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Extra server settings rendered into every node's pgha.conf (e.g. `shared_buffers = "256MB"`).
    pub parameters: BTreeMap<String, String>,
}

impl Default for PostgresSection {
    fn default() -> Self {
        PostgresSection {
            bin_dir: None,
            os_user: "postgres".into(),
            superuser: "postgres".into(),
            superuser_password: None,
            database: "postgres".into(),
            connect_timeout: Duration::from_secs(5),
            parameters: BTreeMap::new(),
        }
    }
}

/// Asynchronous or synchronous replication.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplicationMode {
    /// Commits return once local; a failover may lose the last transactions.
    #[default]
    Async,
    /// Commits wait for `sync_standbys` standbys (synchronous_standby_names = FIRST n (...)).
    Sync,
    /// Quorum commit: commits wait for any `sync_standbys` of the streaming standbys
    /// (synchronous_standby_names = ANY k (...)); a failover promotes a node only once it saw
    /// enough of them to be sure it holds every acknowledged commit (Patroni 4's quorum mode).
    Quorum,
}

impl ReplicationMode {
    /// Sync or quorum: commits wait for standbys and the DCS `sync` key restricts failovers.
    pub fn waits(self) -> bool {
        matches!(self, ReplicationMode::Sync | ReplicationMode::Quorum)
    }
}

impl std::fmt::Display for ReplicationMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ReplicationMode::Async => "async",
            ReplicationMode::Sync => "sync",
            ReplicationMode::Quorum => "quorum",
        })
    }
}

/// `[replication]`: streaming replication between the nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReplicationSection {
    /// async: commits return before a standby has the WAL; sync: they wait for `sync_standbys`
    /// (`FIRST n`); quorum: for any `sync_standbys` of the streaming standbys (`ANY k`).
    pub mode: ReplicationMode,
    /// Number of standbys a commit waits for in sync mode.
    pub sync_standbys: u32,
    /// Role the replicas connect as (created with REPLICATION LOGIN).
    pub user: String,
    /// The replication role's password; required.
    pub password: Option<SecretSource>,
    /// One physical replication slot per replica, so the primary keeps the WAL it needs.
    pub slots: bool,
    /// Networks allowed to connect (pg_hba.conf `host` entries, scram-sha-256 only).
    pub allowed_networks: Vec<IpNet>,
    /// max_wal_senders on every node (replicas, pg_basebackup and pg_rewind each use one).
    pub max_wal_senders: u32,
    /// max_replication_slots on every node.
    pub max_replication_slots: u32,
    /// WAL kept for replicas without a slot (wal_keep_size).
    pub wal_keep_size: ByteSize,
    /// Replicas tell the primary which rows their queries still need (fewer query cancellations, some bloat).
    pub hot_standby_feedback: bool,
    /// Slots the leader keeps besides one per node, e.g. the one a standby site streams
    /// through (`standby_cluster.primary_slot_name` there). Replicas that may lead hold them
    /// too, moved up with the leader's, so a failover keeps their place. Never dropped by
    /// pgha: a slot nobody reads keeps WAL, so bound it with `max_slot_wal_keep_size`.
    pub permanent_slots: Vec<String>,
    /// Permanent logical slots (Patroni's `slots` of `type: logical`), e.g.
    /// `[{ name = "cdc", database = "app", plugin = "pgoutput" }]`: the leader creates them,
    /// every replica that may lead keeps a copy (taken from the leader with a restart, then
    /// advanced as the leader's consumers confirm), so a failover keeps them at a position no
    /// later than what consumers confirmed (a consumer may see some changes twice, never
    /// miss one). Sets `wal_level = logical`; needs `hot_standby_feedback`. Restart to change.
    pub logical_slots: Vec<LogicalSlotSpec>,
    /// How long the slot of a node whose agent left the cluster (its member key is gone) is
    /// kept before it is dropped (Patroni 4's `member_slots_ttl`, dynamic); a slot in use is
    /// never dropped. `0s`: dropped as soon as it is idle. A node that comes back gets its
    /// slot again and streams if the WAL it needs is still there (else from the archive, or a
    /// re-clone).
    #[serde(with = "humantime_serde")]
    pub member_slots_ttl: Duration,
    /// Slots pgha never touches nor reports (Patroni's `ignore_slots`), e.g.
    /// `[{ type = "logical", database = "app", plugin = "pgoutput" }]`: a slot matches a rule
    /// when every field the rule gives is equal. A slot that is neither a node's, nor
    /// permanent, nor ignored is reported, never dropped (a warning in the agent's log,
    /// `unknown_slots` in `GET /patroni`, the `pgha_unknown_replication_slots` metric).
    pub ignore_slots: Vec<SlotMatcher>,
    /// restore_command of every replica, e.g. `"/usr/local/bin/pgha-backup --config
    /// /etc/pgha/pgha.toml wal-fetch %f %p"`: a `nostream` replica replays only from it, the
    /// others fall back to it when their upstream no longer has the WAL they need. Required
    /// by `nodes[].nostream`. Reloadable.
    pub restore_command: Option<String>,
}

/// One `replication.ignore_slots` rule (Patroni's `ignore_slots`): slots pgha never touches
/// nor reports, e.g. `ignore_slots = [{ type = "logical", database = "app", plugin = "pgoutput" }]`.
/// A slot matches a rule when every field the rule gives (at least one) is the slot's. A slot
/// that is neither a node's, nor permanent, nor ignored is reported, never dropped: a warning
/// in the agent's log, `unknown_slots` in `GET /patroni`, the `pgha_unknown_replication_slots`
/// metric.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotMatcher {
    /// The slot's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `physical` or `logical`.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<SlotKind>,
    /// A logical slot's database.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// A logical slot's output plugin, e.g. `pgoutput`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plugin: Option<String>,
}

/// One `replication.logical_slots` entry: a permanent logical slot (Patroni's `slots` of
/// `type: logical`), e.g. `logical_slots = [{ name = "cdc", database = "app", plugin =
/// "pgoutput" }]`. The leader creates it; every replica that may lead keeps a copy (taken from
/// the leader's state file with one restart, then advanced as the leader's consumer confirms,
/// never past what it replayed), so after a failover the new primary has the slot before its
/// first write, at a position no later than what the consumer confirmed: a consumer may see
/// some changes twice, never miss one. Sets `wal_level = logical` (a restart) and needs
/// `hot_standby_feedback`; the superuser must be able to read the leader's files
/// (`pg_read_binary_file`). Not kept on `nofailover` or `nostream` nodes. Restart to change.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogicalSlotSpec {
    /// The slot's name (a-z, 0-9, `_`).
    pub name: String,
    /// The database it decodes.
    pub database: String,
    /// The output plugin, e.g. `pgoutput` or `test_decoding`.
    pub plugin: String,
}

/// A replication slot's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlotKind {
    Physical,
    Logical,
}

impl SlotMatcher {
    /// Every field this rule gives is the slot's.
    pub fn matches(
        &self,
        name: &str,
        kind: SlotKind,
        database: Option<&str>,
        plugin: Option<&str>,
    ) -> bool {
        self.name.as_deref().is_none_or(|n| n == name)
            && self.kind.is_none_or(|k| k == kind)
            && self.database.as_deref().is_none_or(|d| Some(d) == database)
            && self.plugin.as_deref().is_none_or(|p| Some(p) == plugin)
    }
}

impl Default for ReplicationSection {
    fn default() -> Self {
        ReplicationSection {
            mode: ReplicationMode::Async,
            sync_standbys: 1,
            user: "replicator".into(),
            password: None,
            slots: true,
            allowed_networks: vec![IpNet {
                addr: std::net::Ipv4Addr::LOCALHOST.into(),
                prefix: 32,
            }],
            max_wal_senders: 10,
            max_replication_slots: 10,
            wal_keep_size: ByteSize(512 << 20),
            hot_standby_feedback: true,
            permanent_slots: Vec::new(),
            logical_slots: Vec::new(),
            member_slots_ttl: Duration::from_secs(30 * 60),
            ignore_slots: Vec::new(),
            restore_command: None,
        }
    }
}

/// `[[nodes]]`: one PostgreSQL instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Node name: also the replica's application_name and its slot name, so `[a-z0-9_]`.
    pub name: String,
    /// Address others reach this node at (also listen_addresses).
    pub host: String,
    /// PostgreSQL port (default 5432).
    #[serde(default = "default_port")]
    pub port: u16,
    /// Data directory (PGDATA), owned by the server OS user.
    pub data_dir: PathBuf,
    /// Overrides `postgres.os_user` for this node.
    #[serde(default)]
    pub os_user: Option<String>,
    /// Address of this node's pgha agent API.
    #[serde(default)]
    pub agent_address: Option<SocketAddr>,
    /// Directory for the server log and the replication passfile; default: the data dir's parent.
    #[serde(default)]
    pub run_dir: Option<PathBuf>,
    /// unix_socket_directories; PostgreSQL's compiled-in default when absent.
    #[serde(default)]
    pub socket_dir: Option<PathBuf>,
    /// Never promote this node, automatically or by a switchover or failover request (as
    /// `failover_priority = 0`).
    #[serde(default)]
    pub nofailover: bool,
    /// Among candidates equally advanced (same timeline and WAL position), the higher value
    /// wins the election and is the default switchover target (Patroni's `failover_priority`
    /// tag); 0: never a leader, as `nofailover`. Default 1.
    #[serde(default)]
    pub failover_priority: Option<u32>,
    /// Sync mode: a standby with a higher value is chosen first as synchronous standby (the
    /// current ones stay while they stream; Patroni's `sync_priority` tag); 0: never, as
    /// `nosync`. Default 1.
    #[serde(default)]
    pub sync_priority: Option<u32>,
    /// Sync mode: never a synchronous standby (Patroni's `nosync` tag); it is then never
    /// promoted in sync mode either, as only synchronous standbys are.
    #[serde(default)]
    pub nosync: bool,
    /// Never stream WAL: this replica replays only from the WAL archive through
    /// `replication.restore_command` (Patroni's `nostream` tag). It holds no slot on the
    /// primary, is never a synchronous standby, and follows a new primary's timeline from
    /// the archive. `pgha list` shows it `in archive recovery`. No effect on a primary.
    #[serde(default)]
    pub nostream: bool,
    /// Keep this node out of read load balancing: the agent API's `/replica`, `/read-only`,
    /// `/sync` and `/async` answer 503 on it (Patroni's `noloadbalance` tag).
    #[serde(default)]
    pub noloadbalance: bool,
    /// Free-form tags, published in the DCS and in the API's `/patroni` and `/cluster`;
    /// `/replica?tag_KEY=VALUE` answers 200 only on a node whose tag KEY is VALUE.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Server certificate (PEM) when `[tls]` is on; default `<tls.dir>/<name>.crt`.
    #[serde(default)]
    pub tls_cert_file: Option<PathBuf>,
    /// Server private key (PEM) when `[tls]` is on; default `<tls.dir>/<name>.key`.
    #[serde(default)]
    pub tls_key_file: Option<PathBuf>,
    /// Cascading: stream from this other node (a replica) instead of the leader, e.g. so a
    /// remote site pulls one stream across the WAN. The agent falls back to the leader while
    /// that node is not a running replica, and returns to it when it is again.
    #[serde(default)]
    pub replicate_from: Option<String>,
}

fn default_port() -> u16 {
    5432
}

impl PghaConfig {
    /// The node called `name`.
    pub fn node(&self, name: &str) -> Option<&NodeConfig> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The OS user that runs `node`.
    pub fn os_user_of<'a>(&'a self, node: &'a NodeConfig) -> &'a str {
        node.os_user.as_deref().unwrap_or(&self.postgres.os_user)
    }
}

impl NodeConfig {
    /// The election priority: 0 (never a leader) with `nofailover`, else `failover_priority`
    /// (default 1).
    pub fn failover_rank(&self) -> u32 {
        if self.nofailover {
            0
        } else {
            self.failover_priority.unwrap_or(1)
        }
    }

    /// The synchronous-standby priority: 0 (never) with `nosync` or `nostream`, or when the
    /// node never leads (a synchronous standby must be promotable), else `sync_priority`
    /// (default 1).
    pub fn sync_rank(&self) -> u32 {
        if self.nosync || self.nostream || self.failover_rank() == 0 {
            0
        } else {
            self.sync_priority.unwrap_or(1)
        }
    }

    /// Directory holding this node's log and passfile.
    pub fn run_dir(&self) -> PathBuf {
        match &self.run_dir {
            Some(d) => d.clone(),
            None => self
                .data_dir
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from("/")),
        }
    }

    /// The server log pg_ctl writes to (kept outside the data dir so backups do not copy it).
    pub fn log_file(&self) -> PathBuf {
        self.run_dir().join(format!("{}.log", self.name))
    }

    /// The passfile the server's WAL receiver and our child tools use for the replication role.
    /// Where the agent installs this node's certificate, key and the CA, owned by the server's
    /// OS user (PostgreSQL refuses a key it does not own; the WAL receiver reads the CA).
    pub fn tls_install_dir(&self) -> PathBuf {
        self.run_dir().join(format!("{}-tls", self.name))
    }

    pub fn passfile(&self) -> PathBuf {
        self.run_dir().join(format!("{}.pgpass", self.name))
    }

    /// `host:port`, for messages.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// PgBouncer's pool_mode: when a server connection goes back to the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    /// After the client disconnects.
    Session,
    /// After each transaction (session state such as SET or prepared statements does not survive).
    #[default]
    Transaction,
    /// After each statement (no multi-statement transactions).
    Statement,
}

impl std::fmt::Display for PoolMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PoolMode::Session => "session",
            PoolMode::Transaction => "transaction",
            PoolMode::Statement => "statement",
        })
    }
}

/// `[pooling]`: the PgBouncer that fronts the cluster, rendered by `pgha-pgbouncer`.
///
/// Each database in `databases` is exposed twice: `<db>` (read-write, to the primary) and
/// `<db><read_only_suffix>` (read-only, to the replicas).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolingSection {
    /// Address PgBouncer listens on (listen_addr).
    pub listen_addr: String,
    /// Port PgBouncer listens on (listen_port).
    pub listen_port: u16,
    /// Default pool_mode for every database.
    pub pool_mode: PoolMode,
    /// Most client connections PgBouncer accepts (max_client_conn).
    pub max_client_conn: u32,
    /// Server connections per user/database pair (default_pool_size).
    pub default_pool_size: u32,
    /// Extra server connections allowed when a client waited `reserve_pool_timeout` (reserve_pool_size).
    pub reserve_pool_size: u32,
    /// How long a client waits before the reserve pool is used (reserve_pool_timeout).
    #[serde(with = "humantime_serde")]
    pub reserve_pool_timeout: Duration,
    /// Databases exposed through PgBouncer, each as a read-write and a read-only entry.
    pub databases: Vec<String>,
    /// Suffix of the read-only entry's name (`app` -> `app_ro`).
    pub read_only_suffix: String,
    /// When no replica is available, point the read-only entries at the primary instead of
    /// leaving them without a server.
    pub read_only_fallback_to_primary: bool,
    /// Roles that may log in through PgBouncer; their SCRAM secrets are copied from pg_authid.
    pub users: Vec<String>,
    /// Roles allowed on the admin console (admin_users); must include `postgres.superuser`,
    /// which pgha-pgbouncer uses for RELOAD, PAUSE and RESUME.
    pub admin_users: Vec<String>,
    /// Roles allowed read-only SHOW commands on the admin console (stats_users).
    pub stats_users: Vec<String>,
    /// Query PgBouncer runs on an idle server connection before reusing it (server_check_query).
    pub server_check_query: String,
    /// How long PgBouncer waits after a failed server login before trying again
    /// (server_login_retry; PgBouncer's own default is 15 s, too long after a failover: the
    /// wait still applies after RELOAD points the entry at the new primary).
    #[serde(with = "humantime_serde")]
    pub server_login_retry: Duration,
    /// Startup parameters PgBouncer accepts and ignores (ignore_startup_parameters).
    pub ignore_startup_parameters: Vec<String>,
    /// Where pgbouncer.ini is written.
    pub ini_path: PathBuf,
    /// Where userlist.txt (SCRAM secrets, mode 0600) is written.
    pub userlist_path: PathBuf,
    /// PgBouncer's pid file; none when absent.
    pub pid_file: Option<PathBuf>,
    /// PgBouncer's log file; stderr when absent.
    pub log_file: Option<PathBuf>,
    /// Directory of PgBouncer's unix socket; TCP only when absent.
    pub unix_socket_dir: Option<PathBuf>,
    /// OS user PgBouncer runs as (it refuses root); owns the userlist.
    pub os_user: String,
    /// How often `pgha-pgbouncer follow` polls the nodes for the primary.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// How often `follow` re-reads the users' secrets from pg_authid (a changed password reaches
    /// userlist.txt within this time); topology changes re-read them at once.
    #[serde(with = "humantime_serde")]
    pub userlist_refresh: Duration,
    /// Named prepared statements PgBouncer tracks per server connection, so that clients using
    /// them (sqlx, JDBC, asyncpg) work in transaction pooling (max_prepared_statements; 0 = off).
    /// Needs PgBouncer 1.21 or later (1.18, Debian 12's, refuses to start with it): rendered only
    /// when set; 200 is a good value.
    pub max_prepared_statements: Option<u32>,
    /// Role PgBouncer logs in as to look up a client's SCRAM secret with `auth_query` (auth_user),
    /// for roles not in `users`. Needs `auth_password`. Off when absent.
    pub auth_user: Option<String>,
    /// `auth_user`'s password, `{ env = "..." }` or `{ file = "..." }`; required with it.
    /// PgBouncer logs in to PostgreSQL as auth_user with no client's SCRAM proof to pass on, so
    /// this one role's password goes into userlist.txt (mode 0600) as it is; every other role
    /// keeps only its SCRAM secret there.
    pub auth_password: Option<SecretSource>,
    /// Query run as `auth_user` returning (name, SCRAM secret) for `$1` (auth_query), e.g.
    /// `SELECT uname, phash FROM pgbouncer.user_lookup($1)` with the SECURITY DEFINER function
    /// `pgha-pgbouncer auth-sql` prints; needs `auth_user`. PgBouncer's default when absent.
    pub auth_query: Option<String>,
    /// Database `auth_query` runs in (auth_dbname; PgBouncer 1.20 or later); the client's
    /// database when absent. Needs `auth_user`.
    pub auth_dbname: Option<String>,
    /// Other `[pgbouncer]` settings written as they are (`[pooling.extra]`, e.g.
    /// `query_wait_timeout = 60`): strings, integers or booleans (as 1/0). Keys pgha renders
    /// itself are refused: set their `[pooling]` field instead.
    pub extra: BTreeMap<String, PgBouncerValue>,
}

/// One value of `[pooling.extra]`, written after `key = ` as it is (a boolean as 1/0).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PgBouncerValue {
    Bool(bool),
    Int(i64),
    Text(String),
}

impl std::fmt::Display for PgBouncerValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PgBouncerValue::Bool(b) => f.write_str(if *b { "1" } else { "0" }),
            PgBouncerValue::Int(i) => write!(f, "{i}"),
            PgBouncerValue::Text(t) => f.write_str(t),
        }
    }
}

impl PoolingSection {
    /// The address a local client dials to reach PgBouncer: the first `listen_addr`, with a
    /// wildcard (`*`, `0.0.0.0`, `::`) mapped to loopback.
    pub fn client_host(&self) -> String {
        match self.listen_addr.as_str() {
            "*" | "0.0.0.0" => "127.0.0.1".to_owned(),
            "::" => "::1".to_owned(),
            other => other.split(',').next().unwrap_or(other).trim().to_owned(),
        }
    }
}

impl Default for PoolingSection {
    fn default() -> Self {
        PoolingSection {
            listen_addr: "127.0.0.1".into(),
            listen_port: 6432,
            pool_mode: PoolMode::Transaction,
            max_client_conn: 200,
            default_pool_size: 20,
            reserve_pool_size: 5,
            reserve_pool_timeout: Duration::from_secs(3),
            databases: vec!["postgres".into()],
            read_only_suffix: "_ro".into(),
            read_only_fallback_to_primary: true,
            users: Vec::new(),
            admin_users: vec!["postgres".into()],
            stats_users: Vec::new(),
            server_check_query: "select 1".into(),
            server_login_retry: Duration::from_millis(250),
            ignore_startup_parameters: vec!["extra_float_digits".into()],
            ini_path: PathBuf::from("/etc/pgbouncer/pgbouncer.ini"),
            userlist_path: PathBuf::from("/etc/pgbouncer/userlist.txt"),
            pid_file: None,
            log_file: None,
            unix_socket_dir: None,
            os_user: "postgres".into(),
            poll_interval: Duration::from_millis(500),
            userlist_refresh: Duration::from_secs(60),
            max_prepared_statements: None,
            auth_user: None,
            auth_password: None,
            auth_query: None,
            auth_dbname: None,
            extra: BTreeMap::new(),
        }
    }
}

/// `[monitoring]`: the pgha-exporter, the alert rules `pgha render alerts` writes, OTLP export.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MonitoringSection {
    /// Address pgha-exporter serves `/metrics` and `/probe?target=NODE` on.
    pub listen: SocketAddr,
    /// Longest time one target's scrape may take; a slower or down target reports `pg_up 0`.
    #[serde(with = "humantime_serde")]
    pub target_timeout: Duration,
    /// Extra queries in postgres_exporter's queries.yml format; relative to the config file.
    pub queries_file: Option<PathBuf>,
    /// Thresholds of the rules `pgha render alerts` writes and of `pgha check`.
    pub alerts: AlertThresholds,
    /// OTLP/HTTP endpoint (e.g. `http://127.0.0.1:4318`) for metrics and spans; off when absent.
    pub otlp_endpoint: Option<String>,
}

impl Default for MonitoringSection {
    fn default() -> Self {
        MonitoringSection {
            listen: SocketAddr::from(([127, 0, 0, 1], 9187)),
            target_timeout: Duration::from_secs(2),
            queries_file: None,
            alerts: AlertThresholds::default(),
            otlp_endpoint: None,
        }
    }
}

/// `[monitoring.alerts]`: when the rendered alerts fire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertThresholds {
    /// How long a condition must hold before an alert fires (the rules' `for:`).
    #[serde(with = "humantime_serde")]
    pub for_duration: Duration,
    /// Replica more than this many bytes behind the primary.
    pub lag_bytes: ByteSize,
    /// Replica more than this many seconds behind the primary.
    pub lag_seconds: f64,
    /// Replication slot keeping more than this much WAL.
    pub slot_retained_bytes: ByteSize,
    /// Connections in use above this fraction of max_connections (0..1).
    pub connections_ratio: f64,
    /// Rolled-back transactions above this fraction of all transactions over 5 minutes (0..1).
    pub rollback_ratio: f64,
    /// Deadlocks per database over 5 minutes above this count.
    pub deadlocks: u64,
    /// No WAL segment archived for this long while archiving is on.
    #[serde(with = "humantime_serde")]
    pub archive_age: Duration,
    /// A table with more than 10000 dead rows and more than this fraction of its rows dead
    /// (0..1): autovacuum is not keeping up.
    pub dead_tuples_ratio: f64,
    /// A database whose oldest unfrozen transaction id is more than this many transactions
    /// old (wraparound stops writes at about 2.1 billion; autovacuum freezes from
    /// autovacuum_freeze_max_age, 200 million by default).
    pub xid_age: u64,
    /// A transaction open for longer than this (it holds back vacuum and replication slots).
    #[serde(with = "humantime_serde")]
    pub long_transaction: Duration,
}

impl Default for AlertThresholds {
    fn default() -> Self {
        AlertThresholds {
            for_duration: Duration::from_secs(60),
            lag_bytes: ByteSize(64 << 20),
            lag_seconds: 60.0,
            slot_retained_bytes: ByteSize(1 << 30),
            connections_ratio: 0.8,
            rollback_ratio: 0.1,
            deadlocks: 0,
            archive_age: Duration::from_secs(3600),
            dead_tuples_ratio: 0.1,
            xid_age: 1_000_000_000,
            long_transaction: Duration::from_secs(300),
        }
    }
}
