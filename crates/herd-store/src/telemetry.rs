//! SQL for metric samples. Every method of [`TelemetryStore`] binds the scope's tenant id;
//! [`purge_before`] is the documented cross-tenant exception (the retention job).
//!
//! The one place the engines differ is the batch insert: SQLite gets a multi-row `VALUES` list
//! (the device and tenant bound once), PostgreSQL one `INSERT … SELECT FROM UNNEST` of arrays, a
//! single prepared statement whatever the batch size.

use sqlx::FromRow;

use herd_domain::ids::DeviceId;
use herd_domain::monitoring::{self, Reading, Rule};

use crate::monitoring::MonitoringStore;
use crate::TenantScope;
use crate::{classify, Db, Pools, StoreError, Tx, TxConn};
use crate::{with_reader, with_writer};

/// One bucket of history: per metric the average, minimum and maximum.
#[derive(Debug, Clone, FromRow)]
pub struct BucketRow {
    /// Start of the bucket (ms), a multiple of the bucket width.
    pub bucket: i64,
    pub samples: i64,
    pub cpu_avg: f64,
    pub cpu_min: f64,
    pub cpu_max: f64,
    pub ram_avg: f64,
    pub ram_min: f64,
    pub ram_max: f64,
    pub storage_avg: f64,
    pub storage_min: f64,
    pub storage_max: f64,
    pub temperature_avg: Option<f64>,
    pub temperature_min: Option<f64>,
    pub temperature_max: Option<f64>,
}

/// A stored sample.
#[derive(Debug, Clone, FromRow)]
pub struct SampleRow {
    pub recorded_at: i64,
    pub cpu: f64,
    pub ram: f64,
    pub storage: f64,
    pub temperature: Option<f64>,
}

/// What one ingest stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ingested {
    /// Samples written.
    pub stored: u64,
    /// Samples ignored because the device had already sent them (same `recordedAt`).
    pub duplicates: u64,
}

/// How many rows one purge statement deletes.
const PURGE_CHUNK: i64 = 5000;

/// The tenant's metric samples.
pub struct TelemetryStore<'s> {
    scope: &'s TenantScope,
    tenant: String,
}

impl<'s> TelemetryStore<'s> {
    pub fn new(scope: &'s TenantScope) -> Self {
        Self { scope, tenant: scope.tenant_id().to_string() }
    }

    fn db(&self) -> &Db {
        self.scope.db()
    }

    /// Stores `readings` (ascending `recorded_at`, distinct) of a device and evaluates `rules`
    /// (the enabled metric rules that apply to it) against those newer than its newest stored
    /// sample, all in one transaction. Two requests of one device that race to open the same
    /// alert meet at the open-alert unique index; the loser evaluates again with the winner's
    /// state (the insert is idempotent, so the retry cannot double-store).
    pub async fn ingest(
        &self,
        device_id: DeviceId,
        readings: &[Reading],
        rules: &[&Rule],
        now: i64,
    ) -> Result<Ingested, StoreError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.try_ingest(device_id, readings, rules, now).await {
                Err(StoreError::Unique(_)) if attempt == 1 => continue,
                other => return other,
            }
        }
    }

    async fn try_ingest(
        &self,
        device_id: DeviceId,
        readings: &[Reading],
        rules: &[&Rule],
        now: i64,
    ) -> Result<Ingested, StoreError> {
        let device = device_id.to_string();
        let mut decisions = Vec::new();
        if !rules.is_empty() {
            let newest = self.newest_sample_time(&device).await?;
            let fresh: Vec<Reading> =
                readings.iter().copied().filter(|r| newest.is_none_or(|newest| r.recorded_at > newest)).collect();
            if !fresh.is_empty() {
                let monitoring = MonitoringStore::new(self.scope);
                let open = monitoring.open_alerts_of_device(device_id).await?;
                for rule in rules {
                    let current = open.iter().copied().find(|alert| alert.rule_id == rule.id);
                    let episodes = monitoring::evaluate(rule, current, &fresh);
                    if !episodes.is_empty() {
                        decisions.push((*rule, episodes));
                    }
                }
            }
        }
        let total = readings.len() as u64;
        if decisions.is_empty() {
            let stored = if readings.len() <= crate::samples::GROUPED_AT_MOST {
                self.db().samples.write(&device, &self.tenant, readings).await?
            } else {
                self.insert(None, &device, readings).await?
            };
            return Ok(Ingested { stored, duplicates: total - stored });
        }
        let mut tx = self.db().begin().await?;
        let stored = self.insert(Some(&mut tx), &device, readings).await?;
        let monitoring = MonitoringStore::new(self.scope);
        for (rule, episodes) in &decisions {
            monitoring.apply_episodes(&mut tx, device_id, rule, episodes, now).await?;
        }
        tx.commit().await?;
        Ok(Ingested { stored, duplicates: total - stored })
    }

    /// The `recorded_at` of the device's newest stored sample: the end of its primary-key range.
    async fn newest_sample_time(&self, device: &str) -> Result<Option<i64>, StoreError> {
        const SQL: &str = "SELECT recorded_at FROM metric_samples WHERE device_id = $1 AND tenant_id = $2 \
            ORDER BY recorded_at DESC LIMIT 1";
        with_reader!(self.db(), |pool| sqlx::query_scalar::<_, i64>(SQL)
            .bind(device)
            .bind(&self.tenant)
            .fetch_optional(pool)
            .await)
        .map_err(classify)
    }

    /// The one statement that writes samples; answers how many were new.
    async fn insert(&self, tx: Option<&mut Tx>, device: &str, readings: &[Reading]) -> Result<u64, StoreError> {
        let result = match (&self.db().pools, tx) {
            (Pools::Sqlite { writer, .. }, None) => {
                let sql = sqlite_insert_sql(readings.len());
                sqlite_insert(&sql, device, &self.tenant, readings).execute(writer).await.map(|r| r.rows_affected())
            }
            (_, Some(Tx { conn: TxConn::Sqlite(tx), .. })) => {
                let sql = sqlite_insert_sql(readings.len());
                sqlite_insert(&sql, device, &self.tenant, readings).execute(&mut **tx).await.map(|r| r.rows_affected())
            }
            (Pools::Postgres(pool), None) => {
                postgres_insert(device, &self.tenant, readings).execute(pool).await.map(|r| r.rows_affected())
            }
            (_, Some(Tx { conn: TxConn::Postgres(tx), .. })) => {
                postgres_insert(device, &self.tenant, readings).execute(&mut **tx).await.map(|r| r.rows_affected())
            }
        };
        result.map_err(classify)
    }

    /// Per-bucket aggregates of the device's samples in `[from, to)`, oldest first; buckets
    /// without samples are absent. Reads one range of the `(device_id, recorded_at)` key.
    pub async fn history(
        &self,
        device_id: DeviceId,
        from: i64,
        to: i64,
        bucket_ms: i64,
    ) -> Result<Vec<BucketRow>, StoreError> {
        // Integer division floors for the positive times herd stores, on both engines.
        const SQL: &str = "SELECT (recorded_at / $3) * $3 AS bucket, COUNT(*) AS samples, \
            AVG(cpu) AS cpu_avg, MIN(cpu) AS cpu_min, MAX(cpu) AS cpu_max, \
            AVG(ram) AS ram_avg, MIN(ram) AS ram_min, MAX(ram) AS ram_max, \
            AVG(storage) AS storage_avg, MIN(storage) AS storage_min, MAX(storage) AS storage_max, \
            AVG(temperature) AS temperature_avg, MIN(temperature) AS temperature_min, MAX(temperature) AS temperature_max \
            FROM metric_samples WHERE device_id = $1 AND tenant_id = $2 AND recorded_at >= $4 AND recorded_at < $5 \
            GROUP BY bucket ORDER BY bucket";
        let device = device_id.to_string();
        with_reader!(self.db(), |pool| sqlx::query_as::<_, BucketRow>(SQL)
            .bind(&device)
            .bind(&self.tenant)
            .bind(bucket_ms)
            .bind(from)
            .bind(to)
            .fetch_all(pool)
            .await)
        .map_err(classify)
    }

    /// The device's newest stored sample.
    pub async fn latest(&self, device_id: DeviceId) -> Result<Option<SampleRow>, StoreError> {
        const SQL: &str = "SELECT recorded_at, cpu, ram, storage, temperature FROM metric_samples \
            WHERE device_id = $1 AND tenant_id = $2 ORDER BY recorded_at DESC LIMIT 1";
        let device = device_id.to_string();
        with_reader!(self.db(), |pool| sqlx::query_as::<_, SampleRow>(SQL)
            .bind(&device)
            .bind(&self.tenant)
            .fetch_optional(pool)
            .await)
        .map_err(classify)
    }
}

/// `(device_id, tenant_id, recorded_at, cpu, ram, storage, temperature)` rows; the device and
/// tenant are `$1` and `$2` in every row. Placeholders first appear in ascending order.
/// Anonymous `?` placeholders, seven a row: sqlx binds a numbered `$N` by asking SQLite its
/// name, which SQLite finds by a linear walk, so a 1,000-sample batch with numbered parameters
/// cost ~12M steps to bind (BENCHMARKS.md, "Overview and sweep").
fn sqlite_insert_sql(rows: usize) -> String {
    crate::samples::sqlite_values_sql(
        "INSERT INTO metric_samples (device_id, tenant_id, recorded_at, cpu, ram, storage, temperature) VALUES ",
        7,
        rows,
        " ON CONFLICT DO NOTHING",
    )
}

fn sqlite_insert<'q>(
    sql: &'q str,
    device: &'q str,
    tenant: &'q str,
    readings: &'q [Reading],
) -> sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>> {
    let mut query = sqlx::query(sql);
    for reading in readings {
        query = query
            .bind(device)
            .bind(tenant)
            .bind(reading.recorded_at)
            .bind(reading.cpu)
            .bind(reading.ram)
            .bind(reading.storage)
            .bind(reading.temperature);
    }
    query
}

fn postgres_insert<'q>(
    device: &'q str,
    tenant: &'q str,
    readings: &[Reading],
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    const SQL: &str = "INSERT INTO metric_samples (device_id, tenant_id, recorded_at, cpu, ram, storage, temperature) \
        SELECT $1, $2, t.recorded_at, t.cpu, t.ram, t.storage, t.temperature \
        FROM UNNEST($3::BIGINT[], $4::DOUBLE PRECISION[], $5::DOUBLE PRECISION[], $6::DOUBLE PRECISION[], \
        $7::DOUBLE PRECISION[]) AS t (recorded_at, cpu, ram, storage, temperature) ON CONFLICT DO NOTHING";
    sqlx::query(SQL)
        .bind(device)
        .bind(tenant)
        .bind(readings.iter().map(|r| r.recorded_at).collect::<Vec<i64>>())
        .bind(readings.iter().map(|r| r.cpu).collect::<Vec<f64>>())
        .bind(readings.iter().map(|r| r.ram).collect::<Vec<f64>>())
        .bind(readings.iter().map(|r| r.storage).collect::<Vec<f64>>())
        .bind(readings.iter().map(|r| r.temperature).collect::<Vec<Option<f64>>>())
}

/// Cross-tenant (the retention job, as the system principal): deletes samples recorded before
/// `cutoff`, [`PURGE_CHUNK`] rows per statement, through the `recorded_at` index.
pub async fn purge_before(db: &Db, cutoff: i64) -> Result<u64, StoreError> {
    const SQL: &str = "DELETE FROM metric_samples WHERE (device_id, recorded_at) IN \
        (SELECT device_id, recorded_at FROM metric_samples WHERE recorded_at < $1 LIMIT $2)";
    let mut total = 0;
    loop {
        let deleted = with_writer!(db, |pool| sqlx::query(SQL)
            .bind(cutoff)
            .bind(PURGE_CHUNK)
            .execute(pool)
            .await
            .map(|r| r.rows_affected()))
        .map_err(classify)?;
        total += deleted;
        if deleted < PURGE_CHUNK as u64 {
            return Ok(total);
        }
        tokio::task::yield_now().await;
    }
}
