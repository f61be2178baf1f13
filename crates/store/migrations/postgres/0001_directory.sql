-- The directory: people, roles, apps, custom attribute definitions, API tokens, the audit
-- log and the change feed. Keys compared for order (`*_key`) use the "C" collation, so
-- listings sort byte-wise whatever the database's locale (as SQLite does).

CREATE TABLE api_tokens (
    id           uuid PRIMARY KEY,
    name         text NOT NULL,
    lookup       text NOT NULL UNIQUE,   -- first 16 bytes of SHA-256(token), hex: finds the row
    hash         text NOT NULL,          -- argon2id PHC string: proves the token
    created_at   timestamptz NOT NULL,
    revoked_at   timestamptz
);

CREATE TABLE attribute_defs (
    name         text COLLATE "C" PRIMARY KEY,
    kind         text NOT NULL CHECK (kind IN ('string','number','boolean','date','string_list')),
    description  text,
    created_at   timestamptz NOT NULL
);

CREATE TABLE users (
    id               uuid PRIMARY KEY,
    username         text NOT NULL,
    username_key     text COLLATE "C" NOT NULL,      -- lower-cased username
    email            text,
    first_name       text,
    last_name        text,
    display_name     text,
    title            text,
    department       text,
    manager_id       uuid REFERENCES users(id) ON DELETE SET NULL,
    phone            text,
    employee_number  text,
    attributes       jsonb NOT NULL DEFAULT '{}',
    status           text NOT NULL CHECK (status IN ('active','suspended','deleted')),
    source           text NOT NULL CHECK (source IN ('local','ldap','scim')),
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL,
    version          bigint NOT NULL
);
-- A deleted user's username may be reused.
CREATE UNIQUE INDEX users_username_key ON users (username_key) WHERE status <> 'deleted';
CREATE INDEX users_list ON users (username_key, id);
CREATE INDEX users_manager ON users (manager_id);

CREATE TABLE roles (
    id           uuid PRIMARY KEY,
    name         text NOT NULL,
    name_key     text COLLATE "C" NOT NULL,
    description  text,
    created_at   timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL,
    version      bigint NOT NULL,
    CONSTRAINT roles_name_key UNIQUE (name_key)
);

CREATE TABLE role_users (
    role_id     uuid NOT NULL REFERENCES roles(id) ON DELETE CASCADE,
    user_id     uuid NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL,
    PRIMARY KEY (role_id, user_id)
);
CREATE INDEX role_users_user ON role_users (user_id);

CREATE TABLE apps (
    id            uuid PRIMARY KEY,
    name          text NOT NULL,
    name_key      text COLLATE "C" NOT NULL,
    description   text,
    connector     text NOT NULL,
    connection    jsonb NOT NULL,        -- no secrets
    credential    text NOT NULL,         -- AEAD ciphertext of the secret, with its key id
    provisioning  jsonb NOT NULL,
    created_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL,
    version       bigint NOT NULL,
    CONSTRAINT apps_name_key UNIQUE (name_key)
);

CREATE TABLE role_apps (
    role_id     uuid NOT NULL REFERENCES roles(id) ON DELETE CASCADE,
    app_id      uuid NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL,
    PRIMARY KEY (role_id, app_id)
);
CREATE INDEX role_apps_app ON role_apps (app_id);

CREATE TABLE audit_log (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at           timestamptz NOT NULL,
    actor_kind   text NOT NULL,
    actor_name   text NOT NULL,
    action       text NOT NULL,
    target_type  text NOT NULL,
    target_id    text NOT NULL,
    before       jsonb,
    after        jsonb
);
CREATE INDEX audit_target ON audit_log (target_type, target_id);
CREATE INDEX audit_actor ON audit_log (actor_name, id);

-- The change feed: one row per directory write, in the write's own transaction. Rows are
-- inserted at the end of their transaction under a transaction-scoped advisory lock, so
-- `seq` order is commit order (see `postgres::Tx::commit`).
CREATE TABLE changes (
    seq      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at       timestamptz NOT NULL,
    kind     text NOT NULL,
    user_id  uuid,
    role_id  uuid,
    app_id   uuid
);
