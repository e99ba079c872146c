-- Producer: pushes tasks, with and without idempotency keys. {role} is the role.
GRANT USAGE ON SCHEMA apalis TO {role};
GRANT INSERT ON apalis.jobs TO {role};
-- A keyed push names (job_type, idempotency_key) in ON CONFLICT and returns the keys it
-- inserted, so PostgreSQL requires SELECT on those two columns; no other column is readable.
GRANT SELECT (job_type, idempotency_key) ON apalis.jobs TO {role};
