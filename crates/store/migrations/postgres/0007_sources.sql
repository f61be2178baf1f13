-- Directory sources (LDAP / Active Directory), their syncs, and the link of each imported
-- user to their directory entry.
CREATE TABLE sources (
    id                 uuid PRIMARY KEY,
    name               text NOT NULL,
    name_key           text COLLATE "C" NOT NULL,
    config             jsonb NOT NULL,         -- the Source (no secret)
    password           text NOT NULL,          -- AEAD ciphertext of the bind password
    watermark          text,                   -- incremental syncs start after this
    last_full_sync_at  timestamptz,
    created_at         timestamptz NOT NULL,
    updated_at         timestamptz NOT NULL,
    version            bigint NOT NULL,
    CONSTRAINT sources_name_key UNIQUE (name_key)
);

CREATE TABLE source_syncs (
    id            uuid PRIMARY KEY,
    source_id     uuid NOT NULL REFERENCES sources(id) ON DELETE CASCADE,
    mode          text NOT NULL,
    state         text NOT NULL CHECK (state IN ('running','awaiting_confirmation','succeeded','failed')),
    trigger       text NOT NULL,
    counts        jsonb NOT NULL,
    pending_suspensions bigint NOT NULL DEFAULT 0,
    pending       jsonb,                       -- user ids the guard holds back
    message       text,
    errors        jsonb NOT NULL DEFAULT '[]',
    started_at    timestamptz NOT NULL,
    finished_at   timestamptz,
    heartbeat_at  timestamptz NOT NULL
);
CREATE INDEX source_syncs_source ON source_syncs (source_id, started_at);
-- At most one open sync per source.
CREATE UNIQUE INDEX source_syncs_open ON source_syncs (source_id) WHERE state IN ('running','awaiting_confirmation');

CREATE TABLE source_links (
    source_id            uuid NOT NULL REFERENCES sources(id) ON DELETE CASCADE,
    user_id              uuid NOT NULL UNIQUE REFERENCES users(id) ON DELETE CASCADE,
    stable_id            text NOT NULL,
    dn                   text NOT NULL,
    dn_key               text NOT NULL,
    suspended_by_source  boolean NOT NULL DEFAULT false,
    PRIMARY KEY (source_id, stable_id)
);
CREATE INDEX source_links_dn ON source_links (source_id, dn_key);
