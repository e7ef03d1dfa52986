-- growth_student_posterior keeps one index, its primary key (run_id, user_id). Every reader
-- asks for one run's rows (weekly_kpi_P's merge, the real-time path's lookups, the backtest,
-- the run's P summary), and the key serves each of them. The index on (user_id, run_id) was
-- made when the real-time path looked a student up across runs; it no longer does, so that
-- index was written with every row of every fit (a million entries a week at a million
-- students) and read by nothing.
DROP INDEX IF EXISTS growth_student_posterior_user;
