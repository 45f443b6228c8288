//! The DCS seam ([`pgha_agent_core::dcs`]: the trait and the values stored) with etcd v3 as
//! its implementation.

mod conn;
mod etcd;

pub use etcd::EtcdDcs;
pub use pgha_agent_core::dcs::*;
