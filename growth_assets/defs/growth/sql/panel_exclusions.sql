-- What the panel left out of the window, by reason (rows of the sources, not student-weeks).
-- One scan of each source (its window, and its rows dated after %(now)s), every reason a
-- FILTER of that scan: a million students' window is read once per table, not once per reason.
-- The window's bounds are the parameters themselves (not a CTE of them), so the planner
-- estimates each scan from the real dates.
-- the two theta tables of one shape (id, theta, time), as one scan
WITH th AS (
    SELECT count(*) FILTER (WHERE w AND (user_id IS NULL OR user_id = '')) AS null_user_id,
           count(*) FILTER (WHERE w AND theta IN ('NaN', 'Infinity', '-Infinity')) AS non_finite,
           count(*) FILTER (WHERE fitted_at > %(now)s::timestamptz) AS future,
           count(*) FILTER (WHERE w AND theta NOT IN ('NaN', 'Infinity', '-Infinity')
                            AND NOT theta BETWEEN %(score_lo)s::float8 AND %(score_hi)s::float8) AS out_of_range
    FROM (SELECT s.user_id, s.theta, s.fitted_at,
                 s.fitted_at >= ((%(window_start)s::date)::timestamp AT TIME ZONE 'UTC')
                 AND s.fitted_at < ((%(window_end)s::date)::timestamp AT TIME ZONE 'UTC') AS w
          FROM (SELECT user_id, theta, fitted_at FROM mirt_ability
                UNION ALL SELECT user_id, theta, fitted_at FROM student_topic_theta) s
          WHERE (s.fitted_at >= ((%(window_start)s::date)::timestamp AT TIME ZONE 'UTC')
                 AND s.fitted_at < ((%(window_end)s::date)::timestamp AT TIME ZONE 'UTC'))
             OR s.fitted_at > %(now)s::timestamptz) x
),
f AS (
    SELECT count(*) FILTER (WHERE w AND theta_estimate IN ('NaN'::numeric, 'Infinity'::numeric, '-Infinity'::numeric))
               AS non_finite,
           count(*) FILTER (WHERE w AND (attempts IS NULL OR attempts <= 0 OR correct IS NULL OR correct < 0
                                         OR correct > attempts)) AS invalid_attempts,
           count(*) FILTER (WHERE date > today) AS future,
           count(*) FILTER (WHERE w AND theta_estimate NOT IN ('NaN'::numeric, 'Infinity'::numeric, '-Infinity'::numeric)
                            AND NOT theta_estimate BETWEEN %(score_lo)s::numeric AND %(score_hi)s::numeric) AS out_of_range
    FROM (SELECT f.theta_estimate, f.attempts, f.correct, f.date, (%(now)s::timestamptz AT TIME ZONE 'UTC')::date AS today,
                 f.date >= %(window_start)s::date AND f.date < %(window_end)s::date AS w
          FROM features_topic_daily f
          WHERE (f.date >= %(window_start)s::date AND f.date < %(window_end)s::date)
             OR f.date > (%(now)s::timestamptz AT TIME ZONE 'UTC')::date) x
),
-- finite, but outside BRMS_SCORE_RANGE (theta sources; accuracy is within [0, 1] by its checks)
k AS (
    SELECT count(*) AS out_of_range FROM weekly_kpi k
    WHERE k.week_start >= %(window_start)s::date AND k.week_start < %(window_end)s::date
      AND jsonb_typeof(k.kpis -> 'ability_estimate') = 'number'
      AND NOT CASE WHEN jsonb_typeof(k.kpis -> 'ability_estimate') = 'number'
                   THEN (k.kpis -> 'ability_estimate')::numeric END BETWEEN %(score_lo)s::numeric AND %(score_hi)s::numeric
)
SELECT th.null_user_id AS null_user_id,
       th.non_finite + f.non_finite AS non_finite_theta,
       f.invalid_attempts AS invalid_attempts,
       th.future + f.future AS future_dated,
       th.out_of_range + f.out_of_range + k.out_of_range AS out_of_range
FROM th, f, k
