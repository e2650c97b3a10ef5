//! SQL for remote commands. A command (`commands`) is what an operator sent; each targeted
//! device has one execution (`command_executions`) that carries its lifecycle. Every function
//! but [`expire_due`] binds the scope's tenant id; every transition is a conditional `UPDATE`
//! (the state it leaves is in its `WHERE`), so concurrent callers on any number of instances
//! make each transition, and its event, once.

use sqlx::FromRow;

use herd_domain::ids::{CommandId, DeviceId, TenantId};
use herd_domain::status::{CommandState, CommandType, DeviceStatus};
use herd_domain::Event;

use crate::cache::Touch;
use crate::{classify, with_reader, with_tx, Db, Engine, Page, StoreError, System, TenantScope, Tx};

/// The PostgreSQL notification channel that wakes devices' long polls on every instance.
pub const CHANNEL: &str = "herd_commands";

/// A command as stored.
#[derive(Debug, Clone, FromRow)]
pub struct CommandRow {
    pub id: CommandId,
    #[sqlx(rename = "type")]
    pub command_type: CommandType,
    /// The validated payload, as JSON text.
    pub payload: String,
    /// What was targeted, as JSON text.
    pub target: String,
    pub total: i64,
    pub created_by: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub timeout_ms: i64,
    pub cancelled_at: Option<i64>,
}

const COMMAND_COLUMNS: &str =
    "id, type, payload, target, total, created_by, created_at, expires_at, timeout_ms, cancelled_at";

/// One device's execution of a command, with the command's type and payload.
#[derive(Debug, Clone, FromRow)]
pub struct ExecutionRow {
    pub command_id: CommandId,
    pub device_id: DeviceId,
    pub command_type: CommandType,
    pub payload: String,
    pub state: CommandState,
    pub created_at: i64,
    pub expires_at: i64,
    pub timeout_ms: i64,
    pub queued_at: i64,
    pub delivered_at: Option<i64>,
    pub deliveries: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    /// While delivered or running: when the result is due (the expiry job fails it after).
    pub due_at: Option<i64>,
    pub progress: Option<i64>,
    pub message: Option<String>,
    /// The device's result, as JSON text.
    pub result: Option<String>,
    pub error: Option<String>,
    pub attachment_key: Option<String>,
    pub attachment_type: Option<String>,
    pub attachment_size: Option<i64>,
    pub updated_at: i64,
}

const EXECUTION_SELECT: &str = "SELECT e.command_id, e.device_id, c.type AS command_type, c.payload, e.state, \
    c.created_at, c.expires_at, c.timeout_ms, e.queued_at, e.delivered_at, e.deliveries, e.started_at, \
    e.finished_at, e.due_at, e.progress, e.message, e.result, e.error, e.attachment_key, e.attachment_type, \
    e.attachment_size, e.updated_at FROM command_executions e JOIN commands c ON c.id = e.command_id";

/// Which devices a new command goes to (always within the scope's tenant).
#[derive(Debug, Clone)]
pub enum Target {
    /// These devices; ids that name no device of the tenant are ignored.
    Devices(Vec<DeviceId>),
    /// Every device with this tag and/or status; neither: the whole tenant.
    Filter { tag: Option<String>, status: Option<DeviceStatus> },
}

/// A command to queue.
#[derive(Debug, Clone)]
pub struct NewCommand<'a> {
    pub command_type: CommandType,
    pub payload: &'a str,
    pub target: &'a Target,
    /// `target` as the operator wrote it (JSON), kept for the record.
    pub target_json: &'a str,
    pub created_by: &'a str,
    pub expires_at: i64,
    pub timeout_ms: i64,
}

/// What a device reports about one of its commands.
#[derive(Debug, Clone)]
pub enum Report<'a> {
    /// Started (or still running): `delivered → running`, or a progress update while running.
    Progress { progress: Option<i64>, message: Option<&'a str> },
    /// The outcome: `succeeded` or `failed`, with a result (JSON text) or an error message.
    Finished { state: CommandState, result: Option<&'a str>, error: Option<&'a str> },
}

/// The answer to a transition request.
#[derive(Debug)]
pub enum Transition {
    /// Done; the execution as it is now.
    Done(Box<ExecutionRow>),
    /// The same report again (an idempotent repeat): nothing changed.
    Unchanged(Box<ExecutionRow>),
    /// No such execution in the tenant (or not the caller's).
    NotFound,
    /// Not allowed from the execution's current state (given).
    Conflict(CommandState),
}

/// Queues a command for every device of `target` in the scope's tenant: one command row and,
/// with one `INSERT … SELECT`, one execution per device. `None` (and nothing written) when the
/// target matches no device. The `command.queued` event and, on PostgreSQL, a notification on
/// [`CHANNEL`] (`origin tenant device-or-*`) go with the commit.
pub async fn create(
    scope: &TenantScope,
    command: &NewCommand<'_>,
    origin: &str,
    now: i64,
) -> Result<Option<CommandRow>, StoreError> {
    let mut tx = scope.db().begin().await?;
    let row = create_in(&mut tx, scope.tenant_id(), CommandId::new(), command, origin, now).await?;
    if row.is_some() {
        tx.commit().await?;
    }
    Ok(row)
}

/// [`create`] inside a caller's transaction (a rollout queues its `install_package` commands
/// with the devices' state change), under a command id the caller chose.
pub(crate) async fn create_in(
    tx: &mut Tx,
    tenant: TenantId,
    id: CommandId,
    command: &NewCommand<'_>,
    origin: &str,
    now: i64,
) -> Result<Option<CommandRow>, StoreError> {
    let engine = match &tx.conn {
        crate::TxConn::Postgres(_) => Engine::Postgres,
        crate::TxConn::Sqlite(_) => Engine::Sqlite,
    };
    let sql = format!(
        "INSERT INTO commands (tenant_id, {COMMAND_COLUMNS}) VALUES ($9, $1, $2, $3, $4, 0, $5, $6, $7, $8, NULL) \
         RETURNING {COMMAND_COLUMNS}"
    );
    let mut row: CommandRow = with_tx!(tx, |conn| sqlx::query_as::<_, CommandRow>(&sql)
        .bind(id)
        .bind(command.command_type)
        .bind(command.payload)
        .bind(command.target_json)
        .bind(command.created_by)
        .bind(now)
        .bind(command.expires_at)
        .bind(command.timeout_ms)
        .bind(tenant)
        .fetch_one(&mut *conn)
        .await)
    .map_err(classify)?;
    const INSERT: &str = "INSERT INTO command_executions (command_id, device_id, tenant_id, state, queued_at, due_at, \
        updated_at) SELECT $1, d.id, d.tenant_id, 'queued', $2, $3, $2 FROM devices d WHERE d.tenant_id = $4";
    let inserted = match command.target {
        Target::Devices(ids) => {
            let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
            let json = serde_json::to_string(&ids).unwrap_or_else(|_| "[]".into());
            let sql = match engine {
                Engine::Postgres => format!("{INSERT} AND d.id IN (SELECT jsonb_array_elements_text($5::jsonb))"),
                Engine::Sqlite => format!("{INSERT} AND d.id IN (SELECT value FROM json_each($5))"),
            };
            with_tx!(tx, |conn| sqlx::query(&sql)
                .bind(id)
                .bind(now)
                .bind(command.expires_at)
                .bind(tenant)
                .bind(&json)
                .execute(&mut *conn)
                .await
                .map(|r| r.rows_affected()))
        }
        Target::Filter { tag, status } => {
            let sql = format!(
                "{INSERT} AND ($5 IS NULL OR d.status = $5) AND ($6 IS NULL OR EXISTS (SELECT 1 FROM device_tags t \
                 WHERE t.tenant_id = d.tenant_id AND t.device_id = d.id AND t.tag = $6))"
            );
            with_tx!(tx, |conn| sqlx::query(&sql)
                .bind(id)
                .bind(now)
                .bind(command.expires_at)
                .bind(tenant)
                .bind(status.map(|s| s.as_str()))
                .bind(tag.as_deref())
                .execute(&mut *conn)
                .await
                .map(|r| r.rows_affected()))
        }
    }
    .map_err(classify)?;
    if inserted == 0 {
        return Ok(None);
    }
    let total = i64::try_from(inserted).unwrap_or(i64::MAX);
    with_tx!(tx, |conn| sqlx::query("UPDATE commands SET total = $1 WHERE id = $2")
        .bind(total)
        .bind(id)
        .execute(&mut *conn)
        .await
        .map(drop))
    .map_err(classify)?;
    row.total = total;
    let single = match command.target {
        Target::Devices(ids) if ids.len() == 1 => Some(ids[0]),
        _ => None,
    };
    tx.record(
        tenant,
        &Event::CommandQueued { command_id: id, command_type: command.command_type, device_id: single, total },
        now,
    );
    tx.touch(single.map_or(Touch::Tenant(tenant), Touch::Device));
    let woken = single.map_or_else(|| "*".to_string(), |device| device.to_string());
    notify(tx, &format!("{origin} {tenant} {woken}")).await?;
    Ok(Some(row))
}

/// Sends `payload` on [`CHANNEL`] when `tx` commits (PostgreSQL's `NOTIFY` is transactional);
/// nothing on SQLite, where one process serves the database and wakes its own waiters.
async fn notify(tx: &mut Tx, payload: &str) -> Result<(), StoreError> {
    if let crate::TxConn::Postgres(conn) = &mut tx.conn {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(payload)
            .execute(&mut **conn)
            .await
            .map_err(classify)?;
    }
    Ok(())
}

/// One command of the tenant.
pub async fn get(scope: &TenantScope, id: CommandId) -> Result<Option<CommandRow>, StoreError> {
    let sql = format!("SELECT {COMMAND_COLUMNS} FROM commands WHERE tenant_id = $1 AND id = $2");
    with_reader!(scope.db(), |pool| sqlx::query_as::<_, CommandRow>(&sql)
        .bind(scope.tenant_id())
        .bind(id)
        .fetch_optional(pool)
        .await)
    .map_err(classify)
}

/// The tenant's commands, oldest first.
pub async fn list(scope: &TenantScope, page: &Page) -> Result<Vec<CommandRow>, StoreError> {
    let after = page.after.as_deref().unwrap_or("");
    let sql = format!("SELECT {COMMAND_COLUMNS} FROM commands WHERE tenant_id = $1 AND id > $2 ORDER BY id LIMIT $3");
    with_reader!(scope.db(), |pool| sqlx::query_as::<_, CommandRow>(&sql)
        .bind(scope.tenant_id())
        .bind(after)
        .bind(i64::from(page.limit) + 1)
        .fetch_all(pool)
        .await)
    .map_err(classify)
}

/// How many of a command's executions are in each state (states with none are left out).
pub async fn counts(scope: &TenantScope, id: CommandId) -> Result<Vec<(CommandState, i64)>, StoreError> {
    with_reader!(scope.db(), |pool| sqlx::query_as::<_, (CommandState, i64)>(
        "SELECT state, COUNT(*) FROM command_executions WHERE tenant_id = $1 AND command_id = $2 GROUP BY state"
    )
    .bind(scope.tenant_id())
    .bind(id)
    .fetch_all(pool)
    .await)
    .map_err(classify)
}

/// A command's executions in device order (the page's cursor is a device id), optionally only
/// those in `state`.
pub async fn executions(
    scope: &TenantScope,
    id: CommandId,
    state: Option<CommandState>,
    page: &Page,
) -> Result<Vec<ExecutionRow>, StoreError> {
    list_executions(scope, ("command_id", "device_id"), &id.to_string(), state, page, false).await
}

/// A device's executions in command order, oldest first or (`newest_first`) newest first (the
/// page's cursor is a command id; ids are time-ordered), optionally only those in `state`.
pub async fn for_device(
    scope: &TenantScope,
    device_id: DeviceId,
    state: Option<CommandState>,
    page: &Page,
    newest_first: bool,
) -> Result<Vec<ExecutionRow>, StoreError> {
    list_executions(scope, ("device_id", "command_id"), &device_id.to_string(), state, page, newest_first).await
}

/// The executions whose `fixed.0` column is `value`, ordered (and paged) by the `fixed.1` column,
/// ascending or (`descending`) descending; both walk the same index.
async fn list_executions(
    scope: &TenantScope,
    (fixed, order): (&str, &str),
    value: &str,
    state: Option<CommandState>,
    page: &Page,
    descending: bool,
) -> Result<Vec<ExecutionRow>, StoreError> {
    let after = page.after.as_deref().unwrap_or("");
    // An empty cursor is the first page: everything is after it in ascending order, and in
    // descending order it bounds nothing.
    let (bound, direction) =
        if descending { (format!("($3 = '' OR e.{order} < $3)"), "DESC") } else { (format!("e.{order} > $3"), "ASC") };
    let sql = format!(
        "{EXECUTION_SELECT} WHERE e.tenant_id = $1 AND e.{fixed} = $2 AND {bound} \
         AND ($4 IS NULL OR e.state = $4) ORDER BY e.{order} {direction} LIMIT $5"
    );
    with_reader!(scope.db(), |pool| sqlx::query_as::<_, ExecutionRow>(&sql)
        .bind(scope.tenant_id())
        .bind(value)
        .bind(after)
        .bind(state.map(|s| s.as_str()))
        .bind(i64::from(page.limit) + 1)
        .fetch_all(pool)
        .await)
    .map_err(classify)
}

/// One device's execution of one command.
pub async fn execution(
    scope: &TenantScope,
    id: CommandId,
    device_id: DeviceId,
) -> Result<Option<ExecutionRow>, StoreError> {
    let sql = format!("{EXECUTION_SELECT} WHERE e.tenant_id = $1 AND e.command_id = $2 AND e.device_id = $3");
    with_reader!(scope.db(), |pool| sqlx::query_as::<_, ExecutionRow>(&sql)
        .bind(scope.tenant_id())
        .bind(id)
        .bind(device_id)
        .fetch_optional(pool)
        .await)
    .map_err(classify)
}

async fn execution_in(
    tx: &mut Tx,
    scope: &TenantScope,
    id: CommandId,
    device_id: DeviceId,
) -> Result<Option<ExecutionRow>, StoreError> {
    let sql = format!("{EXECUTION_SELECT} WHERE e.tenant_id = $1 AND e.command_id = $2 AND e.device_id = $3");
    with_tx!(tx, |conn| sqlx::query_as::<_, ExecutionRow>(&sql)
        .bind(scope.tenant_id())
        .bind(id)
        .bind(device_id)
        .fetch_optional(&mut *conn)
        .await)
    .map_err(classify)
}

/// True if the device has a command to hand out now: queued and not expired, or delivered at
/// or before `redeliver_before` without an acknowledgement. A read (no writer involved), so a
/// poll that finds nothing costs one indexed lookup.
pub async fn has_waiting(
    scope: &TenantScope,
    device_id: DeviceId,
    now: i64,
    redeliver_before: i64,
) -> Result<bool, StoreError> {
    let found: Option<(CommandId,)> = with_reader!(scope.db(), |pool| sqlx::query_as(
        "SELECT command_id FROM command_executions WHERE device_id = $1 AND tenant_id = $2 AND state IN ('queued', 'delivered') \
         AND ((state = 'queued' AND due_at > $3) OR (state = 'delivered' AND delivered_at <= $4)) LIMIT 1"
    )
    .bind(device_id)
    .bind(scope.tenant_id())
    .bind(now)
    .bind(redeliver_before)
    .fetch_optional(pool)
    .await)
    .map_err(classify)?;
    Ok(found.is_some())
}

/// Hands the device up to `limit` of its commands: the queued ones that have not expired
/// (`→ delivered`, deadline = now + the command's timeout, one `command.delivered` event each)
/// and the delivered ones not acknowledged since `redeliver_before` (delivered again, same
/// deadline, no event). Oldest first.
pub async fn deliver(
    scope: &TenantScope,
    device_id: DeviceId,
    now: i64,
    redeliver_before: i64,
    limit: i64,
) -> Result<Vec<ExecutionRow>, StoreError> {
    // The condition is repeated outside the subquery: on PostgreSQL a concurrent poll that
    // delivered a row first makes this UPDATE re-check it and skip it.
    const WAITING: &str = "state IN ('queued', 'delivered') AND ((state = 'queued' AND due_at > $3) \
        OR (state = 'delivered' AND delivered_at <= $4))";
    let sql = format!(
        "UPDATE command_executions SET \
           due_at = CASE WHEN state = 'queued' THEN $3 + (SELECT c.timeout_ms FROM commands c WHERE c.id = command_id) \
                    ELSE due_at END, \
           state = 'delivered', delivered_at = $3, deliveries = deliveries + 1, updated_at = $3 \
         WHERE device_id = $1 AND tenant_id = $2 AND {WAITING} AND command_id IN (SELECT command_id FROM \
           command_executions WHERE device_id = $1 AND tenant_id = $2 AND {WAITING} ORDER BY command_id LIMIT $5) \
         RETURNING command_id, deliveries"
    );
    let mut tx = scope.db().begin().await?;
    let handed: Vec<(CommandId, i64)> = with_tx!(&mut tx, |conn| sqlx::query_as(&sql)
        .bind(device_id)
        .bind(scope.tenant_id())
        .bind(now)
        .bind(redeliver_before)
        .bind(limit)
        .fetch_all(&mut *conn)
        .await)
    .map_err(classify)?;
    if !handed.is_empty() {
        tx.touch(Touch::Device(device_id));
    }
    let mut rows = Vec::with_capacity(handed.len());
    for (command_id, deliveries) in handed {
        let Some(row) = execution_in(&mut tx, scope, command_id, device_id).await? else { continue };
        if deliveries == 1 {
            tx.record(scope.tenant_id(), &transition_event(&row, CommandState::Delivered, None), now);
        }
        rows.push(row);
    }
    tx.commit().await?;
    rows.sort_by_key(|row| row.command_id);
    Ok(rows)
}

fn transition_event(row: &ExecutionRow, to: CommandState, error: Option<&str>) -> Event {
    Event::CommandTransition {
        command_id: row.command_id,
        command_type: row.command_type,
        device_id: row.device_id,
        to,
        error: error.map(str::to_string),
    }
}

/// Records the device's report on its execution of `id`. Progress moves `delivered → running`
/// (one `command.running` event) and updates `progress`/`message` while running; a result moves
/// `delivered | running → succeeded | failed` (one event). Repeating the outcome already
/// recorded is [`Transition::Unchanged`]; anything else the state does not allow is a
/// [`Transition::Conflict`].
pub async fn report(
    scope: &TenantScope,
    id: CommandId,
    device_id: DeviceId,
    report: &Report<'_>,
    now: i64,
) -> Result<Transition, StoreError> {
    let tenant = scope.tenant_id();
    let mut tx = scope.db().begin().await?;
    // cache: untouched — a report moves only delivered or running executions, and the cache
    // keeps the count of queued ones.
    let (changed, event) = match report {
        Report::Progress { progress, message } => {
            let started = with_tx!(&mut tx, |conn| sqlx::query(
                "UPDATE command_executions SET state = 'running', started_at = $1, updated_at = $1, \
                 progress = COALESCE($2, progress), message = COALESCE($3, message) \
                 WHERE tenant_id = $4 AND command_id = $5 AND device_id = $6 AND state = 'delivered'"
            )
            .bind(now)
            .bind(progress)
            .bind(message)
            .bind(tenant)
            .bind(id)
            .bind(device_id)
            .execute(&mut *conn)
            .await
            .map(|r| r.rows_affected()))
            .map_err(classify)?;
            if started == 1 {
                (true, Some((CommandState::Running, None)))
            } else {
                let updated = with_tx!(&mut tx, |conn| sqlx::query(
                    "UPDATE command_executions SET updated_at = $1, progress = COALESCE($2, progress), \
                     message = COALESCE($3, message) \
                     WHERE tenant_id = $4 AND command_id = $5 AND device_id = $6 AND state = 'running'"
                )
                .bind(now)
                .bind(progress)
                .bind(message)
                .bind(tenant)
                .bind(id)
                .bind(device_id)
                .execute(&mut *conn)
                .await
                .map(|r| r.rows_affected()))
                .map_err(classify)?;
                (updated == 1, None)
            }
        }
        Report::Finished { state, result, error } => {
            let finished = with_tx!(&mut tx, |conn| sqlx::query(
                "UPDATE command_executions SET state = $1, finished_at = $2, updated_at = $2, due_at = NULL, \
                 result = $3, error = $4, started_at = COALESCE(started_at, $2), \
                 progress = CASE WHEN $1 = 'succeeded' THEN 100 ELSE progress END \
                 WHERE tenant_id = $5 AND command_id = $6 AND device_id = $7 AND state IN ('delivered', 'running')"
            )
            .bind(state.as_str())
            .bind(now)
            .bind(result)
            .bind(error)
            .bind(tenant)
            .bind(id)
            .bind(device_id)
            .execute(&mut *conn)
            .await
            .map(|r| r.rows_affected()))
            .map_err(classify)?;
            (finished == 1, (finished == 1).then(|| (*state, error.map(str::to_string))))
        }
    };
    let Some(row) = execution_in(&mut tx, scope, id, device_id).await? else {
        return Ok(Transition::NotFound);
    };
    if !changed {
        drop(tx);
        return Ok(match report {
            Report::Finished { state, .. } if row.state == *state => Transition::Unchanged(Box::new(row)),
            _ => Transition::Conflict(row.state),
        });
    }
    if let Some((to, error)) = event {
        tx.record(tenant, &transition_event(&row, to, error.as_deref()), now);
    }
    tx.commit().await?;
    Ok(Transition::Done(Box::new(row)))
}

/// Attaches an uploaded file (a screenshot) to the device's execution of `id`, while it is
/// delivered or running. The previous attachment's key, if any, is returned beside the row so
/// that the caller can delete an orphaned blob.
pub async fn attach(
    scope: &TenantScope,
    id: CommandId,
    device_id: DeviceId,
    key: &str,
    content_type: &str,
    size: i64,
    now: i64,
) -> Result<(Transition, Option<String>), StoreError> {
    let previous = execution(scope, id, device_id).await?.and_then(|row| row.attachment_key);
    let mut tx = scope.db().begin().await?;
    // cache: untouched — an attachment changes no execution's state.
    let changed = with_tx!(&mut tx, |conn| sqlx::query(
        "UPDATE command_executions SET attachment_key = $1, attachment_type = $2, attachment_size = $3, updated_at = $4 \
         WHERE tenant_id = $5 AND command_id = $6 AND device_id = $7 AND state IN ('delivered', 'running')"
    )
    .bind(key)
    .bind(content_type)
    .bind(size)
    .bind(now)
    .bind(scope.tenant_id())
    .bind(id)
    .bind(device_id)
    .execute(&mut *conn)
    .await
    .map(|r| r.rows_affected()))
    .map_err(classify)?;
    let Some(row) = execution_in(&mut tx, scope, id, device_id).await? else {
        return Ok((Transition::NotFound, None));
    };
    if changed == 0 {
        return Ok((Transition::Conflict(row.state), None));
    }
    tx.commit().await?;
    let orphan = previous.filter(|previous| previous != key);
    Ok((Transition::Done(Box::new(row)), orphan))
}

/// Cancels one device's execution of `id` while it is still queued (one `command.cancelled`).
pub async fn cancel_one(
    scope: &TenantScope,
    id: CommandId,
    device_id: DeviceId,
    now: i64,
) -> Result<Transition, StoreError> {
    let mut tx = scope.db().begin().await?;
    let changed = with_tx!(&mut tx, |conn| sqlx::query(
        "UPDATE command_executions SET state = 'cancelled', finished_at = $1, updated_at = $1, due_at = NULL \
         WHERE tenant_id = $2 AND command_id = $3 AND device_id = $4 AND state = 'queued'"
    )
    .bind(now)
    .bind(scope.tenant_id())
    .bind(id)
    .bind(device_id)
    .execute(&mut *conn)
    .await
    .map(|r| r.rows_affected()))
    .map_err(classify)?;
    let Some(row) = execution_in(&mut tx, scope, id, device_id).await? else {
        return Ok(Transition::NotFound);
    };
    if changed == 0 {
        return Ok(Transition::Conflict(row.state));
    }
    tx.touch(Touch::Device(device_id));
    tx.record(
        scope.tenant_id(),
        &Event::CommandCancelled {
            command_id: id,
            command_type: row.command_type,
            device_id: Some(device_id),
            cancelled: 1,
        },
        now,
    );
    tx.commit().await?;
    Ok(Transition::Done(Box::new(row)))
}

/// Cancels every still-queued execution of `id` with one statement (one `command.cancelled`
/// event with the count, when there was any). `None` if the tenant has no such command.
pub async fn cancel_all(scope: &TenantScope, id: CommandId, now: i64) -> Result<Option<i64>, StoreError> {
    let Some(command) = get(scope, id).await? else { return Ok(None) };
    let mut tx = scope.db().begin().await?;
    let cancelled = with_tx!(&mut tx, |conn| sqlx::query(
        "UPDATE command_executions SET state = 'cancelled', finished_at = $1, updated_at = $1, due_at = NULL \
         WHERE tenant_id = $2 AND command_id = $3 AND state = 'queued'"
    )
    .bind(now)
    .bind(scope.tenant_id())
    .bind(id)
    .execute(&mut *conn)
    .await
    .map(|r| r.rows_affected()))
    .map_err(classify)?;
    with_tx!(&mut tx, |conn| sqlx::query(
        "UPDATE commands SET cancelled_at = $1 WHERE tenant_id = $2 AND id = $3 AND cancelled_at IS NULL"
    )
    .bind(now)
    .bind(scope.tenant_id())
    .bind(id)
    .execute(&mut *conn)
    .await
    .map(drop))
    .map_err(classify)?;
    let cancelled = i64::try_from(cancelled).unwrap_or(i64::MAX);
    if cancelled > 0 {
        tx.touch(Touch::Tenant(scope.tenant_id()));
        tx.record(
            scope.tenant_id(),
            &Event::CommandCancelled { command_id: id, command_type: command.command_type, device_id: None, cancelled },
            now,
        );
    }
    tx.commit().await?;
    Ok(Some(cancelled))
}

/// Cancels a command's undelivered executions inside a caller's transaction (a cancelled
/// rollout's `install_package` commands), with one `command.cancelled` event when any were.
pub(crate) async fn cancel_queued_in(tx: &mut Tx, tenant: TenantId, id: CommandId, now: i64) -> Result<(), StoreError> {
    let cancelled = with_tx!(tx, |conn| sqlx::query(
        "UPDATE command_executions SET state = 'cancelled', finished_at = $1, updated_at = $1, due_at = NULL \
         WHERE tenant_id = $2 AND command_id = $3 AND state = 'queued'"
    )
    .bind(now)
    .bind(tenant)
    .bind(id)
    .execute(&mut *conn)
    .await
    .map(|r| r.rows_affected()))
    .map_err(classify)?;
    if cancelled > 0 {
        tx.touch(Touch::Tenant(tenant));
        let cancelled = i64::try_from(cancelled).unwrap_or(i64::MAX);
        tx.record(
            tenant,
            &Event::CommandCancelled {
                command_id: id,
                command_type: CommandType::InstallPackage,
                device_id: None,
                cancelled,
            },
            now,
        );
    }
    Ok(())
}

/// Ends one device's `install_package` execution as succeeded when the device reports on the
/// update it announced (the notification did its work), inside the report's transaction;
/// nothing when it had already ended.
pub(crate) async fn finish_notification_in(
    tx: &mut Tx,
    tenant: TenantId,
    id: CommandId,
    device_id: DeviceId,
    now: i64,
) -> Result<(), StoreError> {
    let ended = with_tx!(tx, |conn| sqlx::query(
        "UPDATE command_executions SET state = 'succeeded', finished_at = $1, updated_at = $1, due_at = NULL \
         WHERE tenant_id = $2 AND command_id = $3 AND device_id = $4 AND state IN ('queued', 'delivered', 'running')"
    )
    .bind(now)
    .bind(tenant)
    .bind(id)
    .bind(device_id)
    .execute(&mut *conn)
    .await
    .map(|r| r.rows_affected()))
    .map_err(classify)?;
    if ended > 0 {
        tx.touch(Touch::Device(device_id));
        tx.record(
            tenant,
            &Event::CommandTransition {
                command_id: id,
                command_type: CommandType::InstallPackage,
                device_id,
                to: CommandState::Succeeded,
                error: None,
            },
            now,
        );
    }
    Ok(())
}

/// Deletes a deleted device's executions, in the transaction that deletes the device. (Their
/// commands keep their `total`; an uploaded screenshot's blob is not deleted.)
pub(crate) async fn delete_for_device(tx: &mut Tx, scope: &TenantScope, device_id: DeviceId) -> Result<(), StoreError> {
    tx.touch(Touch::Device(device_id));
    with_tx!(tx, |conn| sqlx::query("DELETE FROM command_executions WHERE tenant_id = $1 AND device_id = $2")
        .bind(scope.tenant_id())
        .bind(device_id)
        .execute(&mut *conn)
        .await
        .map(drop))
    .map_err(classify)
}

/// What one run of [`expire_due`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ExpiryOutcome {
    /// Queued executions not delivered before their `expiresAt`.
    pub expired: usize,
    /// Delivered or running executions with no result within their timeout.
    pub timed_out: usize,
}

/// The error recorded on an execution that was delivered but never reported a result.
pub const TIMEOUT_ERROR: &str = "no result within the command's timeout";

/// Ends every execution whose `due_at` has passed, [`crate::presence::BATCH`] rows per
/// statement: queued ones become `expired`, delivered or running ones `failed` with
/// [`TIMEOUT_ERROR`]. One event each. Cross-tenant (a job acting as the [`System`]); safe on
/// several instances at once (PostgreSQL claims rows with `SKIP LOCKED`, and the state
/// condition is re-checked by the `UPDATE`).
pub async fn expire_due(db: &Db, _system: &System, now: i64) -> Result<ExpiryOutcome, StoreError> {
    let mut outcome = ExpiryOutcome::default();
    loop {
        let claim = match db.engine() {
            Engine::Postgres => {
                "SELECT command_id, device_id FROM command_executions WHERE due_at <= $2 \
                 ORDER BY due_at LIMIT $3 FOR UPDATE SKIP LOCKED"
            }
            Engine::Sqlite => {
                "SELECT command_id, device_id FROM command_executions WHERE due_at <= $2 \
                 ORDER BY due_at LIMIT $3"
            }
        };
        let sql = format!(
            "UPDATE command_executions SET \
               error = CASE WHEN state = 'queued' THEN error ELSE $1 END, \
               state = CASE WHEN state = 'queued' THEN 'expired' ELSE 'failed' END, \
               finished_at = $2, updated_at = $2, due_at = NULL \
             WHERE due_at <= $2 AND (command_id, device_id) IN ({claim}) \
             RETURNING command_id, device_id, tenant_id, state"
        );
        let mut tx = db.begin().await?;
        let ended: Vec<(CommandId, DeviceId, TenantId, CommandState)> = with_tx!(&mut tx, |conn| sqlx::query_as(&sql)
            .bind(TIMEOUT_ERROR)
            .bind(now)
            .bind(crate::presence::BATCH as i64)
            .fetch_all(&mut *conn)
            .await)
        .map_err(classify)?;
        if ended.is_empty() {
            return Ok(outcome);
        }
        let mut types: Vec<(CommandId, CommandType)> = Vec::new();
        for (command_id, device_id, tenant, state) in &ended {
            tx.touch(Touch::Device(*device_id));
            let command_type = match types.iter().find(|(id, _)| id == command_id) {
                Some((_, command_type)) => *command_type,
                None => {
                    let (command_type,): (CommandType,) =
                        with_tx!(&mut tx, |conn| sqlx::query_as("SELECT type FROM commands WHERE id = $1")
                            .bind(command_id)
                            .fetch_one(&mut *conn)
                            .await)
                        .map_err(classify)?;
                    types.push((*command_id, command_type));
                    command_type
                }
            };
            let error = (*state == CommandState::Failed).then(|| TIMEOUT_ERROR.to_string());
            match state {
                CommandState::Expired => outcome.expired += 1,
                _ => outcome.timed_out += 1,
            }
            tx.record(
                *tenant,
                &Event::CommandTransition {
                    command_id: *command_id,
                    command_type,
                    device_id: *device_id,
                    to: *state,
                    error,
                },
                now,
            );
        }
        tx.commit().await?;
        if ended.len() < crate::presence::BATCH {
            return Ok(outcome);
        }
    }
}
