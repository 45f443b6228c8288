//! Picking the node a backup is taken from and connecting to it.

use pgha_config::{NodeConfig, PghaConfig};
use pgha_postgres::ConnectParams;
use sqlx::PgConnection;

use crate::{BackupError, Result};

/// A connected node.
#[derive(Debug)]
pub struct Connected {
    pub node: NodeConfig,
    pub params: ConnectParams,
    pub conn: PgConnection,
}

/// `wanted` when given; else the first node answering as primary (or as a standby when
/// `from_standby`).
pub async fn pick_node(
    config: &PghaConfig,
    wanted: Option<&str>,
    from_standby: bool,
) -> Result<Connected> {
    let candidates: Vec<&NodeConfig> = match wanted {
        Some(n) => vec![config.node(n).ok_or_else(|| {
            BackupError::Usage(format!("node `{n}` is not in the config's [[nodes]]"))
        })?],
        None => config.nodes.iter().collect(),
    };
    let mut tried = Vec::new();
    for node in candidates {
        let mut params = pgha_postgres::connect_params(config, node)?;
        params.application_name = "pgha-backup".into();
        params.statement_timeout = None;
        let mut conn = match params.connect().await {
            Ok(c) => c,
            Err(e) => {
                tried.push(format!("{}: {e}", node.name));
                continue;
            }
        };
        let standby: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
            .fetch_one(&mut conn)
            .await
            .map_err(BackupError::query(&node.name))?;
        if wanted.is_some() || standby == from_standby {
            return Ok(Connected {
                node: node.clone(),
                params,
                conn,
            });
        }
        tried.push(format!(
            "{}: is a {}",
            node.name,
            if standby { "standby" } else { "primary" }
        ));
    }
    Err(BackupError::Usage(format!(
        "no {} node to back up ({})",
        if from_standby { "standby" } else { "primary" },
        tried.join("; ")
    )))
}
