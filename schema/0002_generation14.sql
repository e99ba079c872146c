-- apalis-client migration 0002: upgrade to the generation-14 row invariants.
-- Rows a generation-10 deployment may hold that the new constraints reject are
-- repaired first, the way the contract prescribes; nothing is deleted.

-- A Queued/Running row without a complete owner lost its claim: it consumes
-- one attempt and goes back to Pending, or ends Killed at the limit.
UPDATE apalis.jobs
   SET attempts    = LEAST(attempts + 1, max_attempts),
       status      = CASE WHEN attempts + 1 >= max_attempts THEN 'Killed' ELSE 'Pending' END,
       lock_by     = NULL,
       lock_at     = NULL,
       done_at     = CASE WHEN attempts + 1 >= max_attempts THEN clock_timestamp() END,
       last_result = CASE
           WHEN attempts + 1 >= max_attempts OR last_result IS NULL
               THEN '{"Err": "Claim lost before the generation-14 upgrade (no owner recorded)."}'::jsonb
           ELSE last_result
       END
 WHERE status IN ('Queued', 'Running')
   AND (lock_by IS NULL OR lock_at IS NULL);

-- A Pending row keeps no trace of an earlier owner.
UPDATE apalis.jobs
   SET lock_by = NULL, lock_at = NULL
 WHERE status = 'Pending'
   AND (lock_by IS NOT NULL OR lock_at IS NOT NULL);

-- The two constraints themselves are added by the repeatable files
-- (repeatable/40_constraint_*.sql), which migrate runs only when a constraint is
-- absent or different: re-adding one that is already right would scan the
-- whole table under an exclusive lock on every upgrade.

CREATE MATERIALIZED VIEW IF NOT EXISTS apalis.queue_stats_snapshot AS
SELECT job_type,
       count(*)::bigint                                                 AS total_jobs,
       count(*) FILTER (WHERE status = 'Running')::bigint               AS running_jobs,
       count(*) FILTER (WHERE status = 'Pending')::bigint               AS pending_jobs,
       count(*) FILTER (WHERE status = 'Queued')::bigint                AS queued_jobs,
       count(*) FILTER (WHERE status = 'Failed')::bigint                AS failed_jobs,
       count(*) FILTER (WHERE status = 'Done')::bigint                  AS done_jobs,
       count(*) FILTER (WHERE status = 'Killed')::bigint                AS killed_jobs,
       count(*) FILTER (WHERE status IN ('Pending', 'Queued', 'Running'))::bigint AS active_jobs,
       count(*) FILTER (WHERE run_at >= now() - interval '1 hour')::bigint  AS jobs_past_hour,
       count(*) FILTER (WHERE run_at >= now() - interval '1 day')::bigint   AS jobs_past_day,
       count(*) FILTER (WHERE run_at >= now() - interval '7 days')::bigint  AS jobs_past_7_days,
       max(run_at)                                                      AS most_recent_run_at,
       max(done_at)                                                     AS most_recent_done_at,
       now()                                                            AS snapshot_at
  FROM apalis.jobs
 GROUP BY job_type
WITH NO DATA;

CREATE UNIQUE INDEX IF NOT EXISTS queue_stats_snapshot_job_type_idx
    ON apalis.queue_stats_snapshot (job_type);
