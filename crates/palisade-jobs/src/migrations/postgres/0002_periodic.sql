-- palisade-jobs schema, version 2 (PostgreSQL): periodic jobs. One row per periodic job name;
-- a tick is enqueued by advancing next_run_at with a compare-and-set in the enqueue's
-- transaction, so of all workers sharing the database exactly one enqueues it.
CREATE TABLE palisade_jobs_periodic (
    name        TEXT   PRIMARY KEY,
    -- The schedule's expression: a different one resets next_run_at.
    schedule    TEXT   NOT NULL,
    -- The next tick, microseconds since the Unix epoch (UTC).
    next_run_at BIGINT NOT NULL,
    -- The tick of the last enqueued job, and that job.
    last_run_at BIGINT,
    last_job_id BIGINT
);
