//! SQL for staged rollouts: one package sent to a target in waves (`rollouts`), one row per
//! targeted device carrying its update state (`rollout_devices`), and what each device has
//! installed (`device_packages`). Every function binds the scope's tenant id.
//!
//! Every transition is a conditional `UPDATE` whose `WHERE` names the state it leaves (and,
//! for a rollout's wave, the wave it leaves), with its event in the same transaction: however
//! many instances run the rollout job at once, each transition — and its event — happens once.
//! The policy (when a wave starts, who is skipped, maintenance windows) is the server's; this
//! module only stores and moves states.

use sqlx::FromRow;

use herd_domain::event::RolloutChange;
use herd_domain::ids::{CommandId, DeviceId, PackageId, RolloutId};
use herd_domain::status::{RolloutState, UpdateState};
use herd_domain::Event;

use crate::{classify, with_reader, with_tx, Engine, Json, Page, StoreError, TenantScope, Tx};

/// A rollout as stored.
#[derive(Debug, Clone, FromRow)]
pub struct RolloutRow {
    pub id: RolloutId,
    pub package_id: PackageId,
    pub name: String,
    /// The target as the operator wrote it (JSON text).
    pub target: String,
    /// Cumulative percentages of the devices, one per wave.
    pub waves: Json<Vec<i64>>,
    /// When each started wave started (ms), one per started wave.
    pub wave_times: Json<Vec<i64>>,
    pub soak_ms: i64,
    pub failure_threshold: i64,
    pub allow_downgrade: bool,
    pub window_start: Option<i64>,
    pub window_end: Option<i64>,
    pub state: RolloutState,
    pub reason: Option<String>,
    pub current_wave: i64,
    pub wave_notified_at: Option<i64>,
    pub failures_since: i64,
    pub total: i64,
    pub created_by: String,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub updated_at: i64,
}

const COLUMNS: &str = "id, package_id, name, target, waves, wave_times, soak_ms, failure_threshold, \
    allow_downgrade, window_start, window_end, state, reason, current_wave, wave_notified_at, failures_since, \
    total, created_by, created_at, started_at, finished_at, updated_at";

/// One device's update in a rollout.
#[derive(Debug, Clone, FromRow)]
pub struct DeviceUpdateRow {
    pub rollout_id: RolloutId,
    pub device_id: DeviceId,
    pub wave: i64,
    pub state: UpdateState,
    pub reason: Option<String>,
    pub progress: Option<i64>,
    pub command_id: Option<CommandId>,
    pub notified_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub updated_at: i64,
}

const DEVICE_COLUMNS: &str =
    "rollout_id, device_id, wave, state, reason, progress, command_id, notified_at, finished_at, updated_at";

/// Which devices a new rollout goes to (always within the scope's tenant).
#[derive(Debug, Clone)]
pub enum Target {
    /// These devices; ids that name no device of the tenant are ignored.
    Devices(Vec<DeviceId>),
    /// Every device with this tag and/or model; neither: the whole tenant.
    Filter { tag: Option<String>, model: Option<String> },
}

/// A rollout to create.
#[derive(Debug, Clone)]
pub struct NewRollout<'a> {
    pub package_id: PackageId,
    pub name: &'a str,
    pub target: &'a Target,
    pub target_json: &'a str,
    /// Cumulative percentages, strictly increasing, the last 100.
    pub waves: &'a [i64],
    pub soak_ms: i64,
    pub failure_threshold: i64,
    pub allow_downgrade: bool,
    pub window: Option<(i64, i64)>,
    pub created_by: &'a str,
}

/// How many of `total` devices are in waves `0..=k`, for each wave `k`: wave `k` holds the
/// devices from the previous end up to `ceil(percent_k × total / 100)`.
pub fn wave_ends(total: usize, waves: &[i64]) -> Vec<usize> {
    let total_u = u128::try_from(total).unwrap_or(0);
    let mut ends = Vec::with_capacity(waves.len());
    let mut previous = 0usize;
    for percent in waves {
        let percent = u128::try_from((*percent).clamp(0, 100)).unwrap_or(0);
        let end = usize::try_from((total_u * percent).div_ceil(100)).unwrap_or(total).clamp(previous, total);
        ends.push(end);
        previous = end;
    }
    if let Some(last) = ends.last_mut() {
        *last = total;
    }
    ends
}

/// A stable pseudo-random order of a rollout's devices (splitmix64 of the two ids), so that
/// the first wave is a sample of the fleet rather than its oldest devices.
fn shuffle_key(rollout: RolloutId, device: DeviceId) -> u64 {
    let mix = |mut z: u64| {
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let (r, d) = (rollout.0.as_u128(), device.0.as_u128());
    #[allow(clippy::cast_possible_truncation)]
    let folded = (r as u64) ^ ((r >> 64) as u64) ^ mix((d as u64) ^ mix((d >> 64) as u64));
    mix(folded)
}

/// Creates a rollout in `ready` with its devices spread over its waves, and the
/// `rollout.created` event. `None` (nothing written) when the target matches no device.
pub async fn create(scope: &TenantScope, new: &NewRollout<'_>, now: i64) -> Result<Option<RolloutRow>, StoreError> {
    let tenant = scope.tenant_id();
    let id = RolloutId::new();
    let mut tx = scope.db().begin().await?;
    let mut devices: Vec<DeviceId> = match new.target {
        Target::Devices(ids) => {
            let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
            let json = serde_json::to_string(&ids).unwrap_or_else(|_| "[]".into());
            let sql = match scope.db().engine() {
                Engine::Postgres => {
                    "SELECT id FROM devices WHERE tenant_id = $1 AND id IN (SELECT jsonb_array_elements_text($2::jsonb))"
                }
                Engine::Sqlite => "SELECT id FROM devices WHERE tenant_id = $1 AND id IN (SELECT value FROM json_each($2))",
            };
            with_tx!(&mut tx, |conn| sqlx::query_scalar(sql).bind(tenant).bind(&json).fetch_all(&mut *conn).await)
        }
        Target::Filter { tag, model } => with_tx!(&mut tx, |conn| sqlx::query_scalar(
            "SELECT d.id FROM devices d WHERE d.tenant_id = $1 AND ($2 IS NULL OR d.model = $2) \
             AND ($3 IS NULL OR EXISTS (SELECT 1 FROM device_tags t WHERE t.tenant_id = d.tenant_id \
             AND t.device_id = d.id AND t.tag = $3))"
        )
        .bind(tenant)
        .bind(model.as_deref())
        .bind(tag.as_deref())
        .fetch_all(&mut *conn)
        .await),
    }
    .map_err(classify)?;
    if devices.is_empty() {
        return Ok(None);
    }
    devices.sort_by_key(|device| shuffle_key(id, *device));
    let total = i64::try_from(devices.len()).unwrap_or(i64::MAX);
    let sql = format!(
        "INSERT INTO rollouts (tenant_id, {COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, '[]', $7, $8, $9, $10, $11, \
         'ready', NULL, -1, NULL, 0, $12, $13, $14, NULL, NULL, $14) RETURNING {COLUMNS}"
    );
    let row: RolloutRow = with_tx!(&mut tx, |conn| sqlx::query_as::<_, RolloutRow>(&sql)
        .bind(tenant)
        .bind(id)
        .bind(new.package_id)
        .bind(new.name)
        .bind(new.target_json)
        .bind(Json(new.waves.to_vec()))
        .bind(new.soak_ms)
        .bind(new.failure_threshold)
        .bind(new.allow_downgrade)
        .bind(new.window.map(|w| w.0))
        .bind(new.window.map(|w| w.1))
        .bind(total)
        .bind(new.created_by)
        .bind(now)
        .fetch_one(&mut *conn)
        .await)
    .map_err(classify)?;
    let ends = wave_ends(devices.len(), new.waves);
    let mut wave_of = Vec::with_capacity(devices.len());
    let mut wave = 0usize;
    for index in 0..devices.len() {
        while ends.get(wave).is_some_and(|end| index >= *end) {
            wave += 1;
        }
        wave_of.push(i64::try_from(wave).unwrap_or(i64::MAX));
    }
    // Two parameters a row: 1,000 rows stay far below SQLite's parameter limit.
    let rows: Vec<(DeviceId, i64)> = devices.into_iter().zip(wave_of).collect();
    for chunk in rows.chunks(1000) {
        let sql = format!(
            "INSERT INTO rollout_devices (rollout_id, device_id, tenant_id, wave, state, updated_at) VALUES {}",
            (0..chunk.len())
                .map(|i| format!("($1, ${}, $2, ${}, 'pending', $3)", i * 2 + 4, i * 2 + 5))
                .collect::<Vec<_>>()
                .join(", ")
        );
        with_tx!(&mut tx, |conn| {
            let mut query = sqlx::query(&sql).bind(id).bind(tenant).bind(now);
            for (device, wave) in chunk {
                query = query.bind(*device).bind(*wave);
            }
            query.execute(&mut *conn).await.map(drop)
        })
        .map_err(classify)?;
    }
    let waves = i64::try_from(new.waves.len()).unwrap_or(i64::MAX);
    tx.record(tenant, &Event::RolloutCreated { rollout_id: id, package_id: new.package_id, total, waves }, now);
    tx.commit().await?;
    Ok(Some(row))
}

/// One rollout of the tenant.
pub async fn get(scope: &TenantScope, id: RolloutId) -> Result<Option<RolloutRow>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM rollouts WHERE tenant_id = $1 AND id = $2");
    with_reader!(scope.db(), |pool| sqlx::query_as::<_, RolloutRow>(&sql)
        .bind(scope.tenant_id())
        .bind(id)
        .fetch_optional(pool)
        .await)
    .map_err(classify)
}

/// The tenant's rollouts, oldest first, optionally only in `state` or of `package`.
pub async fn list(
    scope: &TenantScope,
    state: Option<RolloutState>,
    package: Option<PackageId>,
    page: &Page,
) -> Result<Vec<RolloutRow>, StoreError> {
    let after = page.after.as_deref().unwrap_or("");
    let sql = format!(
        "SELECT {COLUMNS} FROM rollouts WHERE tenant_id = $1 AND id > $2 AND ($3 IS NULL OR state = $3) \
         AND ($4 IS NULL OR package_id = $4) ORDER BY id LIMIT $5"
    );
    with_reader!(scope.db(), |pool| sqlx::query_as::<_, RolloutRow>(&sql)
        .bind(scope.tenant_id())
        .bind(after)
        .bind(state)
        .bind(package)
        .bind(i64::from(page.limit) + 1)
        .fetch_all(pool)
        .await)
    .map_err(classify)
}

/// How many of a rollout's devices each wave has in each state (pairs with none left out).
pub async fn wave_counts(scope: &TenantScope, id: RolloutId) -> Result<Vec<(i64, UpdateState, i64)>, StoreError> {
    with_reader!(scope.db(), |pool| sqlx::query_as::<_, (i64, UpdateState, i64)>(
        "SELECT wave, state, COUNT(*) FROM rollout_devices WHERE rollout_id = $1 AND tenant_id = $2 \
         GROUP BY wave, state ORDER BY wave"
    )
    .bind(id)
    .bind(scope.tenant_id())
    .fetch_all(pool)
    .await)
    .map_err(classify)
}

/// A rollout's device updates, by device id, optionally one state or wave; `limit + 1` rows.
pub async fn devices(
    scope: &TenantScope,
    id: RolloutId,
    state: Option<UpdateState>,
    wave: Option<i64>,
    page: &Page,
) -> Result<Vec<DeviceUpdateRow>, StoreError> {
    let after = page.after.as_deref().unwrap_or("");
    let sql = format!(
        "SELECT {DEVICE_COLUMNS} FROM rollout_devices WHERE rollout_id = $1 AND tenant_id = $2 AND device_id > $3 \
         AND ($4 IS NULL OR state = $4) AND ($5 IS NULL OR wave = $5) ORDER BY device_id LIMIT $6"
    );
    with_reader!(scope.db(), |pool| sqlx::query_as::<_, DeviceUpdateRow>(&sql)
        .bind(id)
        .bind(scope.tenant_id())
        .bind(after)
        .bind(state)
        .bind(wave)
        .bind(i64::from(page.limit) + 1)
        .fetch_all(pool)
        .await)
    .map_err(classify)
}

/// The answer to an operator's transition request.
#[derive(Debug)]
pub enum Moved {
    Done(Box<RolloutRow>),
    NotFound,
    /// Not allowed from the rollout's current state (given).
    Conflict(RolloutState),
}

async fn moved(scope: &TenantScope, tx: Tx, row: Option<RolloutRow>, id: RolloutId) -> Result<Moved, StoreError> {
    match row {
        Some(row) => {
            tx.commit().await?;
            Ok(Moved::Done(Box::new(row)))
        }
        None => {
            drop(tx);
            Ok(match get(scope, id).await? {
                Some(row) => Moved::Conflict(row.state),
                None => Moved::NotFound,
            })
        }
    }
}

/// An operator's state change: `started` (ready → running, wave 0), `paused` (running →
/// paused, with the operator's reason), `resumed` (paused → running; failures before now no
/// longer count toward the threshold). Cancel is [`cancel`].
pub async fn transition(
    scope: &TenantScope,
    id: RolloutId,
    change: RolloutChange,
    reason: Option<&str>,
    by: &str,
    now: i64,
) -> Result<Moved, StoreError> {
    let (set, from) = match change {
        RolloutChange::Started => (
            "state = 'running', current_wave = 0, wave_times = $5, started_at = $3, wave_notified_at = NULL, \
             failures_since = $3, reason = NULL",
            "'ready'",
        ),
        RolloutChange::Paused => ("state = 'paused', reason = $4", "'running'"),
        RolloutChange::Resumed => ("state = 'running', reason = NULL, failures_since = $3", "'paused'"),
        RolloutChange::Completed | RolloutChange::Cancelled => return Ok(Moved::NotFound),
    };
    let tenant = scope.tenant_id();
    let sql = format!(
        "UPDATE rollouts SET {set}, updated_at = $3 WHERE id = $1 AND tenant_id = $2 AND state = {from} \
         RETURNING {COLUMNS}"
    );
    let mut tx = scope.db().begin().await?;
    let row: Option<RolloutRow> = with_tx!(&mut tx, |conn| sqlx::query_as::<_, RolloutRow>(&sql)
        .bind(id)
        .bind(tenant)
        .bind(now)
        .bind(reason)
        .bind(Json(vec![now]))
        .fetch_optional(&mut *conn)
        .await)
    .map_err(classify)?;
    if let Some(row) = &row {
        tx.record(
            tenant,
            &Event::RolloutTransition {
                rollout_id: id,
                package_id: row.package_id,
                kind: change,
                wave: row.current_wave,
                reason: reason.map(str::to_string),
                by: Some(by.to_string()),
            },
            now,
        );
    }
    moved(scope, tx, row, id).await
}

/// Cancels a rollout that is not finished: devices not yet downloading (`pending`,
/// `notified`) become `cancelled` (one event each) and their undelivered `install_package`
/// commands are cancelled; devices already downloading or installing may still report.
pub async fn cancel(scope: &TenantScope, id: RolloutId, by: &str, now: i64) -> Result<Moved, StoreError> {
    let tenant = scope.tenant_id();
    let sql = format!(
        "UPDATE rollouts SET state = 'cancelled', finished_at = $3, updated_at = $3 WHERE id = $1 AND tenant_id = $2 \
         AND state IN ('ready', 'running', 'paused') RETURNING {COLUMNS}"
    );
    let mut tx = scope.db().begin().await?;
    let row: Option<RolloutRow> = with_tx!(&mut tx, |conn| sqlx::query_as::<_, RolloutRow>(&sql)
        .bind(id)
        .bind(tenant)
        .bind(now)
        .fetch_optional(&mut *conn)
        .await)
    .map_err(classify)?;
    if let Some(row) = &row {
        let stopped: Vec<(DeviceId, Option<CommandId>)> = with_tx!(&mut tx, |conn| sqlx::query_as(
            "UPDATE rollout_devices SET state = 'cancelled', reason = 'rollout cancelled', finished_at = $2, \
             updated_at = $2 WHERE rollout_id = $1 AND state IN ('pending', 'notified') \
             RETURNING device_id, command_id"
        )
        .bind(id)
        .bind(now)
        .fetch_all(&mut *conn)
        .await)
        .map_err(classify)?;
        let mut commands: Vec<CommandId> = Vec::new();
        for (device_id, command_id) in &stopped {
            let from = if command_id.is_some() { UpdateState::Notified } else { UpdateState::Pending };
            tx.record(
                tenant,
                &Event::DeviceUpdateStateChanged {
                    rollout_id: id,
                    package_id: row.package_id,
                    device_id: *device_id,
                    from,
                    to: UpdateState::Cancelled,
                    reason: Some("rollout cancelled".into()),
                },
                now,
            );
            if let Some(command_id) = command_id {
                if !commands.contains(command_id) {
                    commands.push(*command_id);
                }
            }
        }
        for command_id in commands {
            crate::commands::cancel_queued_in(&mut tx, tenant, command_id, now).await?;
        }
        tx.record(
            tenant,
            &Event::RolloutTransition {
                rollout_id: id,
                package_id: row.package_id,
                kind: RolloutChange::Cancelled,
                wave: row.current_wave,
                reason: None,
                by: Some(by.to_string()),
            },
            now,
        );
    }
    moved(scope, tx, row, id).await
}

/// Per-wave figures of a running rollout, for the rollout job.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, FromRow)]
pub struct WaveFigures {
    pub wave: i64,
    pub devices: i64,
    pub skipped: i64,
    /// Failed at or after the rollout's `failures_since`.
    pub failed: i64,
    pub pending: i64,
    /// Installed, failed, skipped or cancelled.
    pub finished: i64,
}

/// Every wave's figures (waves without devices left out), in wave order.
pub async fn figures(scope: &TenantScope, id: RolloutId, failures_since: i64) -> Result<Vec<WaveFigures>, StoreError> {
    with_reader!(scope.db(), |pool| sqlx::query_as::<_, WaveFigures>(
        "SELECT wave, COUNT(*) AS devices, \
           SUM(CASE WHEN state = 'skipped' THEN 1 ELSE 0 END) AS skipped, \
           SUM(CASE WHEN state = 'failed' AND finished_at >= $3 THEN 1 ELSE 0 END) AS failed, \
           SUM(CASE WHEN state = 'pending' THEN 1 ELSE 0 END) AS pending, \
           SUM(CASE WHEN state IN ('installed', 'failed', 'skipped', 'cancelled') THEN 1 ELSE 0 END) AS finished \
         FROM rollout_devices WHERE rollout_id = $1 AND tenant_id = $2 GROUP BY wave ORDER BY wave"
    )
    .bind(id)
    .bind(scope.tenant_id())
    .bind(failures_since)
    .fetch_all(pool)
    .await)
    .map_err(classify)
}

/// A pending device of a running rollout, with what decides whether it is sent the update now.
#[derive(Debug, Clone, FromRow)]
pub struct Candidate {
    pub device_id: DeviceId,
    pub model: Option<String>,
    /// The version code it has of the package's name, if it reported one.
    pub installed_code: Option<i64>,
    /// Its timezone (device settings), if set.
    pub timezone: Option<String>,
}

/// Up to `limit` pending devices of waves `0..=wave` with ids above `after`, by id.
pub async fn candidates(
    scope: &TenantScope,
    id: RolloutId,
    wave: i64,
    package_name: &str,
    after: Option<DeviceId>,
    limit: i64,
) -> Result<Vec<Candidate>, StoreError> {
    let after = after.map(|d| d.to_string()).unwrap_or_default();
    with_reader!(scope.db(), |pool| sqlx::query_as::<_, Candidate>(
        "SELECT rd.device_id, d.model, dp.version_code AS installed_code, s.timezone \
         FROM rollout_devices rd JOIN devices d ON d.id = rd.device_id AND d.tenant_id = rd.tenant_id \
         LEFT JOIN device_packages dp ON dp.device_id = rd.device_id AND dp.name = $4 \
         LEFT JOIN device_settings s ON s.device_id = rd.device_id \
         WHERE rd.rollout_id = $1 AND rd.tenant_id = $2 AND rd.wave <= $3 AND rd.state = 'pending' \
         AND rd.device_id > $6 ORDER BY rd.device_id LIMIT $5"
    )
    .bind(id)
    .bind(scope.tenant_id())
    .bind(wave)
    .bind(package_name)
    .bind(limit)
    .bind(after)
    .fetch_all(pool)
    .await)
    .map_err(classify)
}

/// What to do with some pending devices of a running rollout.
#[derive(Debug, Clone, Default)]
pub struct Dispatch {
    /// Send them the update: `notified`, with one `install_package` command for them all.
    pub notify: Vec<DeviceId>,
    /// Skip them, each group with its reason.
    pub skip: Vec<(String, Vec<DeviceId>)>,
}

/// The `install_package` command a dispatch queues.
#[derive(Debug, Clone)]
pub struct Notification<'a> {
    /// The command's payload (JSON text).
    pub payload: &'a str,
    pub expires_at: i64,
    pub timeout_ms: i64,
    /// Who wakes the devices' long polls (`origin` on the notification channel).
    pub origin: &'a str,
}

/// Moves the given devices out of `pending` — only those still pending in a rollout still
/// running, so two instances dispatching the same devices move each once — queues one
/// `install_package` command for the notified ones, and records one event per device.
/// Answers the devices it notified and how many it skipped.
pub async fn dispatch(
    scope: &TenantScope,
    rollout: &RolloutRow,
    dispatch: &Dispatch,
    notification: &Notification<'_>,
    now: i64,
) -> Result<(Vec<DeviceId>, usize), StoreError> {
    let tenant = scope.tenant_id();
    let mut tx = scope.db().begin().await?;
    let in_list = |engine: Engine, n: usize| match engine {
        Engine::Postgres => format!("device_id IN (SELECT jsonb_array_elements_text(${n}::jsonb))"),
        Engine::Sqlite => format!("device_id IN (SELECT value FROM json_each(${n}))"),
    };
    let engine = scope.db().engine();
    let running = "EXISTS (SELECT 1 FROM rollouts r WHERE r.id = $1 AND r.state = 'running')";
    let mut skipped = 0;
    for (reason, devices) in &dispatch.skip {
        let json = ids_json(devices);
        let sql = format!(
            "UPDATE rollout_devices SET state = 'skipped', reason = $3, finished_at = $4, updated_at = $4 \
             WHERE rollout_id = $1 AND tenant_id = $2 AND state = 'pending' AND {} AND {running} RETURNING device_id",
            in_list(engine, 5)
        );
        let moved: Vec<DeviceId> = with_tx!(&mut tx, |conn| sqlx::query_scalar(&sql)
            .bind(rollout.id)
            .bind(tenant)
            .bind(reason)
            .bind(now)
            .bind(&json)
            .fetch_all(&mut *conn)
            .await)
        .map_err(classify)?;
        skipped += moved.len();
        for device_id in moved {
            tx.record(
                tenant,
                &Event::DeviceUpdateStateChanged {
                    rollout_id: rollout.id,
                    package_id: rollout.package_id,
                    device_id,
                    from: UpdateState::Pending,
                    to: UpdateState::Skipped,
                    reason: Some(reason.clone()),
                },
                now,
            );
        }
    }
    let mut notified = Vec::new();
    if !dispatch.notify.is_empty() {
        let command_id = CommandId::new();
        let sql = format!(
            "UPDATE rollout_devices SET state = 'notified', command_id = $3, notified_at = $4, updated_at = $4 \
             WHERE rollout_id = $1 AND tenant_id = $2 AND state = 'pending' AND {} AND {running} RETURNING device_id",
            in_list(engine, 5)
        );
        let moved: Vec<DeviceId> = with_tx!(&mut tx, |conn| sqlx::query_scalar(&sql)
            .bind(rollout.id)
            .bind(tenant)
            .bind(command_id)
            .bind(now)
            .bind(ids_json(&dispatch.notify))
            .fetch_all(&mut *conn)
            .await)
        .map_err(classify)?;
        if !moved.is_empty() {
            for device_id in &moved {
                tx.record(
                    tenant,
                    &Event::DeviceUpdateStateChanged {
                        rollout_id: rollout.id,
                        package_id: rollout.package_id,
                        device_id: *device_id,
                        from: UpdateState::Pending,
                        to: UpdateState::Notified,
                        reason: None,
                    },
                    now,
                );
            }
            notified.clone_from(&moved);
            let target = crate::commands::Target::Devices(moved);
            let target_json = serde_json::json!({ "rolloutId": rollout.id }).to_string();
            let command = crate::commands::NewCommand {
                command_type: herd_domain::status::CommandType::InstallPackage,
                payload: notification.payload,
                target: &target,
                target_json: &target_json,
                created_by: &rollout.created_by,
                expires_at: notification.expires_at,
                timeout_ms: notification.timeout_ms,
            };
            crate::commands::create_in(&mut tx, tenant, command_id, &command, notification.origin, now).await?;
        }
    }
    tx.commit().await?;
    Ok((notified, skipped))
}

fn ids_json(ids: &[DeviceId]) -> String {
    let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
    serde_json::to_string(&ids).unwrap_or_else(|_| "[]".into())
}

/// Records that every device of the waves so far has left `pending` (the soak starts), once.
pub async fn mark_wave_notified(scope: &TenantScope, rollout: &RolloutRow, now: i64) -> Result<bool, StoreError> {
    let mut tx = scope.db().begin().await?;
    let n = with_tx!(&mut tx, |conn| sqlx::query(
        "UPDATE rollouts SET wave_notified_at = $4, updated_at = $4 WHERE id = $1 AND tenant_id = $2 \
         AND state = 'running' AND current_wave = $3 AND wave_notified_at IS NULL"
    )
    .bind(rollout.id)
    .bind(scope.tenant_id())
    .bind(rollout.current_wave)
    .bind(now)
    .execute(&mut *conn)
    .await
    .map(|r| r.rows_affected()))
    .map_err(classify)?;
    tx.commit().await?;
    Ok(n == 1)
}

/// Starts wave `next` of a running rollout that is still at `rollout.current_wave`, with its
/// `rollout.wave_started` event; false when another instance (or an operator) moved it first.
pub async fn start_wave(
    scope: &TenantScope,
    rollout: &RolloutRow,
    next: i64,
    size: i64,
    now: i64,
) -> Result<bool, StoreError> {
    let tenant = scope.tenant_id();
    let mut times = rollout.wave_times.0.clone();
    times.push(now);
    let mut tx = scope.db().begin().await?;
    let n = with_tx!(&mut tx, |conn| sqlx::query(
        "UPDATE rollouts SET current_wave = $4, wave_times = $5, wave_notified_at = NULL, updated_at = $6 \
         WHERE id = $1 AND tenant_id = $2 AND state = 'running' AND current_wave = $3"
    )
    .bind(rollout.id)
    .bind(tenant)
    .bind(rollout.current_wave)
    .bind(next)
    .bind(Json(times))
    .bind(now)
    .execute(&mut *conn)
    .await
    .map(|r| r.rows_affected()))
    .map_err(classify)?;
    if n != 1 {
        return Ok(false);
    }
    tx.record(
        tenant,
        &Event::RolloutWaveStarted { rollout_id: rollout.id, package_id: rollout.package_id, wave: next, size },
        now,
    );
    tx.commit().await?;
    Ok(true)
}

/// herd's own transition of a running rollout still at `rollout.current_wave`: `paused` with
/// `reason` (a wave crossed the failure threshold) or `completed`. False when it had moved.
pub async fn conclude(
    scope: &TenantScope,
    rollout: &RolloutRow,
    change: RolloutChange,
    reason: Option<&str>,
    now: i64,
) -> Result<bool, StoreError> {
    let set = match change {
        RolloutChange::Paused => "state = 'paused', reason = $4",
        RolloutChange::Completed => "state = 'completed', finished_at = $5",
        _ => return Ok(false),
    };
    let tenant = scope.tenant_id();
    let sql = format!(
        "UPDATE rollouts SET {set}, updated_at = $5 WHERE id = $1 AND tenant_id = $2 AND state = 'running' \
         AND current_wave = $3"
    );
    let mut tx = scope.db().begin().await?;
    let n = with_tx!(&mut tx, |conn| sqlx::query(&sql)
        .bind(rollout.id)
        .bind(tenant)
        .bind(rollout.current_wave)
        .bind(reason)
        .bind(now)
        .execute(&mut *conn)
        .await
        .map(|r| r.rows_affected()))
    .map_err(classify)?;
    if n != 1 {
        return Ok(false);
    }
    tx.record(
        tenant,
        &Event::RolloutTransition {
            rollout_id: rollout.id,
            package_id: rollout.package_id,
            kind: change,
            wave: rollout.current_wave,
            reason: reason.map(str::to_string),
            by: None,
        },
        now,
    );
    tx.commit().await?;
    Ok(true)
}

/// Every running rollout: its id and tenant (the rollout job's work list; system-wide).
pub async fn running(
    db: &crate::Db,
    _system: &crate::System,
) -> Result<Vec<(RolloutId, herd_domain::ids::TenantId)>, StoreError> {
    with_reader!(db, |pool| sqlx::query_as("SELECT id, tenant_id FROM rollouts WHERE state = 'running' ORDER BY id")
        .fetch_all(pool)
        .await)
    .map_err(classify)
}

/// A device's update with its rollout's package, as the device sees it.
#[derive(Debug, Clone, FromRow)]
pub struct DeviceUpdate {
    pub rollout_id: RolloutId,
    pub package_id: PackageId,
    pub state: UpdateState,
    pub reason: Option<String>,
    pub progress: Option<i64>,
    pub command_id: Option<CommandId>,
    pub notified_at: Option<i64>,
    pub updated_at: i64,
    pub rollout_state: RolloutState,
}

const DEVICE_UPDATE_SELECT: &str = "SELECT rd.rollout_id, r.package_id, rd.state, rd.reason, rd.progress, \
    rd.command_id, rd.notified_at, rd.updated_at, r.state AS rollout_state \
    FROM rollout_devices rd JOIN rollouts r ON r.id = rd.rollout_id";

/// A device's updates that it has been told of (not `pending`, `skipped`), newest rollout first;
/// only those not finished when `open_only`.
pub async fn for_device(
    scope: &TenantScope,
    device_id: DeviceId,
    open_only: bool,
    limit: i64,
) -> Result<Vec<DeviceUpdate>, StoreError> {
    let states = if open_only {
        "('notified', 'downloading', 'downloaded', 'installing')"
    } else {
        "('notified', 'downloading', 'downloaded', 'installing', 'installed', 'failed', 'cancelled')"
    };
    let sql = format!(
        "{DEVICE_UPDATE_SELECT} WHERE rd.tenant_id = $1 AND rd.device_id = $2 AND rd.state IN {states} \
         ORDER BY rd.rollout_id DESC LIMIT $3"
    );
    with_reader!(scope.db(), |pool| sqlx::query_as::<_, DeviceUpdate>(&sql)
        .bind(scope.tenant_id())
        .bind(device_id)
        .bind(limit)
        .fetch_all(pool)
        .await)
    .map_err(classify)
}

/// One device's update in one rollout, whatever its state.
pub async fn device_update(
    scope: &TenantScope,
    device_id: DeviceId,
    rollout_id: RolloutId,
) -> Result<Option<DeviceUpdate>, StoreError> {
    let sql = format!("{DEVICE_UPDATE_SELECT} WHERE rd.tenant_id = $1 AND rd.device_id = $2 AND rd.rollout_id = $3");
    with_reader!(scope.db(), |pool| sqlx::query_as::<_, DeviceUpdate>(&sql)
        .bind(scope.tenant_id())
        .bind(device_id)
        .bind(rollout_id)
        .fetch_optional(pool)
        .await)
    .map_err(classify)
}

/// Whether the device has been sent `package` by a rollout (it may download it).
pub async fn device_may_download(
    scope: &TenantScope,
    device_id: DeviceId,
    package: PackageId,
) -> Result<bool, StoreError> {
    let (n,): (i64,) = with_reader!(scope.db(), |pool| sqlx::query_as(
        "SELECT COUNT(*) FROM rollout_devices rd JOIN rollouts r ON r.id = rd.rollout_id \
         WHERE rd.tenant_id = $1 AND rd.device_id = $2 AND r.package_id = $3 \
         AND rd.state IN ('notified', 'downloading', 'downloaded', 'installing', 'installed', 'failed')"
    )
    .bind(scope.tenant_id())
    .bind(device_id)
    .bind(package)
    .fetch_one(pool)
    .await)
    .map_err(classify)?;
    Ok(n > 0)
}

/// What a device reports about its update.
#[derive(Debug, Clone)]
pub struct Report<'a> {
    pub to: UpdateState,
    pub progress: Option<i64>,
    pub reason: Option<&'a str>,
    /// On `installed`: the package's name, version code and version, recorded as what the
    /// device has (none when the package is gone).
    pub installed: Option<(&'a str, i64, &'a str)>,
}

/// The answer to a device's report.
#[derive(Debug)]
pub enum Reported {
    /// Moved from the given state.
    Moved(UpdateState, Box<DeviceUpdate>),
    /// The same state again: only its progress was recorded.
    Unchanged(Box<DeviceUpdate>),
    NotFound,
    /// Not allowed from the current state (given).
    Conflict(UpdateState),
}

/// A device's report on its update: a move along `notified → … → installed`, or `failed`
/// (checked with [`UpdateState::device_may_move_to`]; 409 otherwise), with its event. The
/// first report also ends the device's `install_package` command as succeeded (it was
/// delivered and acted on), and `installed` records the version as the device's.
pub async fn report(
    scope: &TenantScope,
    device_id: DeviceId,
    rollout_id: RolloutId,
    report: &Report<'_>,
    now: i64,
) -> Result<Reported, StoreError> {
    let tenant = scope.tenant_id();
    let Some(current) = device_update(scope, device_id, rollout_id).await? else {
        return Ok(Reported::NotFound);
    };
    if !current.state.device_may_move_to(report.to) {
        return Ok(Reported::Conflict(current.state));
    }
    let mut tx = scope.db().begin().await?;
    let finished = report.to.is_final().then_some(now);
    let n = with_tx!(&mut tx, |conn| sqlx::query(
        "UPDATE rollout_devices SET state = $4, progress = COALESCE($5, progress), \
         reason = CASE WHEN $4 = 'failed' THEN $6 ELSE reason END, finished_at = COALESCE($7, finished_at), \
         updated_at = $8 WHERE rollout_id = $1 AND device_id = $2 AND tenant_id = $3 AND state = $9"
    )
    .bind(rollout_id)
    .bind(device_id)
    .bind(tenant)
    .bind(report.to)
    .bind(report.progress)
    .bind(report.reason)
    .bind(finished)
    .bind(now)
    .bind(current.state)
    .execute(&mut *conn)
    .await
    .map(|r| r.rows_affected()))
    .map_err(classify)?;
    if n != 1 {
        drop(tx);
        return Ok(match device_update(scope, device_id, rollout_id).await? {
            Some(now_row) => Reported::Conflict(now_row.state),
            None => Reported::NotFound,
        });
    }
    let same = current.state == report.to;
    if !same {
        tx.record(
            tenant,
            &Event::DeviceUpdateStateChanged {
                rollout_id,
                package_id: current.package_id,
                device_id,
                from: current.state,
                to: report.to,
                reason: report.reason.filter(|_| report.to == UpdateState::Failed).map(str::to_string),
            },
            now,
        );
        if current.state == UpdateState::Notified {
            if let Some(command_id) = current.command_id {
                crate::commands::finish_notification_in(&mut tx, tenant, command_id, device_id, now).await?;
            }
        }
        if let (UpdateState::Installed, Some((name, code, version))) = (report.to, report.installed) {
            upsert_package(&mut tx, tenant, device_id, name, code, Some(version), now).await?;
        }
    }
    tx.commit().await?;
    let Some(after) = device_update(scope, device_id, rollout_id).await? else {
        return Ok(Reported::NotFound);
    };
    Ok(if same { Reported::Unchanged(Box::new(after)) } else { Reported::Moved(current.state, Box::new(after)) })
}

async fn upsert_package(
    tx: &mut Tx,
    tenant: herd_domain::ids::TenantId,
    device_id: DeviceId,
    name: &str,
    code: i64,
    version: Option<&str>,
    now: i64,
) -> Result<(), StoreError> {
    with_tx!(tx, |conn| sqlx::query(
        "INSERT INTO device_packages (device_id, name, tenant_id, version_code, version, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (device_id, name) DO UPDATE SET \
         version_code = excluded.version_code, version = excluded.version, updated_at = excluded.updated_at"
    )
    .bind(device_id)
    .bind(name)
    .bind(tenant)
    .bind(code)
    .bind(version)
    .bind(now)
    .execute(&mut *conn)
    .await
    .map(drop))
    .map_err(classify)
}

/// A package a device has installed.
#[derive(Debug, Clone, FromRow)]
pub struct InstalledPackage {
    pub name: String,
    pub version_code: i64,
    pub version: Option<String>,
    pub updated_at: i64,
}

/// Replaces what the device says it has installed.
pub async fn set_installed(
    scope: &TenantScope,
    device_id: DeviceId,
    packages: &[(String, i64, Option<String>)],
    now: i64,
) -> Result<(), StoreError> {
    let tenant = scope.tenant_id();
    let mut tx = scope.db().begin().await?;
    with_tx!(&mut tx, |conn| sqlx::query("DELETE FROM device_packages WHERE tenant_id = $1 AND device_id = $2")
        .bind(tenant)
        .bind(device_id)
        .execute(&mut *conn)
        .await
        .map(drop))
    .map_err(classify)?;
    for (name, code, version) in packages {
        upsert_package(&mut tx, tenant, device_id, name, *code, version.as_deref(), now).await?;
    }
    tx.commit().await
}

/// What a device has installed, by name.
pub async fn installed(scope: &TenantScope, device_id: DeviceId) -> Result<Vec<InstalledPackage>, StoreError> {
    with_reader!(scope.db(), |pool| sqlx::query_as::<_, InstalledPackage>(
        "SELECT name, version_code, version, updated_at FROM device_packages WHERE tenant_id = $1 AND device_id = $2 \
         ORDER BY name"
    )
    .bind(scope.tenant_id())
    .bind(device_id)
    .fetch_all(pool)
    .await)
    .map_err(classify)
}

/// Whether a ready, running or paused rollout of the tenant sends `package`.
pub async fn package_in_use(scope: &TenantScope, package: PackageId) -> Result<bool, StoreError> {
    let (n,): (i64,) = with_reader!(scope.db(), |pool| sqlx::query_as(
        "SELECT COUNT(*) FROM rollouts WHERE tenant_id = $1 AND package_id = $2 \
         AND state IN ('ready', 'running', 'paused')"
    )
    .bind(scope.tenant_id())
    .bind(package)
    .fetch_one(pool)
    .await)
    .map_err(classify)?;
    Ok(n > 0)
}

/// The tenant's update figures for the overview: rollouts by state, and the devices of
/// running and paused rollouts by update state.
pub async fn summary(scope: &TenantScope) -> Result<(Vec<(RolloutState, i64)>, Vec<(UpdateState, i64)>), StoreError> {
    let rollouts = with_reader!(scope.db(), |pool| sqlx::query_as::<_, (RolloutState, i64)>(
        "SELECT state, COUNT(*) FROM rollouts WHERE tenant_id = $1 GROUP BY state"
    )
    .bind(scope.tenant_id())
    .fetch_all(pool)
    .await)
    .map_err(classify)?;
    let devices = with_reader!(scope.db(), |pool| sqlx::query_as::<_, (UpdateState, i64)>(
        "SELECT rd.state, COUNT(*) FROM rollouts r JOIN rollout_devices rd ON rd.rollout_id = r.id \
         WHERE r.tenant_id = $1 AND r.state IN ('running', 'paused') GROUP BY rd.state"
    )
    .bind(scope.tenant_id())
    .fetch_all(pool)
    .await)
    .map_err(classify)?;
    Ok((rollouts, devices))
}

/// Removes a deleted device's updates and installed packages (inside the delete's transaction).
pub(crate) async fn delete_for_device(tx: &mut Tx, scope: &TenantScope, device_id: DeviceId) -> Result<(), StoreError> {
    for sql in [
        "DELETE FROM rollout_devices WHERE tenant_id = $1 AND device_id = $2",
        "DELETE FROM device_packages WHERE tenant_id = $1 AND device_id = $2",
    ] {
        with_tx!(tx, |conn| sqlx::query(sql)
            .bind(scope.tenant_id())
            .bind(device_id)
            .execute(&mut *conn)
            .await
            .map(drop))
        .map_err(classify)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waves_split_the_devices_by_cumulative_percentages() {
        assert_eq!(wave_ends(1000, &[1, 10, 50, 100]), vec![10, 100, 500, 1000]);
        // Rounding up: a 1 % wave of 50 devices still has one.
        assert_eq!(wave_ends(50, &[1, 10, 50, 100]), vec![1, 5, 25, 50]);
        // Fewer devices than waves: some waves are empty, none is negative.
        assert_eq!(wave_ends(2, &[1, 10, 50, 100]), vec![1, 1, 1, 2]);
        assert_eq!(wave_ends(1, &[50, 100]), vec![1, 1]);
        assert_eq!(wave_ends(7, &[100]), vec![7]);
    }

    #[test]
    fn the_shuffle_is_stable_and_depends_on_the_rollout() {
        let (a, b) = (RolloutId::new(), RolloutId::new());
        let devices: Vec<DeviceId> = (0..64).map(|_| DeviceId::new()).collect();
        let order = |r: RolloutId| {
            let mut d = devices.clone();
            d.sort_by_key(|x| shuffle_key(r, *x));
            d
        };
        assert_eq!(order(a), order(a));
        assert_ne!(order(a), order(b));
        assert_ne!(order(a), devices, "not creation order");
    }
}
