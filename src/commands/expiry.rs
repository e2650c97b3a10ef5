//! The command expiry job's step: a job, so it acts as the system principal (every tenant's
//! executions in one pass).

use crate::app::AppState;

/// Ends executions past their `expiresAt` (queued → expired) or their result deadline
/// (delivered/running → failed), each once with its event, however many instances run it.
pub async fn expire_due(
    state: &AppState,
    now: i64,
) -> Result<herd_store::commands::ExpiryOutcome, herd_store::StoreError> {
    herd_store::commands::expire_due(&state.db, &state.system, now).await
}
