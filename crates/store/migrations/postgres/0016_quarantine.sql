-- Quarantine of failing apps, and failures resolved by a later success.

-- A failed event made unnecessary by a later success of its pair keeps `failed` and names the
-- event that resolved it; it no longer counts as a failure.
ALTER TABLE operations ADD COLUMN resolved_by uuid;
-- The unresolved failures (few, in a healthy system): per pair, for resolving them when an
-- operation succeeds, and per app by when they finished, for the quarantine ratio.
CREATE INDEX operations_unresolved_pair ON operations (app_id, user_id) WHERE status = 'failed' AND resolved_by IS NULL;
CREATE INDEX operations_unresolved_time ON operations (app_id, updated_at) WHERE status = 'failed' AND resolved_by IS NULL;

-- Each app's health: whether its queue is paused by quarantine, the probe schedule, the
-- credentials refused in a row, and the last connection test. No row: active, never tested.
CREATE TABLE app_health (
    app_id             uuid PRIMARY KEY,
    quarantined        boolean NOT NULL DEFAULT false,
    reason             text,
    since              timestamptz,
    next_probe         timestamptz,
    probes             bigint NOT NULL DEFAULT 0,   -- connection tests made since quarantined
    auth_refusals      bigint NOT NULL DEFAULT 0,   -- operations refused for the credentials in a row
    counted_since      timestamptz,                  -- outcomes before this (the last resume) do not count
    last_test_ok       boolean,
    last_test_at       timestamptz,
    last_test_message  text
);

-- Operations finished per app and minute: the quarantine ratio's denominator, and the rate.
CREATE TABLE app_outcomes (
    app_id    uuid NOT NULL,
    minute    bigint NOT NULL,   -- Unix time / 60
    finished  bigint NOT NULL,
    PRIMARY KEY (app_id, minute)
);
