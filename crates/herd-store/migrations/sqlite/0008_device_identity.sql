-- Device identity that an enrollment token cannot steal (security issue, findings 1 and 9).
--
-- 1. A device may register a public key it holds; re-registering with the same identifiers
--    must then prove possession (a signed single-use challenge) or present the current device
--    token. Without proof, the registration becomes a pending claim an operator decides.
-- 2. A server-generated private key reaches the device once (key_delivered_at).
-- 3. Event cursors count per tenant (tenant_seq), so no tenant can count another's activity.

ALTER TABLE devices ADD COLUMN public_key TEXT;

ALTER TABLE certificates ADD COLUMN key_delivered_at INTEGER;

-- manual | approve_never_seen
ALTER TABLE tenants ADD COLUMN claim_policy TEXT NOT NULL DEFAULT 'manual';

CREATE TABLE registration_challenges (
    challenge   TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    expires_at  INTEGER NOT NULL
);
CREATE INDEX registration_challenges_expiry_idx ON registration_challenges (expires_at);

CREATE TABLE device_claims (
    id                   TEXT PRIMARY KEY,
    tenant_id            TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    device_id            TEXT NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    -- pending | approved | rejected
    status               TEXT NOT NULL,
    -- The token the claimant was given; it works only once the claim is approved.
    token_hash           TEXT NOT NULL,
    serial_number        TEXT,
    mac_address          TEXT,
    android_id           TEXT,
    name                 TEXT,
    model                TEXT,
    manufacturer         TEXT,
    os_version           TEXT,
    app_version          TEXT,
    public_key           TEXT,
    enrollment_token_id  TEXT,
    created_at           INTEGER NOT NULL,
    decided_at           INTEGER,
    -- auto (the tenant's policy) or the id of the member token that decided
    decided_by           TEXT
);
CREATE UNIQUE INDEX device_claims_token_hash_uq ON device_claims (token_hash);
CREATE INDEX device_claims_tenant_idx ON device_claims (tenant_id, status, id);
CREATE INDEX device_claims_device_idx ON device_claims (device_id);

ALTER TABLE events ADD COLUMN tenant_seq INTEGER NOT NULL DEFAULT 0;
UPDATE events SET tenant_seq = numbered.n
    FROM (SELECT seq AS s, ROW_NUMBER() OVER (PARTITION BY tenant_id ORDER BY seq) AS n FROM events) AS numbered
    WHERE events.seq = numbered.s;
CREATE UNIQUE INDEX events_tenant_tenant_seq_uq ON events (tenant_id, tenant_seq);
DROP INDEX events_tenant_type_seq_idx;
CREATE INDEX events_tenant_type_tenant_seq_idx ON events (tenant_id, type, tenant_seq);

-- The last tenant_seq handed out per tenant; never goes back, even when old events are purged.
CREATE TABLE event_counters (
    tenant_id  TEXT PRIMARY KEY,
    seq        INTEGER NOT NULL
);
INSERT INTO event_counters (tenant_id, seq) SELECT tenant_id, MAX(tenant_seq) FROM events GROUP BY tenant_id;
