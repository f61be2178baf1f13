-- The operations of one (user, app) pair, finished ones included, newest last: what the account
-- record's status is derived from after each write. Without it PostgreSQL may intersect the
-- app's and the user's indexes, reading every operation of the app for each pair.
CREATE INDEX operations_user_app ON operations (user_id, app_id, seq);

-- The running operations of an app by lease end: how many an app has in flight (its
-- concurrency limit, across processes) and which leases have expired.
CREATE INDEX operations_running ON operations (app_id, lease_expires_at) WHERE state = 'running';

-- The queued operations of an app in queue order, for the claim. Keyed by `seq + 0`, which the
-- claim orders by: an order the primary key cannot give, so the claim walks this small index
-- instead of the primary key through every finished operation (a plan PostgreSQL picks when its
-- statistics still see a queue of new operations).
CREATE INDEX operations_queue ON operations (app_id, (seq + 0)) WHERE state = 'queued';
