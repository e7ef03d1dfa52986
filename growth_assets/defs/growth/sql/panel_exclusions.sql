-- What the theta panel (panel_theta.sql) left out, by reason: rows of its sources that carry a
-- score (a NULL theta, or a weekly_kpi row without ability_estimate, has none: nothing left
-- out) in the window, or dated after %(now)s. Each row counts once, under its first reason in
-- this order: future_dated, null_user_id, non_finite_theta (NaN, +-Infinity, or an
-- ability_estimate that is not a JSON number), out_of_range (outside BRMS_SCORE_RANGE).
-- One scan of each source, every reason a FILTER of it; the window's bounds are the
-- parameters themselves (not a CTE of them), so the planner estimates each scan from the dates.
WITH th AS (  -- the two theta tables of one shape (id, theta, time), as one scan
    SELECT CASE WHEN s.fitted_at > %(now)s::timestamptz THEN 'future_dated'
                WHEN s.user_id IS NULL OR s.user_id = '' THEN 'null_user_id'
                WHEN s.theta IN ('NaN', 'Infinity', '-Infinity') THEN 'non_finite_theta'
                WHEN NOT s.theta BETWEEN %(score_lo)s::float8 AND %(score_hi)s::float8 THEN 'out_of_range'
           END AS reason
    FROM (SELECT user_id, theta, fitted_at FROM mirt_ability
          UNION ALL SELECT user_id, theta, fitted_at FROM student_topic_theta) s
    WHERE s.theta IS NOT NULL
      AND ((s.fitted_at >= ((%(window_start)s::date)::timestamp AT TIME ZONE 'UTC')
            AND s.fitted_at < ((%(window_end)s::date)::timestamp AT TIME ZONE 'UTC'))
           OR s.fitted_at > %(now)s::timestamptz)
),
f AS (
    SELECT CASE WHEN f.date > (%(now)s::timestamptz AT TIME ZONE 'UTC')::date THEN 'future_dated'
                WHEN f.user_id IS NULL OR f.user_id = '' THEN 'null_user_id'
                WHEN f.theta_estimate IN ('NaN'::numeric, 'Infinity'::numeric, '-Infinity'::numeric)
                    THEN 'non_finite_theta'
                WHEN NOT f.theta_estimate BETWEEN %(score_lo)s::numeric AND %(score_hi)s::numeric THEN 'out_of_range'
           END AS reason
    FROM features_topic_daily f
    WHERE f.theta_estimate IS NOT NULL
      AND ((f.date >= %(window_start)s::date AND f.date < %(window_end)s::date)
           OR f.date > (%(now)s::timestamptz AT TIME ZONE 'UTC')::date)
),
k AS (
    SELECT CASE WHEN k.week_start > (%(now)s::timestamptz AT TIME ZONE 'UTC')::date THEN 'future_dated'
                WHEN k.user_id IS NULL OR k.user_id = '' THEN 'null_user_id'
                WHEN jsonb_typeof(k.kpis -> 'ability_estimate') <> 'number' THEN 'non_finite_theta'
                -- numeric first (a jsonb number can exceed float8's range)
                WHEN NOT (k.kpis -> 'ability_estimate')::numeric BETWEEN %(score_lo)s::numeric AND %(score_hi)s::numeric
                    THEN 'out_of_range'
           END AS reason
    FROM weekly_kpi k
    WHERE jsonb_typeof(k.kpis -> 'ability_estimate') IS DISTINCT FROM 'null'
      AND k.kpis ? 'ability_estimate'
      AND ((k.week_start >= %(window_start)s::date AND k.week_start < %(window_end)s::date)
           OR k.week_start > (%(now)s::timestamptz AT TIME ZONE 'UTC')::date)
),
r AS (SELECT reason FROM th UNION ALL SELECT reason FROM f UNION ALL SELECT reason FROM k)
SELECT count(*) FILTER (WHERE reason = 'null_user_id') AS null_user_id,
       count(*) FILTER (WHERE reason = 'non_finite_theta') AS non_finite_theta,
       0::bigint AS invalid_attempts,
       count(*) FILTER (WHERE reason = 'future_dated') AS future_dated,
       count(*) FILTER (WHERE reason = 'out_of_range') AS out_of_range
FROM r
