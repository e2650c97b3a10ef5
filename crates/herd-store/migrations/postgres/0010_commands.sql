-- Remote commands (the seed's RemoteControlModule). A command is what an operator sent: one
-- type and payload for one device or for a whole target (ids, a tag, a status, the tenant).
-- Each targeted device has one execution row, which carries that device's lifecycle:
-- queued -> delivered -> running -> succeeded | failed, or expired | cancelled.
-- A bulk command inserts every execution with one INSERT ... SELECT (no per-device round trip).

CREATE TABLE commands (
    id            TEXT PRIMARY KEY,
    tenant_id     TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    type          TEXT NOT NULL,
    payload       TEXT NOT NULL,
    -- What the operator targeted, as JSON ({deviceIds}|{tag}|{status}|{all}).
    target        TEXT NOT NULL,
    total         BIGINT NOT NULL,
    -- The member token that sent it.
    created_by    TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    -- An execution not delivered by then expires.
    expires_at    BIGINT NOT NULL,
    -- How long a delivered execution may take to report a result before it fails.
    timeout_ms    BIGINT NOT NULL,
    cancelled_at  BIGINT
);
CREATE INDEX commands_tenant_idx ON commands (tenant_id, id);

CREATE TABLE command_executions (
    command_id       TEXT NOT NULL REFERENCES commands (id) ON DELETE CASCADE,
    device_id        TEXT NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    tenant_id        TEXT NOT NULL,
    state            TEXT NOT NULL,
    queued_at        BIGINT NOT NULL,
    delivered_at     BIGINT,
    -- How many times it was handed to the device (more than one: redelivered unacknowledged).
    deliveries       BIGINT NOT NULL DEFAULT 0,
    started_at       BIGINT,
    finished_at      BIGINT,
    -- When the expiry job acts on it: expiresAt while queued, the result deadline while
    -- delivered or running, NULL once final.
    due_at           BIGINT,
    progress         BIGINT,
    message          TEXT,
    result           TEXT,
    error            TEXT,
    -- An uploaded file (a screenshot): blob key, content type, size.
    attachment_key   TEXT,
    attachment_type  TEXT,
    attachment_size  BIGINT,
    updated_at       BIGINT NOT NULL,
    PRIMARY KEY (command_id, device_id)
);
-- A device's commands, newest last (the operator's per-device list and the device's own).
CREATE INDEX command_executions_device_idx ON command_executions (tenant_id, device_id, command_id);
-- Counts by state and the state-filtered execution list of a command.
CREATE INDEX command_executions_state_idx ON command_executions (command_id, state, device_id);
-- What a device's poll hands out and what a heartbeat counts: small, only live rows.
CREATE INDEX command_executions_waiting_idx ON command_executions (device_id, command_id) WHERE state IN ('queued', 'delivered');
-- The expiry job's work list.
CREATE INDEX command_executions_due_idx ON command_executions (due_at) WHERE due_at IS NOT NULL;
