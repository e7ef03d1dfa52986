-- What this project writes: one row per fit, the per-student line posterior of each fit,
-- the fitted panel (so a step in another process or pod reads exactly what was fitted), and
-- small Dagster values handed between steps.

CREATE TABLE IF NOT EXISTS growth_brms_meta (
    run_id            text PRIMARY KEY,
    formula           text,
    priors            jsonb,
    posterior_summary jsonb,
    diagnostics       jsonb,
    fitted_at         timestamptz DEFAULT now()
);
ALTER TABLE growth_brms_meta
    ADD COLUMN IF NOT EXISTS engine         text,
    ADD COLUMN IF NOT EXISTS engine_version text,
    ADD COLUMN IF NOT EXISTS status         text,
    ADD COLUMN IF NOT EXISTS status_reasons jsonb NOT NULL DEFAULT '[]'::jsonb,
    ADD COLUMN IF NOT EXISTS window_start   date,
    ADD COLUMN IF NOT EXISTS window_end     date,
    ADD COLUMN IF NOT EXISTS week_start     date,
    ADD COLUMN IF NOT EXISTS n_students     integer,
    ADD COLUMN IF NOT EXISTS n_obs          integer,
    ADD COLUMN IF NOT EXISTS horizon_week   integer,
    ADD COLUMN IF NOT EXISTS target         double precision,
    ADD COLUMN IF NOT EXISTS seed           bigint,
    ADD COLUMN IF NOT EXISTS n_chains       integer,
    ADD COLUMN IF NOT EXISTS n_samples      integer,
    ADD COLUMN IF NOT EXISTS score_source   text,
    ADD COLUMN IF NOT EXISTS panel_id       text,
    ADD COLUMN IF NOT EXISTS source_counts  jsonb,
    ADD COLUMN IF NOT EXISTS dagster_run_id text;
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'growth_brms_meta_status_check') THEN
        ALTER TABLE growth_brms_meta ADD CONSTRAINT growth_brms_meta_status_check
            CHECK (status IN ('passed', 'failed_checks'));
    END IF;
END $$;
CREATE INDEX IF NOT EXISTS growth_brms_meta_fitted_at ON growth_brms_meta (fitted_at DESC);
CREATE INDEX IF NOT EXISTS growth_brms_meta_passed_latest
    ON growth_brms_meta (fitted_at DESC) WHERE status = 'passed';

CREATE TABLE IF NOT EXISTS growth_student_posterior (
    run_id  text NOT NULL REFERENCES growth_brms_meta (run_id) ON DELETE CASCADE,
    user_id text NOT NULL,
    n_obs   integer NOT NULL,
    mean_a  double precision NOT NULL,
    mean_b  double precision NOT NULL,
    var_a   double precision NOT NULL CHECK (var_a >= 0),
    var_b   double precision NOT NULL CHECK (var_b >= 0),
    cov_ab  double precision NOT NULL,
    mu      double precision NOT NULL,
    sigma   double precision NOT NULL CHECK (sigma >= 0),
    "P"     double precision NOT NULL CHECK ("P" >= 0 AND "P" <= 1),
    PRIMARY KEY (run_id, user_id)
);
-- metrics.py looks a student up across runs (latest passing run that has the student)
CREATE INDEX IF NOT EXISTS growth_student_posterior_user ON growth_student_posterior (user_id, run_id);

CREATE TABLE IF NOT EXISTS growth_panel (
    panel_id   text NOT NULL,
    student_id text NOT NULL,
    week       integer NOT NULL CHECK (week >= 0),
    score      double precision NOT NULL,
    source     text NOT NULL,
    PRIMARY KEY (panel_id, student_id, week)
);

CREATE TABLE IF NOT EXISTS growth_panel_meta (
    panel_id     text PRIMARY KEY,
    window_start date NOT NULL,
    window_end   date NOT NULL,
    as_of        date NOT NULL,
    score_source text NOT NULL,
    stats        jsonb NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS dagster_asset_value (
    asset_key     text NOT NULL,
    partition_key text NOT NULL DEFAULT '',
    value         bytea NOT NULL,
    dagster_run_id text,
    stored_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (asset_key, partition_key)
);
