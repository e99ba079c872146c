-- Orphan recovery: one rule for the three kinds (stale sweep, takeover,
-- release) and for a worker's reconciliation of its own claims.

-- name: lock_stale_workers :many
-- The stale sweep's first step: lock the queue's workers whose heartbeat is at
-- least @orphan_threshold_secs old and that own an active row (at most 1,000,
-- skipping workers another sweep holds).
-- not-null: id
SELECT w.id
  FROM apalis.workers AS w
 WHERE w.worker_type = @queue
   AND extract(epoch FROM clock_timestamp() - w.last_seen)
       OPERATOR(pg_catalog.>=) @orphan_threshold_secs::float8
   AND EXISTS (
        SELECT 1
          FROM apalis.jobs AS j
         WHERE j.job_type = w.worker_type
           AND j.lock_by = w.id
           AND j.status IN ('Running', 'Queued')
   )
 ORDER BY w.id
 LIMIT 1000
   FOR UPDATE SKIP LOCKED;

-- name: recover_tasks :many
-- Hand back the Running/Queued tasks of a queue owned by @workers, except the
-- ids in @keep. A charged row gets attempts = LEAST(attempts + 1, max_attempts)
-- and is Killed (done_at set) when that reaches max_attempts, else Pending;
-- Running rows are always charged, Queued ones only with @charge_queued. The
-- owner columns are cleared either way. last_result becomes @message when the
-- row is killed, or when it is charged and had none.
-- @skip_locked (the periodic sweep) skips rows locked elsewhere; otherwise the
-- statement waits for every claim (takeover, release). @row_limit caps the rows
-- (NULL: all of them).
-- nullable: row_limit
WITH skipping AS MATERIALIZED (
    SELECT j.id
      FROM apalis.jobs AS j
     WHERE @skip_locked::bool
       AND j.job_type = @queue
       AND j.lock_by = ANY(@workers::text[])
       AND j.status IN ('Running', 'Queued')
       AND NOT (j.id = ANY(@keep::text[]))
     ORDER BY j.id
     LIMIT @row_limit::int8
       FOR UPDATE SKIP LOCKED
), waiting AS MATERIALIZED (
    SELECT j.id
      FROM apalis.jobs AS j
     WHERE NOT @skip_locked::bool
       AND j.job_type = @queue
       AND j.lock_by = ANY(@workers::text[])
       AND j.status IN ('Running', 'Queued')
       AND NOT (j.id = ANY(@keep::text[]))
     ORDER BY j.id
     LIMIT @row_limit::int8
       FOR UPDATE
), candidates AS (
    SELECT id FROM skipping
    UNION ALL
    SELECT id FROM waiting
), decided AS (
    SELECT j.id,
           (j.status = 'Running' OR @charge_queued::bool) AS charged,
           (j.status = 'Running' OR @charge_queued::bool)
               AND j.attempts::bigint + 1 >= j.max_attempts AS killed
      FROM apalis.jobs AS j
      JOIN candidates ON candidates.id = j.id
)
UPDATE apalis.jobs AS j
   SET status = CASE WHEN d.killed THEN 'Killed' ELSE 'Pending' END,
       attempts = CASE
           WHEN d.charged THEN least(j.attempts::bigint + 1, j.max_attempts)::int4
           ELSE j.attempts
       END,
       done_at = CASE WHEN d.killed THEN clock_timestamp() END,
       lock_by = NULL,
       lock_at = NULL,
       last_result = CASE
           WHEN d.killed OR (d.charged AND j.last_result IS NULL)
               THEN pg_catalog.jsonb_build_object('Err', @message::text)
           ELSE j.last_result
       END
  FROM decided AS d
 WHERE j.id = d.id
   AND j.status IN ('Running', 'Queued')
RETURNING j.id, j.status, j.attempts;
