-- Inbound SCIM: the clients (identity providers, HR systems) allowed to push users and groups,
-- each with its own bearer token (only its argon2id hash is kept), and the `externalId`
-- a client gave a user or a group (a role).

CREATE TABLE scim_clients (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    lookup       TEXT NOT NULL UNIQUE,   -- first 16 bytes of SHA-256(token), hex: finds the row
    hash         TEXT NOT NULL,          -- argon2id PHC string: proves the token
    created_at   TEXT NOT NULL,
    revoked_at   TEXT
);

ALTER TABLE users ADD COLUMN scim_external_id TEXT;
ALTER TABLE roles ADD COLUMN scim_external_id TEXT;
