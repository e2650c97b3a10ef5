//! SQL for webhooks and their deliveries. Tenant-facing functions take a [`TenantScope`];
//! the delivery worker's claims are system-level and documented as such.

use sqlx::FromRow;

use crate::Json;
use herd_domain::ids::{DeliveryId, EventId, TenantId, WebhookId};
use herd_domain::status::DeliveryStatus;

use crate::TenantScope;
use crate::{classify, Db, Engine, StoreError, System, Tx};
use crate::{with_reader, with_tx, with_writer};

/// `Debug` is written out below so that the signing secret never reaches a log.
#[derive(Clone, FromRow)]
pub struct WebhookRow {
    pub id: WebhookId,
    pub tenant_id: TenantId,
    pub url: String,
    /// The event types it wants, stored as a JSON array; empty = all. A stored filter that
    /// does not parse fails the row's decoding: never read as "every event".
    pub events: Json<Vec<String>>,
    pub secret: String,
    pub enabled: bool,
    pub disabled_reason: Option<String>,
    /// The `tenant_seq` of the last of its tenant's events it has fanned out: a position among
    /// the tenant's own events, never the global `seq`.
    pub last_seq: i64,
    pub consecutive_failures: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

impl std::fmt::Debug for WebhookRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookRow")
            .field("id", &self.id)
            .field("tenant_id", &self.tenant_id)
            .field("url", &self.url)
            .field("events", &self.events)
            .field("secret", &"[redacted]")
            .field("enabled", &self.enabled)
            .field("disabled_reason", &self.disabled_reason)
            .field("last_seq", &self.last_seq)
            .field("consecutive_failures", &self.consecutive_failures)
            .field("created_at", &self.created_at)
            .field("updated_at", &self.updated_at)
            .finish()
    }
}

const WEBHOOK_COLUMNS: &str =
    "id, tenant_id, url, events, secret, enabled, disabled_reason, last_seq, consecutive_failures, created_at, updated_at";

#[derive(Debug, Clone, FromRow)]
pub struct DeliveryRow {
    pub id: DeliveryId,
    pub webhook_id: WebhookId,
    pub tenant_id: TenantId,
    pub event_seq: i64,
    pub event_id: EventId,
    pub event_type: String,
    pub status: DeliveryStatus,
    pub attempts: i64,
    pub next_attempt_at: i64,
    pub last_status_code: Option<i64>,
    pub last_error: Option<String>,
    pub last_duration_ms: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
}

const DELIVERY_COLUMNS: &str =
    "id, webhook_id, tenant_id, event_seq, event_id, event_type, status, attempts, next_attempt_at, \
                                last_status_code, last_error, last_duration_ms, created_at, updated_at";

/// A new subscription: it receives events that happen after it was made.
pub async fn create(
    scope: &TenantScope,
    url: &str,
    events: &[String],
    secret: &str,
    now: i64,
) -> Result<WebhookRow, StoreError> {
    let id = WebhookId::new();
    let tenant = scope.tenant_id().to_string();
    let latest = crate::events::latest_tenant_seq(scope).await?;
    let events_json = serde_json::to_string(events).unwrap_or_else(|_| "[]".into());
    let id_text = id.to_string();
    with_writer!(scope.db(), |pool| sqlx::query(
        "INSERT INTO webhooks (id, tenant_id, url, events, secret, enabled, last_seq, consecutive_failures, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, TRUE, $6, 0, $7, $7)"
    )
    .bind(&id_text)
    .bind(&tenant)
    .bind(url)
    .bind(&events_json)
    .bind(secret)
    .bind(latest)
    .bind(now)
    .execute(pool)
    .await
    .map(|r| r.rows_affected()))
    .map_err(classify)?;
    get(scope, id).await?.ok_or(StoreError::Other(sqlx::Error::RowNotFound))
}

pub async fn get(scope: &TenantScope, id: WebhookId) -> Result<Option<WebhookRow>, StoreError> {
    let sql = format!("SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE tenant_id = $1 AND id = $2");
    let (tenant, id) = (scope.tenant_id().to_string(), id.to_string());
    with_reader!(scope.db(), |pool| sqlx::query_as::<_, WebhookRow>(&sql)
        .bind(&tenant)
        .bind(&id)
        .fetch_optional(pool)
        .await)
    .map_err(classify)
}

pub async fn list(scope: &TenantScope, after: Option<&str>, limit: u32) -> Result<Vec<WebhookRow>, StoreError> {
    let sql = format!("SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE tenant_id = $1 AND id > $2 ORDER BY id LIMIT $3");
    let tenant = scope.tenant_id().to_string();
    with_reader!(scope.db(), |pool| sqlx::query_as::<_, WebhookRow>(&sql)
        .bind(&tenant)
        .bind(after.unwrap_or(""))
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await)
    .map_err(classify)
}

/// Changes a webhook; `enabled: Some(true)` also clears its failure count and reason.
pub async fn update(
    scope: &TenantScope,
    id: WebhookId,
    url: Option<&str>,
    events: Option<&[String]>,
    secret: Option<&str>,
    enabled: Option<bool>,
    now: i64,
) -> Result<Option<WebhookRow>, StoreError> {
    const SQL: &str =
        "UPDATE webhooks SET url = COALESCE($1, url), events = COALESCE($2, events), secret = COALESCE($3, secret), \
        enabled = COALESCE($4, enabled), \
        disabled_reason = CASE WHEN $4 IS NULL THEN disabled_reason WHEN $4 THEN NULL ELSE 'disabled by an admin' END, \
        consecutive_failures = CASE WHEN $4 THEN 0 ELSE consecutive_failures END, \
        updated_at = $5 WHERE tenant_id = $6 AND id = $7";
    let events_json = events.map(|e| serde_json::to_string(e).unwrap_or_else(|_| "[]".into()));
    let (tenant, id_text) = (scope.tenant_id().to_string(), id.to_string());
    let affected = with_writer!(scope.db(), |pool| sqlx::query(SQL)
        .bind(url)
        .bind(&events_json)
        .bind(secret)
        .bind(enabled)
        .bind(now)
        .bind(&tenant)
        .bind(&id_text)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))
    .map_err(classify)?;
    if affected == 0 {
        return Ok(None);
    }
    get(scope, id).await
}

pub async fn delete(scope: &TenantScope, id: WebhookId) -> Result<bool, StoreError> {
    let (tenant, id) = (scope.tenant_id().to_string(), id.to_string());
    let affected =
        with_writer!(scope.db(), |pool| sqlx::query("DELETE FROM webhooks WHERE tenant_id = $1 AND id = $2")
            .bind(&tenant)
            .bind(&id)
            .execute(pool)
            .await
            .map(|r| r.rows_affected()))
        .map_err(classify)?;
    Ok(affected == 1)
}

pub async fn list_deliveries(
    scope: &TenantScope,
    webhook: WebhookId,
    after: Option<&str>,
    limit: u32,
) -> Result<Vec<DeliveryRow>, StoreError> {
    let sql = format!(
        "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE tenant_id = $1 AND webhook_id = $2 AND id > $3 ORDER BY id LIMIT $4"
    );
    let (tenant, webhook) = (scope.tenant_id().to_string(), webhook.to_string());
    with_reader!(scope.db(), |pool| sqlx::query_as::<_, DeliveryRow>(&sql)
        .bind(&tenant)
        .bind(&webhook)
        .bind(after.unwrap_or(""))
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await)
    .map_err(classify)
}

/// Deliveries not yet done (pending or in flight), all tenants, and when the oldest of them was
/// created: the `herd_event_backlog` and `herd_event_backlog_oldest_age_seconds` metrics.
pub async fn backlog(db: &Db) -> Result<Backlog, StoreError> {
    let (deliveries, oldest_created_at): (i64, Option<i64>) = with_reader!(db, |pool| sqlx::query_as(
        "SELECT COUNT(*), MIN(created_at) FROM webhook_deliveries WHERE status IN ('pending', 'in_flight')"
    )
    .fetch_one(pool)
    .await)
    .map_err(classify)?;
    Ok(Backlog { deliveries, oldest_created_at })
}

/// The webhook deliveries still to be made ([`backlog`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backlog {
    /// Pending or in flight.
    pub deliveries: i64,
    /// Creation time (ms) of the oldest of them; `None` when there are none.
    pub oldest_created_at: Option<i64>,
}

/// System-level: ids of enabled webhooks (the fan-out walks them one by one).
pub async fn enabled_ids(db: &Db, _system: &System) -> Result<Vec<WebhookId>, StoreError> {
    let rows: Vec<(WebhookId,)> =
        with_reader!(db, |pool| sqlx::query_as("SELECT id FROM webhooks WHERE enabled ORDER BY id")
            .fetch_all(pool)
            .await)
        .map_err(classify)?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}

/// System-level: locks one enabled webhook for fan-out inside `tx`; `None` if it is gone,
/// disabled, or (PostgreSQL) being fanned out by another instance right now.
pub async fn lock_for_fan_out(
    tx: &mut Tx,
    _system: &System,
    engine: Engine,
    id: WebhookId,
) -> Result<Option<WebhookRow>, StoreError> {
    let lock = match engine {
        Engine::Sqlite => "",
        Engine::Postgres => " FOR UPDATE SKIP LOCKED",
    };
    let sql = format!("SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE id = $1 AND enabled{lock}");
    with_tx!(tx, |conn| sqlx::query_as::<_, WebhookRow>(&sql).bind(id).fetch_optional(&mut *conn).await)
        .map_err(classify)
}

/// System-level: one delivery per (webhook, event); a second insert of the same pair is a no-op.
pub async fn insert_delivery(
    tx: &mut Tx,
    webhook: &WebhookRow,
    seq: i64,
    event_id: EventId,
    event_type: &str,
    now: i64,
) -> Result<(), StoreError> {
    const SQL: &str = "INSERT INTO webhook_deliveries (id, webhook_id, tenant_id, event_seq, event_id, event_type, status, attempts, \
        next_attempt_at, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, 'pending', 0, $7, $7, $7) \
        ON CONFLICT (webhook_id, event_seq) DO NOTHING";
    let id = DeliveryId::new();
    with_tx!(tx, |conn| sqlx::query(SQL)
        .bind(id)
        .bind(webhook.id)
        .bind(webhook.tenant_id)
        .bind(seq)
        .bind(event_id)
        .bind(event_type)
        .bind(now)
        .execute(&mut *conn)
        .await
        .map(|r| r.rows_affected()))
    .map_err(classify)?;
    Ok(())
}

/// Moves the webhook's cursor forward to `last_seq`, a `tenant_seq`.
pub async fn advance(tx: &mut Tx, webhook_id: WebhookId, last_seq: i64) -> Result<(), StoreError> {
    with_tx!(tx, |conn| sqlx::query("UPDATE webhooks SET last_seq = $1 WHERE id = $2 AND last_seq < $1")
        .bind(last_seq)
        .bind(webhook_id)
        .execute(&mut *conn)
        .await
        .map(|r| r.rows_affected()))
    .map_err(classify)?;
    Ok(())
}

/// System-level: claims up to `limit` due deliveries of enabled webhooks for `lease_ms`.
/// A delivery whose lease ran out (its worker died) is due again.
pub async fn claim_due(
    db: &Db,
    _system: &System,
    now: i64,
    lease_ms: i64,
    limit: i64,
) -> Result<Vec<DeliveryRow>, StoreError> {
    let due = "((status = 'pending' AND next_attempt_at <= $2) OR (status = 'in_flight' AND locked_until < $2)) \
               AND webhook_id IN (SELECT id FROM webhooks WHERE enabled)";
    let sql = match db.engine() {
        Engine::Sqlite => format!(
            "UPDATE webhook_deliveries SET status = 'in_flight', locked_until = $1, updated_at = $2 WHERE id IN \
             (SELECT id FROM webhook_deliveries WHERE {due} ORDER BY next_attempt_at LIMIT $3) RETURNING {DELIVERY_COLUMNS}"
        ),
        Engine::Postgres => format!(
            "UPDATE webhook_deliveries SET status = 'in_flight', locked_until = $1, updated_at = $2 WHERE id IN \
             (SELECT id FROM webhook_deliveries WHERE {due} ORDER BY next_attempt_at LIMIT $3 FOR UPDATE SKIP LOCKED) \
             RETURNING {DELIVERY_COLUMNS}"
        ),
    };
    with_writer!(db, |pool| sqlx::query_as::<_, DeliveryRow>(&sql)
        .bind(now + lease_ms)
        .bind(now)
        .bind(limit)
        .fetch_all(pool)
        .await)
    .map_err(classify)
}

/// System-level: the webhook a claimed delivery belongs to.
pub async fn webhook_by_id(db: &Db, _system: &System, id: WebhookId) -> Result<Option<WebhookRow>, StoreError> {
    let sql = format!("SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE id = $1");
    with_reader!(db, |pool| sqlx::query_as::<_, WebhookRow>(&sql).bind(id).fetch_optional(pool).await).map_err(classify)
}

/// The result of one attempt.
pub struct AttemptResult {
    pub delivery_id: DeliveryId,
    pub webhook_id: WebhookId,
    pub succeeded: bool,
    pub status_code: Option<i64>,
    pub error: Option<String>,
    pub duration_ms: i64,
    /// When to try again; `None` with `succeeded == false` means give up (`dead`).
    pub retry_at: Option<i64>,
}

/// Records an attempt and updates the webhook's failure streak; answers the streak.
pub async fn record_attempt(tx: &mut Tx, result: &AttemptResult, now: i64) -> Result<i64, StoreError> {
    let status = match (result.succeeded, result.retry_at) {
        (true, _) => DeliveryStatus::Succeeded,
        (false, Some(_)) => DeliveryStatus::Pending,
        (false, None) => DeliveryStatus::Dead,
    };
    with_tx!(tx, |conn| {
        sqlx::query(
            "UPDATE webhook_deliveries SET status = $1, attempts = attempts + 1, next_attempt_at = COALESCE($2, next_attempt_at), \
             locked_until = NULL, last_status_code = $3, last_error = $4, last_duration_ms = $5, updated_at = $6 WHERE id = $7",
        )
        .bind(status)
        .bind(result.retry_at)
        .bind(result.status_code)
        .bind(&result.error)
        .bind(result.duration_ms)
        .bind(now)
        .bind(result.delivery_id)
        .execute(&mut *conn)
        .await?;
        let streak_sql = if result.succeeded {
            "UPDATE webhooks SET consecutive_failures = 0 WHERE id = $1 RETURNING consecutive_failures"
        } else {
            "UPDATE webhooks SET consecutive_failures = consecutive_failures + 1 WHERE id = $1 RETURNING consecutive_failures"
        };
        let streak: Option<(i64,)> = sqlx::query_as(streak_sql).bind(result.webhook_id).fetch_optional(&mut *conn).await?;
        Ok::<_, sqlx::Error>(streak.map(|(n,)| n).unwrap_or(0))
    })
    .map_err(classify)
}

/// Switches a webhook off; true if this call did it (so its event is emitted once).
pub async fn disable(tx: &mut Tx, webhook_id: WebhookId, reason: &str, now: i64) -> Result<bool, StoreError> {
    let affected = with_tx!(tx, |conn| sqlx::query(
        "UPDATE webhooks SET enabled = FALSE, disabled_reason = $1, updated_at = $2 WHERE id = $3 AND enabled"
    )
    .bind(reason)
    .bind(now)
    .bind(webhook_id)
    .execute(&mut *conn)
    .await
    .map(|r| r.rows_affected()))
    .map_err(classify)?;
    Ok(affected == 1)
}

#[cfg(test)]
mod tests {
    use herd_domain::ids::{DeviceId, TenantId, WebhookId};
    use herd_domain::Event;

    use crate::test_db::{self, TestDb};
    use crate::{with_reader, with_writer, Db};

    /// When events occurred: the ones retention purges before the migration at 0, the rest at 1.
    const PURGED: i64 = 0;
    const KEPT: i64 = 1;

    /// Migration 0016 moves cursors an older herd left as global `seq`s to `tenant_seq`s.
    async fn cursors_become_positions_among_the_tenants_events(test: TestDb) {
        let db = &test.db;
        let (a, b, c) = (test_db::tenant(db).await, test_db::tenant(db).await, test_db::tenant(db).await);
        // Global seq 1..=10 are b's, 11 a's first (purged), 12..=13 a's next two, 14..=18 b's,
        // 19..=20 a's last two, 21..=27 c's (all purged).
        for (tenant, n, occurred) in
            [(b, 10, KEPT), (a, 1, PURGED), (a, 2, KEPT), (b, 5, KEPT), (a, 2, KEPT), (c, 7, PURGED)]
        {
            for _ in 0..n {
                event(db, tenant, occurred).await;
            }
        }
        assert_eq!(crate::events::purge(db, KEPT).await.unwrap(), 8);
        let hooks = [
            (a, 13, 3), // fanned out a's first three, advanced to the third's global seq
            (a, 0, 1),  // made before any event: a's first is gone, so just before a's oldest left
            (a, 20, 5), // made last: the old start was the tenant's MAX(seq)
            (a, 11, 1), // its last event (a's first) was purged: just before a's oldest left
            (b, 18, 15),
            (c, 50, 7), // no events left at all: the tenant's counter
        ];
        let mut ids = Vec::new();
        for (tenant, old, _) in hooks {
            ids.push(webhook(db, tenant, old).await);
        }
        db.migrate().await.unwrap();
        for (id, (_, old, expected)) in ids.into_iter().zip(hooks) {
            let sql = "SELECT last_seq FROM webhooks WHERE id = $1";
            let (now,): (i64,) = with_reader!(db, |pool| sqlx::query_as(sql).bind(id).fetch_one(pool).await).unwrap();
            assert_eq!(now, expected, "a cursor at global seq {old}");
        }
    }

    /// One event of `tenant`, written the way every event is (`Tx::record`, `Tx::commit`).
    async fn event(db: &Db, tenant: TenantId, occurred: i64) {
        let mut tx = db.begin().await.unwrap();
        let event = Event::DeviceRegistered { device_id: DeviceId::new(), name: "migrated".into(), via: "admin" };
        tx.record(tenant, &event, occurred);
        tx.commit().await.unwrap();
    }

    /// A webhook row as an older herd left it, its cursor at global `seq` `last_seq`.
    async fn webhook(db: &Db, tenant: TenantId, last_seq: i64) -> WebhookId {
        let id = WebhookId::new();
        let sql = "INSERT INTO webhooks (id, tenant_id, url, events, secret, enabled, last_seq, consecutive_failures, \
                   created_at, updated_at) VALUES ($1, $2, 'https://hooks.example.com/h', '[]', 's', TRUE, $3, 0, 0, 0)";
        with_writer!(db, |pool| sqlx::query(sql).bind(id).bind(tenant).bind(last_seq).execute(pool).await.map(drop))
            .unwrap();
        id
    }

    #[tokio::test]
    async fn migrated_cursors_on_sqlite() {
        cursors_become_positions_among_the_tenants_events(test_db::sqlite_migrated_to(Some(15)).await).await;
    }

    #[tokio::test]
    async fn migrated_cursors_on_postgres() {
        if let Some(test) = test_db::postgres_migrated_to(Some(15)).await {
            cursors_become_positions_among_the_tenants_events(test).await;
        }
    }
}
