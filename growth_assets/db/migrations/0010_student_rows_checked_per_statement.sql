-- growth_student_posterior's rows still need their fit (growth_fit), and still go when it
-- goes, but the check is made once per statement, not once per row. The foreign key of 0003
-- ran a lookup of growth_fit for every row a COPY wrote: write_fit of ten million students
-- took 85-90 s with it and takes 45-53 s with these triggers (benchmarks/results/fit.md); a
-- COPY of 2M rows in psql took 5.3 s with the primary key alone and 7.0 s with the triggers.
-- Same guarantees as the key had, by the same means:
--   * a statement that writes student rows takes FOR KEY SHARE on their growth_fit rows (a
--     concurrent delete of the fit waits for it) and is refused, SQLSTATE 23503
--     (foreign_key_violation), naming the run_id, when one has no growth_fit row;
--   * deleting growth_fit rows deletes their student rows (ON DELETE CASCADE), and
--     TRUNCATE growth_fit CASCADE truncates them too;
--   * changing a growth_fit run_id that student rows hold is refused (NO ACTION).
-- The functions name the tables by the triggering table's schema and run with a fixed
-- search_path, so a session whose path does not hold the project's schema is served the same.

ALTER TABLE growth_student_posterior DROP CONSTRAINT IF EXISTS growth_student_posterior_run_id_fkey;

CREATE OR REPLACE FUNCTION growth_student_rows_need_their_fit() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    runs text[];
    found bigint;
    missing text;
BEGIN
    SELECT array_agg(run_id) INTO runs FROM (SELECT run_id FROM new_rows GROUP BY run_id) r;
    IF runs IS NULL THEN
        RETURN NULL;
    END IF;
    -- as a foreign key does: the fits are locked so that none goes before this commits; a fit
    -- deleted by a transaction that committed meanwhile is not found
    EXECUTE format('SELECT count(*) FROM (SELECT 1 FROM %I.growth_fit WHERE run_id = ANY ($1) FOR KEY SHARE) f',
                   TG_TABLE_SCHEMA) INTO found USING runs;
    IF found < cardinality(runs) THEN  -- only then: which one, for the message
        EXECUTE format('SELECT min(r) FROM unnest($1) r WHERE NOT EXISTS (SELECT 1 FROM %I.growth_fit f WHERE f.run_id = r)',
                       TG_TABLE_SCHEMA) INTO missing USING runs;
        RAISE foreign_key_violation USING
            MESSAGE = format('growth_student_posterior.run_id %L has no growth_fit row', coalesce(missing, '?')),
            DETAIL = 'a fit''s student rows are written after (or with) its growth_fit row',
            TABLE = TG_TABLE_NAME, COLUMN = 'run_id', SCHEMA = TG_TABLE_SCHEMA;
    END IF;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION growth_fit_takes_its_student_rows() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    EXECUTE format('DELETE FROM %I.growth_student_posterior s USING (SELECT DISTINCT run_id FROM old_rows) o'
                   ' WHERE s.run_id = o.run_id', TG_TABLE_SCHEMA);
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION growth_fit_truncates_its_student_rows() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    EXECUTE format('TRUNCATE %I.growth_student_posterior', TG_TABLE_SCHEMA);
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION growth_fit_keeps_run_ids_in_use() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    held text;
BEGIN
    EXECUTE format('SELECT min(o.run_id) FROM old_rows o WHERE NOT EXISTS (SELECT 1 FROM new_rows n WHERE n.run_id = o.run_id)'
                   ' AND EXISTS (SELECT 1 FROM %I.growth_student_posterior s WHERE s.run_id = o.run_id)',
                   TG_TABLE_SCHEMA) INTO held;
    IF held IS NOT NULL THEN
        RAISE foreign_key_violation USING
            MESSAGE = format('growth_fit.run_id %L is held by student rows; it cannot change', held),
            TABLE = TG_TABLE_NAME, COLUMN = 'run_id', SCHEMA = TG_TABLE_SCHEMA;
    END IF;
    RETURN NULL;
END $$;

-- transition tables allow one event per trigger
DROP TRIGGER IF EXISTS student_rows_inserted ON growth_student_posterior;
CREATE TRIGGER student_rows_inserted AFTER INSERT ON growth_student_posterior
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION growth_student_rows_need_their_fit();
DROP TRIGGER IF EXISTS student_rows_updated ON growth_student_posterior;
CREATE TRIGGER student_rows_updated AFTER UPDATE ON growth_student_posterior
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION growth_student_rows_need_their_fit();
DROP TRIGGER IF EXISTS fit_deleted ON growth_fit;
CREATE TRIGGER fit_deleted AFTER DELETE ON growth_fit
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION growth_fit_takes_its_student_rows();
DROP TRIGGER IF EXISTS fit_truncated ON growth_fit;
CREATE TRIGGER fit_truncated AFTER TRUNCATE ON growth_fit
    FOR EACH STATEMENT EXECUTE FUNCTION growth_fit_truncates_its_student_rows();
DROP TRIGGER IF EXISTS fit_updated ON growth_fit;
CREATE TRIGGER fit_updated AFTER UPDATE ON growth_fit
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION growth_fit_keeps_run_ids_in_use();
