-- name: push_tasks :one
-- Insert a batch of Pending tasks in one statement. Rows whose (queue,
-- idempotency key) already exists are skipped; the result counts the rows
-- inserted and lists their keys, so the caller can name the keys that collided.
-- nullable: idempotency_keys[]
-- not-null: inserted
WITH inserted AS (
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
           ) AS t(job, id, max_attempts, run_at, priority, metadata, idempotency_key)
    ON CONFLICT (job_type, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING idempotency_key
)
SELECT count(*)::int4 AS inserted,
       array_agg(idempotency_key) FILTER (WHERE idempotency_key IS NOT NULL) AS inserted_keys
  FROM inserted;

-- name: push_task :execrows
-- Insert one Pending task: a batch of one, without push_tasks' arrays and
-- count. Returns 1, or 0 when its (queue, idempotency key) exists.
-- nullable: idempotency_key
-- prepare: server
INSERT INTO apalis.jobs (
    job, id, job_type, status, attempts, max_attempts, run_at, priority, metadata,
    idempotency_key
)
VALUES (
    @job, @id, @queue, 'Pending', 0, @max_attempts, @run_at, @priority,
    @metadata::text::jsonb, @idempotency_key
)
ON CONFLICT (job_type, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING;

-- name: push_task_unkeyed :execrows
-- Insert one Pending task without an idempotency key: push_task without the
-- ON CONFLICT clause (and its speculative insertion), which a NULL key never
-- meets. Returns 1.
-- prepare: server
INSERT INTO apalis.jobs (
    job, id, job_type, status, attempts, max_attempts, run_at, priority, metadata
)
VALUES (
    @job, @id, @queue, 'Pending', 0, @max_attempts, @run_at, @priority,
    @metadata::text::jsonb
);

-- name: push_tasks_unkeyed :execrows
-- Insert a batch of Pending tasks none of which has an idempotency key: no row
-- can be skipped, so no ON CONFLICT and no RETURNING; the row count is the answer.
INSERT INTO apalis.jobs (
    job, id, job_type, status, attempts, max_attempts, run_at, priority, metadata
)
SELECT t.job, t.id, @queue, 'Pending', 0, t.max_attempts, t.run_at, t.priority,
       t.metadata::jsonb
  FROM unnest(
           @jobs::bytea[],
           @ids::text[],
           @max_attempts::int4[],
           @run_ats::timestamptz[],
           @priorities::int4[],
           @metadata::text[]
       ) AS t(job, id, max_attempts, run_at, priority, metadata);

-- name: push_tasks_uniform :execrows
-- Insert a batch of Pending tasks with no idempotency key that share their
-- run_at, priority, max_attempts and metadata (push_many of plain arguments,
-- the usual case): only payloads and ids travel as arrays, the rest once.
INSERT INTO apalis.jobs (
    job, id, job_type, status, attempts, max_attempts, run_at, priority, metadata
)
SELECT t.job, t.id, @queue, 'Pending', 0, @max_attempts::int4, @run_at::timestamptz,
       @priority::int4, @metadata::text::jsonb
  FROM unnest(@jobs::bytea[], @ids::text[]) AS t(job, id);
