-- name: cancel_task :one
-- An operator cancels a task that has not finished: it becomes Killed with
-- {"Err": "cancelled by operator"} (attempts unchanged; lock_by and lock_at stay
-- as history), so the worker running it gets a stale acknowledgement. When a
-- worker held it (Queued or Running), a NOTIFY on apalis_client::cancel tells
-- that worker at commit; payload:
-- {"id": "...", "job_type": "...", "worker_id": "<lock_by>", "attempts": N}.
-- Returns nothing for an unknown or already finished task.
-- not-null: previous_status, notified
WITH target AS (
    SELECT t.id, t.status AS previous_status
      FROM apalis.jobs AS t
     WHERE t.id = @id
       AND (
            t.status IN ('Pending', 'Queued', 'Running')
            OR (t.status = 'Failed' AND t.attempts < t.max_attempts)
       )
       FOR UPDATE
), killed AS (
    UPDATE apalis.jobs AS j
       SET status = 'Killed',
           done_at = clock_timestamp(),
           last_result = pg_catalog.jsonb_build_object('Err', 'cancelled by operator'::text)
      FROM target
     WHERE j.id = target.id
    RETURNING j.id, j.job_type, j.lock_by, j.attempts, target.previous_status
), notified AS (
    SELECT pg_catalog.pg_notify(
               'apalis_client::cancel',
               pg_catalog.json_build_object(
                   'id', k.id,
                   'job_type', k.job_type,
                   'worker_id', k.lock_by,
                   'attempts', k.attempts
               )::text
           )
      FROM killed AS k
     WHERE k.previous_status IN ('Queued', 'Running')
       AND k.lock_by IS NOT NULL
)
SELECT k.id, k.job_type, k.lock_by, k.attempts, k.previous_status,
       (SELECT pg_catalog.count(*) FROM notified) > 0 AS notified
  FROM killed AS k;

-- name: lost_claims :many
-- The polling fallback of cancellation: among the tasks a worker is running
-- (@ids with the attempts each was claimed at), those it no longer holds:
-- cancelled or killed by an operator, re-enqueued, taken over or deleted.
-- Returns each with the row's current status and last_result (NULL when the
-- row is gone).
-- nullable-column: status, last_result
-- not-null: id
SELECT h.id, j.status, j.last_result
  FROM ROWS FROM (pg_catalog.unnest(@ids::text[]), pg_catalog.unnest(@attempts::int4[]))
       AS h(id, attempts)
  LEFT JOIN apalis.jobs AS j ON j.id = h.id
 WHERE j.id IS NULL
    OR j.job_type <> @queue
    OR j.status NOT IN ('Queued', 'Running')
    OR j.lock_by IS DISTINCT FROM @worker_id
    OR j.attempts <> h.attempts;

-- name: notify_probe :exec
-- A probe on our cancel channel (payload not JSON, so no worker acts on it): a
-- worker sends it after LISTEN to see whether notifications reach it at all.
SELECT pg_catalog.pg_notify(@channel::text, @payload::text);
