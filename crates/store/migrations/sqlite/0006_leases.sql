-- A schedule row can also be a lease held by one process (e.g. the planner's leadership).
ALTER TABLE schedules ADD COLUMN owner TEXT;
