-- SAML sign-in: apps' SAML settings, the IdP's signing keys (private keys encrypted with the
-- keyring), end users' passwords (argon2id), invitations (SHA-256 of the one-time token) and
-- end users' IdP sessions (SHA-256 of the session id).

CREATE TABLE app_saml (
    app_id      uuid PRIMARY KEY REFERENCES apps(id) ON DELETE CASCADE,
    settings    jsonb NOT NULL,                -- JSON SamlSettings
    jit_only    boolean NOT NULL DEFAULT false,  -- copy of settings.jit_only, for the planner
    updated_at  timestamptz NOT NULL,
    version     bigint NOT NULL
);

CREATE TABLE saml_keys (
    id            uuid PRIMARY KEY,
    state         TEXT NOT NULL CHECK (state IN ('active', 'next', 'retired')),
    private_key   TEXT NOT NULL,               -- keyring ciphertext of the PKCS#8 PEM
    certificate   TEXT NOT NULL,               -- PEM
    created_at    timestamptz NOT NULL,
    activated_at  timestamptz,
    retired_at    timestamptz
);
-- At most one active and one next key.
CREATE UNIQUE INDEX saml_keys_live ON saml_keys (state) WHERE state IN ('active', 'next');

CREATE TABLE user_passwords (
    user_id     uuid PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE,
    hash        TEXT NOT NULL,                 -- argon2id PHC string
    updated_at  timestamptz NOT NULL
);

CREATE TABLE user_invitations (
    id          uuid PRIMARY KEY,
    user_id     uuid NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    token_hash  TEXT NOT NULL UNIQUE,          -- hex SHA-256 of the token in the link
    created_at  timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz
);
CREATE INDEX user_invitations_user ON user_invitations (user_id);

CREATE TABLE user_sessions (
    id_hash       TEXT PRIMARY KEY,            -- hex SHA-256 of the session id in the cookie
    user_id       uuid NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    csrf_token    TEXT NOT NULL,
    created_at    timestamptz NOT NULL,
    last_seen_at  timestamptz NOT NULL
);
CREATE INDEX user_sessions_last_seen ON user_sessions (last_seen_at);
