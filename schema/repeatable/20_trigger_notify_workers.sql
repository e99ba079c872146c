-- Statement-level trigger: one call per INSERT, however many rows it adds.
DROP TRIGGER IF EXISTS notify_workers ON apalis.jobs;
CREATE TRIGGER notify_workers
    AFTER INSERT ON apalis.jobs
    REFERENCING NEW TABLE AS new_jobs
    FOR EACH STATEMENT
    EXECUTE FUNCTION apalis.notify_new_jobs();
