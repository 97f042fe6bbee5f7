-- palisade-jobs schema, version 3 (PostgreSQL): vacuum the jobs table early. Every claim and
-- every completion leaves a dead row version, and the claim index keeps an entry for each
-- claimed job's dead version at its head until a vacuum removes it: each claim walks past all
-- of them. With the default thresholds (20 % of the table) a table that keeps a million
-- finished jobs collects 400,000 such entries between vacuums; at 1 % (plus 1,000) the walk
-- stays short. Storage parameters only: no data or index changes.
ALTER TABLE palisade_jobs SET (
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.02
);
