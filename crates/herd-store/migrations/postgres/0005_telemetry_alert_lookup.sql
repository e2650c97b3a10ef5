-- The ingest path reads a device's open alerts on every request with fresh samples. Matching
-- its three equality terms (on SQLite, without statistics, the planner otherwise took
-- alerts_tenant_created_idx and scanned every alert of the tenant).
CREATE INDEX alerts_tenant_device_status_idx ON alerts (tenant_id, device_id, status);
