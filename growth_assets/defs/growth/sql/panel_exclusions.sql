-- What the panel left out of the window, by reason (rows of the sources, not student-weeks).
-- One scan of each source (its window, and its rows dated after %(now)s), every reason a
-- FILTER of that scan: a million students' window is read once per table, not once per reason.
WITH bounds AS (
    SELECT %(window_start)s::date AS ws, %(window_end)s::date AS we,
           (%(window_start)s::date)::timestamp AT TIME ZONE 'UTC' AS ts0,
           (%(window_end)s::date)::timestamp AT TIME ZONE 'UTC' AS ts1,
           %(now)s::timestamptz AS now_ts
),
m AS (
    SELECT count(*) FILTER (WHERE w AND (user_id IS NULL OR user_id = '')) AS null_user_id,
           count(*) FILTER (WHERE w AND theta IN ('NaN', 'Infinity', '-Infinity')) AS non_finite,
           count(*) FILTER (WHERE fitted_at > now_ts) AS future,
           count(*) FILTER (WHERE w AND theta NOT IN ('NaN', 'Infinity', '-Infinity')
                            AND NOT theta BETWEEN %(score_lo)s::float8 AND %(score_hi)s::float8) AS out_of_range
    FROM (SELECT m.user_id, m.theta, m.fitted_at, b.now_ts, m.fitted_at >= b.ts0 AND m.fitted_at < b.ts1 AS w
          FROM mirt_ability m, bounds b
          WHERE (m.fitted_at >= b.ts0 AND m.fitted_at < b.ts1) OR m.fitted_at > b.now_ts) x
),
t AS (
    SELECT count(*) FILTER (WHERE w AND (user_id IS NULL OR user_id = '')) AS null_user_id,
           count(*) FILTER (WHERE w AND theta IN ('NaN', 'Infinity', '-Infinity')) AS non_finite,
           count(*) FILTER (WHERE fitted_at > now_ts) AS future,
           count(*) FILTER (WHERE w AND theta NOT IN ('NaN', 'Infinity', '-Infinity')
                            AND NOT theta BETWEEN %(score_lo)s::float8 AND %(score_hi)s::float8) AS out_of_range
    FROM (SELECT t.user_id, t.theta, t.fitted_at, b.now_ts, t.fitted_at >= b.ts0 AND t.fitted_at < b.ts1 AS w
          FROM student_topic_theta t, bounds b
          WHERE (t.fitted_at >= b.ts0 AND t.fitted_at < b.ts1) OR t.fitted_at > b.now_ts) x
),
f AS (
    SELECT count(*) FILTER (WHERE w AND theta_estimate IN ('NaN'::numeric, 'Infinity'::numeric, '-Infinity'::numeric))
               AS non_finite,
           count(*) FILTER (WHERE w AND (attempts IS NULL OR attempts <= 0 OR correct IS NULL OR correct < 0
                                         OR correct > attempts)) AS invalid_attempts,
           count(*) FILTER (WHERE date > today) AS future,
           count(*) FILTER (WHERE w AND theta_estimate NOT IN ('NaN'::numeric, 'Infinity'::numeric, '-Infinity'::numeric)
                            AND NOT theta_estimate BETWEEN %(score_lo)s::numeric AND %(score_hi)s::numeric) AS out_of_range
    FROM (SELECT f.theta_estimate, f.attempts, f.correct, f.date, (b.now_ts AT TIME ZONE 'UTC')::date AS today,
                 f.date >= b.ws AND f.date < b.we AS w
          FROM features_topic_daily f, bounds b
          WHERE (f.date >= b.ws AND f.date < b.we) OR f.date > (b.now_ts AT TIME ZONE 'UTC')::date) x
),
-- finite, but outside BRMS_SCORE_RANGE (theta sources; accuracy is within [0, 1] by its checks)
k AS (
    SELECT count(*) AS out_of_range FROM weekly_kpi k, bounds b
    WHERE k.week_start >= b.ws AND k.week_start < b.we
      AND jsonb_typeof(k.kpis -> 'ability_estimate') = 'number'
      AND NOT CASE WHEN jsonb_typeof(k.kpis -> 'ability_estimate') = 'number'
                   THEN (k.kpis -> 'ability_estimate')::numeric END BETWEEN %(score_lo)s::numeric AND %(score_hi)s::numeric
)
SELECT m.null_user_id + t.null_user_id AS null_user_id,
       m.non_finite + t.non_finite + f.non_finite AS non_finite_theta,
       f.invalid_attempts AS invalid_attempts,
       m.future + t.future + f.future AS future_dated,
       m.out_of_range + t.out_of_range + f.out_of_range + k.out_of_range AS out_of_range
FROM m, t, f, k
