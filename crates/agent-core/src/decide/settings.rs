//! The cluster settings (Patroni's dynamic configuration): the run loop adopts what the DCS
//! holds into [`Ctx`]; these rules hand it to PostgreSQL and seed the DCS copy.

use pgha_config::DynamicSettings;

use super::{Ctx, Decision};
use crate::action::Action;
use crate::dcs::ClusterView;
use crate::inputs::Inputs;
use crate::memory::Role;

/// Settings newer than those PostgreSQL was handed go to it first in the tick (so a start the
/// role logic spawns renders them), but never while a job runs (it may be writing the data
/// dir); a failure is retried a loop later.
pub(super) fn apply(ctx: &Ctx, d: &mut Decision, inp: &Inputs) {
    if ctx.generation <= d.next.config_applied || d.next.job.is_some() {
        return;
    }
    if let Some(f) = d.next.timers.config_failed {
        if inp.now.duration_since(f) < ctx.t.loop_wait {
            return;
        }
    }
    d.act(Action::ApplyConfig {
        generation: ctx.generation,
    });
}

/// The leader writes pgha.toml's dynamic settings into the DCS when it holds none (a new
/// cluster, or one made before pgha kept them there). Until then `ctx.cfg` is pgha.toml's.
pub(super) fn seed(ctx: &Ctx, d: &mut Decision, view: &ClusterView) {
    if view.config.settings.is_some() || d.next.role != Role::Leader || d.next.session.is_none() {
        return;
    }
    let mut config = view.config.clone();
    config.settings = Some(DynamicSettings::seed(&ctx.cfg).to_json());
    d.act(Action::SeedSettings {
        config,
        revision: view.config_revision,
    });
}
