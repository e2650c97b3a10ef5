//! The OpenAPI schema of every event's `data`, one per event type, written from
//! [`herd_domain::Event::data`] (which builds the payloads with `json!`, so no derive can describe
//! them). [`crate::openapi`] turns [`EVENT_PAYLOADS`] into `EventDto`: a `oneOf` discriminated by
//! `type`. The API test `openapi_event_payloads_cover_every_event_type` compares the types here
//! with `herd_domain::event::KNOWN_TYPES`; a new event type must be added to both.

use serde_json::{json, Map, Value};

/// Each event type and the name of its payload schema (see [`payload_schemas`]).
pub(crate) const EVENT_PAYLOADS: &[(&str, &str)] = &[
    ("device.registered", "DeviceRegisteredData"),
    ("device.reregistered", "DeviceEventData"),
    ("device.status_changed", "DeviceStatusChangedData"),
    ("device.deleted", "DeviceEventData"),
    ("device.claim_created", "DeviceClaimCreatedData"),
    ("device.claim_approved", "DeviceClaimDecidedData"),
    ("device.claim_rejected", "DeviceClaimDecidedData"),
    ("certificate.issued", "CertificateIssuedData"),
    ("certificate.expiring", "CertificateExpiringData"),
    ("certificate.renewed", "CertificateRenewedData"),
    ("certificate.expired", "CertificateExpiredData"),
    ("certificate.revoked", "CertificateRevokedData"),
    ("alert.opened", "AlertOpenedData"),
    ("alert.resolved", "AlertResolvedData"),
    ("webhook.disabled", "WebhookDisabledData"),
    ("user.locked", "UserLockedData"),
    ("command.queued", "CommandQueuedData"),
    ("command.delivered", "CommandTransitionData"),
    ("command.running", "CommandTransitionData"),
    ("command.succeeded", "CommandTransitionData"),
    ("command.failed", "CommandTransitionData"),
    ("command.expired", "CommandTransitionData"),
    ("command.cancelled", "CommandCancelledData"),
    ("package.created", "PackageCreatedData"),
    ("package.deleted", "PackageDeletedData"),
    ("rollout.created", "RolloutCreatedData"),
    ("rollout.started", "RolloutTransitionData"),
    ("rollout.wave_started", "RolloutWaveStartedData"),
    ("rollout.paused", "RolloutTransitionData"),
    ("rollout.resumed", "RolloutTransitionData"),
    ("rollout.completed", "RolloutTransitionData"),
    ("rollout.cancelled", "RolloutTransitionData"),
    ("device.update_state_changed", "DeviceUpdateStateChangedData"),
];

/// The name of the schema of one event of `event_type` (`device.status_changed` →
/// `DeviceStatusChangedEvent`).
pub(crate) fn event_schema_name(event_type: &str) -> String {
    let mut name = String::new();
    for word in event_type.split(['.', '_']) {
        let mut chars = word.chars();
        if let Some(first) = chars.next() {
            name.extend(first.to_uppercase());
            name.push_str(chars.as_str());
        }
    }
    name.push_str("Event");
    name
}

/// The payload schemas named in [`EVENT_PAYLOADS`], by name.
pub(crate) fn payload_schemas() -> Map<String, Value> {
    let uuid = || json!({ "type": "string", "format": "uuid" });
    let optional_uuid = || json!({ "type": ["string", "null"], "format": "uuid" });
    let time = || json!({ "type": "string", "format": "date-time" });
    let integer = || json!({ "type": "integer", "format": "int64" });
    let text = || json!({ "type": "string" });
    let optional_text = || json!({ "type": ["string", "null"] });
    let named = |name: &str| json!({ "$ref": format!("#/components/schemas/{name}") });
    let object = |description: &str, properties: Value| {
        let required: Vec<String> = properties.as_object().map(|p| p.keys().cloned().collect()).unwrap_or_default();
        json!({ "type": "object", "description": description, "required": required, "properties": properties })
    };

    let mut schemas = Map::new();
    let mut add = |name: &str, schema: Value| {
        schemas.insert(name.to_string(), schema);
    };
    add(
        "DeviceRegisteredData",
        object(
            "`device.registered`: a device was created.",
            json!({ "deviceId": uuid(), "name": text(), "via": { "type": "string", "enum": ["auto-register", "admin"] } }),
        ),
    );
    add("DeviceEventData", object("`device.reregistered`, `device.deleted`.", json!({ "deviceId": uuid() })));
    add(
        "DeviceStatusChangedData",
        object(
            "`device.status_changed`: presence changed.",
            json!({ "deviceId": uuid(), "from": named("DeviceStatus"), "to": named("DeviceStatus"),
                    "lastSeen": { "type": ["string", "null"], "format": "date-time" } }),
        ),
    );
    add(
        "DeviceClaimCreatedData",
        object(
            "`device.claim_created`: a registration waits for an operator.",
            json!({ "claimId": uuid(), "deviceId": uuid() }),
        ),
    );
    add(
        "DeviceClaimDecidedData",
        object(
            "`device.claim_approved`, `device.claim_rejected`; `decidedBy` is `policy` or the member token's id.",
            json!({ "claimId": uuid(), "deviceId": uuid(), "decidedBy": text() }),
        ),
    );
    add(
        "CertificateIssuedData",
        object(
            "`certificate.issued`.",
            json!({ "certificateId": uuid(), "deviceId": uuid(), "serialNumber": text(), "notAfter": time(),
                    "keySource": named("KeySource") }),
        ),
    );
    add(
        "CertificateExpiringData",
        object(
            "`certificate.expiring`: the certificate entered the renewal-warning window.",
            json!({ "certificateId": uuid(), "deviceId": uuid(), "notAfter": time(), "daysLeft": integer() }),
        ),
    );
    add(
        "CertificateRenewedData",
        object(
            "`certificate.renewed`: succeeded by `replacedById`.",
            json!({ "certificateId": uuid(), "replacedById": uuid(), "deviceId": uuid() }),
        ),
    );
    add(
        "CertificateExpiredData",
        object("`certificate.expired`.", json!({ "certificateId": uuid(), "deviceId": uuid(), "notAfter": time() })),
    );
    add(
        "CertificateRevokedData",
        object(
            "`certificate.revoked`; `reason` is an RFC 5280 reason name.",
            json!({ "certificateId": uuid(), "deviceId": uuid(), "reason": text() }),
        ),
    );
    add(
        "AlertOpenedData",
        object(
            "`alert.opened`: a monitoring rule was breached.",
            json!({ "alertId": uuid(), "deviceId": uuid(), "ruleId": uuid(), "metric": named("Metric"),
                    "severity": named("Severity"), "value": { "type": "number" }, "threshold": { "type": "number" } }),
        ),
    );
    add(
        "AlertResolvedData",
        object(
            "`alert.resolved`; `value` is the sample that brought it back, if one did.",
            json!({ "alertId": uuid(), "deviceId": uuid(), "metric": named("Metric"), "severity": named("Severity"),
                    "value": { "type": ["number", "null"] },
                    "reason": { "type": "string", "enum": ["recovered", "rule_disabled", "rule_deleted"] } }),
        ),
    );
    add(
        "WebhookDisabledData",
        object("`webhook.disabled`: it kept failing.", json!({ "webhookId": uuid(), "url": text(), "reason": text() })),
    );
    add(
        "UserLockedData",
        object(
            "`user.locked`: repeated failed logins locked the user until `until`.",
            json!({ "userId": uuid(), "username": text(), "until": time() }),
        ),
    );
    add(
        "CommandQueuedData",
        object(
            "`command.queued` for `total` devices (`deviceId` when it names one device).",
            json!({ "commandId": uuid(), "type": named("CommandType"), "deviceId": optional_uuid(), "total": integer() }),
        ),
    );
    add(
        "CommandTransitionData",
        object(
            "`command.delivered`, `.running`, `.succeeded`, `.failed`, `.expired`: one device's execution moved to `state`.",
            json!({ "commandId": uuid(), "type": named("CommandType"), "deviceId": uuid(), "state": named("CommandState"),
                    "error": optional_text() }),
        ),
    );
    add(
        "CommandCancelledData",
        object(
            "`command.cancelled`: `cancelled` undelivered executions (`deviceId` when one device's).",
            json!({ "commandId": uuid(), "type": named("CommandType"), "deviceId": optional_uuid(), "cancelled": integer() }),
        ),
    );
    add(
        "PackageCreatedData",
        object(
            "`package.created`.",
            json!({ "packageId": uuid(), "kind": named("PackageKind"), "name": text(), "version": text(),
                    "versionCode": integer(), "sha256": text(), "size": integer() }),
        ),
    );
    add(
        "PackageDeletedData",
        object("`package.deleted`.", json!({ "packageId": uuid(), "name": text(), "versionCode": integer() })),
    );
    add(
        "RolloutCreatedData",
        object(
            "`rollout.created` (`ready`) for `total` devices.",
            json!({ "rolloutId": uuid(), "packageId": uuid(), "total": integer(), "waves": integer() }),
        ),
    );
    add(
        "RolloutTransitionData",
        object(
            "`rollout.started`, `.paused`, `.resumed`, `.completed`, `.cancelled`; `by` is the member token that acted.",
            json!({ "rolloutId": uuid(), "packageId": uuid(), "state": named("RolloutState"), "wave": integer(),
                    "reason": optional_text(), "by": optional_text() }),
        ),
    );
    add(
        "RolloutWaveStartedData",
        object(
            "`rollout.wave_started` (`wave` counts from 0) with `size` devices.",
            json!({ "rolloutId": uuid(), "packageId": uuid(), "wave": integer(), "size": integer() }),
        ),
    );
    add(
        "DeviceUpdateStateChangedData",
        object(
            "`device.update_state_changed`: one device's update in a rollout moved from `from` to `to`.",
            json!({ "rolloutId": uuid(), "packageId": uuid(), "deviceId": uuid(), "from": named("UpdateState"),
                    "to": named("UpdateState"), "reason": optional_text() }),
        ),
    );
    schemas
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_payload_named_is_defined_and_every_defined_payload_is_named() {
        let schemas = payload_schemas();
        for (event_type, payload) in EVENT_PAYLOADS {
            assert!(schemas.contains_key(*payload), "{event_type}: no schema {payload}");
        }
        for name in schemas.keys() {
            assert!(EVENT_PAYLOADS.iter().any(|(_, payload)| payload == name), "{name} is never used");
        }
    }

    #[test]
    fn event_schema_names_are_camel_case() {
        assert_eq!(event_schema_name("device.status_changed"), "DeviceStatusChangedEvent");
        assert_eq!(event_schema_name("user.locked"), "UserLockedEvent");
    }
}
