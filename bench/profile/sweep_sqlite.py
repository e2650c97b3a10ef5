#!/usr/bin/env python3
"""Replays the presence sweep's statements on SQLite, on herd's real schema, to see where a
sweep's time goes without HTTP, sqlx or the server around it.

    python3 bench/profile/sweep_sqlite.py --devices 1000000 [--variant NAME ...]

It applies every migration in crates/herd-store/migrations/sqlite to a scratch database under
/tmp, fills one tenant with N online devices last seen an hour ago (identifiers and info of the
widths the bench's registrations send), then for each variant copies that database and times
the sweep: batches of SWEEP_BATCH devices, each one transaction of the flip (`UPDATE ...
RETURNING`), the tenant's event counter bump and the events in chunks of 1,000 rows, as
`presence::sweep` and `Tx::commit` write them. A variant changes the schema first (drops a
trigger or an index) or leaves out a part, so the differences are what each part costs.
Connects to nothing: SQLite files only.
"""

import argparse
import glob
import json
import os
import random
import shutil
import sqlite3
import time
import uuid

SWEEP_BATCH = 5000
OUTBOX_CHUNK = 1000
HERE = os.path.dirname(os.path.abspath(__file__))
MIGRATIONS = os.path.join(HERE, "..", "..", "crates", "herd-store", "migrations", "sqlite")

VARIANTS = {
    "as-is": [],
    "no-count-trigger": ["DROP TRIGGER devices_count_status"],
    "no-tenant-status-index": ["DROP INDEX devices_tenant_status_idx"],
    "no-events": [],
    "flip-only-no-trigger": ["DROP TRIGGER devices_count_status"],
    "rowid-order": [],
    "no-events-secondary-indexes": [
        "DROP INDEX events_id_uq", "DROP INDEX events_tenant_type_tenant_seq_idx", "DROP INDEX events_occurred_idx",
    ],
    "no-presence-index": ["DROP INDEX devices_presence_idx"],
}


_counter = [0]


def uuid7(ms):
    """A UUIDv7 as herd makes them (`Uuid::now_v7`): the millisecond first, then a counter, so ids
    made later sort later, also within one millisecond."""
    _counter[0] += 1
    value = (ms & (2**48 - 1)) << 80 | 0x7 << 76 | (_counter[0] & (2**42 - 1)) << 20 | int.from_bytes(os.urandom(3), "big") & (2**20 - 1)
    value = value & ~(0x3 << 62) | 0x2 << 62
    return str(uuid.UUID(int=value))


def connect(path, autocheckpoint=None):
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA temp_store = memory")
    conn.execute("PRAGMA cache_size = -32768")
    conn.execute("PRAGMA foreign_keys = ON")
    if autocheckpoint is not None:
        conn.execute(f"PRAGMA wal_autocheckpoint = {autocheckpoint}")
    return conn


def build(path, devices):
    if os.path.exists(path):
        os.remove(path)
    conn = connect(path)
    for file in sorted(glob.glob(os.path.join(MIGRATIONS, "*.sql"))):
        conn.executescript(open(file).read())
    now = int(time.time() * 1000)
    tenant = str(uuid.uuid4())
    conn.execute("INSERT INTO tenants (id, name, created_at) VALUES (?, 'bench', ?)", (tenant, now))
    conn.execute("BEGIN")
    stale = now - 3_600_000
    rows = []
    # Registered over time (ids in creation order), last seen in another order: the fleet came
    # online and heartbeated in whatever order its devices did.
    seen = list(range(devices))
    random.Random(7).shuffle(seen)
    for i in range(devices):
        rows.append((
            uuid7(now - devices + i), tenant, f"bench-{i}", f"SN-{i:09d}", f"android-{i:012x}",
            "Bench Box 4K", "herd", "14", "1.0.0", "fw-2026.11", '["bench"]',
            os.urandom(32).hex(), stale + seen[i], now, now,
        ))
        if len(rows) == 10_000:
            insert(conn, rows)
            rows = []
    if rows:
        insert(conn, rows)
    conn.execute("COMMIT")
    conn.execute("ANALYZE")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return tenant


def insert(conn, rows):
    conn.executemany(
        "INSERT INTO devices (id, tenant_id, name, serial_number, android_id, model, manufacturer, os_version, "
        "app_version, firmware_version, tags, status, token_hash, last_seen, created_at, updated_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'online', ?, ?, ?, ?)",
        rows,
    )


def sweep(conn, batch, events=True, rowid_order=False):
    now = int(time.time() * 1000)
    cutoff = now - 90_000
    flip = ("UPDATE devices SET status = 'offline', updated_at = ? WHERE id IN "
            "(SELECT id FROM devices WHERE status = 'online' AND last_seen < ? LIMIT ?) "
            "RETURNING id, tenant_id, last_seen")
    flipped = 0
    parts = {"claim": 0.0, "flip": 0.0, "events": 0.0, "commit": 0.0}
    if rowid_order:
        # The stale devices' rowids from the presence index alone (it is covering for rowid),
        # sorted, so each batch rewrites neighbouring rows instead of rows all over the table.
        t = time.perf_counter()
        claimed = sorted(r for (r,) in conn.execute(
            "SELECT rowid FROM devices WHERE status = 'online' AND last_seen < ?", (cutoff,)))
        parts["claim"] = time.perf_counter() - t
        flip = ("UPDATE devices SET status = 'offline', updated_at = ? WHERE rowid IN (SELECT value FROM json_each(?)) "
                "AND status = 'online' AND last_seen < ? RETURNING id, tenant_id, last_seen")
    while True:
        conn.execute("BEGIN IMMEDIATE")
        t0 = time.perf_counter()
        if rowid_order:
            ids, claimed = claimed[:batch], claimed[batch:]
            rows = conn.execute(flip, (now, json.dumps(ids), cutoff)).fetchall() if ids else []
        else:
            rows = conn.execute(flip, (now, cutoff, batch)).fetchall()
        t1 = time.perf_counter()
        parts["flip"] += t1 - t0
        if not rows:
            conn.execute("COMMIT")
            break
        if events:
            tenant = rows[0][1]
            (last,) = conn.execute(
                "INSERT INTO event_counters (tenant_id, seq) VALUES (?, ?) ON CONFLICT (tenant_id) "
                "DO UPDATE SET seq = event_counters.seq + excluded.seq RETURNING seq",
                (tenant, len(rows)),
            ).fetchone()
            seq = last - len(rows) + 1
            for start in range(0, len(rows), OUTBOX_CHUNK):
                chunk = rows[start:start + OUTBOX_CHUNK]
                params = []
                for device, tenant_id, last_seen in chunk:
                    data = json.dumps({"deviceId": device, "from": "online", "to": "offline", "lastSeen": last_seen},
                                      separators=(",", ":"))
                    params += [uuid7(now), tenant_id, seq, "device.status_changed", now, data]
                    seq += 1
                conn.execute(
                    "INSERT INTO events (id, tenant_id, tenant_seq, type, occurred_at, data) VALUES "
                    + ", ".join(["(?, ?, ?, ?, ?, ?)"] * len(chunk)),
                    params,
                )
        t2 = time.perf_counter()
        parts["events"] += t2 - t1
        conn.execute("COMMIT")
        parts["commit"] += time.perf_counter() - t2
        flipped += len(rows)
        if (not rowid_order and len(rows) < batch) or (rowid_order and not claimed):
            break
    return flipped, parts


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--variant", action="append", choices=sorted(VARIANTS))
    parser.add_argument("--dir", default="/tmp/herd-sweep-profile")
    parser.add_argument("--batch", type=int, action="append", help=f"devices per transaction (default {SWEEP_BATCH})")
    parser.add_argument("--rowid-order", action="store_true",
                        help="every variant flips in row order, as presence::sweep does on SQLite since 3a8f7ff")
    parser.add_argument("--autocheckpoint", type=int, help="PRAGMA wal_autocheckpoint in pages (SQLite's default 1000)")
    args = parser.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    base = os.path.join(args.dir, f"base-{args.devices}.db")
    if not os.path.exists(base):
        t = time.perf_counter()
        build(base, args.devices)
        print(f"built {args.devices} online devices in {time.perf_counter() - t:.1f} s", flush=True)
    for name, batch in [(v, b) for v in args.variant or list(VARIANTS) for b in args.batch or [SWEEP_BATCH]]:
        work = os.path.join(args.dir, "work.db")
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(work + suffix):
                os.remove(work + suffix)
        shutil.copyfile(base, work)
        conn = connect(work, args.autocheckpoint)
        for statement in VARIANTS[name]:
            conn.execute(statement)
        t = time.perf_counter()
        flipped, parts = sweep(conn, batch, events=(name not in ("no-events", "flip-only-no-trigger")),
                               rowid_order=(args.rowid_order or name == "rowid-order"))
        took = time.perf_counter() - t
        counts = dict(conn.execute("SELECT status, SUM(n) FROM device_counts GROUP BY status").fetchall())
        conn.close()
        detail = ", ".join(f"{k} {v:.2f} s" for k, v in parts.items())
        print(f"{name:28} batch {batch:>6} {flipped:>9} flipped in {took:6.2f} s ({detail}); counts {counts}", flush=True)


if __name__ == "__main__":
    main()
