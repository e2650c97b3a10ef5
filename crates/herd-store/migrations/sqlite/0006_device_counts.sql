-- Devices per (tenant, status), kept by triggers so that the stats overview and /metrics read
-- a handful of rows instead of counting a tenant's devices on every call. Triggers keep every
-- write path honest (registration, connect, the sweep, heartbeat revivals, deletion) without
-- any of them knowing about the counters.

CREATE TABLE device_counts (
    tenant_id  TEXT NOT NULL,
    status     TEXT NOT NULL,
    n          INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, status)
);

INSERT INTO device_counts (tenant_id, status, n)
    SELECT tenant_id, status, COUNT(*) FROM devices GROUP BY tenant_id, status;

CREATE TRIGGER devices_count_insert AFTER INSERT ON devices
BEGIN
    INSERT INTO device_counts (tenant_id, status, n) VALUES (NEW.tenant_id, NEW.status, 1)
        ON CONFLICT (tenant_id, status) DO UPDATE SET n = n + 1;
END;

CREATE TRIGGER devices_count_delete AFTER DELETE ON devices
BEGIN
    UPDATE device_counts SET n = n - 1 WHERE tenant_id = OLD.tenant_id AND status = OLD.status;
END;

-- Only statements that set `status` fire this; heartbeat flushes (lastSeen only) do not.
CREATE TRIGGER devices_count_status AFTER UPDATE OF status ON devices
WHEN OLD.status <> NEW.status OR OLD.tenant_id <> NEW.tenant_id
BEGIN
    UPDATE device_counts SET n = n - 1 WHERE tenant_id = OLD.tenant_id AND status = OLD.status;
    INSERT INTO device_counts (tenant_id, status, n) VALUES (NEW.tenant_id, NEW.status, 1)
        ON CONFLICT (tenant_id, status) DO UPDATE SET n = n + 1;
END;
