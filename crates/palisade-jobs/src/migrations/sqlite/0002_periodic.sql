-- palisade-jobs schema, version 2 (SQLite): periodic jobs. One row per periodic job name; a
-- tick is enqueued by advancing next_run_at with a compare-and-set in the enqueue's
-- transaction, so of all workers sharing the database exactly one enqueues it.
CREATE TABLE palisade_jobs_periodic (
    name        TEXT    PRIMARY KEY,
    -- The schedule's expression: a different one resets next_run_at.
    schedule    TEXT    NOT NULL,
    -- The next tick, microseconds since the Unix epoch (UTC).
    next_run_at INTEGER NOT NULL,
    -- The tick of the last enqueued job, and that job.
    last_run_at INTEGER,
    last_job_id INTEGER
);
