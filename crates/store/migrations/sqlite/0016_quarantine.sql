-- Quarantine of failing apps, and failures resolved by a later success.

-- A failed event made unnecessary by a later success of its pair keeps `failed` and names the
-- event that resolved it; it no longer counts as a failure.
ALTER TABLE operations ADD COLUMN resolved_by TEXT;
-- The unresolved failures (few, in a healthy system): per pair, for resolving them when an
-- operation succeeds, and per app by when they finished, for the quarantine ratio.
CREATE INDEX operations_unresolved_pair ON operations (app_id, user_id) WHERE status = 'failed' AND resolved_by IS NULL;
CREATE INDEX operations_unresolved_time ON operations (app_id, updated_at) WHERE status = 'failed' AND resolved_by IS NULL;

-- Each app's health: whether its queue is paused by quarantine, the probe schedule, the
-- credentials refused in a row, and the last connection test. No row: active, never tested.
CREATE TABLE app_health (
    app_id             TEXT PRIMARY KEY,
    quarantined        INTEGER NOT NULL DEFAULT 0,
    reason             TEXT,
    since              TEXT,
    next_probe         TEXT,
    probes             INTEGER NOT NULL DEFAULT 0,   -- connection tests made since quarantined
    auth_refusals      INTEGER NOT NULL DEFAULT 0,   -- operations refused for the credentials in a row
    counted_since      TEXT,                         -- outcomes before this (the last resume) do not count
    last_test_ok       INTEGER,
    last_test_at       TEXT,
    last_test_message  TEXT
);

-- Operations finished per app and minute: the quarantine ratio's denominator, and the rate.
CREATE TABLE app_outcomes (
    app_id    TEXT NOT NULL,
    minute    INTEGER NOT NULL,   -- Unix time / 60
    finished  INTEGER NOT NULL,
    PRIMARY KEY (app_id, minute)
);
