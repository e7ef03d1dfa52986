-- Source tables of the platform (names from the seed system). They may already exist,
-- possibly with the seed's "latest value per key" primary keys: keep their rows, add what is
-- missing, and re-key them to keep history (one row per calibration; a re-run of the same
-- calibration does not duplicate).

CREATE TABLE IF NOT EXISTS mirt_ability (
    user_id   text,
    theta     double precision,
    se        double precision,
    model     text,
    version   text,
    fitted_at timestamptz
);
ALTER TABLE mirt_ability ADD COLUMN IF NOT EXISTS se double precision;
ALTER TABLE mirt_ability ADD COLUMN IF NOT EXISTS model text;
ALTER TABLE mirt_ability ADD COLUMN IF NOT EXISTS version text;
ALTER TABLE mirt_ability ADD COLUMN IF NOT EXISTS fitted_at timestamptz;

CREATE TABLE IF NOT EXISTS student_topic_theta (
    user_id   text,
    topic_id  text,
    theta     double precision,
    se        double precision,
    model     text,
    version   text,
    fitted_at timestamptz
);
ALTER TABLE student_topic_theta ADD COLUMN IF NOT EXISTS se double precision;
ALTER TABLE student_topic_theta ADD COLUMN IF NOT EXISTS model text;
ALTER TABLE student_topic_theta ADD COLUMN IF NOT EXISTS version text;
ALTER TABLE student_topic_theta ADD COLUMN IF NOT EXISTS fitted_at timestamptz;

-- The seed keyed these by user (and topic): one row, overwritten at each calibration.
-- Drop such a primary key so history can accumulate (its rows stay).
DO $$
DECLARE
    t text;
    c record;
BEGIN
    FOREACH t IN ARRAY ARRAY['mirt_ability', 'student_topic_theta'] LOOP
        FOR c IN
            SELECT con.conname
            FROM pg_constraint con
            JOIN pg_class rel ON rel.oid = con.conrelid
            WHERE rel.relname = t AND rel.relnamespace = 'public'::regnamespace
              AND con.contype IN ('p', 'u')
              AND NOT EXISTS (  -- a key without fitted_at cannot hold history
                  SELECT 1 FROM pg_attribute a
                  WHERE a.attrelid = rel.oid AND a.attname = 'fitted_at'
                    AND a.attnum = ANY (con.conkey))
        LOOP
            EXECUTE format('ALTER TABLE %I DROP CONSTRAINT %I', t, c.conname);
        END LOOP;
    END LOOP;
END $$;

-- A table without a key may hold the same calibration twice: keep one row of each before
-- keying it (an exact duplicate is the same calibration, not more information).
DO $$
DECLARE
    n bigint;
BEGIN
    DELETE FROM mirt_ability a USING mirt_ability b
    WHERE a.ctid > b.ctid AND a.user_id IS NOT DISTINCT FROM b.user_id
      AND a.model IS NOT DISTINCT FROM b.model AND a.version IS NOT DISTINCT FROM b.version
      AND a.fitted_at IS NOT DISTINCT FROM b.fitted_at;
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n > 0 THEN RAISE NOTICE 'mirt_ability: removed % duplicate calibration row(s)', n; END IF;
    DELETE FROM student_topic_theta a USING student_topic_theta b
    WHERE a.ctid > b.ctid AND a.user_id IS NOT DISTINCT FROM b.user_id
      AND a.topic_id IS NOT DISTINCT FROM b.topic_id
      AND a.model IS NOT DISTINCT FROM b.model AND a.version IS NOT DISTINCT FROM b.version
      AND a.fitted_at IS NOT DISTINCT FROM b.fitted_at;
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n > 0 THEN RAISE NOTICE 'student_topic_theta: removed % duplicate calibration row(s)', n; END IF;
END $$;

CREATE UNIQUE INDEX IF NOT EXISTS mirt_ability_calibration_key
    ON mirt_ability (user_id, model, version, fitted_at) NULLS NOT DISTINCT;
CREATE INDEX IF NOT EXISTS mirt_ability_user_latest
    ON mirt_ability (user_id, fitted_at DESC);
CREATE INDEX IF NOT EXISTS mirt_ability_fitted_at ON mirt_ability (fitted_at);

CREATE UNIQUE INDEX IF NOT EXISTS student_topic_theta_calibration_key
    ON student_topic_theta (user_id, topic_id, model, version, fitted_at) NULLS NOT DISTINCT;
CREATE INDEX IF NOT EXISTS student_topic_theta_fitted_at ON student_topic_theta (fitted_at);

CREATE TABLE IF NOT EXISTS features_topic_daily (
    user_id        text NOT NULL,
    topic_id       text NOT NULL,
    date           date NOT NULL,
    attempts       integer,
    correct        integer,
    avg_time_ms    integer,
    theta_estimate numeric,
    theta_sd       numeric,
    PRIMARY KEY (user_id, topic_id, date)
);
ALTER TABLE features_topic_daily ADD COLUMN IF NOT EXISTS theta_estimate numeric;
ALTER TABLE features_topic_daily ADD COLUMN IF NOT EXISTS theta_sd numeric;
CREATE INDEX IF NOT EXISTS features_topic_daily_date ON features_topic_daily (date);

CREATE TABLE IF NOT EXISTS weekly_kpi (
    user_id    text NOT NULL,
    week_start date NOT NULL,
    kpis       jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, week_start)
);
CREATE INDEX IF NOT EXISTS weekly_kpi_week_start ON weekly_kpi (week_start);
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'weekly_kpi_week_start_is_monday') THEN
        -- NOT VALID: rows an older writer left are not re-checked, new ones are.
        ALTER TABLE weekly_kpi ADD CONSTRAINT weekly_kpi_week_start_is_monday
            CHECK (extract(isodow FROM week_start) = 1) NOT VALID;
    END IF;
END $$;
