-- Certificates: the records of device certificates (global in the seed; the tenant id is kept
-- on each row so that every query can bind the caller's tenant), where their private keys
-- live, the CRL state and the pin of the CA that this database belongs to.
-- Times are milliseconds since the Unix epoch; ids are UUIDv7 text.

CREATE TABLE certificates (
    id                 TEXT PRIMARY KEY,
    tenant_id          TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    -- No foreign key to devices: a deleted device's (revoked) certificates stay on record and
    -- on the CRL.
    device_id          TEXT NOT NULL,
    serial_number      TEXT NOT NULL,
    fingerprint        TEXT NOT NULL,
    subject            TEXT NOT NULL,
    issuer             TEXT NOT NULL,
    not_before         BIGINT NOT NULL,
    not_after          BIGINT NOT NULL,
    -- pending | active | expired | revoked
    status             TEXT NOT NULL,
    revoked_at         BIGINT,
    revocation_reason  TEXT,
    -- server (herd generated the key) | csr (the device's own key)
    key_source         TEXT NOT NULL,
    replaced_by_id     TEXT,
    -- The certificate is public: it is kept here whatever the key store is.
    certificate_pem    TEXT NOT NULL,
    -- Where the private key of a server-generated certificate lives: file | database | NULL.
    key_storage        TEXT,
    -- database: base64 of AES-256-GCM(nonce || ciphertext || tag), bound to the row id.
    private_key_sealed TEXT,
    -- file: SHA-256 of the key file, so a key file overwritten by a successor is detected.
    private_key_digest TEXT,
    -- certificate.expiring was emitted (once per certificate).
    warned_at          BIGINT,
    -- An instance took the auto-renewal; another may retry after a timeout.
    renewal_claimed_at BIGINT,
    created_at         BIGINT NOT NULL
);
CREATE UNIQUE INDEX certificates_serial_uq ON certificates (serial_number);
CREATE UNIQUE INDEX certificates_fingerprint_uq ON certificates (fingerprint);
CREATE INDEX certificates_device_idx ON certificates (tenant_id, device_id, id);
CREATE INDEX certificates_tenant_expiry_idx ON certificates (tenant_id, not_after, id);
CREATE INDEX certificates_status_expiry_idx ON certificates (status, not_after);

-- One row: the CRL last published and the number of the next one. `stale` is set in the
-- transaction of every revocation, so the CRL is re-signed before it is served again.
CREATE TABLE certificate_crl (
    id           INTEGER PRIMARY KEY,
    crl_number   BIGINT NOT NULL,
    this_update  BIGINT,
    next_update  BIGINT,
    der_base64   TEXT,
    stale        BOOLEAN NOT NULL
);
INSERT INTO certificate_crl (id, crl_number, stale) VALUES (1, 0, TRUE);

-- One row: the CA this database's certificates were issued by. Every herd instance sharing the
-- database must load the same CA files; startup refuses a different one.
CREATE TABLE certificate_authority (
    id               INTEGER PRIMARY KEY,
    fingerprint      TEXT NOT NULL,
    certificate_pem  TEXT NOT NULL,
    created_at       BIGINT NOT NULL
);
