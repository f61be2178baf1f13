-- Provisioning: account records, the durable operation queue (each operation is the event
-- admins see), and the planner's cursor into the change feed.

-- What the app said it supports, learnt by "test connection".
ALTER TABLE apps ADD COLUMN capabilities jsonb;

CREATE TABLE engine_state (
    name   text PRIMARY KEY,
    value  bigint NOT NULL
);
INSERT INTO engine_state (name, value) VALUES ('change_cursor', 0);

-- One row per (app, user) that has or had an account, or an operation about one.
-- Not foreign keys: a record outlives a deleted app or user, for the record.
CREATE TABLE accounts (
    app_id         uuid NOT NULL,
    user_id        uuid NOT NULL,
    remote_id      text,
    ownership      text CHECK (ownership IN ('created','linked','foreign')),
    status         text NOT NULL,
    last_applied   jsonb,           -- the resource last applied to the app
    last_event_id  uuid,
    updated_at     timestamptz NOT NULL,
    PRIMARY KEY (app_id, user_id)
);
CREATE INDEX accounts_user ON accounts (user_id);

CREATE TABLE operations (
    seq               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,   -- queue order
    id                uuid NOT NULL UNIQUE,                              -- the event id
    app_id            uuid NOT NULL,
    app_name          text NOT NULL,
    user_id           uuid NOT NULL,
    username          text NOT NULL,
    username_key      text COLLATE "C" NOT NULL,
    action            text NOT NULL CHECK (action IN ('create','update','suspend','delete')),
    desired           jsonb,                                             -- NULL for delete
    state             text NOT NULL CHECK (state IN ('awaiting_approval','queued','running','done')),
    status            text NOT NULL,                                     -- the event status admins see
    reason            text,
    recommended_action text,
    attempts          bigint NOT NULL DEFAULT 0,
    next_run_at       timestamptz NOT NULL,
    lease_owner       text,
    lease_expires_at  timestamptz,
    replan            boolean NOT NULL DEFAULT false,                    -- plan the pair again when done
    created_at        timestamptz NOT NULL,
    updated_at        timestamptz NOT NULL
);
-- Open operations per pair, oldest first (ordering and collapsing).
CREATE INDEX operations_pair ON operations (app_id, user_id, seq) WHERE state <> 'done';
-- The worker's claim: open operations of an app in queue order.
CREATE INDEX operations_open ON operations (app_id, seq) WHERE state IN ('queued', 'running');
-- Event listings.
CREATE INDEX operations_user ON operations (user_id, seq);
CREATE INDEX operations_app ON operations (app_id, seq);
CREATE INDEX operations_status ON operations (status, seq);
