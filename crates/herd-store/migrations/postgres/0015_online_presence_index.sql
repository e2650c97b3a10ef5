-- The presence sweep's index covers online devices only: `devices_presence_idx` was
-- (status, last_seen) over every device, so each device the sweep flipped moved its entry
-- from the 'online' range to the 'offline' range (a delete and an insert), and the offline
-- range, which nobody reads, grew with the fleet. As a partial index over `status = 'online'`,
-- a flip is one delete, heartbeat flushes (which only write online devices' last_seen) keep
-- updating the same entries, and the sweep's `status = 'online' AND last_seen < $cutoff`
-- still searches it (EXPLAIN: Index Scan using devices_presence_idx,
-- with `last_seen < $cutoff` as its index condition).

DROP INDEX devices_presence_idx;
CREATE INDEX devices_presence_idx ON devices (last_seen) WHERE status = 'online';
