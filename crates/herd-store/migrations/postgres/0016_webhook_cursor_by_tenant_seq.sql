-- A webhook's cursor counts its tenant's own events. `webhooks.last_seq` was set from the
-- global `seq` (at creation, and advanced to the global `seq` of the last event fanned out),
-- while fan-out reads the tenant's events after it by `tenant_seq`. A tenant's `tenant_seq`
-- runs behind the global `seq` as soon as any other tenant has events, so a hook skipped its
-- tenant's events until that tenant caught up with the whole server's count.
--
-- Each cursor becomes the `tenant_seq` of the last event at or before its global position: the
-- events it had fanned out. Events the old cursor skipped come after it and are delivered on
-- the next fan-out (a delivery is unique per webhook and event, so none is made twice). If
-- retention purged every event up to the old position, the cursor goes just before the
-- tenant's oldest event after it, or else to the tenant's counter (nothing to deliver).
UPDATE webhooks SET last_seq = COALESCE(
    (SELECT MAX(e.tenant_seq) FROM events e WHERE e.tenant_id = webhooks.tenant_id AND e.seq <= webhooks.last_seq),
    (SELECT MIN(e.tenant_seq) - 1 FROM events e WHERE e.tenant_id = webhooks.tenant_id AND e.seq > webhooks.last_seq),
    (SELECT c.seq FROM event_counters c WHERE c.tenant_id = webhooks.tenant_id),
    0
);

-- Only the webhook's start read (tenant_id, seq): it reads the tenant's counter now. Every
-- event wrote an entry into this index for nothing else.
DROP INDEX events_tenant_seq_idx;
