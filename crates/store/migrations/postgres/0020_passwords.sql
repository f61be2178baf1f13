-- Passwords are write-only secrets (issue 20).
--
-- A custom attribute named `password` (in any case) held passwords in clear text, returned by
-- the admin API and SCIM and written into the audit log. Its values leave every user, its
-- definition goes, and the audit log keeps "[redacted]" where a value was. From now on such a
-- name is refused, and SCIM `password` is kept only as an argon2id hash (user_passwords).
UPDATE users SET attributes = (
        SELECT COALESCE(jsonb_object_agg(e.key, e.value), '{}'::jsonb)
        FROM jsonb_each(users.attributes) AS e
        WHERE lower(e.key) <> 'password')
    WHERE jsonb_typeof(attributes) = 'object'
      AND EXISTS (SELECT 1 FROM jsonb_object_keys(
                      CASE WHEN jsonb_typeof(users.attributes) = 'object' THEN users.attributes ELSE '{}'::jsonb END) AS k
                  WHERE lower(k) = 'password');

DELETE FROM attribute_defs WHERE lower(name) = 'password';

UPDATE audit_log SET before = jsonb_set(before, '{attributes}', (
        SELECT jsonb_object_agg(e.key, CASE WHEN lower(e.key) = 'password' THEN '"[redacted]"'::jsonb ELSE e.value END)
        FROM jsonb_each(audit_log.before -> 'attributes') AS e))
    WHERE jsonb_typeof(before -> 'attributes') = 'object'
      AND EXISTS (SELECT 1 FROM jsonb_object_keys(
                      CASE WHEN jsonb_typeof(audit_log.before -> 'attributes') = 'object'
                           THEN audit_log.before -> 'attributes' ELSE '{}'::jsonb END) AS k
                  WHERE lower(k) = 'password');

UPDATE audit_log SET after = jsonb_set(after, '{attributes}', (
        SELECT jsonb_object_agg(e.key, CASE WHEN lower(e.key) = 'password' THEN '"[redacted]"'::jsonb ELSE e.value END)
        FROM jsonb_each(audit_log.after -> 'attributes') AS e))
    WHERE jsonb_typeof(after -> 'attributes') = 'object'
      AND EXISTS (SELECT 1 FROM jsonb_object_keys(
                      CASE WHEN jsonb_typeof(audit_log.after -> 'attributes') = 'object'
                           THEN audit_log.after -> 'attributes' ELSE '{}'::jsonb END) AS k
                  WHERE lower(k) = 'password');

-- A SCIM client may set the passwords of the users it may change, unless an admin turns it off.
ALTER TABLE scim_clients ADD COLUMN passwords boolean NOT NULL DEFAULT true;
