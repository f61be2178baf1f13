-- Scoped SCIM clients, pushable roles, and API tokens listed with when they were last used.
--
-- A SCIM client manages the users it created (`own`), those of one directory source
-- (`source`, with `users_source_id`) or all of them, and pushes members into the roles it
-- created (`own`), those marked pushable, or all of them; a read-only client writes nothing.
-- The clients that exist at this upgrade keep `all` and are flagged (`legacy_scope`) until an
-- admin sets their scope.
ALTER TABLE scim_clients ADD COLUMN users_scope text NOT NULL DEFAULT 'all' CHECK (users_scope IN ('own','source','all'));
ALTER TABLE scim_clients ADD COLUMN users_source_id uuid;
ALTER TABLE scim_clients ADD COLUMN roles_scope text NOT NULL DEFAULT 'all' CHECK (roles_scope IN ('own','pushable','all'));
ALTER TABLE scim_clients ADD COLUMN read_only boolean NOT NULL DEFAULT false;
ALTER TABLE scim_clients ADD COLUMN legacy_scope boolean NOT NULL DEFAULT true;

-- The SCIM client that created a user or a role.
ALTER TABLE users ADD COLUMN scim_client_id uuid;
ALTER TABLE roles ADD COLUMN scim_client_id uuid;
CREATE INDEX users_scim_client ON users (scim_client_id) WHERE scim_client_id IS NOT NULL;
-- Roles any SCIM client with roles scope `pushable` may push members into.
ALTER TABLE roles ADD COLUMN pushable boolean NOT NULL DEFAULT false;

-- `lookup` of a token made from now on is an HMAC-SHA256 keyed by the server's secret key;
-- older rows keep their SHA-256 lookup until the token is next used.
ALTER TABLE api_tokens ADD COLUMN last_used_at timestamptz;
