-- Alerts opened per (tenant, 10-minute bucket of created_at), kept by triggers so that the
-- overview's alertsLast24h sums at most 145 buckets instead of counting a day of alerts through
-- the (tenant_id, created_at) index (see the PostgreSQL migration for the measurements). An
-- alert's tenant_id and created_at never change, so inserts and deletes (a device's deletion
-- cascades to its alerts) are all that move a count. SQLite has one writer, so its triggers
-- write shard 0; the column is there so that both engines have one schema.
--
-- The bucket width, 600,000 ms, is monitoring::ALERT_BUCKET_MS.

CREATE TABLE alert_counts (
    tenant_id  TEXT NOT NULL,
    bucket     BIGINT NOT NULL,
    shard      SMALLINT NOT NULL DEFAULT 0,
    n          INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, bucket, shard)
);

INSERT INTO alert_counts (tenant_id, bucket, shard, n)
    SELECT tenant_id, created_at / 600000, 0, COUNT(*) FROM alerts GROUP BY tenant_id, created_at / 600000;

CREATE TRIGGER alerts_count_insert AFTER INSERT ON alerts
BEGIN
    INSERT INTO alert_counts (tenant_id, bucket, shard, n) VALUES (NEW.tenant_id, NEW.created_at / 600000, 0, 1)
        ON CONFLICT (tenant_id, bucket, shard) DO UPDATE SET n = n + 1;
END;

CREATE TRIGGER alerts_count_delete AFTER DELETE ON alerts
BEGIN
    INSERT INTO alert_counts (tenant_id, bucket, shard, n) VALUES (OLD.tenant_id, OLD.created_at / 600000, 0, -1)
        ON CONFLICT (tenant_id, bucket, shard) DO UPDATE SET n = n - 1;
END;
