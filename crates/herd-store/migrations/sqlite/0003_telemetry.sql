-- Telemetry (DeviceMetrics), monitoring rules and alerts (DeviceMonitorings), per-device settings
-- (DeviceSettings) and display configuration (DeviceConfigurations).
-- Times are milliseconds since the Unix epoch; ids are UUIDv7 text.

-- Raw samples, one row per (device, recordedAt). Clustered by device and time (WITHOUT ROWID), so
-- a device's history and its newest sample are one range of the primary key; the recorded_at
-- index serves only the retention purge.
CREATE TABLE metric_samples (
    device_id    TEXT NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    recorded_at  INTEGER NOT NULL,
    tenant_id    TEXT NOT NULL,
    cpu          REAL NOT NULL,
    ram          REAL NOT NULL,
    storage      REAL NOT NULL,
    temperature  REAL,
    PRIMARY KEY (device_id, recorded_at)
) WITHOUT ROWID;
CREATE INDEX metric_samples_recorded_at_idx ON metric_samples (recorded_at);

-- Monitoring rules. device_ids and tags are JSON arrays, NULL meaning "every device".
CREATE TABLE monitoring_rules (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    metric      TEXT NOT NULL,
    operator    TEXT NOT NULL,
    threshold   REAL NOT NULL,
    severity    TEXT NOT NULL,
    enabled     BOOLEAN NOT NULL,
    device_ids  TEXT,
    tags        TEXT,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);
CREATE INDEX monitoring_rules_tenant_idx ON monitoring_rules (tenant_id, id);
-- The offline sweep's query: enabled offline rules across tenants.
CREATE INDEX monitoring_rules_metric_idx ON monitoring_rules (metric, enabled);

-- One row per tenant whose default rules have been created: the guard that makes the lazy
-- seeding idempotent (and keeps a deleted default deleted).
CREATE TABLE monitoring_defaults (
    tenant_id  TEXT PRIMARY KEY REFERENCES tenants (id) ON DELETE CASCADE,
    seeded_at  INTEGER NOT NULL
);

-- Alerts. The rule's name, metric, operator, threshold and severity are copied in when the alert
-- opens, so history reads the same after the rule changes or goes.
CREATE TABLE alerts (
    id               TEXT PRIMARY KEY,
    tenant_id        TEXT NOT NULL,
    device_id        TEXT NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    rule_id          TEXT REFERENCES monitoring_rules (id) ON DELETE SET NULL,
    rule_name        TEXT NOT NULL,
    metric           TEXT NOT NULL,
    operator         TEXT NOT NULL,
    threshold        REAL NOT NULL,
    severity         TEXT NOT NULL,
    status           TEXT NOT NULL,
    value            REAL NOT NULL,
    last_value       REAL NOT NULL,
    breach_count     INTEGER NOT NULL,
    breached_at      INTEGER NOT NULL,
    last_breach_at   INTEGER NOT NULL,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    resolved_at      INTEGER,
    acknowledged_at  INTEGER,
    acknowledged_by  TEXT
);
-- At most one open alert per (device, rule): the dedupe, enforced on every engine and instance.
CREATE UNIQUE INDEX alerts_open_uq ON alerts (device_id, rule_id) WHERE status = 'open';
-- The overview: alerts of the last 24 hours and the newest ones, per tenant.
CREATE INDEX alerts_tenant_created_idx ON alerts (tenant_id, created_at);
CREATE INDEX alerts_tenant_id_idx ON alerts (tenant_id, id);
CREATE INDEX alerts_device_idx ON alerts (device_id, id);
CREATE INDEX alerts_rule_idx ON alerts (rule_id, status);
-- The offline sweep's resolution pass: open offline alerts.
CREATE INDEX alerts_open_metric_idx ON alerts (metric, status);

-- User-facing preferences (location and tags are the device record's own columns).
CREATE TABLE device_settings (
    device_id     TEXT PRIMARY KEY REFERENCES devices (id) ON DELETE CASCADE,
    tenant_id     TEXT NOT NULL,
    display_name  TEXT,
    timezone      TEXT,
    notes         TEXT,
    version       INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
);

-- Display configuration: what the operator wants (desired, versioned) and what the device last
-- said it applied (reported). Both are JSON documents.
CREATE TABLE device_configurations (
    device_id         TEXT PRIMARY KEY REFERENCES devices (id) ON DELETE CASCADE,
    tenant_id         TEXT NOT NULL,
    desired           TEXT NOT NULL,
    desired_version   INTEGER NOT NULL,
    desired_at        INTEGER NOT NULL,
    reported          TEXT,
    reported_version  INTEGER,
    reported_at       INTEGER
);
