-- Software packages (OTA artifacts): an APK, a firmware image or another file that operators
-- upload and devices download. The bytes live in the blob store under
-- `t/<tenant>/packages/<sha256>`; this row keeps which key belongs to which package and its
-- metadata. `version_code` is monotonic per (tenant, name): the server refuses an upload whose
-- version code is not above every existing one of the same name.

CREATE TABLE packages (
    id             TEXT PRIMARY KEY,
    tenant_id      TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    kind           TEXT NOT NULL,
    name           TEXT NOT NULL,
    version        TEXT NOT NULL,
    version_code   BIGINT NOT NULL,
    -- JSON array of device models; empty: any model.
    target_models  TEXT NOT NULL,
    notes          TEXT,
    sha256         TEXT NOT NULL,
    size           BIGINT NOT NULL,
    blob_key       TEXT NOT NULL,
    content_type   TEXT NOT NULL,
    -- The member token that uploaded it.
    created_by     TEXT NOT NULL,
    created_at     BIGINT NOT NULL
);
CREATE UNIQUE INDEX packages_version_idx ON packages (tenant_id, name, version_code);
-- The tenant's list, in id (creation) order.
CREATE INDEX packages_tenant_idx ON packages (tenant_id, id);
-- Whether another package still uses a blob (delete).
CREATE INDEX packages_blob_idx ON packages (tenant_id, blob_key);
