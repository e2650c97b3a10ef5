-- The foundation: tenants, credentials, the device registry and the event outbox.
-- Times are milliseconds since the Unix epoch; ids are UUIDv7 text.

CREATE TABLE tenants (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);
CREATE UNIQUE INDEX tenants_name_uq ON tenants (name);

CREATE TABLE users (
    id             TEXT PRIMARY KEY,
    tenant_id      TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    username       TEXT NOT NULL,
    password_hash  TEXT NOT NULL,
    role           TEXT NOT NULL,
    platform_admin BOOLEAN NOT NULL DEFAULT FALSE,
    created_at     BIGINT NOT NULL
);
CREATE UNIQUE INDEX users_username_uq ON users (username);
CREATE INDEX users_tenant_idx ON users (tenant_id, id);

-- API tokens (kind 'api') and login sessions (kind 'session').
CREATE TABLE api_tokens (
    id             TEXT PRIMARY KEY,
    tenant_id      TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    kind           TEXT NOT NULL,
    name           TEXT NOT NULL,
    role           TEXT NOT NULL,
    platform_admin BOOLEAN NOT NULL DEFAULT FALSE,
    user_id        TEXT REFERENCES users (id) ON DELETE CASCADE,
    token_hash     TEXT NOT NULL,
    expires_at     BIGINT,
    revoked_at     BIGINT,
    last_used_at   BIGINT,
    created_at     BIGINT NOT NULL
);
CREATE UNIQUE INDEX api_tokens_token_hash_uq ON api_tokens (token_hash);
CREATE INDEX api_tokens_tenant_idx ON api_tokens (tenant_id, kind, id);

CREATE TABLE enrollment_tokens (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    token_hash  TEXT NOT NULL,
    expires_at  BIGINT,
    max_uses    BIGINT,
    uses        BIGINT NOT NULL DEFAULT 0,
    revoked_at  BIGINT,
    created_at  BIGINT NOT NULL
);
CREATE UNIQUE INDEX enrollment_tokens_token_hash_uq ON enrollment_tokens (token_hash);
CREATE INDEX enrollment_tokens_tenant_idx ON enrollment_tokens (tenant_id, id);

CREATE TABLE devices (
    id                TEXT PRIMARY KEY,
    tenant_id         TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name              TEXT NOT NULL,
    serial_number     TEXT,
    mac_address       TEXT,
    android_id        TEXT,
    model             TEXT,
    manufacturer      TEXT,
    os_version        TEXT,
    app_version       TEXT,
    firmware_version  TEXT,
    ip_address        TEXT,
    location          TEXT,
    tags              TEXT NOT NULL DEFAULT '[]',
    status            TEXT NOT NULL DEFAULT 'offline',
    last_seen         BIGINT,
    token_hash        TEXT,
    created_at        BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL
);
CREATE UNIQUE INDEX devices_tenant_serial_number_uq ON devices (tenant_id, serial_number) WHERE serial_number IS NOT NULL;
CREATE UNIQUE INDEX devices_tenant_mac_address_uq ON devices (tenant_id, mac_address) WHERE mac_address IS NOT NULL;
CREATE UNIQUE INDEX devices_tenant_android_id_uq ON devices (tenant_id, android_id) WHERE android_id IS NOT NULL;
CREATE UNIQUE INDEX devices_token_hash_uq ON devices (token_hash) WHERE token_hash IS NOT NULL;
CREATE INDEX devices_tenant_idx ON devices (tenant_id, id);
CREATE INDEX devices_tenant_status_idx ON devices (tenant_id, status, id);
-- The presence sweep's query: status = 'online' AND last_seen < cutoff.
CREATE INDEX devices_presence_idx ON devices (status, last_seen);

CREATE TABLE device_tags (
    device_id  TEXT NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    tenant_id  TEXT NOT NULL,
    tag        TEXT NOT NULL,
    PRIMARY KEY (device_id, tag)
);
CREATE INDEX device_tags_tenant_tag_idx ON device_tags (tenant_id, tag, device_id);

-- The durable outbox: written in the same transaction as the change that caused each event.
CREATE TABLE events (
    seq          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id           TEXT NOT NULL,
    tenant_id    TEXT NOT NULL,
    type         TEXT NOT NULL,
    occurred_at  BIGINT NOT NULL,
    data         TEXT NOT NULL
);
CREATE UNIQUE INDEX events_id_uq ON events (id);
CREATE INDEX events_tenant_seq_idx ON events (tenant_id, seq);
