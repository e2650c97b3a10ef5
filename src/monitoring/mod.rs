//! Monitoring (the seed's DeviceMonitoringsModule): rules and thresholds, the alerts they raise,
//! and the stats overview that summarises both.
//!
//! This module owns the domain types ([`Rule`], [`Metric`], [`Operator`], [`Severity`]), the pure
//! evaluation of samples against a rule ([`evaluate`]), the per-tenant rule cache, and the offline
//! sweep step ([`evaluate_offline`]). `rules` and `alerts` hold the routes, `overview` the
//! `GET /devices/stats/overview` route, `store` all SQL. It must not store samples (that is
//! `telemetry`) nor change device presence (that is `presence`).
//!
//! **Evaluation model.** Metric rules are evaluated when samples arrive (`telemetry` calls
//! [`evaluate`] with the samples newer than the device's newest stored one, in time order).
//! A breach opens one alert per (device, rule) — a unique partial index on open alerts enforces
//! it on both engines and across instances — and further breaches update that alert. A later
//! sample back within the threshold resolves it. Samples older than the newest stored one
//! (late uploads, backfills) are kept for history but neither open nor resolve alerts: they
//! describe a past the alert state has already moved beyond. `offline` rules are evaluated by
//! the sweep ([`evaluate_offline`]), which also resolves them once the device is online again.

pub mod alerts;
pub mod overview;
pub mod rules;
pub mod store;

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use utoipa_axum::router::OpenApiRouter;

use crate::app::AppState;
use crate::auth::TenantScope;
use crate::ids::{AlertId, DeviceId, RuleId, TenantId};
use crate::store::{Db, StoreError};

/// `/monitoring-rules`, `/alerts` and `/devices/stats/overview`.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().merge(rules::router()).merge(alerts::router()).merge(overview::router())
}

/// What a rule watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// CPU use, percent.
    Cpu,
    /// Memory use, percent.
    Ram,
    /// Storage use, percent.
    Storage,
    /// Temperature, °C.
    Temperature,
    /// Minutes since the device was last seen, while it is offline.
    Offline,
}

impl Metric {
    pub fn as_str(self) -> &'static str {
        match self {
            Metric::Cpu => "cpu",
            Metric::Ram => "ram",
            Metric::Storage => "storage",
            Metric::Temperature => "temperature",
            Metric::Offline => "offline",
        }
    }

    pub fn parse(text: &str) -> Option<Metric> {
        match text {
            "cpu" => Some(Metric::Cpu),
            "ram" => Some(Metric::Ram),
            "storage" => Some(Metric::Storage),
            "temperature" => Some(Metric::Temperature),
            "offline" => Some(Metric::Offline),
            _ => None,
        }
    }
}

/// How a value is compared with the threshold; the comparison true is a breach.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Operator {
    Gt,
    Gte,
    Lt,
    Lte,
}

impl Operator {
    pub fn as_str(self) -> &'static str {
        match self {
            Operator::Gt => "gt",
            Operator::Gte => "gte",
            Operator::Lt => "lt",
            Operator::Lte => "lte",
        }
    }

    pub fn parse(text: &str) -> Option<Operator> {
        match text {
            "gt" => Some(Operator::Gt),
            "gte" => Some(Operator::Gte),
            "lt" => Some(Operator::Lt),
            "lte" => Some(Operator::Lte),
            _ => None,
        }
    }

    /// True if `value` breaches `threshold` under this operator.
    pub fn breached(self, value: f64, threshold: f64) -> bool {
        match self {
            Operator::Gt => value > threshold,
            Operator::Gte => value >= threshold,
            Operator::Lt => value < threshold,
            Operator::Lte => value <= threshold,
        }
    }
}

/// How loud an alert is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }

    pub fn parse(text: &str) -> Option<Severity> {
        match text {
            "info" => Some(Severity::Info),
            "warning" => Some(Severity::Warning),
            "critical" => Some(Severity::Critical),
            _ => None,
        }
    }
}

/// A monitoring rule, as evaluation sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub id: RuleId,
    pub name: String,
    pub metric: Metric,
    pub operator: Operator,
    pub threshold: f64,
    pub severity: Severity,
    pub enabled: bool,
    /// Only these devices (`None`: every device).
    pub device_ids: Option<Vec<DeviceId>>,
    /// Only devices with at least one of these tags (`None`: every device).
    pub tags: Option<Vec<String>>,
}

impl Rule {
    /// True if the rule watches this device. `tags` is only consulted for tag-scoped rules.
    pub fn applies_to(&self, device_id: DeviceId, tags: &[String]) -> bool {
        if let Some(ids) = &self.device_ids {
            if !ids.contains(&device_id) {
                return false;
            }
        }
        if let Some(wanted) = &self.tags {
            if !wanted.iter().any(|tag| tags.contains(tag)) {
                return false;
            }
        }
        true
    }
}

/// The rules every tenant starts with (the seed's getStatsOverview thresholds: CPU > 90 % and
/// RAM > 85 % are warnings; CPU > 95 % and RAM > 95 % critical).
pub const DEFAULT_RULES: &[(&str, Metric, Operator, f64, Severity)] = &[
    ("High CPU usage", Metric::Cpu, Operator::Gt, 90.0, Severity::Warning),
    ("High RAM usage", Metric::Ram, Operator::Gt, 85.0, Severity::Warning),
    ("Critical CPU usage", Metric::Cpu, Operator::Gt, 95.0, Severity::Critical),
    ("Critical RAM usage", Metric::Ram, Operator::Gt, 95.0, Severity::Critical),
];

/// One sample as evaluation sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    /// Milliseconds since the epoch.
    pub recorded_at: i64,
    pub cpu: f64,
    pub ram: f64,
    pub storage: f64,
    pub temperature: Option<f64>,
}

impl Reading {
    /// The reading's value of a sampled metric (`None` for `offline`, or a missing temperature).
    pub fn value(&self, metric: Metric) -> Option<f64> {
        match metric {
            Metric::Cpu => Some(self.cpu),
            Metric::Ram => Some(self.ram),
            Metric::Storage => Some(self.storage),
            Metric::Temperature => self.temperature,
            Metric::Offline => None,
        }
    }
}

/// The open alert of a (device, rule), as evaluation needs it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OpenAlert {
    pub id: AlertId,
    pub rule_id: RuleId,
}

/// One run of consecutive breaching samples, and how it ended (if it did within the samples).
#[derive(Debug, Clone, PartialEq)]
pub struct Episode {
    /// The alert this episode continues; `None` opens a new one.
    pub existing: Option<AlertId>,
    /// The first breaching value and when it was recorded (only used when opening).
    pub first: Option<(f64, i64)>,
    /// The latest breaching value and when it was recorded (`None`: no breach in these samples).
    pub last: Option<(f64, i64)>,
    /// How many samples breached.
    pub breaches: i64,
    /// The value (and its time) that brought the metric back within the threshold.
    pub resolved_by: Option<(f64, i64)>,
}

/// Evaluates `rule` over `fresh` samples (ascending `recorded_at`, all newer than anything the
/// alert state has seen), given the (device, rule)'s open alert. Answers what to write: usually
/// nothing; one episode per run of breaches, the first continuing `open` if there is one.
pub fn evaluate(rule: &Rule, open: Option<OpenAlert>, fresh: &[Reading]) -> Vec<Episode> {
    let mut episodes = Vec::new();
    let mut current =
        open.map(|alert| Episode { existing: Some(alert.id), first: None, last: None, breaches: 0, resolved_by: None });
    for reading in fresh {
        let Some(value) = reading.value(rule.metric) else { continue };
        if rule.operator.breached(value, rule.threshold) {
            let episode = current.get_or_insert(Episode {
                existing: None,
                first: Some((value, reading.recorded_at)),
                last: None,
                breaches: 0,
                resolved_by: None,
            });
            episode.last = Some((value, reading.recorded_at));
            episode.breaches += 1;
        } else if let Some(mut episode) = current.take() {
            episode.resolved_by = Some((value, reading.recorded_at));
            episodes.push(episode);
        }
    }
    if let Some(episode) = current {
        // An open alert that saw no sample of its metric needs no write.
        if episode.breaches > 0 || episode.existing.is_none() {
            episodes.push(episode);
        }
    }
    episodes
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
    let store = store::MonitoringStore::new(scope);
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
pub fn invalidate_rules(tenant_id: TenantId) {
    RULE_CACHE.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(&tenant_id);
}

/// What one run of the offline sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct OfflineOutcome {
    pub opened: u64,
    pub resolved: u64,
}

/// The offline-rule step (a job runs it every presence sweep interval; tests call it with a
/// chosen `now`): resolves open `offline` alerts of devices that are online again, then opens
/// one for every offline device past an enabled `offline` rule's threshold. Safe when several
/// instances run it at once: resolution is a conditional `UPDATE … RETURNING`, opening inserts
/// against the open-alert unique index, so each event is written once.
pub async fn evaluate_offline(db: &Db, now: i64) -> Result<OfflineOutcome, StoreError> {
    let resolved = store::resolve_offline_alerts_of_online_devices(db, now).await?;
    let mut opened = 0;
    for (tenant_id, rule) in store::enabled_offline_rules(db).await? {
        let scope = TenantScope::for_system(&crate::auth::System::principal(), db.clone(), tenant_id);
        opened += store::MonitoringStore::new(&scope).open_offline_alerts(&rule, now).await?;
    }
    Ok(OfflineOutcome { opened, resolved })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(operator: Operator, threshold: f64) -> Rule {
        Rule {
            id: RuleId::new(),
            name: "r".into(),
            metric: Metric::Cpu,
            operator,
            threshold,
            severity: Severity::Warning,
            enabled: true,
            device_ids: None,
            tags: None,
        }
    }

    fn cpu(at: i64, value: f64) -> Reading {
        Reading { recorded_at: at, cpu: value, ram: 0.0, storage: 0.0, temperature: None }
    }

    #[test]
    fn operators_at_the_threshold() {
        assert!(!Operator::Gt.breached(90.0, 90.0));
        assert!(Operator::Gt.breached(90.01, 90.0));
        assert!(Operator::Gte.breached(90.0, 90.0));
        assert!(!Operator::Gte.breached(89.99, 90.0));
        assert!(!Operator::Lt.breached(10.0, 10.0));
        assert!(Operator::Lt.breached(9.99, 10.0));
        assert!(Operator::Lte.breached(10.0, 10.0));
        assert!(!Operator::Lte.breached(10.01, 10.0));
    }

    #[test]
    fn a_breach_opens_and_a_recovery_resolves() {
        let r = rule(Operator::Gt, 90.0);
        assert!(evaluate(&r, None, &[cpu(1, 50.0), cpu(2, 90.0)]).is_empty());
        let episodes = evaluate(&r, None, &[cpu(1, 91.0), cpu(2, 99.0)]);
        assert_eq!(episodes.len(), 1);
        assert_eq!(episodes[0].existing, None);
        assert_eq!(episodes[0].first, Some((91.0, 1)));
        assert_eq!(episodes[0].last, Some((99.0, 2)));
        assert_eq!(episodes[0].breaches, 2);
        assert_eq!(episodes[0].resolved_by, None);

        let open = OpenAlert { id: AlertId::new(), rule_id: r.id };
        let episodes = evaluate(&r, Some(open), &[cpu(3, 95.0), cpu(4, 10.0), cpu(5, 92.0)]);
        assert_eq!(episodes.len(), 2, "{episodes:?}");
        assert_eq!(episodes[0].existing, Some(open.id));
        assert_eq!(episodes[0].resolved_by, Some((10.0, 4)));
        assert_eq!(episodes[1].existing, None);
        assert_eq!(episodes[1].first, Some((92.0, 5)));
        assert!(evaluate(&r, Some(open), &[]).is_empty());
    }

    #[test]
    fn missing_temperatures_neither_breach_nor_resolve() {
        let mut r = rule(Operator::Gte, 70.0);
        r.metric = Metric::Temperature;
        let open = OpenAlert { id: AlertId::new(), rule_id: r.id };
        assert!(evaluate(&r, Some(open), &[cpu(1, 0.0)]).is_empty());
    }

    #[test]
    fn scopes_by_device_and_tag() {
        let mut r = rule(Operator::Gt, 1.0);
        let (a, b) = (DeviceId::new(), DeviceId::new());
        assert!(r.applies_to(a, &[]));
        r.device_ids = Some(vec![a]);
        assert!(r.applies_to(a, &[]) && !r.applies_to(b, &[]));
        r.device_ids = None;
        r.tags = Some(vec!["lobby".into()]);
        assert!(r.applies_to(b, &["lobby".into()]) && !r.applies_to(b, &["kitchen".into()]));
    }
}
