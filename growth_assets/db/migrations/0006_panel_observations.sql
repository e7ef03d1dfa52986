-- The observations behind each student-week of a stored panel (the source rows averaged into
-- its score), kept with the row so that weekly_scores counts them in the same pass that builds
-- the panel. NULL in panels built before this migration.
ALTER TABLE growth_panel ADD COLUMN IF NOT EXISTS n integer;
