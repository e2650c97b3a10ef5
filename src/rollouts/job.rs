//! The rollout job's step: a job, so it acts as the system principal (every tenant's running
//! rollouts in one pass), each rollout advanced through its own tenant's scope.

use herd_store::{StoreError, TenantScope};

use super::engine::{advance, Advanced};
use super::store;
use crate::app::AppState;

/// [`advance`] every running rollout of every tenant. A rollout whose step fails is logged and
/// retried at the next tick; the others go on.
pub async fn run_due(state: &AppState, now: i64) -> Result<Advanced, StoreError> {
    let running = store::running(&state.db, &state.system).await?;
    let mut total = Advanced { rollouts: running.len(), ..Advanced::default() };
    for (id, tenant) in running {
        let scope = TenantScope::for_system(&state.system, &state.db, tenant);
        match advance(state, &scope, id, now).await {
            Ok(done) => {
                total.notified += done.notified;
                total.skipped += done.skipped;
            }
            Err(error) => tracing::warn!(%error, rollout = %id, "cannot advance a rollout"),
        }
    }
    Ok(total)
}
