-- Passwords are write-only secrets (issue 20).
--
-- A custom attribute named `password` (in any case) held passwords in clear text, returned by
-- the admin API and SCIM and written into the audit log. Its values leave every user, its
-- definition goes, and the audit log keeps "[redacted]" where a value was. From now on such a
-- name is refused, and SCIM `password` is kept only as an argon2id hash (user_passwords).
UPDATE users SET attributes = COALESCE((
        SELECT json_group_object(e.key, json(users.attributes -> e.fullkey))
        FROM json_each(users.attributes) AS e
        WHERE lower(e.key) <> 'password'), '{}')
    WHERE EXISTS (SELECT 1 FROM json_each(users.attributes) AS e WHERE lower(e.key) = 'password');

DELETE FROM attribute_defs WHERE lower(name) = 'password';

UPDATE audit_log SET before = json_set(before, '$.attributes', json((
        SELECT json_group_object(e.key, json(CASE WHEN lower(e.key) = 'password' THEN '"[redacted]"'
                                                  ELSE audit_log.before -> e.fullkey END))
        FROM json_each(audit_log.before, '$.attributes') AS e)))
    WHERE json_type(before, '$.attributes') = 'object'
      AND EXISTS (SELECT 1 FROM json_each(audit_log.before, '$.attributes') AS e WHERE lower(e.key) = 'password');

UPDATE audit_log SET after = json_set(after, '$.attributes', json((
        SELECT json_group_object(e.key, json(CASE WHEN lower(e.key) = 'password' THEN '"[redacted]"'
                                                  ELSE audit_log.after -> e.fullkey END))
        FROM json_each(audit_log.after, '$.attributes') AS e)))
    WHERE json_type(after, '$.attributes') = 'object'
      AND EXISTS (SELECT 1 FROM json_each(audit_log.after, '$.attributes') AS e WHERE lower(e.key) = 'password');

-- A SCIM client may set the passwords of the users it may change, unless an admin turns it off.
ALTER TABLE scim_clients ADD COLUMN passwords INTEGER NOT NULL DEFAULT 1;
