-- jobs_state_shape_check (generation 14): a Pending row has no owner columns, a
-- Queued or Running row has both. Run only when absent or different.
ALTER TABLE apalis.jobs DROP CONSTRAINT IF EXISTS jobs_state_shape_check;
ALTER TABLE apalis.jobs ADD CONSTRAINT jobs_state_shape_check
    CHECK (
        (status <> 'Pending' OR (lock_by IS NULL AND lock_at IS NULL))
        AND (status NOT IN ('Queued', 'Running') OR (lock_by IS NOT NULL AND lock_at IS NOT NULL))
    );
