-- Admin console: admin accounts (argon2id password hashes) and their sign-in sessions.
-- A session is found by the SHA-256 of its random id: the id itself is never stored.

CREATE TABLE admins (
    id            TEXT PRIMARY KEY,
    username      TEXT NOT NULL,
    username_key  TEXT NOT NULL UNIQUE,   -- lower-cased username
    hash          TEXT NOT NULL,          -- argon2id PHC string
    created_at    TEXT NOT NULL
);

CREATE TABLE admin_sessions (
    id_hash       TEXT PRIMARY KEY,       -- hex SHA-256 of the session id sent in the cookie
    admin_id      TEXT NOT NULL REFERENCES admins(id) ON DELETE CASCADE,
    csrf_token    TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    last_seen_at  TEXT NOT NULL
);
CREATE INDEX admin_sessions_last_seen ON admin_sessions (last_seen_at);
