-- The dispatcher's "which apps have due work": the queued operations of an app by due time.
CREATE INDEX operations_due ON operations (app_id, next_run_at) WHERE state = 'queued';
