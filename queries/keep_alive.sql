-- name: register_worker :one
-- Register (or take over) a worker under a fresh lease token. An existing
-- registration is taken over only when its lease is free, ours, or its
-- heartbeat is older than @orphan_threshold_secs; returns nothing otherwise,
-- or when another process is registering the same worker right now.
WITH serialized AS (
    SELECT pg_try_advisory_xact_lock(
               hashtext(@worker_id::text), hashtext(@queue::text)
           ) AS got
)
INSERT INTO apalis.workers AS w (
    id, worker_type, storage_name, layers, last_seen, started_at, lease_token
)
SELECT @worker_id::text, @queue::text, @storage_name, @layers, now(), now(),
       @lease_token
  FROM serialized
 WHERE serialized.got
ON CONFLICT (id, worker_type) DO UPDATE
   SET storage_name = EXCLUDED.storage_name,
       layers = EXCLUDED.layers,
       last_seen = EXCLUDED.last_seen,
       started_at = EXCLUDED.started_at,
       lease_token = EXCLUDED.lease_token
 WHERE w.lease_token IS NULL
    OR w.lease_token = EXCLUDED.lease_token
    OR w.last_seen < now() - make_interval(secs => @orphan_threshold_secs::float8)
RETURNING w.*;

-- name: heartbeat :execrows
-- Refresh a worker's last_seen. Zero rows: the lease is no longer ours.
UPDATE apalis.workers
   SET last_seen = now()
 WHERE id = @worker_id
   AND worker_type = @queue
   AND lease_token = @lease_token;

-- name: deregister_worker :execrows
-- Release a worker's lease so the id can be registered again at once. The row
-- stays: finished tasks still name it as their owner.
UPDATE apalis.workers
   SET lease_token = NULL
 WHERE id = @worker_id
   AND worker_type = @queue
   AND lease_token = @lease_token;
