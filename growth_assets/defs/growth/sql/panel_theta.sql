-- The weekly panel, theta mode (spec §1, §5): one row per (student, week) in the window,
-- score = mean of that student's observations in that week from the FIRST source that has
-- one: mirt_ability, then student_topic_theta (mean over topics), then
-- features_topic_daily.theta_estimate (mean over topics and days), then
-- weekly_kpi.kpis->>'ability_estimate'. week = whole weeks since the window's first Monday
-- (calendar-based, UTC). Non-finite values, values outside [%(score_lo)s, %(score_hi)s]
-- (BRMS_SCORE_RANGE: one absurd value must not overflow avg() and stop everyone's run),
-- NULL/empty ids and rows dated after %(now)s are
-- left out (counted by panel_exclusions.sql).
WITH bounds AS (
    SELECT %(window_start)s::date AS ws, %(window_end)s::date AS we,
           (%(window_start)s::date)::timestamp AT TIME ZONE 'UTC' AS ts0,
           (%(window_end)s::date)::timestamp AT TIME ZONE 'UTC' AS ts1,
           %(now)s::timestamptz AS now_ts
),
ma AS (
    SELECT m.user_id AS student_id,
           (date_trunc('week', m.fitted_at AT TIME ZONE 'UTC')::date - b.ws) / 7 AS week,
           avg(m.theta) AS score, count(*) AS n
    FROM mirt_ability m, bounds b
    WHERE m.fitted_at >= b.ts0 AND m.fitted_at < b.ts1 AND m.fitted_at <= b.now_ts
      AND m.user_id IS NOT NULL AND m.user_id <> ''
      AND (%(users)s::text[] IS NULL OR m.user_id = ANY (%(users)s::text[]))
      AND m.theta IS NOT NULL AND m.theta NOT IN ('NaN', 'Infinity', '-Infinity')
      AND m.theta BETWEEN %(score_lo)s::float8 AND %(score_hi)s::float8
    GROUP BY 1, 2
),
sti_topic AS (
    SELECT t.user_id AS student_id, t.topic_id,
           (date_trunc('week', t.fitted_at AT TIME ZONE 'UTC')::date - b.ws) / 7 AS week,
           avg(t.theta) AS score, count(*) AS n
    FROM student_topic_theta t, bounds b
    WHERE t.fitted_at >= b.ts0 AND t.fitted_at < b.ts1 AND t.fitted_at <= b.now_ts
      AND t.user_id IS NOT NULL AND t.user_id <> ''
      AND (%(users)s::text[] IS NULL OR t.user_id = ANY (%(users)s::text[]))
      AND t.theta IS NOT NULL AND t.theta NOT IN ('NaN', 'Infinity', '-Infinity')
      AND t.theta BETWEEN %(score_lo)s::float8 AND %(score_hi)s::float8
    GROUP BY 1, 2, 3
),
sti AS (
    SELECT student_id, week, avg(score) AS score, sum(n) AS n FROM sti_topic GROUP BY 1, 2
),
ftd AS (
    SELECT f.user_id AS student_id,
           (date_trunc('week', f.date::timestamp)::date - b.ws) / 7 AS week,
           avg(f.theta_estimate::double precision) AS score, count(*) AS n
    FROM features_topic_daily f, bounds b
    WHERE f.date >= b.ws AND f.date < b.we AND f.date <= (b.now_ts AT TIME ZONE 'UTC')::date
      AND f.user_id IS NOT NULL AND f.user_id <> ''
      AND (%(users)s::text[] IS NULL OR f.user_id = ANY (%(users)s::text[]))
      AND f.theta_estimate IS NOT NULL
      AND f.theta_estimate NOT IN ('NaN'::numeric, 'Infinity'::numeric, '-Infinity'::numeric)
      AND f.theta_estimate BETWEEN %(score_lo)s::numeric AND %(score_hi)s::numeric
    GROUP BY 1, 2
),
wk AS (
    SELECT k.user_id AS student_id, (k.week_start - b.ws) / 7 AS week,
           avg((k.kpis ->> 'ability_estimate')::double precision) AS score, count(*) AS n
    FROM weekly_kpi k, bounds b
    WHERE k.week_start >= b.ws AND k.week_start < b.we
      AND k.week_start <= (b.now_ts AT TIME ZONE 'UTC')::date
      AND k.user_id IS NOT NULL AND k.user_id <> ''
      AND (%(users)s::text[] IS NULL OR k.user_id = ANY (%(users)s::text[]))
      AND jsonb_typeof(k.kpis -> 'ability_estimate') = 'number'
      -- numeric first (a jsonb number can exceed float8's range), as a CASE (AND has no order)
      AND CASE WHEN jsonb_typeof(k.kpis -> 'ability_estimate') = 'number'
               THEN (k.kpis -> 'ability_estimate')::numeric END BETWEEN %(score_lo)s::numeric AND %(score_hi)s::numeric
    GROUP BY 1, 2
),
candidates AS (
    SELECT student_id, week, score, n, 'mirt_ability' AS source, 1 AS priority FROM ma
    UNION ALL SELECT student_id, week, score, n, 'student_topic_theta', 2 FROM sti
    UNION ALL SELECT student_id, week, score, n, 'features_topic_daily', 3 FROM ftd
    UNION ALL SELECT student_id, week, score, n, 'weekly_kpi', 4 FROM wk
)
SELECT DISTINCT ON (student_id, week) student_id, week::integer AS week, score, source, n
FROM candidates
ORDER BY student_id, week, priority
