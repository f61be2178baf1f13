-- Admin console: admin accounts (argon2id password hashes) and their sign-in sessions.
-- A session is found by the SHA-256 of its random id: the id itself is never stored.

CREATE TABLE admins (
    id            uuid PRIMARY KEY,
    username      text NOT NULL,
    username_key  text NOT NULL,          -- lower-cased username
    hash          text NOT NULL,          -- argon2id PHC string
    created_at    timestamptz NOT NULL,
    CONSTRAINT admins_username_key UNIQUE (username_key)
);

CREATE TABLE admin_sessions (
    id_hash       text PRIMARY KEY,       -- hex SHA-256 of the session id sent in the cookie
    admin_id      uuid NOT NULL REFERENCES admins(id) ON DELETE CASCADE,
    csrf_token    text NOT NULL,
    created_at    timestamptz NOT NULL,
    last_seen_at  timestamptz NOT NULL
);
CREATE INDEX admin_sessions_last_seen ON admin_sessions (last_seen_at);
