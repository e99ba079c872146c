-- apalis-client migration 0001: the apalis tables as both the Rust crate's
-- 0.2/0.3 releases ("generation 10") and this client agree on them.
-- Written IF NOT EXISTS so it is a no-op over a schema the Rust crate created.

CREATE SCHEMA IF NOT EXISTS apalis;

-- This client's own ledger of applied migration files (the Rust crate keeps
-- public.__diesel_schema_migrations, which we never touch).
CREATE TABLE IF NOT EXISTS apalis.apalis_client_migrations (
    filename   text        NOT NULL PRIMARY KEY,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS apalis.workers (
    id           text        NOT NULL,
    worker_type  text        NOT NULL,
    storage_name text        NOT NULL,
    layers       text        NOT NULL DEFAULT '',
    last_seen    timestamptz NOT NULL DEFAULT now(),
    started_at   timestamptz,
    lease_token  text,
    CONSTRAINT workers_pkey PRIMARY KEY (id, worker_type)
);

CREATE INDEX IF NOT EXISTS workers_worker_type_last_seen_idx
    ON apalis.workers (worker_type, last_seen DESC);

CREATE TABLE IF NOT EXISTS apalis.jobs (
    job             bytea       NOT NULL,
    id              text        NOT NULL,
    job_type        text        NOT NULL,
    status          text        NOT NULL DEFAULT 'Pending',
    attempts        integer     NOT NULL DEFAULT 0,
    max_attempts    integer     NOT NULL DEFAULT 25,
    run_at          timestamptz NOT NULL DEFAULT now(),
    last_result     jsonb,
    lock_at         timestamptz,
    lock_by         text,
    done_at         timestamptz,
    priority        integer     NOT NULL DEFAULT 0,
    metadata        jsonb,
    idempotency_key text,
    CONSTRAINT jobs_pkey PRIMARY KEY (id),
    CONSTRAINT jobs_status_check
        CHECK (status IN ('Pending', 'Queued', 'Running', 'Done', 'Failed', 'Killed')),
    CONSTRAINT jobs_attempts_check CHECK (attempts >= 0),
    CONSTRAINT jobs_max_attempts_check CHECK (max_attempts > 0),
    CONSTRAINT jobs_attempts_lte_max_attempts_check CHECK (attempts <= max_attempts),
    CONSTRAINT jobs_priority_check CHECK (priority >= 0),
    CONSTRAINT jobs_lock_by_worker_type_fkey
        FOREIGN KEY (lock_by, job_type) REFERENCES apalis.workers (id, worker_type)
);
