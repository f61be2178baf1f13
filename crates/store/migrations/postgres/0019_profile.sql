-- The rest of a person as SCIM keeps it (RFC 7643 sections 4.1 and 4.3): middle name,
-- nickname, locale, every e-mail address, phone number and postal address, ... as one JSON
-- document (directory::Profile). `email` and `phone` stay as the values standing for their
-- lists. Rows stored before this migration get their profile when the store opens (NULL until
-- then), from `email`, `phone` and any custom attribute named like a profile attribute.
ALTER TABLE users ADD COLUMN profile jsonb;
