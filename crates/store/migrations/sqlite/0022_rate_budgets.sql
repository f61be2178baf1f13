-- Rate budgets (issue 22): each app's rate state, shared by every process, and the requests
-- sent to budgeted apps.

-- The token bucket of the app's `provisioning.rate_limit`, the pause its `Retry-After` asked
-- for, and the concurrency limit lowered after a 429 or 5xx (see directory::rate). No row:
-- a full bucket, no pause, no drop.
CREATE TABLE app_rates (
    app_id        TEXT PRIMARY KEY REFERENCES apps (id) ON DELETE CASCADE,
    tokens        INTEGER NOT NULL,       -- millionths of a token in the bucket at refilled_at
    refilled_at   TEXT NOT NULL,
    paused_until  TEXT,                   -- no request to the app before this
    concurrency   INTEGER,                -- the concurrency limit the last drop set
    dropped_at    TEXT
);

-- Requests sent per app and minute (budgeted apps): how many requests an operation takes,
-- for the estimate of when the queue is empty.
ALTER TABLE app_outcomes ADD COLUMN requests INTEGER NOT NULL DEFAULT 0;
