//! The pgha agent's decision core, separated from every effect so it can be simulated.
//!
//! - [`inputs`]: what one tick sees (gathered by [`run::Agent`]);
//! - [`memory`]: what the agent carries between ticks (its role, session, job, timers);
//! - [`decide()`]: the pure function from memory and inputs to the next memory, the
//!   [`action`]s, and the reason;
//! - [`exec`]: runs actions against the seams ([`dcs::Dcs`], [`ports::PgNode`],
//!   [`ports::Peers`], [`ports::Watchdog`]) and reports [`inputs::Outcome`]s;
//! - [`election`] and [`cascade`]: pure rules every agent evaluates alike;
//! - [`sim`]: fakes of every seam and a deterministic simulator on virtual time that checks
//!   the safety rules after every step.

pub mod action;
pub mod cascade;
pub mod dcs;
pub mod decide;
pub mod election;
mod error;
pub mod exec;
pub mod inputs;
pub mod memory;
pub mod ports;
pub mod reload;
pub mod run;
pub mod shared;
pub mod sim;
pub mod timings;
mod types;

pub use decide::{decide, Ctx, Decision};
pub use error::{BoxError, CoreError, Result};

/// Milliseconds since the Unix epoch, for timestamps stored in the DCS.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
