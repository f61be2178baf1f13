-- Directory sources (LDAP / Active Directory), their syncs, and the link of each imported
-- user to their directory entry.
CREATE TABLE sources (
    id                 TEXT PRIMARY KEY,
    name               TEXT NOT NULL,
    name_key           TEXT NOT NULL UNIQUE,
    config             TEXT NOT NULL,          -- JSON of the Source (no secret)
    password           TEXT NOT NULL,          -- AEAD ciphertext of the bind password
    watermark          TEXT,                   -- incremental syncs start after this
    last_full_sync_at  TEXT,
    created_at         TEXT NOT NULL,
    updated_at         TEXT NOT NULL,
    version            INTEGER NOT NULL
);

CREATE TABLE source_syncs (
    id            TEXT PRIMARY KEY,
    source_id     TEXT NOT NULL REFERENCES sources(id) ON DELETE CASCADE,
    mode          TEXT NOT NULL,
    state         TEXT NOT NULL CHECK (state IN ('running','awaiting_confirmation','succeeded','failed')),
    trigger       TEXT NOT NULL,
    counts        TEXT NOT NULL,
    pending_suspensions INTEGER NOT NULL DEFAULT 0,
    pending       TEXT,                        -- JSON list of user ids the guard holds back
    message       TEXT,
    errors        TEXT NOT NULL DEFAULT '[]',
    started_at    TEXT NOT NULL,
    finished_at   TEXT,
    heartbeat_at  TEXT NOT NULL
);
CREATE INDEX source_syncs_source ON source_syncs (source_id, started_at);
-- At most one open sync per source.
CREATE UNIQUE INDEX source_syncs_open ON source_syncs (source_id) WHERE state IN ('running','awaiting_confirmation');

CREATE TABLE source_links (
    source_id            TEXT NOT NULL REFERENCES sources(id) ON DELETE CASCADE,
    user_id              TEXT NOT NULL UNIQUE REFERENCES users(id) ON DELETE CASCADE,
    stable_id            TEXT NOT NULL,
    dn                   TEXT NOT NULL,
    dn_key               TEXT NOT NULL,
    suspended_by_source  INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (source_id, stable_id)
);
CREATE INDEX source_links_dn ON source_links (source_id, dn_key);
