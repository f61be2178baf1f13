-- The operations of one (user, app) pair, finished ones included, newest last: what the account
-- record's status is derived from after each write. Without it PostgreSQL may intersect the
-- app's and the user's indexes, reading every operation of the app for each pair.
CREATE INDEX operations_user_app ON operations (user_id, app_id, seq);

-- The running operations of an app by lease end: how many an app has in flight (its
-- concurrency limit, across processes) and which leases have expired.
CREATE INDEX operations_running ON operations (app_id, lease_expires_at) WHERE state = 'running';
