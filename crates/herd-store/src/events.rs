//! SQL for reading the outbox. Events become visible in `seq` order (see [`crate::Tx::commit`]:
//! writers of events are serialised until they commit), so "everything after seq N" is a
//! safe place to resume from on both engines. Tenants see `tenant_seq`, their own count; the
//! global `seq` stays inside herd (webhook delivery), so no tenant can count another's events.

use sqlx::FromRow;

use herd_domain::ids::{EventId, TenantId};

use crate::TenantScope;
use crate::{classify, Db, StoreError};
use crate::{with_reader, with_writer};

/// An event as stored.
#[derive(Debug, Clone, FromRow)]
pub struct EventRow {
    /// The global position: internal only.
    pub seq: i64,
    /// The position among the tenant's own events: what cursors and stream ids carry.
    pub tenant_seq: i64,
    pub id: EventId,
    pub tenant_id: TenantId,
    #[sqlx(rename = "type")]
    pub event_type: String,
    pub occurred_at: i64,
    pub data: String,
}

const COLUMNS: &str = "seq, tenant_seq, id, tenant_id, type, occurred_at, data";

/// Events of the scope's tenant after `after` (a `tenant_seq`), optionally only of some types,
/// oldest first.
pub async fn list(scope: &TenantScope, after: i64, types: &[String], limit: u32) -> Result<Vec<EventRow>, StoreError> {
    let mut sql = format!("SELECT {COLUMNS} FROM events WHERE tenant_id = $1 AND tenant_seq > $2");
    if !types.is_empty() {
        let placeholders: Vec<String> = (0..types.len()).map(|i| format!("${}", i + 3)).collect();
        sql.push_str(&format!(" AND type IN ({})", placeholders.join(", ")));
    }
    sql.push_str(&format!(" ORDER BY tenant_seq LIMIT ${}", types.len() + 3));
    with_reader!(scope.db(), |pool| {
        let mut query = sqlx::query_as::<_, EventRow>(&sql).bind(scope.tenant_id()).bind(after);
        for event_type in types {
            query = query.bind(event_type);
        }
        query.bind(i64::from(limit)).fetch_all(pool).await
    })
    .map_err(classify)
}

/// The newest `tenant_seq` of the scope's tenant (0 if none): where a stream without
/// `Last-Event-ID` starts, and where a new webhook does.
pub async fn latest_tenant_seq(scope: &TenantScope) -> Result<i64, StoreError> {
    let (seq,): (Option<i64>,) =
        with_reader!(scope.db(), |pool| sqlx::query_as("SELECT seq FROM event_counters WHERE tenant_id = $1")
            .bind(scope.tenant_id())
            .fetch_optional(pool)
            .await
            .map(|row| row.unwrap_or((None,))))
        .map_err(classify)?;
    Ok(seq.unwrap_or(0))
}

/// One event of the scope's tenant by global `seq` (webhook delivery).
pub async fn get(scope: &TenantScope, seq: i64) -> Result<Option<EventRow>, StoreError> {
    with_reader!(scope.db(), |pool| sqlx::query_as::<_, EventRow>(&format!(
        "SELECT {COLUMNS} FROM events WHERE tenant_id = $1 AND seq = $2"
    ))
    .bind(scope.tenant_id())
    .bind(seq)
    .fetch_optional(pool)
    .await)
    .map_err(classify)
}

/// Deletes events that occurred before `before`; answers how many. The per-tenant counters
/// stay, so a tenant's `tenant_seq` never goes back.
pub async fn purge(db: &Db, before: i64) -> Result<u64, StoreError> {
    with_writer!(db, |pool| sqlx::query("DELETE FROM events WHERE occurred_at < $1")
        .bind(before)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))
    .map_err(classify)
}
