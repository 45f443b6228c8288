//! TLS for pgha: `pgha tls init` (a local CA and per-node certificates, issued with rcgen),
//! rustls configurations built from the `[tls]` files, and an HTTPS listener for the agents'
//! axum API.
//!
//! PostgreSQL and libpq tools read the PEM files themselves; this crate only issues them and
//! serves the agent API. Clients (sqlx, reqwest) are configured where they are built, from
//! [`pgha_config::TlsSection::ca_file`].

mod client;
mod error;
mod init;
mod listener;
mod server;

pub use client::AgentApiClient;
pub use error::{Result, TlsError};
pub use init::{init, InitOptions, InitReport, Issued};
pub use listener::TlsListener;
pub use server::{load_certs, server_config};
