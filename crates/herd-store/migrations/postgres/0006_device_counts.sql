-- Devices per (tenant, status), kept by triggers so that the stats overview and /metrics read
-- a handful of rows instead of counting a tenant's devices on every call. Statement-level
-- triggers with transition tables apply one aggregated delta per statement (a sweep batch of
-- 1,000 devices is two counter updates, not 2,000), and only non-zero deltas are written, so
-- statements that do not change any status (heartbeat flushes, edits) touch no counter row.

CREATE TABLE device_counts (
    tenant_id  TEXT NOT NULL,
    status     TEXT NOT NULL,
    n          BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, status)
);

INSERT INTO device_counts (tenant_id, status, n)
    SELECT tenant_id, status, COUNT(*) FROM devices GROUP BY tenant_id, status;

CREATE FUNCTION devices_count_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO device_counts (tenant_id, status, n)
        SELECT tenant_id, status, COUNT(*) FROM new_rows GROUP BY tenant_id, status
        ON CONFLICT (tenant_id, status) DO UPDATE SET n = device_counts.n + EXCLUDED.n;
    RETURN NULL;
END $$;

CREATE FUNCTION devices_count_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO device_counts (tenant_id, status, n)
        SELECT tenant_id, status, -COUNT(*) FROM old_rows GROUP BY tenant_id, status
        ON CONFLICT (tenant_id, status) DO UPDATE SET n = device_counts.n + EXCLUDED.n;
    RETURN NULL;
END $$;

CREATE FUNCTION devices_count_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO device_counts (tenant_id, status, n)
        SELECT tenant_id, status, SUM(delta) FROM (
            SELECT tenant_id, status, 1 AS delta FROM new_rows
            UNION ALL
            SELECT tenant_id, status, -1 AS delta FROM old_rows
        ) AS changes
        GROUP BY tenant_id, status
        HAVING SUM(delta) <> 0
        ON CONFLICT (tenant_id, status) DO UPDATE SET n = device_counts.n + EXCLUDED.n;
    RETURN NULL;
END $$;

CREATE TRIGGER devices_count_insert AFTER INSERT ON devices
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION devices_count_insert();
CREATE TRIGGER devices_count_delete AFTER DELETE ON devices
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION devices_count_delete();
CREATE TRIGGER devices_count_update AFTER UPDATE ON devices
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION devices_count_update();
