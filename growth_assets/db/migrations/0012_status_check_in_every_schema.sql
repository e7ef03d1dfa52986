-- 0002 added growth_brms_meta's status check only when no constraint of that name existed in
-- the whole database (pg_constraint looked up by name alone): a second schema migrated after
-- the first (GROWTH_DB_SCHEMA=staging beside growth) got no check, and accepted any status.
-- This adds it to the table of this schema when that table has none.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint
                   WHERE conname = 'growth_brms_meta_status_check'
                     AND conrelid = 'growth_brms_meta'::regclass) THEN
        ALTER TABLE growth_brms_meta ADD CONSTRAINT growth_brms_meta_status_check
            CHECK (status IN ('passed', 'failed_checks'));
    END IF;
END $$;
