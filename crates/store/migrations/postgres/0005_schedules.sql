-- Periodic jobs shared by every engine process: when each last ran.
CREATE TABLE schedules (
    name      text PRIMARY KEY,
    last_run  timestamptz NOT NULL
);
