-- The worker's claim and the dispatcher's "which apps have due work": the open operations of
-- an app in queue order, without walking the finished ones (which pile up at the front).
CREATE INDEX operations_claim ON operations (app_id, state, seq);
