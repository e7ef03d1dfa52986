-- TRUNCATE growth_fit truncates growth_student_posterior (0010's trigger), but a statement
-- that names both (TRUNCATE growth_fit, growth_student_posterior: a clean-up of every project
-- table) failed: the trigger's own TRUNCATE found the student table held open by that same
-- statement ("cannot TRUNCATE ... because it is being used by active queries in this
-- session", SQLSTATE 55006), and so did a session with a cursor open on it. In both cases
-- the rows are now deleted instead: after a statement that truncates both there are none
-- left to delete, and an open cursor keeps reading its snapshot.

CREATE OR REPLACE FUNCTION growth_fit_truncates_its_student_rows() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    BEGIN
        EXECUTE format('TRUNCATE %I.growth_student_posterior', TG_TABLE_SCHEMA);
    EXCEPTION WHEN object_in_use THEN
        EXECUTE format('DELETE FROM %I.growth_student_posterior', TG_TABLE_SCHEMA);
    END;
    RETURN NULL;
END $$;
