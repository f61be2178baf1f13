-- SAML sign-in: apps' SAML settings, the IdP's signing keys (private keys encrypted with the
-- keyring), end users' passwords (argon2id), invitations (SHA-256 of the one-time token) and
-- end users' IdP sessions (SHA-256 of the session id).

CREATE TABLE app_saml (
    app_id      TEXT PRIMARY KEY REFERENCES apps(id) ON DELETE CASCADE,
    settings    TEXT NOT NULL,                 -- JSON SamlSettings
    jit_only    INTEGER NOT NULL DEFAULT 0,    -- copy of settings.jit_only, for the planner
    updated_at  TEXT NOT NULL,
    version     INTEGER NOT NULL
);

CREATE TABLE saml_keys (
    id            TEXT PRIMARY KEY,
    state         TEXT NOT NULL CHECK (state IN ('active', 'next', 'retired')),
    private_key   TEXT NOT NULL,               -- keyring ciphertext of the PKCS#8 PEM
    certificate   TEXT NOT NULL,               -- PEM
    created_at    TEXT NOT NULL,
    activated_at  TEXT,
    retired_at    TEXT
);
-- At most one active and one next key.
CREATE UNIQUE INDEX saml_keys_live ON saml_keys (state) WHERE state IN ('active', 'next');

CREATE TABLE user_passwords (
    user_id     TEXT PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE,
    hash        TEXT NOT NULL,                 -- argon2id PHC string
    updated_at  TEXT NOT NULL
);

CREATE TABLE user_invitations (
    id          TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    token_hash  TEXT NOT NULL UNIQUE,          -- hex SHA-256 of the token in the link
    created_at  TEXT NOT NULL,
    expires_at  TEXT NOT NULL,
    used_at     TEXT
);
CREATE INDEX user_invitations_user ON user_invitations (user_id);

CREATE TABLE user_sessions (
    id_hash       TEXT PRIMARY KEY,            -- hex SHA-256 of the session id in the cookie
    user_id       TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    csrf_token    TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    last_seen_at  TEXT NOT NULL
);
CREATE INDEX user_sessions_last_seen ON user_sessions (last_seen_at);
