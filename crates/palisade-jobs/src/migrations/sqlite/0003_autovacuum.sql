-- palisade-jobs schema, version 3 (SQLite): nothing to do. On PostgreSQL this version tunes
-- autovacuum for the jobs table; SQLite has no dead row versions to vacuum (a deleted or
-- updated row's space is reused in place), so both backends stay at one version number.
SELECT 1;
