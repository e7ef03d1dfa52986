-- One owner per table, no serialised Python values between steps (the redesign).
--   weekly_scores    -> growth_panel, growth_panel_meta
--   brms_posterior   -> growth_fit (one row per fit: the engine's answer without the
--                       per-student rows) and growth_student_posterior (those rows)
--   growth_brms_meta -> growth_brms_meta (the graded record of the run, the seed's table)
--   weekly_kpi_P     -> its keys of weekly_kpi.kpis
-- Downstream assets find their inputs by partition (and Dagster run id) in these tables.

CREATE TABLE IF NOT EXISTS growth_fit (
    run_id         text PRIMARY KEY,
    partition_key  text,
    dagster_run_id text,
    panel_id       text,
    engine         text NOT NULL,
    result         jsonb NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS growth_fit_partition ON growth_fit (partition_key, created_at DESC);

-- the fits already stored keep their student rows: each stored run becomes a fit
INSERT INTO growth_fit (run_id, partition_key, dagster_run_id, panel_id, engine, result, created_at)
SELECT run_id, NULL, dagster_run_id, panel_id, coalesce(engine, 'brms'),
       jsonb_build_object('posterior_summary', posterior_summary, 'diagnostics', diagnostics,
                          'priors', priors, 'formula', formula),
       coalesce(fitted_at, now())
FROM growth_brms_meta
ON CONFLICT (run_id) DO NOTHING;

ALTER TABLE growth_student_posterior DROP CONSTRAINT IF EXISTS growth_student_posterior_run_id_fkey;
ALTER TABLE growth_student_posterior ADD CONSTRAINT growth_student_posterior_run_id_fkey
    FOREIGN KEY (run_id) REFERENCES growth_fit (run_id) ON DELETE CASCADE;

ALTER TABLE growth_brms_meta ADD COLUMN IF NOT EXISTS partition_key text;
ALTER TABLE growth_brms_meta DROP CONSTRAINT IF EXISTS growth_brms_meta_fit_fkey;
ALTER TABLE growth_brms_meta ADD CONSTRAINT growth_brms_meta_fit_fkey
    FOREIGN KEY (run_id) REFERENCES growth_fit (run_id) ON DELETE CASCADE;
CREATE INDEX IF NOT EXISTS growth_brms_meta_partition ON growth_brms_meta (partition_key, fitted_at DESC);

ALTER TABLE growth_panel_meta ADD COLUMN IF NOT EXISTS partition_key text;
ALTER TABLE growth_panel_meta ADD COLUMN IF NOT EXISTS dagster_run_id text;

-- Python values were serialised here between steps: anyone able to write this table could run code
-- in the Dagster pods when a step loaded its input
DROP TABLE IF EXISTS dagster_asset_value;
