-- Producer: pushes tasks, with and without idempotency keys. {role} is the role.
GRANT USAGE ON SCHEMA apalis TO {role};
GRANT INSERT ON apalis.jobs TO {role};
-- A push that collided looks up which task holds its id or key (find_conflicts), so it reads
-- these three columns; no other column (payloads, results) is readable.
GRANT SELECT (id, job_type, idempotency_key) ON apalis.jobs TO {role};
