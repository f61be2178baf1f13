-- Holds on the change feed (issue 21). A SCIM Bulk request holds the planner back at the end of
-- the feed while it writes, and releases the hold when it is done: the engine then plans the
-- whole request in one pass (one deprovisioning guard for all of its suspensions and
-- deletions). `after_seq` is the feed's last row when the hold began; `end_seq` its last row
-- when released. A hold not released by `expires_at` (a crash) is ignored.
CREATE TABLE change_holds (
    id         uuid PRIMARY KEY,
    after_seq  bigint NOT NULL,
    end_seq    bigint,
    opened_at  timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    closed_at  timestamptz
);
