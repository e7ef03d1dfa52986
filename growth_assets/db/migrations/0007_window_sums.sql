-- Each student's sums over the panel rows the fit conditioned on (n_obs is the count):
-- sum of weeks, of squared weeks, of scores, of week * score. The real-time path
-- (metrics.py, path "update") adds to them the student's rows since the window, instead of
-- reading the window's source rows again. NULL for fits stored before this migration (and
-- for fits written without their panel): those students' window is read from the sources.
ALTER TABLE growth_student_posterior
    ADD COLUMN IF NOT EXISTS sum_w  double precision,
    ADD COLUMN IF NOT EXISTS sum_ww double precision,
    ADD COLUMN IF NOT EXISTS sum_y  double precision,
    ADD COLUMN IF NOT EXISTS sum_wy double precision;
