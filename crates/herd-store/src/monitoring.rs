//! SQL for monitoring rules and alerts. Every method of [`MonitoringStore`] binds the scope's
//! tenant id. The free functions at the bottom are the documented cross-tenant exceptions of the
//! offline sweep (enabled offline rules of every tenant; resolving offline alerts of devices
//! that are online again), which act as the system principal.
//!
//! Two queries read the `devices` and `device_tags` tables of the `devices` module (the offline
//! candidates and the overview's counts and names): read-only, tenant-bound, and kept here so
//! that the sweep's query sits next to the index it relies on.

use sqlx::FromRow;

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use crate::Json;
use herd_domain::ids::{AlertId, DeviceId, RuleId, TenantId};
use herd_domain::monitoring::{Episode, OpenAlert, Rule, DEFAULT_RULES};
use herd_domain::status::{AlertStatus, DeviceStatus, Metric, Operator, Severity};
use herd_domain::Event;

use crate::cache::Touch;
use crate::Page;
use crate::TenantScope;
use crate::{classify, Db, StoreError, System, Tx};
use crate::{with_reader, with_tx, with_writer};

/// A rule row as stored.
#[derive(Debug, Clone, FromRow)]
pub struct RuleRow {
    pub id: RuleId,
    pub name: String,
    pub metric: Metric,
    pub operator: Operator,
    pub threshold: f64,
    pub severity: Severity,
    pub enabled: bool,
    /// JSON array of device ids, or NULL for every device.
    pub device_ids: Option<Json<Vec<DeviceId>>>,
    /// JSON array of tags, or NULL for every device.
    pub tags: Option<Json<Vec<String>>>,
    pub created_at: i64,
    pub updated_at: i64,
}

const RULE_COLUMNS: &str =
    "id, name, metric, operator, threshold, severity, enabled, device_ids, tags, created_at, updated_at";

impl RuleRow {
    /// The domain rule (the row decoded strictly, so this cannot fail).
    pub fn to_rule(&self) -> Rule {
        Rule {
            id: self.id,
            name: self.name.clone(),
            metric: self.metric,
            operator: self.operator,
            threshold: self.threshold,
            severity: self.severity,
            enabled: self.enabled,
            device_ids: self.device_ids.as_ref().map(|ids| ids.0.clone()),
            tags: self.tags.as_ref().map(|tags| tags.0.clone()),
        }
    }
}

/// The fields of a rule that a client sets (create, or the merged result of a patch).
#[derive(Debug, Clone)]
pub struct RuleSpec {
    pub name: String,
    pub metric: Metric,
    pub operator: Operator,
    pub threshold: f64,
    pub severity: Severity,
    pub enabled: bool,
    pub device_ids: Option<Vec<DeviceId>>,
    pub tags: Option<Vec<String>>,
}

/// A rule's device and tag scopes, ready to bind as JSON text.
type ScopeLists<'a> = (Option<Json<&'a Vec<DeviceId>>>, Option<Json<&'a Vec<String>>>);

impl RuleSpec {
    fn json_lists(&self) -> ScopeLists<'_> {
        (self.device_ids.as_ref().map(Json), self.tags.as_ref().map(Json))
    }
}

/// An alert row as stored, with its device's name.
#[derive(Debug, Clone, FromRow)]
pub struct AlertRow {
    pub id: AlertId,
    pub device_id: DeviceId,
    pub device_name: String,
    pub rule_id: Option<RuleId>,
    pub rule_name: String,
    pub metric: Metric,
    pub operator: Operator,
    pub threshold: f64,
    pub severity: Severity,
    pub status: AlertStatus,
    pub value: f64,
    pub last_value: f64,
    pub breach_count: i64,
    pub breached_at: i64,
    pub last_breach_at: i64,
    pub created_at: i64,
    pub updated_at: i64,
    pub resolved_at: Option<i64>,
    pub acknowledged_at: Option<i64>,
    pub acknowledged_by: Option<String>,
}

const ALERT_COLUMNS: &str = "a.id, a.device_id, d.name AS device_name, a.rule_id, a.rule_name, a.metric, a.operator, \
    a.threshold, a.severity, a.status, a.value, a.last_value, a.breach_count, a.breached_at, a.last_breach_at, \
    a.created_at, a.updated_at, a.resolved_at, a.acknowledged_at, a.acknowledged_by";

/// Alert status values.
pub const OPEN: &str = "open";
pub const RESOLVED: &str = "resolved";

/// Filters of `GET /alerts`.
#[derive(Debug, Clone, Default)]
pub struct AlertFilter {
    pub status: Option<String>,
    pub severity: Option<String>,
    pub device_id: Option<DeviceId>,
    /// Only alerts opened at or after this time (ms).
    pub since: Option<i64>,
}

/// The overview's figures (`GET /devices/stats/overview`).
#[derive(Debug, Clone, Default)]
pub struct Overview {
    pub total: i64,
    pub online: i64,
    pub offline: i64,
    pub alerts_last_24h: i64,
    pub recent: Vec<AlertRow>,
}

/// How many alerts the overview lists.
pub const RECENT_ALERTS: i64 = 10;

/// Alerts opened within this window count in `alertsLast24h`.
const DAY_MS: i64 = 86_400_000;

/// The width of an `alert_counts` bucket (migration 0014 writes `created_at / 600000`).
const ALERT_BUCKET_MS: i64 = 600_000;

/// How long `alert_counts` buckets are kept: the overview's window and one bucket more.
const ALERT_COUNTS_KEPT_MS: i64 = DAY_MS + ALERT_BUCKET_MS;

/// How many offline candidates one sweep transaction handles.
const OFFLINE_CHUNK: usize = 500;

/// The tenant's rules and alerts.
pub struct MonitoringStore<'s> {
    scope: &'s TenantScope,
    tenant: String,
}

impl<'s> MonitoringStore<'s> {
    pub fn new(scope: &'s TenantScope) -> Self {
        Self { scope, tenant: scope.tenant_id().to_string() }
    }

    fn db(&self) -> &Db {
        self.scope.db()
    }

    /// Creates the default rules the first time a tenant's rules are needed. Idempotent and safe
    /// under concurrency: the `monitoring_defaults` row is the guard (a second inserter waits on
    /// the primary key, then inserts nothing), and a deleted default stays deleted.
    pub async fn ensure_defaults(&self, now: i64) -> Result<(), StoreError> {
        let seeded: Option<i64> = with_reader!(self.db(), |pool| sqlx::query_scalar::<_, i64>(
            "SELECT seeded_at FROM monitoring_defaults WHERE tenant_id = $1"
        )
        .bind(&self.tenant)
        .fetch_optional(pool)
        .await)
        .map_err(classify)?;
        if seeded.is_some() {
            return Ok(());
        }
        let mut tx = self.db().begin().await?;
        let claimed = with_tx!(&mut tx, |conn| sqlx::query(
            "INSERT INTO monitoring_defaults (tenant_id, seeded_at) VALUES ($1, $2) ON CONFLICT DO NOTHING"
        )
        .bind(&self.tenant)
        .bind(now)
        .execute(&mut *conn)
        .await
        .map(|r| r.rows_affected()))
        .map_err(classify)?;
        if claimed == 1 {
            for (name, metric, operator, threshold, severity) in DEFAULT_RULES {
                let spec = RuleSpec {
                    name: (*name).to_string(),
                    metric: *metric,
                    operator: *operator,
                    threshold: *threshold,
                    severity: *severity,
                    enabled: true,
                    device_ids: None,
                    tags: None,
                };
                self.insert_rule(&mut tx, RuleId::new(), &spec, now).await?;
            }
        }
        tx.commit().await
    }

    /// Every rule of the tenant (enabled or not), for evaluation.
    pub async fn all_rules(&self) -> Result<Vec<Rule>, StoreError> {
        let sql = format!("SELECT {RULE_COLUMNS} FROM monitoring_rules WHERE tenant_id = $1 ORDER BY id");
        let rows =
            with_reader!(self.db(), |pool| sqlx::query_as::<_, RuleRow>(&sql).bind(&self.tenant).fetch_all(pool).await)
                .map_err(classify)?;
        Ok(rows.iter().map(RuleRow::to_rule).collect())
    }

    /// One page of rules in creation order (`page.limit + 1` rows).
    pub async fn list_rules(&self, page: &Page) -> Result<Vec<RuleRow>, StoreError> {
        let sql = format!(
            "SELECT {RULE_COLUMNS} FROM monitoring_rules WHERE tenant_id = $1 AND id > $2 ORDER BY id LIMIT $3"
        );
        let after = page.after.clone().unwrap_or_default();
        with_reader!(self.db(), |pool| sqlx::query_as::<_, RuleRow>(&sql)
            .bind(&self.tenant)
            .bind(&after)
            .bind(i64::from(page.limit) + 1)
            .fetch_all(pool)
            .await)
        .map_err(classify)
    }

    pub async fn get_rule(&self, id: RuleId) -> Result<Option<RuleRow>, StoreError> {
        let sql = format!("SELECT {RULE_COLUMNS} FROM monitoring_rules WHERE tenant_id = $1 AND id = $2");
        let id = id.to_string();
        with_reader!(self.db(), |pool| sqlx::query_as::<_, RuleRow>(&sql)
            .bind(&self.tenant)
            .bind(&id)
            .fetch_optional(pool)
            .await)
        .map_err(classify)
    }

    pub async fn create_rule(&self, spec: &RuleSpec, now: i64) -> Result<RuleRow, StoreError> {
        // Seed first, so that a tenant's first own rule does not suppress its defaults.
        self.ensure_defaults(now).await?;
        let id = RuleId::new();
        let mut tx = self.db().begin().await?;
        self.insert_rule(&mut tx, id, spec, now).await?;
        tx.commit().await?;
        invalidate_rules(self.scope.tenant_id());
        self.get_rule(id).await?.ok_or(StoreError::Other(sqlx::Error::RowNotFound))
    }

    async fn insert_rule(&self, tx: &mut Tx, id: RuleId, spec: &RuleSpec, now: i64) -> Result<(), StoreError> {
        const SQL: &str = "INSERT INTO monitoring_rules (id, tenant_id, name, metric, operator, threshold, severity, \
            enabled, device_ids, tags, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11)";
        let (ids, tags) = spec.json_lists();
        let id = id.to_string();
        with_tx!(tx, |conn| sqlx::query(SQL)
            .bind(&id)
            .bind(&self.tenant)
            .bind(&spec.name)
            .bind(spec.metric.as_str())
            .bind(spec.operator.as_str())
            .bind(spec.threshold)
            .bind(spec.severity.as_str())
            .bind(spec.enabled)
            .bind(&ids)
            .bind(&tags)
            .bind(now)
            .execute(&mut *conn)
            .await
            .map(|r| r.rows_affected()))
        .map_err(classify)?;
        Ok(())
    }

    /// Replaces a rule's fields. Disabling it, or changing what it measures, resolves its open
    /// alerts (with `alert.resolved` events) in the same transaction. `None` if there is no such
    /// rule in this tenant.
    pub async fn update_rule(&self, id: RuleId, spec: &RuleSpec, now: i64) -> Result<Option<RuleRow>, StoreError> {
        let Some(before) = self.get_rule(id).await? else { return Ok(None) };
        const SQL: &str = "UPDATE monitoring_rules SET name = $1, metric = $2, operator = $3, threshold = $4, \
            severity = $5, enabled = $6, device_ids = $7, tags = $8, updated_at = $9 WHERE tenant_id = $10 AND id = $11";
        let (ids, tags) = spec.json_lists();
        let id_text = id.to_string();
        let mut tx = self.db().begin().await?;
        let affected = with_tx!(&mut tx, |conn| sqlx::query(SQL)
            .bind(&spec.name)
            .bind(spec.metric.as_str())
            .bind(spec.operator.as_str())
            .bind(spec.threshold)
            .bind(spec.severity.as_str())
            .bind(spec.enabled)
            .bind(&ids)
            .bind(&tags)
            .bind(now)
            .bind(&self.tenant)
            .bind(&id_text)
            .execute(&mut *conn)
            .await
            .map(|r| r.rows_affected()))
        .map_err(classify)?;
        if affected == 0 {
            return Ok(None);
        }
        if !spec.enabled && before.enabled {
            self.resolve_alerts_of_rule(&mut tx, &id_text, "rule_disabled", now).await?;
        } else if spec.metric != before.metric {
            self.resolve_alerts_of_rule(&mut tx, &id_text, "rule_changed", now).await?;
        }
        tx.commit().await?;
        invalidate_rules(self.scope.tenant_id());
        self.get_rule(id).await
    }

    /// Deletes a rule after resolving its open alerts; its alerts stay in the history. False if
    /// there is no such rule in this tenant.
    pub async fn delete_rule(&self, id: RuleId, now: i64) -> Result<bool, StoreError> {
        let id_text = id.to_string();
        let mut tx = self.db().begin().await?;
        self.resolve_alerts_of_rule(&mut tx, &id_text, "rule_deleted", now).await?;
        let affected =
            with_tx!(&mut tx, |conn| sqlx::query("DELETE FROM monitoring_rules WHERE tenant_id = $1 AND id = $2")
                .bind(&self.tenant)
                .bind(&id_text)
                .execute(&mut *conn)
                .await
                .map(|r| r.rows_affected()))
            .map_err(classify)?;
        if affected == 0 {
            return Ok(false);
        }
        tx.commit().await?;
        invalidate_rules(self.scope.tenant_id());
        Ok(true)
    }

    async fn resolve_alerts_of_rule(
        &self,
        tx: &mut Tx,
        rule_id: &str,
        reason: &'static str,
        now: i64,
    ) -> Result<(), StoreError> {
        const SQL: &str = "UPDATE alerts SET status = 'resolved', resolved_at = $1, updated_at = $1 \
            WHERE tenant_id = $2 AND rule_id = $3 AND status = 'open' RETURNING id, device_id, metric, severity";
        // A resolved alert would only leave a cached `alerting` true, which costs evaluations,
        // never a missed one; the tenant is touched so that they stop.
        tx.touch(Touch::Tenant(self.scope.tenant_id()));
        let rows: Vec<(AlertId, DeviceId, Metric, Severity)> = with_tx!(tx, |conn| sqlx::query_as(SQL)
            .bind(now)
            .bind(&self.tenant)
            .bind(rule_id)
            .fetch_all(&mut *conn)
            .await)
        .map_err(classify)?;
        for (alert_id, device_id, metric, severity) in rows {
            let event = Event::AlertResolved { alert_id, device_id, metric, severity, value: None, reason };
            tx.record(self.scope.tenant_id(), &event, now);
        }
        Ok(())
    }

    /// The device's open alerts (the ingest path reads them before evaluating fresh samples).
    pub async fn open_alerts_of_device(&self, device_id: DeviceId) -> Result<Vec<OpenAlert>, StoreError> {
        const SQL: &str =
            "SELECT id, rule_id FROM alerts WHERE tenant_id = $1 AND device_id = $2 AND status = 'open' AND rule_id IS NOT NULL";
        let device = device_id.to_string();
        let rows: Vec<(AlertId, RuleId)> =
            with_reader!(self.db(), |pool| sqlx::query_as(SQL).bind(&self.tenant).bind(&device).fetch_all(pool).await)
                .map_err(classify)?;
        Ok(rows.into_iter().map(|(id, rule_id)| OpenAlert { id, rule_id }).collect())
    }

    /// Writes what [`super::evaluate`] decided for one (device, rule), inside the caller's
    /// transaction (the one that stores the samples), with `alert.opened` / `alert.resolved`
    /// events. Opening an alert that another request has just opened fails with
    /// [`StoreError::Unique`] on the open-alert index; the caller retries with fresh state.
    pub async fn apply_episodes(
        &self,
        tx: &mut Tx,
        device_id: DeviceId,
        rule: &Rule,
        episodes: &[Episode],
        now: i64,
    ) -> Result<(), StoreError> {
        let device = device_id.to_string();
        // The credential cache keeps whether the device is alerting (see `cache`): only an alert
        // opened or resolved can change that, not one that goes on breaching (every sample of a
        // device in a long alert would otherwise evict its cached credential).
        if episodes.iter().any(|episode| episode.existing.is_none() || episode.resolved_by.is_some()) {
            tx.touch(Touch::Device(device_id));
        }
        for episode in episodes {
            let alert_id = match episode.existing {
                Some(alert_id) => {
                    if let Some((value, at)) = episode.last {
                        const SQL: &str = "UPDATE alerts SET last_value = $1, last_breach_at = $2, \
                            breach_count = breach_count + $3, updated_at = $4 WHERE tenant_id = $5 AND id = $6 AND status = 'open'";
                        let id = alert_id.to_string();
                        with_tx!(&mut *tx, |conn| sqlx::query(SQL)
                            .bind(value)
                            .bind(at)
                            .bind(episode.breaches)
                            .bind(now)
                            .bind(&self.tenant)
                            .bind(&id)
                            .execute(&mut *conn)
                            .await
                            .map(|r| r.rows_affected()))
                        .map_err(classify)?;
                    }
                    alert_id
                }
                None => {
                    let (Some((first_value, first_at)), Some((last_value, last_at))) = (episode.first, episode.last)
                    else {
                        continue;
                    };
                    let alert_id = AlertId::new();
                    let opened = NewAlert {
                        id: alert_id,
                        device_id: &device,
                        rule,
                        value: first_value,
                        last_value,
                        breach_count: episode.breaches,
                        breached_at: first_at,
                        last_breach_at: last_at,
                    };
                    if !self.insert_alert(tx, &opened, now, false).await? {
                        return Err(StoreError::Unique("alerts_open_uq".into()));
                    }
                    let event = Event::AlertOpened {
                        alert_id,
                        device_id,
                        rule_id: rule.id,
                        metric: rule.metric,
                        severity: rule.severity,
                        value: first_value,
                        threshold: rule.threshold,
                    };
                    tx.record(self.scope.tenant_id(), &event, now);
                    alert_id
                }
            };
            if let Some((value, _)) = episode.resolved_by {
                const SQL: &str = "UPDATE alerts SET status = 'resolved', resolved_at = $1, updated_at = $1 \
                    WHERE tenant_id = $2 AND id = $3 AND status = 'open'";
                let id = alert_id.to_string();
                let affected = with_tx!(&mut *tx, |conn| sqlx::query(SQL)
                    .bind(now)
                    .bind(&self.tenant)
                    .bind(&id)
                    .execute(&mut *conn)
                    .await
                    .map(|r| r.rows_affected()))
                .map_err(classify)?;
                if affected == 1 {
                    let event = Event::AlertResolved {
                        alert_id,
                        device_id,
                        metric: rule.metric,
                        severity: rule.severity,
                        value: Some(value),
                        reason: "recovered",
                    };
                    tx.record(self.scope.tenant_id(), &event, now);
                }
            }
        }
        Ok(())
    }

    /// Inserts an open alert. With `skip_duplicate`, an already open (device, rule) alert makes
    /// it insert nothing and answer false; without, the unique violation is returned.
    async fn insert_alert(
        &self,
        tx: &mut Tx,
        alert: &NewAlert<'_>,
        now: i64,
        skip_duplicate: bool,
    ) -> Result<bool, StoreError> {
        // cache: untouched — here; `apply_episodes` touches the device, and `open_offline_alerts`
        // opens `offline` alerts, which the cache's `alerting` leaves out.
        let sql = format!(
            "INSERT INTO alerts (id, tenant_id, device_id, rule_id, rule_name, metric, operator, threshold, severity, \
             status, value, last_value, breach_count, breached_at, last_breach_at, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'open', $10, $11, $12, $13, $14, $15, $15){}",
            if skip_duplicate { " ON CONFLICT DO NOTHING" } else { "" }
        );
        let (id, rule_id) = (alert.id.to_string(), alert.rule.id.to_string());
        let inserted = with_tx!(tx, |conn| sqlx::query(&sql)
            .bind(&id)
            .bind(&self.tenant)
            .bind(alert.device_id)
            .bind(&rule_id)
            .bind(&alert.rule.name)
            .bind(alert.rule.metric.as_str())
            .bind(alert.rule.operator.as_str())
            .bind(alert.rule.threshold)
            .bind(alert.rule.severity.as_str())
            .bind(alert.value)
            .bind(alert.last_value)
            .bind(alert.breach_count)
            .bind(alert.breached_at)
            .bind(alert.last_breach_at)
            .bind(now)
            .execute(&mut *conn)
            .await
            .map(|r| r.rows_affected()))
        .map_err(classify)?;
        Ok(inserted == 1)
    }

    /// One page of alerts, newest first (`page.limit + 1` rows).
    pub async fn list_alerts(&self, filter: &AlertFilter, page: &Page) -> Result<Vec<AlertRow>, StoreError> {
        let mut sql =
            format!("SELECT {ALERT_COLUMNS} FROM alerts a JOIN devices d ON d.id = a.device_id WHERE a.tenant_id = $1");
        let mut texts: Vec<String> = Vec::new();
        for (column, value) in [
            ("a.status", filter.status.clone()),
            ("a.severity", filter.severity.clone()),
            ("a.device_id", filter.device_id.map(|id| id.to_string())),
            ("a.id", page.after.clone()),
        ] {
            if let Some(value) = value {
                texts.push(value);
                let op = if column == "a.id" { "<" } else { "=" };
                sql.push_str(&format!(" AND {column} {op} ${}", texts.len() + 1));
            }
        }
        // Only with `since` does the query constrain created_at: without it, the planner walks
        // (tenant_id, id) backwards and stops after one page.
        let mut next = texts.len() + 2;
        if filter.since.is_some() {
            sql.push_str(&format!(" AND a.created_at >= ${next}"));
            next += 1;
        }
        sql.push_str(&format!(" ORDER BY a.id DESC LIMIT ${next}"));
        let limit = i64::from(page.limit) + 1;
        with_reader!(self.db(), |pool| {
            let mut query = sqlx::query_as::<_, AlertRow>(&sql).bind(&self.tenant);
            for text in &texts {
                query = query.bind(text);
            }
            if let Some(since) = filter.since {
                query = query.bind(since);
            }
            query.bind(limit).fetch_all(pool).await
        })
        .map_err(classify)
    }

    pub async fn get_alert(&self, id: AlertId) -> Result<Option<AlertRow>, StoreError> {
        let sql =
            format!("SELECT {ALERT_COLUMNS} FROM alerts a JOIN devices d ON d.id = a.device_id WHERE a.tenant_id = $1 AND a.id = $2");
        let id = id.to_string();
        with_reader!(self.db(), |pool| sqlx::query_as::<_, AlertRow>(&sql)
            .bind(&self.tenant)
            .bind(&id)
            .fetch_optional(pool)
            .await)
        .map_err(classify)
    }

    /// Marks an alert acknowledged by `by` (the first acknowledgement is kept). `None` if there
    /// is no such alert in this tenant.
    pub async fn acknowledge(&self, id: AlertId, by: &str, now: i64) -> Result<Option<AlertRow>, StoreError> {
        // cache: untouched — acknowledging leaves the alert open.
        const SQL: &str = "UPDATE alerts SET acknowledged_at = $1, acknowledged_by = $2, updated_at = $1 \
            WHERE tenant_id = $3 AND id = $4 AND acknowledged_at IS NULL";
        let id_text = id.to_string();
        with_writer!(self.db(), |pool| sqlx::query(SQL)
            .bind(now)
            .bind(by)
            .bind(&self.tenant)
            .bind(&id_text)
            .execute(pool)
            .await
            .map(|r| r.rows_affected()))
        .map_err(classify)?;
        self.get_alert(id).await
    }

    /// The overview's figures: device counts from `device_counts` (kept by triggers, migrations
    /// 0006 and 0012; summed over its shards), alerts of the last 24 hours from `alert_counts`
    /// (kept by triggers, migration 0014) and the newest alerts from the `(tenant_id,
    /// created_at)` index. Never reads `metric_samples`.
    ///
    /// `alertsLast24h` counts alerts with `created_at > now - 24 h`, exactly: the buckets that
    /// lie wholly after the window's start are summed from `alert_counts`, and the one bucket the
    /// window starts in is counted from `alerts` itself (at most ten minutes of alerts on the
    /// index), so the cost no longer grows with the day's alerts.
    pub async fn overview(&self, now: i64) -> Result<Overview, StoreError> {
        let counts = async {
            with_reader!(self.db(), |pool| sqlx::query_as::<_, (DeviceStatus, i64)>(
                "SELECT status, CAST(SUM(n) AS BIGINT) FROM device_counts WHERE tenant_id = $1 GROUP BY status"
            )
            .bind(&self.tenant)
            .fetch_all(pool)
            .await)
        };
        let since = now - DAY_MS;
        let first_bucket = since.div_euclid(ALERT_BUCKET_MS);
        let alerts_last_24h = async {
            with_reader!(self.db(), |pool| {
                sqlx::query_scalar::<_, i64>(
                "SELECT CAST(COALESCE((SELECT SUM(n) FROM alert_counts WHERE tenant_id = $1 AND bucket > $2), 0) \
                 + (SELECT COUNT(*) FROM alerts WHERE tenant_id = $1 AND created_at > $3 AND created_at < $4) AS BIGINT)"
            )
            .bind(&self.tenant)
            .bind(first_bucket)
            .bind(since)
            .bind((first_bucket + 1) * ALERT_BUCKET_MS)
            .fetch_one(pool)
            .await
            })
        };
        let recent_sql = format!(
            "SELECT {ALERT_COLUMNS} FROM alerts a JOIN devices d ON d.id = a.device_id WHERE a.tenant_id = $1 \
             ORDER BY a.created_at DESC, a.id DESC LIMIT $2"
        );
        let recent = async {
            with_reader!(self.db(), |pool| sqlx::query_as::<_, AlertRow>(&recent_sql)
                .bind(&self.tenant)
                .bind(RECENT_ALERTS)
                .fetch_all(pool)
                .await)
        };
        let (counts, alerts_last_24h, recent) =
            futures::try_join!(counts, alerts_last_24h, recent).map_err(classify)?;
        let mut overview = Overview { alerts_last_24h, recent, ..Overview::default() };
        for (status, n) in counts {
            overview.total += n;
            match status {
                DeviceStatus::Online => overview.online += n,
                DeviceStatus::Offline => overview.offline += n,
            }
        }
        Ok(overview)
    }

    /// Opens an alert for every device of this tenant that is offline past `rule`'s threshold
    /// (minutes) and has none open for it; answers how many opened.
    pub async fn open_offline_alerts(&self, rule: &Rule, now: i64) -> Result<u64, StoreError> {
        let cutoff = now - (rule.threshold * 60_000.0) as i64;
        let comparison = if rule.operator == Operator::Gte { "<=" } else { "<" };
        let mut sql = format!(
            "SELECT d.id, COALESCE(d.last_seen, d.created_at) FROM devices d \
             WHERE d.tenant_id = $1 AND d.status = 'offline' AND COALESCE(d.last_seen, d.created_at) {comparison} $2 \
             AND NOT EXISTS (SELECT 1 FROM alerts a WHERE a.device_id = d.id AND a.rule_id = $3 AND a.status = 'open')"
        );
        let mut scope_values: Vec<String> = Vec::new();
        let placeholders = |values: &[String], start: usize| -> String {
            (0..values.len()).map(|i| format!("${}", start + i)).collect::<Vec<_>>().join(", ")
        };
        if let Some(ids) = &rule.device_ids {
            scope_values = ids.iter().map(|id| id.to_string()).collect();
            sql.push_str(&format!(" AND d.id IN ({})", placeholders(&scope_values, 4)));
        } else if let Some(tags) = &rule.tags {
            scope_values = tags.clone();
            sql.push_str(&format!(
                " AND EXISTS (SELECT 1 FROM device_tags t WHERE t.device_id = d.id AND t.tag IN ({}))",
                placeholders(&scope_values, 4)
            ));
        }
        if scope_values.is_empty() && (rule.device_ids.is_some() || rule.tags.is_some()) {
            return Ok(0);
        }
        sql.push_str(&format!(" ORDER BY d.id LIMIT {OFFLINE_CHUNK}"));
        let rule_id = rule.id.to_string();
        let mut opened = 0;
        loop {
            let candidates: Vec<(String, i64)> = with_reader!(self.db(), |pool| {
                let mut query = sqlx::query_as(&sql).bind(&self.tenant).bind(cutoff).bind(&rule_id);
                for value in &scope_values {
                    query = query.bind(value);
                }
                query.fetch_all(pool).await
            })
            .map_err(classify)?;
            let mut tx = self.db().begin().await?;
            for (device, since) in &candidates {
                let minutes = ((now - since) as f64 / 60_000.0 * 10.0).round() / 10.0;
                let alert = NewAlert {
                    id: AlertId::new(),
                    device_id: device,
                    rule,
                    value: minutes,
                    last_value: minutes,
                    breach_count: 1,
                    breached_at: now,
                    last_breach_at: now,
                };
                if self.insert_alert(&mut tx, &alert, now, true).await? {
                    let event = Event::AlertOpened {
                        alert_id: alert.id,
                        device_id: parse(device)?,
                        rule_id: rule.id,
                        metric: Metric::Offline,
                        severity: rule.severity,
                        value: minutes,
                        threshold: rule.threshold,
                    };
                    tx.record(self.scope.tenant_id(), &event, now);
                    opened += 1;
                }
            }
            tx.commit().await?;
            if candidates.len() < OFFLINE_CHUNK {
                return Ok(opened);
            }
        }
    }
}

/// An alert about to be opened.
struct NewAlert<'a> {
    id: AlertId,
    device_id: &'a str,
    rule: &'a Rule,
    value: f64,
    last_value: f64,
    breach_count: i64,
    breached_at: i64,
    last_breach_at: i64,
}

fn parse<T: std::str::FromStr>(text: &str) -> Result<T, StoreError> {
    text.parse().map_err(|_| StoreError::Other(sqlx::Error::Decode(format!("stored id {text:?} is not a UUID").into())))
}

/// Cross-tenant (the telemetry retention step): deletes the `alert_counts` buckets that no
/// overview at or after `now` reads (older than its window and one bucket).
pub async fn purge_alert_counts(db: &Db, now: i64) -> Result<(), StoreError> {
    let before = (now - ALERT_COUNTS_KEPT_MS).div_euclid(ALERT_BUCKET_MS);
    with_writer!(db, |pool| sqlx::query("DELETE FROM alert_counts WHERE bucket < $1")
        .bind(before)
        .execute(pool)
        .await
        .map(drop))
    .map_err(classify)
}

/// Cross-tenant (the offline sweep, as the system principal): every enabled `offline` rule.
pub async fn enabled_offline_rules(db: &Db, _system: &System) -> Result<Vec<(TenantId, Rule)>, StoreError> {
    let sql = format!(
        "SELECT tenant_id, {RULE_COLUMNS} FROM monitoring_rules WHERE metric = 'offline' AND enabled = $1 ORDER BY id"
    );
    #[derive(FromRow)]
    struct Row {
        tenant_id: TenantId,
        #[sqlx(flatten)]
        rule: RuleRow,
    }
    let rows =
        with_reader!(db, |pool| sqlx::query_as::<_, Row>(&sql).bind(true).fetch_all(pool).await).map_err(classify)?;
    Ok(rows.into_iter().map(|row| (row.tenant_id, row.rule.to_rule())).collect())
}

/// Cross-tenant (the offline sweep, as the system principal): resolves every open `offline`
/// alert whose device is online again, with one `alert.resolved` event each. A conditional
/// `UPDATE … RETURNING`, so concurrent sweeps resolve (and announce) each alert once. Each open
/// alert looks its own device up by id: the presence index covers online devices only
/// (migration 0015), and `device_id IN (all online devices)` would read every device's entry.
pub async fn resolve_offline_alerts_of_online_devices(db: &Db, _system: &System, now: i64) -> Result<u64, StoreError> {
    // cache: untouched — these are `offline` alerts, which the cache's `alerting` leaves out.
    const SQL: &str = "UPDATE alerts SET status = 'resolved', resolved_at = $1, updated_at = $1 \
        WHERE metric = 'offline' AND status = 'open' \
        AND EXISTS (SELECT 1 FROM devices WHERE devices.id = alerts.device_id AND devices.status = 'online') \
        RETURNING id, tenant_id, device_id, severity";
    let mut tx = db.begin().await?;
    let rows: Vec<(AlertId, TenantId, DeviceId, Severity)> =
        with_tx!(&mut tx, |conn| sqlx::query_as(SQL).bind(now).fetch_all(&mut *conn).await).map_err(classify)?;
    for (alert_id, tenant_id, device_id, severity) in &rows {
        let event = Event::AlertResolved {
            alert_id: *alert_id,
            device_id: *device_id,
            metric: Metric::Offline,
            severity: *severity,
            value: None,
            reason: "recovered",
        };
        tx.record(*tenant_id, &event, now);
    }
    tx.commit().await?;
    Ok(rows.len() as u64)
}

/// How long a tenant's rules are served from memory before they are read again. Changes made
/// through this process invalidate at once; other instances (PostgreSQL deployments) see a rule
/// change within this time.
pub const RULE_CACHE_TTL: Duration = Duration::from_secs(5);

struct CachedRules {
    loaded: Instant,
    rules: Arc<[Rule]>,
}

/// The per-tenant rule cache of the ingest hot path. Keyed by tenant id alone: ids are UUIDv7,
/// unique across databases, so several apps in one process (the tests) never share an entry.
/// A std `Mutex`: it is held for a map lookup or insert, never across an await.
static RULE_CACHE: LazyLock<Mutex<HashMap<TenantId, CachedRules>>> = LazyLock::new(Default::default);

/// The tenant's rules (seeding the defaults on first use), from the cache when fresh.
pub async fn tenant_rules(scope: &TenantScope, now: i64) -> Result<Arc<[Rule]>, StoreError> {
    let tenant_id = scope.tenant_id();
    {
        let cache = RULE_CACHE.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(entry) = cache.get(&tenant_id) {
            if entry.loaded.elapsed() < RULE_CACHE_TTL {
                return Ok(entry.rules.clone());
            }
        }
    }
    let store = MonitoringStore::new(scope);
    store.ensure_defaults(now).await?;
    let rules: Arc<[Rule]> = store.all_rules().await?.into();
    let mut cache = RULE_CACHE.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if cache.len() > 10_000 {
        cache.retain(|_, entry| entry.loaded.elapsed() < RULE_CACHE_TTL);
    }
    cache.insert(tenant_id, CachedRules { loaded: Instant::now(), rules: rules.clone() });
    Ok(rules)
}

/// Forgets a tenant's cached rules; every rule change calls it after committing.
pub(crate) fn invalidate_rules(tenant_id: TenantId) {
    RULE_CACHE.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(&tenant_id);
}
