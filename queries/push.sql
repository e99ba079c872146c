-- name: push_task :execrows
-- Insert one Pending task. Returns 1, or 0 when its id or its (queue, idempotency key) is
-- already taken: ON CONFLICT DO NOTHING with no conflict target skips a row that collides
-- on any unique index instead of raising, so the caller's transaction stays usable without
-- a savepoint. find_conflicts then says which of the two it was.
-- nullable: idempotency_key
INSERT INTO apalis.jobs (
    job, id, job_type, status, attempts, max_attempts, run_at, priority, metadata,
    idempotency_key
)
VALUES (
    @job, @id, @queue, 'Pending', 0, @max_attempts, @run_at, @priority,
    @metadata::text::jsonb, @idempotency_key
)
ON CONFLICT DO NOTHING;

-- name: push_args :execrows
-- push_task for the common single push: a fresh id, a Rust producer's defaults (max_attempts
-- 5, priority 0, metadata {}, no key) written as constants, so only the payload, id, queue
-- and run_at travel. Returns 1, or 0 if the id is taken (ON CONFLICT DO NOTHING, as
-- push_task: the caller's transaction stays usable).
INSERT INTO apalis.jobs (
    job, id, job_type, status, attempts, max_attempts, run_at, priority, metadata
)
VALUES (@job, @id, @queue, 'Pending', 0, 5, @run_at, 0, '{}'::jsonb)
ON CONFLICT DO NOTHING;

-- name: push_tasks :execrows
-- Insert a batch of Pending tasks in one statement, each with its own columns: all or
-- nothing. No ON CONFLICT: a row colliding on its id or its queue's idempotency key raises
-- unique_violation and the statement writes nothing; find_conflicts then names every
-- collision. Returns the number of rows (all of them).
-- nullable: idempotency_keys[]
INSERT INTO apalis.jobs (
    job, id, job_type, status, attempts, max_attempts, run_at, priority, metadata,
    idempotency_key
)
SELECT t.job, t.id, @queue, 'Pending', 0, t.max_attempts, t.run_at, t.priority,
       t.metadata::jsonb, t.idempotency_key
  FROM unnest(
           @jobs::bytea[],
           @ids::text[],
           @max_attempts::int4[],
           @run_ats::timestamptz[],
           @priorities::int4[],
           @metadata::text[],
           @idempotency_keys::text[]
       ) AS t(job, id, max_attempts, run_at, priority, metadata, idempotency_key);

-- name: push_tasks_uniform :execrows
-- push_tasks for a batch whose tasks share run_at, priority, max_attempts and metadata (a
-- push_many of plain arguments, the usual case): only payloads, ids and keys travel as
-- arrays, the rest once.
-- nullable: idempotency_keys[]
INSERT INTO apalis.jobs (
    job, id, job_type, status, attempts, max_attempts, run_at, priority, metadata,
    idempotency_key
)
SELECT t.job, t.id, @queue, 'Pending', 0, @max_attempts::int4, @run_at::timestamptz,
       @priority::int4, @metadata::text::jsonb, t.idempotency_key
  FROM unnest(@jobs::bytea[], @ids::text[], @idempotency_keys::text[])
       AS t(job, id, idempotency_key);

-- name: find_conflicts :many
-- After a push collided: the tasks holding one of its @ids, or one of its @keys on @queue
-- (held_key: that key, else NULL). The push itself wrote nothing by then.
SELECT id,
       CASE WHEN job_type = @queue AND idempotency_key = ANY(@keys::text[])
            THEN idempotency_key END AS held_key
  FROM apalis.jobs
 WHERE id = ANY(@ids::text[])
    OR (job_type = @queue AND idempotency_key = ANY(@keys::text[]));
