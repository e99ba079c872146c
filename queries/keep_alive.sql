-- Registration, heartbeat and release of a worker, as the Rust crate 0.6 runs
-- them. Register is two transactions: a stale sweep (reenqueue.sql) first,
-- then try_register_lock, lock_registration, (takeover recovery,) upsert_worker.

-- name: try_register_lock :one
-- Serialize registrations of one (id, queue); false: another session is
-- registering the same worker right now.
-- not-null: got
SELECT pg_try_advisory_xact_lock(hashtext(@worker_id::text), hashtext(@queue::text)) AS got;

-- name: lock_registration :one
-- Lock an existing registration FOR UPDATE and decide on it with the clock read
-- after the lock wait: allowed when its lease is ours or its heartbeat is at
-- least @orphan_threshold_secs old (a fresh row is never taken over, with
-- another token or with none); taken_over when it belonged to someone else, so
-- its claims must be recovered first. No row: nothing registered yet.
-- not-null: allowed, taken_over
WITH locked AS MATERIALIZED (
    SELECT w.lease_token, w.last_seen
      FROM apalis.workers AS w
     WHERE w.id = @worker_id AND w.worker_type = @queue
       FOR UPDATE
), sampled AS MATERIALIZED (
    SELECT locked.lease_token, locked.last_seen, clock_timestamp() AS observed_at
      FROM locked
)
SELECT (sampled.lease_token IS NOT DISTINCT FROM @lease_token::text
        OR extract(epoch FROM sampled.observed_at - sampled.last_seen)
           OPERATOR(pg_catalog.>=) @orphan_threshold_secs::float8) AS allowed,
       (sampled.lease_token IS DISTINCT FROM @lease_token::text
        OR extract(epoch FROM sampled.observed_at - sampled.last_seen)
           OPERATOR(pg_catalog.>=) @orphan_threshold_secs::float8) AS taken_over
  FROM sampled;

-- name: upsert_worker :one
-- Write the registration under a fresh lease token: started_at is set on
-- insert and kept on takeover.
INSERT INTO apalis.workers AS w (
    id, worker_type, storage_name, layers, last_seen, started_at, lease_token
)
VALUES (@worker_id::text, @queue::text, @storage_name, @layers, clock_timestamp(),
        clock_timestamp(), @lease_token)
ON CONFLICT (id, worker_type) DO UPDATE
   SET storage_name = EXCLUDED.storage_name,
       layers = EXCLUDED.layers,
       last_seen = clock_timestamp(),
       lease_token = EXCLUDED.lease_token
RETURNING w.*;

-- name: register_untokened :one
-- A registration without a lease token (an admin tool or a legacy get_jobs
-- client): waits for the registration lock, and on conflict refreshes only a
-- row whose token is NULL; a row holding a token is left alone (no row
-- returned).
WITH serialized AS MATERIALIZED (
    SELECT pg_advisory_xact_lock(hashtext(@worker_id::text), hashtext(@queue::text))
)
INSERT INTO apalis.workers AS w (
    id, worker_type, storage_name, layers, last_seen, started_at, lease_token
)
SELECT @worker_id::text, @queue::text, @storage_name, @layers, clock_timestamp(),
       clock_timestamp(), NULL
  FROM serialized
ON CONFLICT (id, worker_type) DO UPDATE
   SET storage_name = EXCLUDED.storage_name,
       layers = EXCLUDED.layers,
       last_seen = clock_timestamp()
 WHERE w.lease_token IS NULL
RETURNING w.*;

-- name: heartbeat :execrows
-- Refresh a worker's last_seen. Zero rows: the lease is no longer ours.
UPDATE apalis.workers
   SET last_seen = clock_timestamp()
 WHERE id = @worker_id
   AND worker_type = @queue
   AND lease_token = @lease_token;

-- name: lock_own_worker :one
-- Lock our own registration FOR UPDATE (release and reconciliation); no row:
-- the lease is no longer ours.
-- not-null: id
SELECT w.id
  FROM apalis.workers AS w
 WHERE w.id = @worker_id
   AND w.worker_type = @queue
   AND w.lease_token = @lease_token
   FOR UPDATE;

-- name: clear_registration :execrows
-- The last step of a release: no lease, last_seen at the epoch, so a successor
-- of the same id registers at once. The row stays: finished tasks name it.
UPDATE apalis.workers
   SET lease_token = NULL,
       last_seen = pg_catalog.to_timestamp(0)
 WHERE id = @worker_id
   AND worker_type = @queue
   AND lease_token = @lease_token;
