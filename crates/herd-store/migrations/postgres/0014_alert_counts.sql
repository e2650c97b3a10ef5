-- Alerts opened per (tenant, 10-minute bucket of created_at), kept by triggers so that the
-- overview's alertsLast24h sums at most 145 buckets (per shard) instead of counting a day of
-- alerts through the (tenant_id, created_at) index: at 100,000 devices and 10M samples that was
-- ~2.2M index entries and most of the overview's 50 ms. The overview counts the whole buckets
-- inside the window from here and the one bucket the window starts in from `alerts` itself, so
-- the figure is exact (monitoring::MonitoringStore::overview).
--
-- An alert's tenant_id and created_at never change after the insert, so only inserts and
-- deletes (a device's deletion cascades to its alerts) move a count. As with device_counts
-- (migration 0012), each connection writes the shard `pg_backend_pid() % 16`, so concurrent
-- ingest transactions that open alerts in the same tenant and bucket rarely share (and queue
-- on) a counter row; readers sum the shards. Buckets older than the window are deleted by the
-- telemetry retention step (monitoring::purge_alert_counts_before).
--
-- The bucket width, 600,000 ms, is monitoring::ALERT_BUCKET_MS.

CREATE TABLE alert_counts (
    tenant_id  TEXT NOT NULL,
    bucket     BIGINT NOT NULL,
    shard      SMALLINT NOT NULL DEFAULT 0,
    n          BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, bucket, shard)
);

INSERT INTO alert_counts (tenant_id, bucket, shard, n)
    SELECT tenant_id, created_at / 600000, 0, COUNT(*) FROM alerts GROUP BY tenant_id, created_at / 600000;

CREATE FUNCTION alerts_count_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO alert_counts (tenant_id, bucket, shard, n)
        SELECT tenant_id, created_at / 600000, (pg_backend_pid() % 16)::smallint, COUNT(*) FROM new_rows
        GROUP BY tenant_id, created_at / 600000
        ORDER BY tenant_id, created_at / 600000
        ON CONFLICT (tenant_id, bucket, shard) DO UPDATE SET n = alert_counts.n + EXCLUDED.n;
    RETURN NULL;
END $$;

CREATE FUNCTION alerts_count_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO alert_counts (tenant_id, bucket, shard, n)
        SELECT tenant_id, created_at / 600000, (pg_backend_pid() % 16)::smallint, -COUNT(*) FROM old_rows
        GROUP BY tenant_id, created_at / 600000
        ORDER BY tenant_id, created_at / 600000
        ON CONFLICT (tenant_id, bucket, shard) DO UPDATE SET n = alert_counts.n + EXCLUDED.n;
    RETURN NULL;
END $$;

CREATE TRIGGER alerts_count_insert AFTER INSERT ON alerts
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION alerts_count_insert();
CREATE TRIGGER alerts_count_delete AFTER DELETE ON alerts
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION alerts_count_delete();
