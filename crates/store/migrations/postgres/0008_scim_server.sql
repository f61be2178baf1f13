-- Inbound SCIM: the clients (identity providers, HR systems) allowed to push users and groups,
-- each with its own bearer token (only its argon2id hash is kept), and the `externalId`
-- a client gave a user or a group (a role).

CREATE TABLE scim_clients (
    id           uuid PRIMARY KEY,
    name         text NOT NULL,
    lookup       text NOT NULL UNIQUE,   -- first 16 bytes of SHA-256(token), hex: finds the row
    hash         text NOT NULL,          -- argon2id PHC string: proves the token
    created_at   timestamptz NOT NULL,
    revoked_at   timestamptz
);

ALTER TABLE users ADD COLUMN scim_external_id text;
ALTER TABLE roles ADD COLUMN scim_external_id text;
