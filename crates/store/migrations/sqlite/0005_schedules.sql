-- Periodic jobs (e.g. "reconcile:<app id>"): when each last ran, so that it runs once per
-- period.
CREATE TABLE schedules (
    name      TEXT PRIMARY KEY,
    last_run  TEXT NOT NULL
);
