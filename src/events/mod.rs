//! Domain events and the durable outbox.
//!
//! [`Event`] is the closed set of everything herd announces (DESIGN.md "Events"); every
//! producer constructs a variant, so each one is a grep away. [`record`] writes an event into
//! the `events` table inside the caller's transaction: a committed change always has its
//! event, a rolled-back one never does.

pub mod routes;
pub mod store;

use serde_json::{json, Value};

use crate::clock::from_millis;
use crate::ids::{DeviceId, EventId, TenantId};
use crate::store::{OutboxRow, StoreError, Tx};

/// Everything herd announces. Payloads are camelCase JSON objects.
#[derive(Debug, Clone)]
pub enum Event {
    /// A device was created (`via` is `auto-register` or `admin`).
    DeviceRegistered {
        device_id: DeviceId,
        name: String,
        via: &'static str,
    },
    /// Known identifiers registered again; the device got a fresh token.
    DeviceReregistered {
        device_id: DeviceId,
    },
    /// Presence changed.
    DeviceStatusChanged {
        device_id: DeviceId,
        from: &'static str,
        to: &'static str,
        last_seen: Option<i64>,
    },
    DeviceDeleted {
        device_id: DeviceId,
    },
    /// A device certificate was issued (`keySource` `server` or `csr`).
    CertificateIssued {
        certificate_id: crate::ids::CertificateId,
        device_id: DeviceId,
        serial_number: String,
        not_after: i64,
        key_source: &'static str,
    },
    /// A certificate entered the renewal-warning window (once per certificate).
    CertificateExpiring {
        certificate_id: crate::ids::CertificateId,
        device_id: DeviceId,
        not_after: i64,
        days_left: i64,
    },
    /// A certificate was succeeded by `replaced_by_id` (auto-renewal, admin or device renewal).
    CertificateRenewed {
        certificate_id: crate::ids::CertificateId,
        replaced_by_id: crate::ids::CertificateId,
        device_id: DeviceId,
    },
    /// A certificate passed its `notAfter`.
    CertificateExpired {
        certificate_id: crate::ids::CertificateId,
        device_id: DeviceId,
        not_after: i64,
    },
    /// A certificate was revoked (RFC 5280 reason name).
    CertificateRevoked {
        certificate_id: crate::ids::CertificateId,
        device_id: DeviceId,
        reason: &'static str,
    },
    /// A webhook kept failing and was switched off.
    WebhookDisabled {
        webhook_id: String,
        url: String,
        reason: String,
    },
    /// A monitoring rule was breached and a new alert opened (`monitoring`).
    AlertOpened {
        alert_id: crate::ids::AlertId,
        device_id: DeviceId,
        rule_id: crate::ids::RuleId,
        metric: String,
        severity: String,
        value: f64,
        threshold: f64,
    },
    /// An alert was resolved: back within the threshold, or its rule was disabled or deleted.
    AlertResolved {
        alert_id: crate::ids::AlertId,
        device_id: DeviceId,
        metric: String,
        severity: String,
        /// The value that brought it back within the threshold, if a sample did.
        value: Option<f64>,
        /// `recovered`, `rule_disabled` or `rule_deleted`.
        reason: &'static str,
    },
}

/// Every event type herd emits or will emit; webhook subscriptions are checked against it.
pub const KNOWN_TYPES: &[&str] = &[
    "device.registered",
    "device.reregistered",
    "device.status_changed",
    "device.deleted",
    "certificate.issued",
    "certificate.expiring",
    "certificate.renewed",
    "certificate.expired",
    "certificate.revoked",
    "alert.opened",
    "alert.resolved",
    "webhook.disabled",
];

impl Event {
    /// The `type` of the event on the wire.
    pub fn type_name(&self) -> &'static str {
        match self {
            Event::DeviceRegistered { .. } => "device.registered",
            Event::DeviceReregistered { .. } => "device.reregistered",
            Event::DeviceStatusChanged { .. } => "device.status_changed",
            Event::DeviceDeleted { .. } => "device.deleted",
            Event::CertificateIssued { .. } => "certificate.issued",
            Event::CertificateExpiring { .. } => "certificate.expiring",
            Event::CertificateRenewed { .. } => "certificate.renewed",
            Event::CertificateExpired { .. } => "certificate.expired",
            Event::CertificateRevoked { .. } => "certificate.revoked",
            Event::WebhookDisabled { .. } => "webhook.disabled",
            Event::AlertOpened { .. } => "alert.opened",
            Event::AlertResolved { .. } => "alert.resolved",
        }
    }

    /// The `data` of the event on the wire.
    pub fn data(&self) -> Value {
        match self {
            Event::DeviceRegistered { device_id, name, via } => {
                json!({ "deviceId": device_id, "name": name, "via": via })
            }
            Event::DeviceReregistered { device_id } => json!({ "deviceId": device_id }),
            Event::DeviceStatusChanged { device_id, from, to, last_seen } => json!({
                "deviceId": device_id, "from": from, "to": to, "lastSeen": last_seen.map(from_millis),
            }),
            Event::DeviceDeleted { device_id } => json!({ "deviceId": device_id }),
            Event::CertificateIssued { certificate_id, device_id, serial_number, not_after, key_source } => json!({
                "certificateId": certificate_id, "deviceId": device_id, "serialNumber": serial_number,
                "notAfter": from_millis(*not_after), "keySource": key_source,
            }),
            Event::CertificateExpiring { certificate_id, device_id, not_after, days_left } => json!({
                "certificateId": certificate_id, "deviceId": device_id, "notAfter": from_millis(*not_after),
                "daysLeft": days_left,
            }),
            Event::CertificateRenewed { certificate_id, replaced_by_id, device_id } => json!({
                "certificateId": certificate_id, "replacedById": replaced_by_id, "deviceId": device_id,
            }),
            Event::CertificateExpired { certificate_id, device_id, not_after } => json!({
                "certificateId": certificate_id, "deviceId": device_id, "notAfter": from_millis(*not_after),
            }),
            Event::CertificateRevoked { certificate_id, device_id, reason } => json!({
                "certificateId": certificate_id, "deviceId": device_id, "reason": reason,
            }),
            Event::WebhookDisabled { webhook_id, url, reason } => {
                json!({ "webhookId": webhook_id, "url": url, "reason": reason })
            }
            Event::AlertOpened { alert_id, device_id, rule_id, metric, severity, value, threshold } => json!({
                "alertId": alert_id, "deviceId": device_id, "ruleId": rule_id, "metric": metric,
                "severity": severity, "value": value, "threshold": threshold,
            }),
            Event::AlertResolved { alert_id, device_id, metric, severity, value, reason } => json!({
                "alertId": alert_id, "deviceId": device_id, "metric": metric, "severity": severity,
                "value": value, "reason": reason,
            }),
        }
    }
}

/// Records `event` in `tx`: it is written when `tx` commits, as its last statement (see
/// [`Tx::commit`] for why that keeps `seq` order equal to commit order), and never if `tx`
/// rolls back.
pub async fn record(tx: &mut Tx, tenant_id: TenantId, event: &Event, now: i64) -> Result<EventId, StoreError> {
    let id = EventId::new();
    tx.push_event(OutboxRow {
        id: id.to_string(),
        tenant_id: tenant_id.to_string(),
        event_type: event.type_name(),
        occurred_at: now,
        data: event.data().to_string(),
    });
    Ok(id)
}

/// Records many events in `tx` (the sweep's batches); written at commit in multi-row inserts.
pub async fn record_many(tx: &mut Tx, events: &[(TenantId, Event)], now: i64) -> Result<(), StoreError> {
    for (tenant_id, event) in events {
        record(tx, *tenant_id, event, now).await?;
    }
    Ok(())
}
