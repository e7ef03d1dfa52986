-- What the panel left out of the window, by reason (rows of the sources, not student-weeks).
WITH bounds AS (
    SELECT %(window_start)s::date AS ws, %(window_end)s::date AS we,
           (%(window_start)s::date)::timestamp AT TIME ZONE 'UTC' AS ts0,
           (%(window_end)s::date)::timestamp AT TIME ZONE 'UTC' AS ts1,
           %(now)s::timestamptz AS now_ts
)
SELECT
  (SELECT count(*) FROM mirt_ability m, bounds b WHERE m.fitted_at >= b.ts0 AND m.fitted_at < b.ts1
      AND (m.user_id IS NULL OR m.user_id = ''))
  + (SELECT count(*) FROM student_topic_theta t, bounds b WHERE t.fitted_at >= b.ts0 AND t.fitted_at < b.ts1
      AND (t.user_id IS NULL OR t.user_id = ''))                                   AS null_user_id,
  (SELECT count(*) FROM mirt_ability m, bounds b WHERE m.fitted_at >= b.ts0 AND m.fitted_at < b.ts1
      AND m.theta IN ('NaN', 'Infinity', '-Infinity'))
  + (SELECT count(*) FROM student_topic_theta t, bounds b WHERE t.fitted_at >= b.ts0 AND t.fitted_at < b.ts1
      AND t.theta IN ('NaN', 'Infinity', '-Infinity'))
  + (SELECT count(*) FROM features_topic_daily f, bounds b WHERE f.date >= b.ws AND f.date < b.we
      AND f.theta_estimate IN ('NaN'::numeric, 'Infinity'::numeric, '-Infinity'::numeric)) AS non_finite_theta,
  (SELECT count(*) FROM features_topic_daily f, bounds b WHERE f.date >= b.ws AND f.date < b.we
      AND (f.attempts IS NULL OR f.attempts <= 0 OR f.correct IS NULL OR f.correct < 0
           OR f.correct > f.attempts))                                               AS invalid_attempts,
  (SELECT count(*) FROM mirt_ability m, bounds b WHERE m.fitted_at > b.now_ts)
  + (SELECT count(*) FROM student_topic_theta t, bounds b WHERE t.fitted_at > b.now_ts)
  + (SELECT count(*) FROM features_topic_daily f, bounds b WHERE f.date > (b.now_ts AT TIME ZONE 'UTC')::date)
                                                                                     AS future_dated,
  -- finite, but outside BRMS_SCORE_RANGE (theta sources; accuracy is within [0, 1] by its checks)
  (SELECT count(*) FROM mirt_ability m, bounds b WHERE m.fitted_at >= b.ts0 AND m.fitted_at < b.ts1
      AND m.theta NOT IN ('NaN', 'Infinity', '-Infinity') AND NOT m.theta BETWEEN %(score_lo)s::float8 AND %(score_hi)s::float8)
  + (SELECT count(*) FROM student_topic_theta t, bounds b WHERE t.fitted_at >= b.ts0 AND t.fitted_at < b.ts1
      AND t.theta NOT IN ('NaN', 'Infinity', '-Infinity') AND NOT t.theta BETWEEN %(score_lo)s::float8 AND %(score_hi)s::float8)
  + (SELECT count(*) FROM features_topic_daily f, bounds b WHERE f.date >= b.ws AND f.date < b.we
      AND f.theta_estimate NOT IN ('NaN'::numeric, 'Infinity'::numeric, '-Infinity'::numeric)
      AND NOT f.theta_estimate BETWEEN %(score_lo)s::numeric AND %(score_hi)s::numeric)
  + (SELECT count(*) FROM weekly_kpi k, bounds b WHERE k.week_start >= b.ws AND k.week_start < b.we
      AND jsonb_typeof(k.kpis -> 'ability_estimate') = 'number'
      AND NOT CASE WHEN jsonb_typeof(k.kpis -> 'ability_estimate') = 'number'
                   THEN (k.kpis -> 'ability_estimate')::numeric END BETWEEN %(score_lo)s::numeric AND %(score_hi)s::numeric)
                                                                                     AS out_of_range
