-- name: reenqueue_orphans :many
-- Give back the Running/Queued tasks of a queue whose owner has not sent a
-- heartbeat for @orphan_threshold_secs: each consumes one attempt and becomes
-- Pending, or Killed once attempts run out.
WITH orphans AS (
    SELECT j.id
      FROM apalis.jobs AS j
      JOIN apalis.workers AS w
        ON w.id = j.lock_by AND w.worker_type = j.job_type
     WHERE j.job_type = @queue
       AND j.status IN ('Running', 'Queued')
       AND w.last_seen < now() - make_interval(secs => @orphan_threshold_secs::float8)
       FOR UPDATE OF j SKIP LOCKED
)
UPDATE apalis.jobs AS j
   SET attempts = LEAST(j.attempts + 1, j.max_attempts),
       status = CASE WHEN j.attempts + 1 >= j.max_attempts THEN 'Killed' ELSE 'Pending' END,
       lock_by = CASE WHEN j.attempts + 1 >= j.max_attempts THEN j.lock_by END,
       lock_at = CASE WHEN j.attempts + 1 >= j.max_attempts THEN j.lock_at END,
       done_at = CASE WHEN j.attempts + 1 >= j.max_attempts THEN now() END,
       last_result = CASE
           WHEN j.attempts + 1 >= j.max_attempts OR j.last_result IS NULL
               THEN '{"Err": "Re-enqueued due to worker heartbeat timeout."}'::jsonb
           ELSE j.last_result
       END
  FROM orphans
 WHERE j.id = orphans.id
RETURNING j.id, j.status, j.attempts;
