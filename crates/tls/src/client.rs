//! An HTTP client for the agents' API: HTTPS verified against the cluster CA when `[tls]`
//! has `agent_api`, plain HTTP otherwise.

use std::fmt::Display;
use std::time::Duration;

use pgha_config::PghaConfig;

use crate::{Result, TlsError};

/// The client and the scheme to use with it.
#[derive(Debug, Clone)]
pub struct AgentApiClient {
    pub client: reqwest::Client,
    pub scheme: &'static str,
}

impl AgentApiClient {
    /// Each request gives up after `timeout`.
    pub fn new(config: &PghaConfig, timeout: Duration) -> Result<Self> {
        let mut b = reqwest::Client::builder().timeout(timeout);
        let mut scheme = "http";
        if let Some(tls) = config.tls.as_ref().filter(|t| t.agent_api) {
            let ca = tls.ca_file();
            let pem = std::fs::read(&ca).map_err(TlsError::io("read the CA certificate", &ca))?;
            let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| TlsError::BadPem {
                path: ca.clone(),
                problem: e.to_string(),
            })?;
            b = b
                .use_rustls_tls()
                .add_root_certificate(cert)
                .https_only(true);
            scheme = "https";
        }
        let client = b.build().map_err(|e| TlsError::HttpClient(e.to_string()))?;
        Ok(AgentApiClient { client, scheme })
    }

    /// `scheme://addr/path`.
    pub fn url(&self, addr: impl Display, path: &str) -> String {
        format!("{}://{addr}{path}", self.scheme)
    }
}
