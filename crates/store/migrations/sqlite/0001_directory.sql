-- The directory: people, roles, apps, custom attribute definitions, API tokens, the audit
-- log and the change feed. Identifiers are UUIDv7 text; times are RFC 3339 UTC text with
-- microseconds, so they sort as text.

CREATE TABLE api_tokens (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    lookup       TEXT NOT NULL UNIQUE,   -- first 16 bytes of SHA-256(token), hex: finds the row
    hash         TEXT NOT NULL,          -- argon2id PHC string: proves the token
    created_at   TEXT NOT NULL,
    revoked_at   TEXT
);

CREATE TABLE attribute_defs (
    name         TEXT PRIMARY KEY,
    kind         TEXT NOT NULL CHECK (kind IN ('string','number','boolean','date','string_list')),
    description  TEXT,
    created_at   TEXT NOT NULL
);

CREATE TABLE users (
    id               TEXT PRIMARY KEY,
    username         TEXT NOT NULL,
    username_key     TEXT NOT NULL,      -- lower-cased username
    email            TEXT,
    first_name       TEXT,
    last_name        TEXT,
    display_name     TEXT,
    title            TEXT,
    department       TEXT,
    manager_id       TEXT REFERENCES users(id) ON DELETE SET NULL,
    phone            TEXT,
    employee_number  TEXT,
    attributes       TEXT NOT NULL DEFAULT '{}',
    status           TEXT NOT NULL CHECK (status IN ('active','suspended','deleted')),
    source           TEXT NOT NULL CHECK (source IN ('local','ldap','scim')),
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL,
    version          INTEGER NOT NULL
);
-- A deleted user's username may be reused.
CREATE UNIQUE INDEX users_username_key ON users (username_key) WHERE status <> 'deleted';
CREATE INDEX users_list ON users (username_key, id);
CREATE INDEX users_manager ON users (manager_id);

CREATE TABLE roles (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    name_key     TEXT NOT NULL UNIQUE,
    description  TEXT,
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL,
    version      INTEGER NOT NULL
);

CREATE TABLE role_users (
    role_id     TEXT NOT NULL REFERENCES roles(id) ON DELETE CASCADE,
    user_id     TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_at  TEXT NOT NULL,
    PRIMARY KEY (role_id, user_id)
);
CREATE INDEX role_users_user ON role_users (user_id);

CREATE TABLE apps (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    name_key      TEXT NOT NULL UNIQUE,
    description   TEXT,
    connector     TEXT NOT NULL,
    connection    TEXT NOT NULL,         -- JSON, no secrets
    credential    TEXT NOT NULL,         -- AEAD ciphertext of the secret, with its key id
    provisioning  TEXT NOT NULL,         -- JSON
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL,
    version       INTEGER NOT NULL
);

CREATE TABLE role_apps (
    role_id     TEXT NOT NULL REFERENCES roles(id) ON DELETE CASCADE,
    app_id      TEXT NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    created_at  TEXT NOT NULL,
    PRIMARY KEY (role_id, app_id)
);
CREATE INDEX role_apps_app ON role_apps (app_id);

CREATE TABLE audit_log (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    at           TEXT NOT NULL,
    actor_kind   TEXT NOT NULL,
    actor_name   TEXT NOT NULL,
    action       TEXT NOT NULL,
    target_type  TEXT NOT NULL,
    target_id    TEXT NOT NULL,
    before       TEXT,
    after        TEXT
);
CREATE INDEX audit_target ON audit_log (target_type, target_id);

-- The change feed: one row per directory write, in the write's own transaction.
CREATE TABLE changes (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    at       TEXT NOT NULL,
    kind     TEXT NOT NULL,
    user_id  TEXT,
    role_id  TEXT,
    app_id   TEXT
);
