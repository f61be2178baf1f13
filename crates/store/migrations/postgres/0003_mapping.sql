-- Parameters and rules of each app, and the entitlements imported from apps by Refresh.

ALTER TABLE apps ADD COLUMN parameters jsonb;             -- a list; NULL: the default mapping
ALTER TABLE apps ADD COLUMN rules jsonb NOT NULL DEFAULT '[]';

-- Values imported from the app (groups), by their id in the app.
CREATE TABLE entitlements (
    app_id        uuid NOT NULL,
    kind          text COLLATE "C" NOT NULL,               -- 'group'
    remote_id     text COLLATE "C" NOT NULL,
    display_name  text NOT NULL,
    display_key   text COLLATE "C" NOT NULL,               -- lower-cased display name
    updated_at    timestamptz NOT NULL,
    PRIMARY KEY (app_id, kind, remote_id)
);
CREATE INDEX entitlements_name ON entitlements (app_id, kind, display_key);

-- The latest Refresh of each app.
CREATE TABLE entitlement_refreshes (
    app_id       uuid PRIMARY KEY,
    state        text NOT NULL CHECK (state IN ('running','done','failed')),
    fetched      bigint NOT NULL DEFAULT 0,
    total        bigint,
    error        text,
    started_at   timestamptz NOT NULL,
    finished_at  timestamptz
);
