-- The weekly panel, accuracy mode (spec §5): sum(correct) / sum(attempts) of a student's
-- features_topic_daily rows in a week, on its raw 0..1 scale (no z-scoring). Rows with
-- attempts <= 0, correct < 0 or correct > attempts, NULL ids, or dates after %(now)s are left
-- out (counted by panel_exclusions.sql). Ids compared as bytes ("C"), in (student, week) order.
SELECT f.user_id COLLATE "C" AS student_id,
       ((date_trunc('week', f.date::timestamp)::date - %(window_start)s::date) / 7)::integer AS week,
       sum(f.correct)::double precision / sum(f.attempts) AS score,
       'features_topic_daily' AS source,
       count(*) AS n
FROM features_topic_daily f
WHERE f.date >= %(window_start)s::date AND f.date < %(window_end)s::date
  AND f.date <= (%(now)s::timestamptz AT TIME ZONE 'UTC')::date
  AND f.user_id IS NOT NULL AND f.user_id <> ''
  AND (%(users)s::text[] IS NULL OR f.user_id = ANY (%(users)s::text[]))
  AND f.attempts > 0 AND f.correct >= 0 AND f.correct <= f.attempts
GROUP BY 1, 2
ORDER BY 1, 2
