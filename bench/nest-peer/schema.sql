-- The peer's table, as prisma/schema.prisma describes it. herd-bench runs this with psql in the
-- peer's own fresh database, so the Prisma CLI never needs its schema engine.
CREATE TYPE "DeviceStatus" AS ENUM ('online', 'offline');

CREATE TABLE devices (
    id            uuid PRIMARY KEY,
    user_id       uuid NOT NULL,
    serial_number text NOT NULL UNIQUE,
    name          text NOT NULL,
    status        "DeviceStatus" NOT NULL DEFAULT 'offline',
    last_seen     timestamptz(3),
    ip_address    text,
    app_version   text,
    created_at    timestamptz(3) NOT NULL DEFAULT now(),
    updated_at    timestamptz(3) NOT NULL
);

CREATE INDEX devices_user_id_idx ON devices (user_id);
CREATE INDEX devices_status_last_seen_idx ON devices (status, last_seen);
