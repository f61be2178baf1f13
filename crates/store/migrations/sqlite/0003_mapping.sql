-- Parameters and rules of each app, and the entitlements imported from apps by Refresh.

ALTER TABLE apps ADD COLUMN parameters TEXT;              -- JSON list; NULL: the default mapping
ALTER TABLE apps ADD COLUMN rules TEXT NOT NULL DEFAULT '[]';

-- Values imported from the app (groups), by their id in the app.
CREATE TABLE entitlements (
    app_id        TEXT NOT NULL,
    kind          TEXT NOT NULL,                          -- 'group'
    remote_id     TEXT NOT NULL,
    display_name  TEXT NOT NULL,
    display_key   TEXT NOT NULL,                          -- lower-cased display name
    updated_at    TEXT NOT NULL,
    PRIMARY KEY (app_id, kind, remote_id)
);
CREATE INDEX entitlements_name ON entitlements (app_id, kind, display_key);

-- The latest Refresh of each app.
CREATE TABLE entitlement_refreshes (
    app_id       TEXT PRIMARY KEY,
    state        TEXT NOT NULL CHECK (state IN ('running','done','failed')),
    fetched      INTEGER NOT NULL DEFAULT 0,
    total        INTEGER,
    error        TEXT,
    started_at   TEXT NOT NULL,
    finished_at  TEXT
);
