"""Seeding SQL of the worker benchmark (not the code under test)."""

from __future__ import annotations

# Seeding and the latency pushes are not the code under test: one plain unnest INSERT,
# the row shape of a Rust producer's push (Pending, attempts 0, max_attempts 5).
SEED_INSERT = """
INSERT INTO apalis.jobs (job, id, job_type, status, attempts, max_attempts, priority, metadata)
SELECT t.job, t.id, %(queue)s, 'Pending', 0, 5, 0, '{}'::jsonb
  FROM unnest(%(jobs)s::bytea[], %(ids)s::text[]) AS t(job, id)
"""
