-- Blast radius: causes, forward-only settings, sticky rejections, the deprovisioning guard.

-- The audit entry of the write that made a change (0: none; NULL until the write's audit
-- entry is recorded, in the same transaction).
ALTER TABLE changes ADD COLUMN audit_id bigint;
UPDATE changes SET audit_id = 0;
CREATE INDEX changes_unattributed ON changes (seq) WHERE audit_id IS NULL;

-- Why an operation exists (JSON: kind, actor, audit_id, summary, rule, parameter, role_id).
ALTER TABLE operations ADD COLUMN cause jsonb;
-- The guard counts an app's recent suspensions and deletions.
CREATE INDEX operations_deprovisions ON operations (app_id, created_at) WHERE action IN ('suspend', 'delete');

-- How the user left and what the settings said then ('suspended:suspend', 'left:none', ...).
ALTER TABLE accounts ADD COLUMN departure text;
-- The operation an admin rejected last (JSON: action, desired).
ALTER TABLE accounts ADD COLUMN rejected jsonb;
