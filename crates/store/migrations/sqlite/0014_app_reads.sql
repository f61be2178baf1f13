-- How the latest reconcile and Refresh of each app read it: the strategy that gave
-- consistent pages, the contradictions found, the duplicate group members seen (a JSON
-- document per app and kind: 'reconcile' or 'refresh').
CREATE TABLE app_reads (
    app_id       TEXT NOT NULL,
    kind         TEXT NOT NULL CHECK (kind IN ('reconcile','refresh')),
    result       TEXT NOT NULL,
    recorded_at  TEXT NOT NULL,
    PRIMARY KEY (app_id, kind)
);
