-- How the latest reconcile and Refresh of each app read it: the strategy that gave
-- consistent pages, the contradictions found, the duplicate group members seen (a JSON
-- document per app and kind: 'reconcile' or 'refresh').
CREATE TABLE app_reads (
    app_id       uuid NOT NULL,
    kind         text NOT NULL CHECK (kind IN ('reconcile','refresh')),
    result       jsonb NOT NULL,
    recorded_at  timestamptz NOT NULL,
    PRIMARY KEY (app_id, kind)
);
