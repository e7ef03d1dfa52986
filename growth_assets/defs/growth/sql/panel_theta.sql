-- The weekly panel, theta mode (spec §1, §5): one row per (student, week) in the window,
-- score = mean of that student's observations in that week from the FIRST source that has
-- one: mirt_ability, then student_topic_theta (mean over topics), then
-- features_topic_daily.theta_estimate (mean over topics and days), then
-- weekly_kpi.kpis->>'ability_estimate'. week = whole weeks since the window's first Monday
-- (calendar-based, UTC). Non-finite values, values outside [%(score_lo)s, %(score_hi)s]
-- (BRMS_SCORE_RANGE: one absurd value must not overflow avg() and stop everyone's run),
-- NULL/empty ids and rows dated after %(now)s are
-- left out (counted by panel_exclusions.sql).
-- every source's values with their priority: one row per observation (student_topic_theta:
-- per topic and week, averaged first, so each topic counts once), ids compared as bytes ("C":
-- one sort of millions of ids costs several times more in a language's collation). The
-- window's bounds are the parameters themselves (a CTE of them hid the dates from the planner:
-- 30 times too few rows estimated, no parallel scans; 37-39 s against 28 s at a million students)
WITH observed AS (
    SELECT m.user_id COLLATE "C" AS student_id,
           (date_trunc('week', m.fitted_at AT TIME ZONE 'UTC')::date - %(window_start)s::date) / 7 AS week,
           m.theta AS score, 1 AS n, 1 AS priority
    FROM mirt_ability m
    WHERE m.fitted_at >= ((%(window_start)s::date)::timestamp AT TIME ZONE 'UTC')
      AND m.fitted_at < ((%(window_end)s::date)::timestamp AT TIME ZONE 'UTC') AND m.fitted_at <= %(now)s::timestamptz
      AND m.user_id IS NOT NULL AND m.user_id <> ''
      AND (%(users)s::text[] IS NULL OR m.user_id = ANY (%(users)s::text[]))
      AND m.theta IS NOT NULL AND m.theta NOT IN ('NaN', 'Infinity', '-Infinity')
      AND m.theta BETWEEN %(score_lo)s::float8 AND %(score_hi)s::float8
    UNION ALL
    -- a topic-week's calibrations averaged in ascending order (see per_source)
    SELECT c.user_id COLLATE "C", c.week, avg(c.theta), count(*), 2
    FROM (SELECT t.user_id, t.topic_id, t.theta,
                 (date_trunc('week', t.fitted_at AT TIME ZONE 'UTC')::date - %(window_start)s::date) / 7 AS week
          FROM student_topic_theta t
          WHERE t.fitted_at >= ((%(window_start)s::date)::timestamp AT TIME ZONE 'UTC')
            AND t.fitted_at < ((%(window_end)s::date)::timestamp AT TIME ZONE 'UTC') AND t.fitted_at <= %(now)s::timestamptz
            AND t.user_id IS NOT NULL AND t.user_id <> ''
            AND (%(users)s::text[] IS NULL OR t.user_id = ANY (%(users)s::text[]))
            AND t.theta IS NOT NULL AND t.theta NOT IN ('NaN', 'Infinity', '-Infinity')
            AND t.theta BETWEEN %(score_lo)s::float8 AND %(score_hi)s::float8
          ORDER BY t.user_id, t.topic_id, 4, t.theta) c
    GROUP BY c.user_id, c.topic_id, c.week
    UNION ALL
    SELECT f.user_id COLLATE "C",
           (date_trunc('week', f.date::timestamp)::date - %(window_start)s::date) / 7,
           f.theta_estimate::double precision, 1, 3
    FROM features_topic_daily f
    WHERE f.date >= %(window_start)s::date AND f.date < %(window_end)s::date
      AND f.date <= (%(now)s::timestamptz AT TIME ZONE 'UTC')::date
      AND f.user_id IS NOT NULL AND f.user_id <> ''
      AND (%(users)s::text[] IS NULL OR f.user_id = ANY (%(users)s::text[]))
      AND f.theta_estimate IS NOT NULL
      AND f.theta_estimate NOT IN ('NaN'::numeric, 'Infinity'::numeric, '-Infinity'::numeric)
      AND f.theta_estimate BETWEEN %(score_lo)s::numeric AND %(score_hi)s::numeric
    UNION ALL
    -- a JSON number below float8's range (1e-400) is 0: its cast failed the whole panel
    SELECT k.user_id COLLATE "C", (k.week_start - %(window_start)s::date) / 7,
           CASE WHEN abs((k.kpis -> 'ability_estimate')::numeric) < 1e-307 THEN 0
                ELSE (k.kpis -> 'ability_estimate')::numeric::double precision END, 1, 4
    FROM weekly_kpi k
    WHERE k.week_start >= %(window_start)s::date AND k.week_start < %(window_end)s::date
      AND k.week_start <= (%(now)s::timestamptz AT TIME ZONE 'UTC')::date
      AND k.user_id IS NOT NULL AND k.user_id <> ''
      AND (%(users)s::text[] IS NULL OR k.user_id = ANY (%(users)s::text[]))
      AND jsonb_typeof(k.kpis -> 'ability_estimate') = 'number'
      -- numeric first (a jsonb number can exceed float8's range), as a CASE (AND has no order)
      AND CASE WHEN jsonb_typeof(k.kpis -> 'ability_estimate') = 'number'
               THEN (k.kpis -> 'ability_estimate')::numeric END BETWEEN %(score_lo)s::numeric AND %(score_hi)s::numeric
),
-- per student, week and source: the mean (one sort serves this and the choice below), of the
-- scores in ascending order: a sum of floats depends on its order, and rows that tie on
-- (student, week, source) come in scan order, which a plan or a concurrent scan can change
per_source AS (
    SELECT student_id, week, priority, avg(score) AS score, sum(n) AS n
    FROM (SELECT * FROM observed ORDER BY student_id, week, priority, score) o
    GROUP BY student_id, week, priority
)
SELECT DISTINCT ON (student_id, week) student_id, week::integer AS week, score,
       (ARRAY['mirt_ability', 'student_topic_theta', 'features_topic_daily', 'weekly_kpi'])[priority] AS source,
       n
FROM per_source
ORDER BY student_id, week, priority
