//! Command-line interface definition.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use pgha_config::{ByteSize, ReplicationMode};

/// PostgreSQL high availability: status, checks and settings of a pgha cluster.
#[derive(Debug, Parser)]
#[command(name = "pgha", version, about, long_about = None)]
pub struct Cli {
    /// Cluster config file [default: $PGHA_CONFIG, else ./pgha.toml]
    #[arg(long, short = 'c', global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// More log output (-v info, -vv debug); RUST_LOG overrides.
    #[arg(long, short = 'v', global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Table of nodes: role, state, timeline, LSN, lag in bytes and seconds, sync state, slot.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Nagios-style checks: exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN, one summary line.
    Check {
        #[command(subcommand)]
        what: CheckCommand,
    },
    /// Write the settings files pgha applies (pgha.conf, pgha-node.conf, pg_hba.conf) for review.
    Render(RenderArgs),
    /// Members as the agents publish them in the DCS: leader, role, state, timeline, LSN, lag.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Who streams from whom: the replication tree from the members' published upstreams.
    Topology,
    /// The cluster settings kept in the DCS (Patroni's dynamic configuration; pgha.toml's
    /// seed while the first leader has not written them), as JSON.
    ShowConfig,
    /// Change the cluster settings in the DCS for every node: `ttl`, `loop_wait`,
    /// `retry_timeout`, `primary_start_timeout`, `failsafe_mode`, `maximum_lag_on_failover`,
    /// `maximum_lag_on_syncnode` and `postgresql.parameters`. Shows the
    /// change and asks before writing; validated like pgha.toml. A new `ttl` moves every
    /// agent to a lease of that TTL (no failover). Parameters that need a restart show under
    /// PENDING RESTART in `pgha list`.
    EditConfig(EditConfigArgs),
    /// Restart PostgreSQL on these nodes (every node when none is named: replicas first, the
    /// leader last, which keeps its lease: no failover) through their agents' `POST /restart`.
    Restart {
        nodes: Vec<String>,
        /// Only nodes where a setting waits for a restart (PENDING RESTART in `pgha list`).
        #[arg(long)]
        pending: bool,
        /// Not now but then: an RFC 3339 time (2026-12-01T02:00:00Z) or a delay (10m).
        #[arg(long, value_name = "TIME")]
        scheduled: Option<String>,
        /// Only nodes in this role.
        #[arg(long, value_parser = ["primary", "replica"])]
        role: Option<String>,
        /// Do not ask (needed when standard input is not a terminal).
        #[arg(long)]
        force: bool,
    },
    /// Wipe a replica and clone it afresh from the leader (its data dir is moved aside first),
    /// through its agent's `POST /reinitialize`. Refused on the leader.
    Reinit {
        node: String,
        /// Do not ask (needed when standard input is not a terminal).
        #[arg(long)]
        force: bool,
    },
    /// Reload pgha.toml on these nodes' agents (every node when none is named): tags,
    /// nofailover, noloadbalance apply; a change that needs a restart is refused and shown.
    Reload { nodes: Vec<String> },
    /// Promotions recorded in the DCS: the timeline that ended, the position, why, when, the
    /// new leader (Patroni's `history`).
    History {
        #[arg(long)]
        json: bool,
    },
    /// Planned switchover: the leader hands over to NODE (a healthy streaming replica within
    /// the lag bound) with no acknowledged write lost.
    Switchover {
        /// The new leader; default: the most advanced healthy replica (a synchronous
        /// standby in sync mode).
        #[arg(long)]
        to: Option<String>,
        /// Remove the scheduled switchover (one requested with --at) instead.
        #[arg(long, conflicts_with_all = ["to", "at", "no_wait"])]
        cancel: bool,
        /// When: an RFC 3339 time (2026-12-01T02:00:00Z) or a delay (30s, 5m).
        #[arg(long)]
        at: Option<String>,
        /// Return once the request is recorded instead of waiting for the new leader.
        #[arg(long)]
        no_wait: bool,
    },
    /// Manual failover to NODE, also when there is no leader; lag is not checked.
    Failover {
        #[arg(long)]
        to: String,
        #[arg(long)]
        no_wait: bool,
    },
    /// Stop automatic failover (agents keep reporting; the leader keeps its lease).
    Pause,
    /// Resume automatic failover.
    Resume,
    /// Make this standby cluster (`[standby_cluster]`) the primary site: its standby leader
    /// promotes and the site takes writes. Fence the old primary site first (docs/RUNBOOK.md).
    PromoteCluster {
        /// Return once the request is in the DCS, without waiting for a writable leader.
        #[arg(long)]
        no_wait: bool,
        /// Promote even though a node of the primary site still answers as writable (both
        /// sites then take writes: only when that site is fenced by other means).
        #[arg(long)]
        force: bool,
        /// How long to wait for the leader to become writable.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Undo `promote-cluster` on a site that is to follow the other one again
    /// (`[standby_cluster]` in pgha.toml). Refused while any of its nodes takes writes.
    DemoteCluster {
        /// Go on when one of this site's nodes could not be checked.
        #[arg(long)]
        force: bool,
    },
    /// The whole cluster end to end: nodes and roles, one primary, replicas streaming with
    /// active slots and bounded lag, a marker row replicated, sync standby, DCS leader, newest
    /// backup and WAL archive, exporter, PgBouncer, TLS, connections, cache hit ratio. Exit
    /// 0 all passed (or skipped: not configured), 1 a warning, 2 a failure, 3 unknown.
    Verify(VerifyArgs),
    /// TLS certificates: issue them (`init`), put them in place and reload (`install`).
    Tls {
        #[command(subcommand)]
        what: TlsCommand,
    },
    /// Switch the running cluster between async and sync replication (ALTER SYSTEM + reload on
    /// the primary). Only for clusters without agents (no `[dcs]`): the agents manage the mode.
    SetMode {
        #[arg(value_enum)]
        mode: ModeArg,
        /// Switch to sync even when no standby is connected (commits will wait for one).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Args)]
pub struct EditConfigArgs {
    /// Set a key of the document (dotted path), e.g. `ttl=20`, `loop_wait=500ms`,
    /// `maximum_lag_on_failover=2MB` or `postgresql.parameters.work_mem=8MB`; `KEY=null`
    /// removes it. Repeatable.
    #[arg(long = "set", short = 's', value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Set a PostgreSQL parameter (`postgresql.parameters.NAME`); `NAME=null` removes it.
    /// Repeatable.
    #[arg(long = "pg", short = 'p', value_name = "NAME=VALUE")]
    pub pg: Vec<String>,
    /// Edit the whole document in $EDITOR (default vi).
    #[arg(long, short = 'e', conflicts_with_all = ["set", "pg", "replace"])]
    pub editor: bool,
    /// Replace the whole document by this JSON file (`-`: standard input).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["set", "pg"])]
    pub replace: Option<PathBuf>,
    /// Write without asking (needed when standard input is not a terminal).
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    /// How long every replica has to show the marker row written on the primary.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub marker_timeout: std::time::Duration,
    /// Fail when client connections reach this fraction of max_connections (160 of 200).
    #[arg(long, default_value_t = 0.8)]
    pub max_connections_ratio: f64,
    /// Warn when the primary's buffer cache hit ratio is below this.
    #[arg(long, default_value_t = 0.9)]
    pub min_cache_hit: f64,
    /// Fail when the newest backup is older than this [default: the longest gap between two
    /// runs of `backup.schedule`, plus one hour].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub max_backup_age: Option<std::time::Duration>,
}

#[derive(Debug, Subcommand)]
pub enum TlsCommand {
    /// Create `[tls].dir`: a local CA (kept when it exists) and a certificate per node for
    /// its host and agent address. Keys are written 0600.
    Init {
        /// Validity of the node certificates, in days.
        #[arg(long, default_value_t = 825)]
        days: u32,
        /// Reissue node certificates that exist (rotation; follow with `pgha tls install`).
        #[arg(long)]
        renew: bool,
    },
    /// Copy each local node's certificate, key and the CA beside its data dir (owned by the
    /// server's OS user) and reload PostgreSQL: certificates rotate without a restart.
    Install {
        /// Only this node (default: every node whose data dir is on this machine).
        #[arg(long)]
        node: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ModeArg {
    Async,
    Sync,
}

impl From<ModeArg> for ReplicationMode {
    fn from(m: ModeArg) -> Self {
        match m {
            ModeArg::Async => ReplicationMode::Async,
            ModeArg::Sync => ReplicationMode::Sync,
        }
    }
}

impl std::fmt::Display for ModeArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        ReplicationMode::from(*self).fmt(f)
    }
}

#[derive(Debug, Subcommand)]
pub enum CheckCommand {
    /// Replicas streaming and within lag bounds.
    Replication(ReplicationCheckArgs),
    /// Client connections on every node against max_connections.
    Connections(ConnectionsCheckArgs),
    /// WAL archiving on the primary: failing attempts, segments waiting too long.
    Archiving(ArchivingCheckArgs),
}

#[derive(Debug, Args)]
pub struct ConnectionsCheckArgs {
    /// WARNING above this fraction of the non-reserved connections
    /// [default: monitoring.alerts.connections_ratio].
    #[arg(long)]
    pub warn_ratio: Option<f64>,
    /// CRITICAL above this fraction.
    #[arg(long, default_value_t = 0.95)]
    pub crit_ratio: f64,
}

#[derive(Debug, Args)]
pub struct ArchivingCheckArgs {
    /// WARNING when segments wait and nothing was archived for this many seconds
    /// [default: monitoring.alerts.archive_age].
    #[arg(long)]
    pub max_age_seconds: Option<f64>,
}

#[derive(Debug, Args)]
pub struct ReplicationCheckArgs {
    /// CRITICAL when a replica is more than this many bytes behind (e.g. 16MB).
    #[arg(long, default_value = "16MB", value_parser = parse_size)]
    pub max_lag_bytes: ByteSize,
    /// CRITICAL when a replica is more than this many seconds behind.
    #[arg(long, default_value_t = 30.0)]
    pub max_lag_seconds: f64,
    /// WARNING above this many bytes [default: half of --max-lag-bytes].
    #[arg(long, value_parser = parse_size)]
    pub warn_lag_bytes: Option<ByteSize>,
    /// WARNING above this many seconds [default: half of --max-lag-seconds].
    #[arg(long)]
    pub warn_lag_seconds: Option<f64>,
}

fn parse_size(s: &str) -> Result<ByteSize, String> {
    s.parse()
}

#[derive(Debug, Subcommand)]
pub enum RenderCommand {
    /// Prometheus alert rules with the thresholds of [monitoring.alerts].
    Alerts {
        /// File to write.
        #[arg(long, default_value = "pgha-alerts.yml")]
        out: PathBuf,
    },
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct RenderArgs {
    #[command(subcommand)]
    pub what: Option<RenderCommand>,
    /// Directory to write into; one sub-directory per node.
    #[arg(long, default_value = "pgha-rendered")]
    pub out: PathBuf,
    /// Only this node.
    #[arg(long)]
    pub node: Option<String>,
    /// Render replicas as streaming from this node [default: the live primary, else the first node].
    #[arg(long)]
    pub primary: Option<String>,
}
