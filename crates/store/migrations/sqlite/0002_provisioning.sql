-- Provisioning: account records, the durable operation queue (each operation is the event
-- admins see), and the planner's cursor into the change feed.

-- What the app said it supports, learnt by "test connection".
ALTER TABLE apps ADD COLUMN capabilities TEXT;

CREATE TABLE engine_state (
    name   TEXT PRIMARY KEY,
    value  INTEGER NOT NULL
);
INSERT INTO engine_state (name, value) VALUES ('change_cursor', 0);

-- One row per (app, user) that has or had an account, or an operation about one.
-- Not foreign keys: a record outlives a deleted app or user, for the record.
CREATE TABLE accounts (
    app_id         TEXT NOT NULL,
    user_id        TEXT NOT NULL,
    remote_id      TEXT,
    ownership      TEXT CHECK (ownership IN ('created','linked','foreign')),
    status         TEXT NOT NULL,
    last_applied   TEXT,            -- JSON: the resource last applied to the app
    last_event_id  TEXT,
    updated_at     TEXT NOT NULL,
    PRIMARY KEY (app_id, user_id)
);
CREATE INDEX accounts_user ON accounts (user_id);

CREATE TABLE operations (
    seq               INTEGER PRIMARY KEY AUTOINCREMENT,   -- queue order
    id                TEXT NOT NULL UNIQUE,                -- the event id
    app_id            TEXT NOT NULL,
    app_name          TEXT NOT NULL,
    user_id           TEXT NOT NULL,
    username          TEXT NOT NULL,
    username_key      TEXT NOT NULL,
    action            TEXT NOT NULL CHECK (action IN ('create','update','suspend','delete')),
    desired           TEXT,                                -- JSON resource; NULL for delete
    state             TEXT NOT NULL CHECK (state IN ('awaiting_approval','queued','running','done')),
    status            TEXT NOT NULL,                       -- the event status admins see
    reason            TEXT,
    recommended_action TEXT,
    attempts          INTEGER NOT NULL DEFAULT 0,
    next_run_at       TEXT NOT NULL,
    lease_owner       TEXT,
    lease_expires_at  TEXT,
    replan            INTEGER NOT NULL DEFAULT 0,          -- plan the pair again when done
    created_at        TEXT NOT NULL,
    updated_at        TEXT NOT NULL
);
-- Open operations per pair, oldest first (ordering and collapsing).
CREATE INDEX operations_pair ON operations (app_id, user_id, state, seq);
-- The worker's claim: due operations of an app.
CREATE INDEX operations_due ON operations (state, app_id, next_run_at);
-- Event listings.
CREATE INDEX operations_user ON operations (user_id, seq);
CREATE INDEX operations_app ON operations (app_id, seq);
CREATE INDEX operations_status ON operations (status, seq);
