-- A stored panel holds one row per student: her weeks (ascending), the week's score, its
-- source and its observations as arrays of one length. A million students' panel was 9.3 M
-- rows whose (panel_id, student_id, week) key was written row by row: most of weekly_scores's
-- time and 1.6 GB of WAL. Now it is a million rows and a million keys. Ids are compared as
-- bytes ("C"), the order in which every engine gets them. The rows of a panel as before, one
-- per student-week: the view growth_panel_rows (in week order within a student: ordinality).
CREATE TABLE growth_panel_by_student (
    panel_id     text NOT NULL,
    student_id   text COLLATE "C" NOT NULL,
    weeks        integer[] NOT NULL,
    scores       double precision[] NOT NULL,
    sources      text[] NOT NULL,
    observations integer[],
    PRIMARY KEY (panel_id, student_id),
    CHECK (cardinality(weeks) > 0 AND 0 <= ALL (weeks) AND cardinality(scores) = cardinality(weeks)
           AND cardinality(sources) = cardinality(weeks)
           AND (observations IS NULL OR cardinality(observations) = cardinality(weeks)))
);

INSERT INTO growth_panel_by_student (panel_id, student_id, weeks, scores, sources, observations)
SELECT panel_id, student_id, array_agg(week ORDER BY week), array_agg(score ORDER BY week),
       array_agg(source ORDER BY week),
       CASE WHEN bool_and(n IS NOT NULL) THEN array_agg(n ORDER BY week) END
FROM growth_panel GROUP BY panel_id, student_id;

DROP TABLE growth_panel;
ALTER TABLE growth_panel_by_student RENAME TO growth_panel;
ALTER INDEX growth_panel_by_student_pkey RENAME TO growth_panel_pkey;

CREATE VIEW growth_panel_rows AS
SELECT p.panel_id, p.student_id, r.week, r.score, r.source, r.n, r.nth
FROM growth_panel p,
     unnest(p.weeks, p.scores, p.sources, p.observations) WITH ORDINALITY AS r(week, score, source, n, nth);
