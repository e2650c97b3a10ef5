//! The closed set of everything herd announces (DESIGN.md "Events"). Every producer constructs a
//! variant, so each one is a grep away; the store writes them into the outbox in the transaction
//! of the change that caused them.

use serde_json::{json, Value};

use crate::clock::from_millis;
use crate::ids::{
    AlertId, CertificateId, ClaimId, CommandId, DeviceId, PackageId, RolloutId, RuleId, UserId, WebhookId,
};
use crate::status::{
    CommandState, CommandType, DeviceStatus, KeySource, Metric, PackageKind, RolloutState, Severity, UpdateState,
};

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
        from: DeviceStatus,
        to: DeviceStatus,
        last_seen: Option<i64>,
    },
    DeviceDeleted {
        device_id: DeviceId,
    },
    /// A registration matched an existing device without proving it is that device; the
    /// device was not touched and the claim waits for an operator.
    DeviceClaimCreated {
        claim_id: ClaimId,
        device_id: DeviceId,
    },
    /// A claim was approved (`decidedBy`: `policy` or the deciding member token's id); the
    /// claimant's token is now the device's token.
    DeviceClaimApproved {
        claim_id: ClaimId,
        device_id: DeviceId,
        decided_by: String,
    },
    /// A claim was rejected; the device was not touched.
    DeviceClaimRejected {
        claim_id: ClaimId,
        device_id: DeviceId,
        decided_by: String,
    },
    /// A device certificate was issued (`keySource` `server` or `csr`).
    CertificateIssued {
        certificate_id: CertificateId,
        device_id: DeviceId,
        serial_number: String,
        not_after: i64,
        key_source: KeySource,
    },
    /// A certificate entered the renewal-warning window (once per certificate).
    CertificateExpiring {
        certificate_id: CertificateId,
        device_id: DeviceId,
        not_after: i64,
        days_left: i64,
    },
    /// A certificate was succeeded by `replaced_by_id` (auto-renewal, admin or device renewal).
    CertificateRenewed {
        certificate_id: CertificateId,
        replaced_by_id: CertificateId,
        device_id: DeviceId,
    },
    /// A certificate passed its `notAfter`.
    CertificateExpired {
        certificate_id: CertificateId,
        device_id: DeviceId,
        not_after: i64,
    },
    /// A certificate was revoked (RFC 5280 reason name).
    CertificateRevoked {
        certificate_id: CertificateId,
        device_id: DeviceId,
        reason: &'static str,
    },
    /// A webhook kept failing and was switched off.
    WebhookDisabled {
        webhook_id: WebhookId,
        url: String,
        reason: String,
    },
    /// Repeated failed logins locked a user until `until` (milliseconds); logins for the user
    /// are refused without checking a password until then.
    UserLocked {
        user_id: UserId,
        username: String,
        until: i64,
    },
    /// A monitoring rule was breached and a new alert opened (`monitoring`).
    AlertOpened {
        alert_id: AlertId,
        device_id: DeviceId,
        rule_id: RuleId,
        metric: Metric,
        severity: Severity,
        value: f64,
        threshold: f64,
    },
    /// An alert was resolved: back within the threshold, or its rule was disabled or deleted.
    AlertResolved {
        alert_id: AlertId,
        device_id: DeviceId,
        metric: Metric,
        severity: Severity,
        /// The value that brought it back within the threshold, if a sample did.
        value: Option<f64>,
        /// `recovered`, `rule_disabled` or `rule_deleted`.
        reason: &'static str,
    },
    /// A command was queued for `total` devices (`deviceId` set when it names one device).
    CommandQueued {
        command_id: CommandId,
        command_type: CommandType,
        device_id: Option<DeviceId>,
        total: i64,
    },
    /// One device's execution of a command moved to `to` (`delivered`, `running`, `succeeded`,
    /// `failed` or `expired`; the event type is `command.<to>`). `error` is the device's message
    /// for `failed`, or why herd failed it (no result within the timeout).
    CommandTransition {
        command_id: CommandId,
        command_type: CommandType,
        device_id: DeviceId,
        to: CommandState,
        error: Option<String>,
    },
    /// An operator cancelled `cancelled` undelivered executions of a command (`deviceId` set
    /// when one device's execution was cancelled).
    CommandCancelled {
        command_id: CommandId,
        command_type: CommandType,
        device_id: Option<DeviceId>,
        cancelled: i64,
    },
    /// A software package was uploaded.
    PackageCreated {
        package_id: PackageId,
        kind: PackageKind,
        name: String,
        version: String,
        version_code: i64,
        sha256: String,
        size: i64,
    },
    /// A software package was deleted.
    PackageDeleted {
        package_id: PackageId,
        name: String,
        version_code: i64,
    },
    /// A rollout was created (`ready`) for `total` devices.
    RolloutCreated {
        rollout_id: RolloutId,
        package_id: PackageId,
        total: i64,
        waves: i64,
    },
    /// A rollout changed state (`rollout.<to>`: started, paused, resumed, completed, cancelled).
    /// `reason` says why herd paused it; `by` is the member token that acted (none when herd did).
    RolloutTransition {
        rollout_id: RolloutId,
        package_id: PackageId,
        kind: RolloutChange,
        wave: i64,
        reason: Option<String>,
        by: Option<String>,
    },
    /// A rollout's next wave started (`wave` counts from 0) with `size` devices.
    RolloutWaveStarted {
        rollout_id: RolloutId,
        package_id: PackageId,
        wave: i64,
        size: i64,
    },
    /// One device's update in a rollout moved from `from` to `to`.
    DeviceUpdateStateChanged {
        rollout_id: RolloutId,
        package_id: PackageId,
        device_id: DeviceId,
        from: UpdateState,
        to: UpdateState,
        reason: Option<String>,
    },
}

/// What a [`Event::RolloutTransition`] did; its event type is `rollout.<this>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RolloutChange {
    Started,
    Paused,
    Resumed,
    Completed,
    Cancelled,
}

impl RolloutChange {
    /// The state the rollout is in afterwards.
    pub fn state(self) -> RolloutState {
        match self {
            Self::Started | Self::Resumed => RolloutState::Running,
            Self::Paused => RolloutState::Paused,
            Self::Completed => RolloutState::Completed,
            Self::Cancelled => RolloutState::Cancelled,
        }
    }
}

/// Every event type herd emits or will emit; webhook subscriptions are checked against it.
pub const KNOWN_TYPES: &[&str] = &[
    "device.registered",
    "device.reregistered",
    "device.status_changed",
    "device.deleted",
    "device.claim_created",
    "device.claim_approved",
    "device.claim_rejected",
    "certificate.issued",
    "certificate.expiring",
    "certificate.renewed",
    "certificate.expired",
    "certificate.revoked",
    "alert.opened",
    "alert.resolved",
    "webhook.disabled",
    "user.locked",
    "command.queued",
    "command.delivered",
    "command.running",
    "command.succeeded",
    "command.failed",
    "command.expired",
    "command.cancelled",
    "package.created",
    "package.deleted",
    "rollout.created",
    "rollout.started",
    "rollout.wave_started",
    "rollout.paused",
    "rollout.resumed",
    "rollout.completed",
    "rollout.cancelled",
    "device.update_state_changed",
];

impl Event {
    /// The `type` of the event on the wire.
    pub fn type_name(&self) -> &'static str {
        match self {
            Event::DeviceRegistered { .. } => "device.registered",
            Event::DeviceReregistered { .. } => "device.reregistered",
            Event::DeviceStatusChanged { .. } => "device.status_changed",
            Event::DeviceDeleted { .. } => "device.deleted",
            Event::DeviceClaimCreated { .. } => "device.claim_created",
            Event::DeviceClaimApproved { .. } => "device.claim_approved",
            Event::DeviceClaimRejected { .. } => "device.claim_rejected",
            Event::CertificateIssued { .. } => "certificate.issued",
            Event::CertificateExpiring { .. } => "certificate.expiring",
            Event::CertificateRenewed { .. } => "certificate.renewed",
            Event::CertificateExpired { .. } => "certificate.expired",
            Event::CertificateRevoked { .. } => "certificate.revoked",
            Event::WebhookDisabled { .. } => "webhook.disabled",
            Event::UserLocked { .. } => "user.locked",
            Event::AlertOpened { .. } => "alert.opened",
            Event::AlertResolved { .. } => "alert.resolved",
            Event::CommandQueued { .. } => "command.queued",
            Event::CommandTransition { to, .. } => match to {
                CommandState::Queued => "command.queued",
                CommandState::Delivered => "command.delivered",
                CommandState::Running => "command.running",
                CommandState::Succeeded => "command.succeeded",
                CommandState::Failed => "command.failed",
                CommandState::Expired => "command.expired",
                CommandState::Cancelled => "command.cancelled",
            },
            Event::CommandCancelled { .. } => "command.cancelled",
            Event::PackageCreated { .. } => "package.created",
            Event::PackageDeleted { .. } => "package.deleted",
            Event::RolloutCreated { .. } => "rollout.created",
            Event::RolloutTransition { kind, .. } => match kind {
                RolloutChange::Started => "rollout.started",
                RolloutChange::Paused => "rollout.paused",
                RolloutChange::Resumed => "rollout.resumed",
                RolloutChange::Completed => "rollout.completed",
                RolloutChange::Cancelled => "rollout.cancelled",
            },
            Event::RolloutWaveStarted { .. } => "rollout.wave_started",
            Event::DeviceUpdateStateChanged { .. } => "device.update_state_changed",
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
            Event::DeviceClaimCreated { claim_id, device_id } => json!({ "claimId": claim_id, "deviceId": device_id }),
            Event::DeviceClaimApproved { claim_id, device_id, decided_by }
            | Event::DeviceClaimRejected { claim_id, device_id, decided_by } => {
                json!({ "claimId": claim_id, "deviceId": device_id, "decidedBy": decided_by })
            }
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
            Event::UserLocked { user_id, username, until } => {
                json!({ "userId": user_id, "username": username, "until": from_millis(*until) })
            }
            Event::AlertOpened { alert_id, device_id, rule_id, metric, severity, value, threshold } => json!({
                "alertId": alert_id, "deviceId": device_id, "ruleId": rule_id, "metric": metric,
                "severity": severity, "value": value, "threshold": threshold,
            }),
            Event::AlertResolved { alert_id, device_id, metric, severity, value, reason } => json!({
                "alertId": alert_id, "deviceId": device_id, "metric": metric, "severity": severity,
                "value": value, "reason": reason,
            }),
            Event::CommandQueued { command_id, command_type, device_id, total } => json!({
                "commandId": command_id, "type": command_type, "deviceId": device_id, "total": total,
            }),
            Event::CommandTransition { command_id, command_type, device_id, to, error } => json!({
                "commandId": command_id, "type": command_type, "deviceId": device_id, "state": to,
                "error": error,
            }),
            Event::CommandCancelled { command_id, command_type, device_id, cancelled } => json!({
                "commandId": command_id, "type": command_type, "deviceId": device_id, "cancelled": cancelled,
            }),
            Event::PackageCreated { package_id, kind, name, version, version_code, sha256, size } => json!({
                "packageId": package_id, "kind": kind, "name": name, "version": version,
                "versionCode": version_code, "sha256": sha256, "size": size,
            }),
            Event::PackageDeleted { package_id, name, version_code } => json!({
                "packageId": package_id, "name": name, "versionCode": version_code,
            }),
            Event::RolloutCreated { rollout_id, package_id, total, waves } => json!({
                "rolloutId": rollout_id, "packageId": package_id, "total": total, "waves": waves,
            }),
            Event::RolloutTransition { rollout_id, package_id, kind, wave, reason, by } => json!({
                "rolloutId": rollout_id, "packageId": package_id, "state": kind.state(), "wave": wave,
                "reason": reason, "by": by,
            }),
            Event::RolloutWaveStarted { rollout_id, package_id, wave, size } => json!({
                "rolloutId": rollout_id, "packageId": package_id, "wave": wave, "size": size,
            }),
            Event::DeviceUpdateStateChanged { rollout_id, package_id, device_id, from, to, reason } => json!({
                "rolloutId": rollout_id, "packageId": package_id, "deviceId": device_id, "from": from,
                "to": to, "reason": reason,
            }),
        }
    }
}
