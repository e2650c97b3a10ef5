-- Staged rollouts (the seed's SoftwareUpdatesModule): one package sent to a target in waves.
-- A rollout fixes its devices and their waves when it is created (`rollout_devices`, one row
-- per device, `wave` counting from 0); the rollout job notifies a wave's devices (an
-- `install_package` command each), waits for the wave to soak, and starts the next, or pauses
-- the rollout when a started wave's failures cross the threshold. Every transition is a
-- conditional UPDATE on the state it leaves, so each happens once with any number of instances.

CREATE TABLE rollouts (
    id                TEXT PRIMARY KEY,
    tenant_id         TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    -- No foreign key: a package used by a ready, running or paused rollout cannot be deleted
    -- (the server refuses), and a finished rollout keeps its history after its package goes.
    package_id        TEXT NOT NULL,
    name              TEXT NOT NULL,
    -- The target as the operator wrote it (JSON).
    target            TEXT NOT NULL,
    -- JSON array of cumulative percentages, e.g. [1, 10, 50, 100].
    waves             TEXT NOT NULL,
    -- JSON array: when each started wave started (ms), one entry per started wave.
    wave_times        TEXT NOT NULL,
    soak_ms           BIGINT NOT NULL,
    -- Percent of a wave's devices (skipped ones left out) that may fail; more pauses it.
    failure_threshold BIGINT NOT NULL,
    allow_downgrade   BOOLEAN NOT NULL,
    -- Maintenance window in minutes of the device's local day; both NULL: any time.
    window_start      BIGINT,
    window_end        BIGINT,
    state             TEXT NOT NULL,
    -- Why it is paused (herd's own words for an automatic pause, or the operator's).
    reason            TEXT,
    -- The wave in progress (0-based); -1 while ready.
    current_wave      BIGINT NOT NULL,
    -- When every device of the waves so far had been notified or skipped (the soak starts).
    wave_notified_at  BIGINT,
    -- Failures finished before this time do not count toward the threshold (set on resume).
    failures_since    BIGINT NOT NULL,
    total             BIGINT NOT NULL,
    created_by        TEXT NOT NULL,
    created_at        BIGINT NOT NULL,
    started_at        BIGINT,
    finished_at       BIGINT,
    updated_at        BIGINT NOT NULL
);
CREATE INDEX rollouts_tenant_idx ON rollouts (tenant_id, id);
-- The job's scan: only running rollouts.
CREATE INDEX rollouts_running_idx ON rollouts (state, id);
-- Whether a package is used by an unfinished rollout (package delete).
CREATE INDEX rollouts_package_idx ON rollouts (tenant_id, package_id);

-- One device's update in a rollout. No foreign keys (like command executions): a device's
-- delete removes its rows in the same transaction.
CREATE TABLE rollout_devices (
    rollout_id   TEXT NOT NULL,
    device_id    TEXT NOT NULL,
    tenant_id    TEXT NOT NULL,
    wave         BIGINT NOT NULL,
    state        TEXT NOT NULL,
    reason       TEXT,
    progress     BIGINT,
    -- The install_package command that notified it.
    command_id   TEXT,
    notified_at  BIGINT,
    finished_at  BIGINT,
    updated_at   BIGINT NOT NULL,
    PRIMARY KEY (rollout_id, device_id)
);
-- Per-wave counts, and the pending devices of the waves so far.
CREATE INDEX rollout_devices_wave_idx ON rollout_devices (rollout_id, wave, state);
-- A device's updates (its own routes, downloads, delete).
CREATE INDEX rollout_devices_device_idx ON rollout_devices (tenant_id, device_id, rollout_id);

-- What a device has installed, by package name: reported by the device
-- (PUT /devices/self/packages) and recorded when it reports an update installed. Rollouts skip
-- devices at or above the package's version code.
CREATE TABLE device_packages (
    device_id    TEXT NOT NULL,
    name         TEXT NOT NULL,
    tenant_id    TEXT NOT NULL,
    version_code BIGINT NOT NULL,
    version      TEXT,
    updated_at   BIGINT NOT NULL,
    PRIMARY KEY (device_id, name)
);
CREATE INDEX device_packages_tenant_idx ON device_packages (tenant_id, device_id);
