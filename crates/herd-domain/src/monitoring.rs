//! Monitoring's pure core: rules as evaluation sees them, readings, and [`evaluate`], which
//! decides from a rule, the open alert and fresh samples what alert rows to write.

use crate::ids::{AlertId, DeviceId, RuleId};
use crate::status::{Metric, Operator, Severity};

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

/// Whether evaluating `rules` over `readings` could write anything for a device: only if a
/// reading breaches one of them, or the device has an open alert (`alerting`) that a reading
/// could continue or resolve. When false, [`evaluate`] answers no episode for any of the rules
/// whatever is stored, so the ingest path need not read the device's alert state at all.
pub fn may_change_alerts(rules: &[&Rule], alerting: bool, readings: &[Reading]) -> bool {
    alerting
        || rules.iter().any(|rule| {
            readings.iter().any(|reading| {
                reading.value(rule.metric).is_some_and(|value| rule.operator.breached(value, rule.threshold))
            })
        })
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

    /// When `may_change_alerts` says no, `evaluate` answers nothing for any rule and any stored
    /// state a device without an open alert can be in (any subset of the readings fresh).
    #[test]
    fn only_a_breach_or_an_open_alert_may_change_alerts() {
        let (gt, lt) = (rule(Operator::Gt, 90.0), rule(Operator::Lt, 5.0));
        let mut temperature = rule(Operator::Gte, 70.0);
        temperature.metric = Metric::Temperature;
        let rules = [&gt, &lt, &temperature];
        let healthy = [cpu(1, 50.0), cpu(2, 90.0), cpu(3, 5.0)];
        assert!(!may_change_alerts(&rules, false, &healthy));
        for fresh_from in 0..=healthy.len() {
            for rule in rules {
                assert!(evaluate(rule, None, &healthy[fresh_from..]).is_empty());
            }
        }
        assert!(may_change_alerts(&rules, true, &healthy), "an open alert may be resolved");
        assert!(may_change_alerts(&rules, false, &[cpu(1, 50.0), cpu(2, 4.0)]), "below the Lt rule");
        let hot = Reading { temperature: Some(71.0), ..cpu(1, 50.0) };
        assert!(may_change_alerts(&rules, false, &[hot]));
        assert!(!may_change_alerts(&[], false, &[cpu(1, 99.0)]), "no rule, nothing to evaluate");
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
