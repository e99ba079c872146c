-- jobs_active_owner_check (generation 14): a Queued or Running row has an owner.
-- Run only when the constraint is absent or differs (NOT VALID, another body).
ALTER TABLE apalis.jobs DROP CONSTRAINT IF EXISTS jobs_active_owner_check;
ALTER TABLE apalis.jobs ADD CONSTRAINT jobs_active_owner_check
    CHECK (status NOT IN ('Queued', 'Running') OR lock_by IS NOT NULL);
