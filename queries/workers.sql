-- name: list_workers :many
-- Worker rows, of one queue or all, with their heartbeat age (server clock)
-- and how many Queued/Running tasks each holds. The lease token is not shown:
-- holding it is what lets a process act as the worker.
-- nullable: queue
-- not-null: id, worker_type, storage_name, layers, last_seen, registered
-- not-null: seen_secs_ago, active_tasks
SELECT w.id,
       w.worker_type,
       w.storage_name,
       w.layers,
       w.last_seen,
       w.started_at,
       w.lease_token IS NOT NULL AS registered,
       extract(epoch FROM clock_timestamp() - w.last_seen)::float8 AS seen_secs_ago,
       (SELECT count(*)
          FROM apalis.jobs AS j
         WHERE j.lock_by = w.id
           AND j.job_type = w.worker_type
           AND j.status IN ('Queued', 'Running')) AS active_tasks
  FROM apalis.workers AS w
 WHERE @queue::text IS NULL OR w.worker_type = @queue::text
 ORDER BY w.worker_type, w.last_seen DESC, w.id;

-- name: prune_workers_batch :execrows
-- Delete up to @batch worker rows of a queue last seen before @cutoff that no
-- task names as lock_by. "No task names it" is checked again by the DELETE
-- itself, so a worker that claims meanwhile is kept; rows held by a claim or a
-- heartbeat are skipped.
WITH doomed AS (
    SELECT w.id, w.worker_type
      FROM apalis.workers AS w
     WHERE w.worker_type = @queue
       AND w.last_seen < @cutoff::timestamptz
       AND NOT EXISTS (
           SELECT 1 FROM apalis.jobs AS j
            WHERE j.job_type = w.worker_type AND j.lock_by = w.id
       )
     ORDER BY w.id
     LIMIT @batch
       FOR UPDATE SKIP LOCKED
)
DELETE FROM apalis.workers AS w
 USING doomed
 WHERE w.id = doomed.id
   AND w.worker_type = doomed.worker_type
   AND NOT EXISTS (
       SELECT 1 FROM apalis.jobs AS j
        WHERE j.job_type = w.worker_type AND j.lock_by = w.id
   );
