-- One person, one NameID: the primary e-mail address is unique among users that are not
-- deleted, compared by its key (trimmed, Unicode NFKC, lower-cased). The key is computed by
-- the service (SQL has no NFKC): rows stored before this migration get it when the store
-- opens. No unique index: addresses shared before the upgrade stay (they are listed by
-- `GET /api/v1/users/email-conflicts`); every write that gives a user a new address checks it.
ALTER TABLE users ADD COLUMN email_key TEXT;
CREATE INDEX users_email_key ON users (email_key) WHERE status <> 'deleted';
