-- Presence and events: webhooks and their deliveries. The events table exists since 0001.

CREATE TABLE webhooks (
    id                    TEXT PRIMARY KEY,
    tenant_id             TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    url                   TEXT NOT NULL,
    -- JSON array of event types; empty means every type.
    events                TEXT NOT NULL,
    -- The HMAC key must be usable to sign, so it cannot be stored as a hash; it is never served.
    secret                TEXT NOT NULL,
    enabled               BOOLEAN NOT NULL DEFAULT TRUE,
    disabled_reason       TEXT,
    -- Events up to this sequence number have been fanned out into deliveries.
    last_seq              BIGINT NOT NULL,
    consecutive_failures  BIGINT NOT NULL DEFAULT 0,
    created_at            BIGINT NOT NULL,
    updated_at            BIGINT NOT NULL
);
CREATE INDEX webhooks_tenant_idx ON webhooks (tenant_id, id);
CREATE INDEX webhooks_enabled_idx ON webhooks (enabled, tenant_id);

CREATE TABLE webhook_deliveries (
    id                TEXT PRIMARY KEY,
    webhook_id        TEXT NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    tenant_id         TEXT NOT NULL,
    event_seq         BIGINT NOT NULL,
    event_id          TEXT NOT NULL,
    event_type        TEXT NOT NULL,
    -- pending | in_flight | succeeded | dead
    status            TEXT NOT NULL,
    attempts          BIGINT NOT NULL DEFAULT 0,
    next_attempt_at   BIGINT NOT NULL,
    locked_until      BIGINT,
    last_status_code  BIGINT,
    last_error        TEXT,
    last_duration_ms  BIGINT,
    created_at        BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL
);
CREATE UNIQUE INDEX webhook_deliveries_once_uq ON webhook_deliveries (webhook_id, event_seq);
CREATE INDEX webhook_deliveries_due_idx ON webhook_deliveries (status, next_attempt_at);
CREATE INDEX webhook_deliveries_webhook_idx ON webhook_deliveries (tenant_id, webhook_id, id);

CREATE INDEX events_tenant_type_seq_idx ON events (tenant_id, type, seq);
CREATE INDEX events_occurred_idx ON events (occurred_at);

