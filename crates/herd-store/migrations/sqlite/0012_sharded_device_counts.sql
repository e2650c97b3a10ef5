-- device_counts gets a shard column (PostgreSQL spreads each count over 16 rows so that
-- concurrent registrations do not queue on one counter row; see the PostgreSQL migration).
-- SQLite has one writer, so its triggers keep writing shard 0; readers sum the shards on both
-- engines. SQLite cannot change a primary key in place: the table is rebuilt.

DROP TRIGGER devices_count_insert;
DROP TRIGGER devices_count_delete;
DROP TRIGGER devices_count_status;

CREATE TABLE device_counts_sharded (
    tenant_id  TEXT NOT NULL,
    status     TEXT NOT NULL,
    n          INTEGER NOT NULL,
    shard      SMALLINT NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, status, shard)
);
INSERT INTO device_counts_sharded (tenant_id, status, n, shard) SELECT tenant_id, status, n, 0 FROM device_counts;
DROP TABLE device_counts;
ALTER TABLE device_counts_sharded RENAME TO device_counts;

CREATE TRIGGER devices_count_insert AFTER INSERT ON devices
BEGIN
    INSERT INTO device_counts (tenant_id, status, shard, n) VALUES (NEW.tenant_id, NEW.status, 0, 1)
        ON CONFLICT (tenant_id, status, shard) DO UPDATE SET n = n + 1;
END;

CREATE TRIGGER devices_count_delete AFTER DELETE ON devices
BEGIN
    INSERT INTO device_counts (tenant_id, status, shard, n) VALUES (OLD.tenant_id, OLD.status, 0, -1)
        ON CONFLICT (tenant_id, status, shard) DO UPDATE SET n = n - 1;
END;

-- Only statements that set `status` fire this; heartbeat flushes (lastSeen only) do not.
CREATE TRIGGER devices_count_status AFTER UPDATE OF status ON devices
WHEN OLD.status <> NEW.status OR OLD.tenant_id <> NEW.tenant_id
BEGIN
    INSERT INTO device_counts (tenant_id, status, shard, n) VALUES (OLD.tenant_id, OLD.status, 0, -1)
        ON CONFLICT (tenant_id, status, shard) DO UPDATE SET n = n - 1;
    INSERT INTO device_counts (tenant_id, status, shard, n) VALUES (NEW.tenant_id, NEW.status, 0, 1)
        ON CONFLICT (tenant_id, status, shard) DO UPDATE SET n = n + 1;
END;
