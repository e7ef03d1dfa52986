-- What the accuracy panel (panel_accuracy.sql) left out, by reason: its one source's rows
-- (features_topic_daily) in the window, or dated after %(now)s. Each row counts once, under its
-- first reason in this order: future_dated, null_user_id, invalid_attempts (attempts or
-- correct missing, attempts <= 0, correct < 0 or > attempts). The theta tables are not this
-- panel's: their rows are not counted. The same columns as panel_exclusions.sql.
WITH f AS (
    SELECT CASE WHEN f.date > (%(now)s::timestamptz AT TIME ZONE 'UTC')::date THEN 'future_dated'
                WHEN f.user_id IS NULL OR f.user_id = '' THEN 'null_user_id'
                WHEN f.attempts IS NULL OR f.attempts <= 0 OR f.correct IS NULL OR f.correct < 0
                     OR f.correct > f.attempts THEN 'invalid_attempts'
           END AS reason
    FROM features_topic_daily f
    WHERE (f.date >= %(window_start)s::date AND f.date < %(window_end)s::date)
       OR f.date > (%(now)s::timestamptz AT TIME ZONE 'UTC')::date
)
SELECT count(*) FILTER (WHERE reason = 'null_user_id') AS null_user_id,
       0::bigint AS non_finite_theta,
       count(*) FILTER (WHERE reason = 'invalid_attempts') AS invalid_attempts,
       count(*) FILTER (WHERE reason = 'future_dated') AS future_dated,
       0::bigint AS out_of_range
FROM f
