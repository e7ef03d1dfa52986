-- The weekly panel, accuracy mode (spec §5): sum(correct) / sum(attempts) of a student's
-- features_topic_daily rows in a week, on its raw 0..1 scale (no z-scoring). Rows with
-- attempts <= 0, correct < 0 or correct > attempts, NULL ids, or dates after %(now)s are left
-- out (counted by panel_exclusions.sql).
WITH bounds AS (
    SELECT %(window_start)s::date AS ws, %(window_end)s::date AS we, %(now)s::timestamptz AS now_ts
)
SELECT f.user_id AS student_id,
       ((date_trunc('week', f.date::timestamp)::date - b.ws) / 7)::integer AS week,
       sum(f.correct)::double precision / sum(f.attempts) AS score,
       'features_topic_daily' AS source,
       count(*) AS n
FROM features_topic_daily f, bounds b
WHERE f.date >= b.ws AND f.date < b.we AND f.date <= (b.now_ts AT TIME ZONE 'UTC')::date
  AND f.user_id IS NOT NULL AND f.user_id <> ''
  AND (%(users)s::text[] IS NULL OR f.user_id = ANY (%(users)s::text[]))
  AND f.attempts > 0 AND f.correct >= 0 AND f.correct <= f.attempts
GROUP BY 1, 2
