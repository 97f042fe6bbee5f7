-- palisade-jobs schema, version 1 (SQLite). Times are microseconds since the Unix epoch.
CREATE TABLE palisade_jobs (
    -- AUTOINCREMENT: ids are never reused, so a dead job can come back under its own id.
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    queue            TEXT    NOT NULL,
    kind             TEXT    NOT NULL,
    payload          TEXT    NOT NULL,
    state            TEXT    NOT NULL DEFAULT 'pending',
    priority         INTEGER NOT NULL DEFAULT 5,
    attempts         INTEGER NOT NULL DEFAULT 0,
    max_attempts     INTEGER NOT NULL DEFAULT 5,
    created_at       INTEGER NOT NULL,
    scheduled_at     INTEGER NOT NULL,
    started_at       INTEGER,
    finished_at      INTEGER,
    unique_key       TEXT,
    last_error       TEXT,
    -- The fencing token: one more at every claim, never reset.
    lease_token      INTEGER NOT NULL DEFAULT 0,
    lease_expires_at INTEGER
);

-- Claims: the runnable jobs of a queue in claim order.
CREATE INDEX palisade_jobs_claim ON palisade_jobs (queue, priority, scheduled_at, id)
    WHERE state = 'pending';
-- Rescue: running jobs by lease expiry.
CREATE INDEX palisade_jobs_lease ON palisade_jobs (lease_expires_at) WHERE state = 'running';
-- Unique keys hold while a job is pending or running.
CREATE UNIQUE INDEX palisade_jobs_unique ON palisade_jobs (unique_key)
    WHERE unique_key IS NOT NULL AND state IN ('pending', 'running');
-- Purging finished jobs.
CREATE INDEX palisade_jobs_finished ON palisade_jobs (finished_at)
    WHERE state IN ('completed', 'cancelled');

CREATE TABLE palisade_jobs_dead (
    id           INTEGER PRIMARY KEY,
    queue        TEXT    NOT NULL,
    kind         TEXT    NOT NULL,
    payload      TEXT    NOT NULL,
    priority     INTEGER NOT NULL,
    attempts     INTEGER NOT NULL,
    max_attempts INTEGER NOT NULL,
    created_at   INTEGER NOT NULL,
    failed_at    INTEGER NOT NULL,
    unique_key   TEXT,
    last_error   TEXT    NOT NULL,
    lease_token  INTEGER NOT NULL
);
CREATE INDEX palisade_jobs_dead_queue ON palisade_jobs_dead (queue, id);
