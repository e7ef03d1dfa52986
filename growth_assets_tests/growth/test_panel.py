"""weekly_scores's panel against hand-built fixtures (spec §1, §5)."""

from datetime import date, datetime, timedelta, timezone

import numpy as np
import psycopg
import pytest

from growth_assets.defs.growth.panel import PrunedPanels, Window, build_panel, load_panel, prune_panels
from growth_assets.model.contract import ContractError

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=timezone.utc)
MONDAY = date(2026, 11, 23)  # window: weeks starting 2026-08-31 .. 2026-11-16


def insert(conn, table, rows):
    cols = list(rows[0])
    q = f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join(['%s'] * len(cols))})"
    with conn.cursor() as cur:
        cur.executemany(q, [tuple(r[c] for c in cols) for r in rows])


@pytest.fixture
def fixture_db(conn):
    ma = lambda u, th, ts: {"user_id": u, "theta": th, "se": 0.2, "model": "m", "version": "v", "fitted_at": ts}
    insert(conn, "mirt_ability", [
        ma("A", 1.0, "2026-08-31T00:00:00Z"),          # week 0, first second of the window
        ma("A", 2.0, "2026-09-06T23:59:59Z"),          # week 0, last second: mean 1.5
        ma("A", 0.5, "2026-09-14T12:00:00Z"),          # week 2 (week 1 has no mirt row)
        ma("A", float("nan"), "2026-09-21T12:00:00Z"),  # week 3: NaN, left out
        ma("A", float("inf"), "2026-09-22T12:00:00Z"),  # week 3: inf, left out
        ma("A", 7.0, "2026-08-31T00:30:00+09:00"),     # 2026-08-30 15:30 UTC: before the window
        ma("A", 8.0, "2026-11-23T01:00:00Z"),          # the run's own week: not complete, left out
        ma(None, 3.0, "2026-09-01T00:00:00Z"),         # NULL id, left out
        ma("A", 9.0, "2030-01-07T00:00:00Z"),          # dated in the future
    ])
    sti = lambda u, t, th, ts: {"user_id": u, "topic_id": t, "theta": th, "se": 0.3, "model": "m",
                                "version": "v", "fitted_at": ts}
    insert(conn, "student_topic_theta", [
        sti("A", "t1", 9.0, "2026-09-01T00:00:00Z"),   # week 0: mirt_ability wins
        sti("A", "t1", 3.0, "2026-09-08T00:00:00Z"),   # week 1: mean over topics
        sti("A", "t1", 3.0, "2026-09-09T00:00:00Z"),   #   (t1 twice: still one topic)
        sti("A", "t2", 5.0, "2026-09-10T00:00:00Z"),   # -> (3 + 5) / 2 = 4
    ])
    ftd = lambda u, t, d, th, att=10, cor=5: {"user_id": u, "topic_id": t, "date": d, "attempts": att,
                                              "correct": cor, "avg_time_ms": 1000, "theta_estimate": th}
    insert(conn, "features_topic_daily", [
        ftd("B", "t1", "2026-09-21", 0.2, 10, 7),      # B only here: week 3
        ftd("B", "t2", "2026-09-27", 0.4, 10, 9),      # week 3 (Sunday): mean 0.3; accuracy 16/20
        ftd("B", "t1", "2026-11-22", 0.9),             # week 11: the last week of the window
        ftd("B", "t1", "2026-11-23", 5.0),             # the run's own week: left out
        ftd("A", "t1", "2026-08-31", 6.0, 4, 1),       # A week 0: theta loses to mirt; accuracy 0.25
        ftd("A", "t2", "2026-09-01", None, 5, 7),      # correct > attempts: left out of accuracy
    ])
    insert(conn, "weekly_kpi", [
        {"user_id": "C", "week_start": "2026-11-09", "kpis": '{"ability_estimate": 1.1, "I_t": 3}'},
        {"user_id": "D", "week_start": "2026-11-09", "kpis": '{"ability_estimate": "high"}'},
    ])
    conn.commit()
    return conn


def rows(df):
    return {(r.student_id, r.week): (round(r.score, 9), r.source) for r in df.itertuples()}


def stored(conn, panel_id):
    """The stored panel rows with their source, one per student-week (growth_panel_rows)."""
    import pandas as pd

    cur = conn.execute("SELECT student_id, week, score, source FROM growth_panel_rows WHERE panel_id = %s"
                       " ORDER BY student_id, week", (panel_id,))
    return pd.DataFrame(cur.fetchall(), columns=["student_id", "week", "score", "source"])


EXPECTED_THETA = {
    ("A", 0): (1.5, "mirt_ability"),
    ("A", 1): (4.0, "student_topic_theta"),
    ("A", 2): (0.5, "mirt_ability"),
    ("B", 3): (0.3, "features_topic_daily"),
    ("B", 11): (0.9, "features_topic_daily"),
    ("C", 10): (1.1, "weekly_kpi"),
}


@pytest.mark.parametrize("as_of", [MONDAY, date(2026, 11, 25)], ids=["monday", "mid-week"])
def test_theta_panel_is_calendar_indexed_with_the_first_source_per_student_week(fixture_db, as_of):
    window = Window(as_of, 12)
    assert (window.start, window.end, window.last_week) == (date(2026, 8, 31), MONDAY, date(2026, 11, 16))
    info = build_panel(fixture_db, window, "theta", now=NOW)
    panel = stored(fixture_db, info.panel_id)
    assert rows(panel) == EXPECTED_THETA
    # what brms_posterior reads: the same rows as columns (ids once, a code per row)
    cols = load_panel(fixture_db, info.panel_id)
    assert cols.student_ids.tolist() == ["A", "B", "C"]
    assert {(cols.student_ids[c], w): round(y, 9) for c, w, y in zip(cols.student, cols.week, cols.score)} == {
        k: v[0] for k, v in EXPECTED_THETA.items()}
    assert info.n_rows == 6 and info.n_students == 3
    assert info.rows_by_source == {"mirt_ability": 2, "student_topic_theta": 1,
                                   "features_topic_daily": 2, "weekly_kpi": 1}
    assert info.excluded["non_finite_theta"] == 3  # NaN, inf, and D's ability_estimate "high"
    assert info.excluded["null_user_id"] == 1
    assert info.excluded["future_dated"] == 1
    assert info.students_with_3_weeks == 1
    # the observations behind each student-week, counted in the pass that built the panel
    n = dict(((r[0], r[1]), r[2]) for r in fixture_db.execute(
        "SELECT student_id, week, n FROM growth_panel_rows WHERE panel_id = %s", (info.panel_id,)))
    assert all(v >= 1 for v in n.values()) and info.observations == sum(n.values())
    assert info.non_finite == 0


def test_a_panel_of_the_row_per_week_layout_migrates_and_reads_back_in_code_point_order(pg_admin_url):
    """A panel stored before 0008 (a row per student-week) in a database of a language's
    collation ("_z", "a", "B") becomes a row per student whose arrays are the student's
    weeks in order; load_panel reads it in code-point order ("B", "_z", "a") without a sort,
    and growth_panel_rows gives back the rows as they were."""
    import psycopg

    from growth_assets.db import connect
    from growth_assets.db.migrate import migrate_through

    name = "panel_icu_order"
    with psycopg.connect(pg_admin_url, autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}"')
        c.execute(f"CREATE DATABASE \"{name}\" TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US'"
                  " LOCALE 'C.UTF-8'")
    url = pg_admin_url.rsplit("/", 1)[0] + "/" + name
    try:
        migrate_through(url, "0007_window_sums")
        rows = [("a", 2, 1.5, 3), ("a", 0, 1.0, 1), ("B", 1, 2.0, 2), ("_z", 0, 3.0, 1), ("_z", 3, 3.5, 1),
                ("B", 0, 2.5, 4)]
        with connect(url) as conn:
            conn.execute("INSERT INTO growth_panel (panel_id, student_id, week, score, source, n)"
                         " SELECT 'p', u, w, y, 'mirt_ability', n"
                         " FROM unnest(%s::text[], %s::int[], %s::float8[], %s::int[]) AS r(u, w, y, n)",
                         [list(c) for c in zip(*rows)])
            conn.execute("INSERT INTO growth_panel (panel_id, student_id, week, score, source)"
                         " VALUES ('old', 'x', 0, 0.5, 'weekly_kpi')")  # a panel from before 0006: n NULL
            assert [r[0] for r in conn.execute(
                "SELECT DISTINCT student_id FROM growth_panel WHERE panel_id = 'p' ORDER BY 1")] == [
                "_z", "a", "B"]  # the database's order is not the code points'
            conn.commit()
        assert migrate_through(url, "0008_panel_row_per_student") == ["0008_panel_row_per_student"]
        with connect(url) as conn:
            panel = load_panel(conn, "p")
            assert conn.execute("SELECT student_id, weeks, observations FROM growth_panel WHERE panel_id = 'p'"
                                " ORDER BY student_id").fetchall() == [
                ("B", [0, 1], [4, 2]), ("_z", [0, 3], [1, 1]), ("a", [0, 2], [1, 3])]
            assert conn.execute("SELECT student_id, week, score, source, n FROM growth_panel_rows"
                                " WHERE panel_id = 'p' ORDER BY student_id, nth").fetchall() == [
                (u, w, y, "mirt_ability", n) for u, w, y, n in sorted(rows, key=lambda r: (r[0], r[1]))]
            assert conn.execute("SELECT weeks, sources, observations FROM growth_panel WHERE panel_id = 'old'"
                                ).fetchall() == [([0], ["weekly_kpi"], None)]
        assert panel.student_ids.tolist() == ["B", "_z", "a"]
        got = [(panel.student_ids[c], int(w), float(y)) for c, w, y in zip(panel.student, panel.week, panel.score)]
        assert got == sorted([r[:3] for r in rows], key=lambda r: (r[0], r[1]))
    finally:
        with psycopg.connect(pg_admin_url, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.parametrize("ids", [
    ["s0000001", "s0000002", "s0000010", "ü-7"],  # read through the text COPY, split as a whole
    ["a\\b", "tab\there", "new\nline", "z"],  # ids that text COPY escapes: read row by row
])
def test_load_panel_gives_back_the_stored_ids_weeks_and_scores(conn, ids):
    """What load_panel reads is what the panel table holds: each id exactly (whatever text
    COPY would escape in it), in code-point order, with her weeks and scores."""
    rows = {u: ([0, 2, 5][:1 + i % 3], [0.5 * i + j for j in range(1 + i % 3)]) for i, u in enumerate(ids)}
    for u, (w, y) in rows.items():
        conn.execute("INSERT INTO growth_panel (panel_id, student_id, weeks, scores, sources)"
                     " VALUES ('p', %s, %s, %s, array_fill('mirt_ability'::text, ARRAY[%s]))", (u, w, y, len(w)))
    panel = load_panel(conn, "p")
    assert panel.student_ids.tolist() == sorted(ids, key=lambda u: u.encode())
    got = {}
    for c, w, y in zip(panel.student.tolist(), panel.week.tolist(), panel.score.tolist()):
        got.setdefault(panel.student_ids[c], ([], []))
        got[panel.student_ids[c]][0].append(w)
        got[panel.student_ids[c]][1].append(y)
    assert got == rows


class _RebuiltBeforeTheRows:
    """A connection with another session's rebuild of the panel (student A loses weeks)
    committed just before the rows' COPY."""

    def __init__(self, conn, db_url, window):
        self._conn, self._url, self._window = conn, db_url, window

    def __getattr__(self, name):
        return getattr(self._conn, name)

    def cursor(self, *a, **k):
        from growth_assets.db import connect

        with connect(self._url) as other:
            other.execute("DELETE FROM mirt_ability WHERE user_id = 'A'")
            build_panel(other, self._window, "theta", now=NOW)
        return self._conn.cursor(*a, **k)


def test_a_panel_rebuilt_while_it_is_read_is_read_as_it_was(fixture_db, db_url):
    """On an idle connection load_panel reads ids and rows at once on two connections in one
    exported snapshot: a rebuild committed meanwhile (another run of the same partition) is
    not seen by either read, so the panel comes back whole, as it was when the read began."""
    w = Window(MONDAY, 12)
    info = build_panel(fixture_db, w, "theta", now=NOW)
    fixture_db.commit()
    before = load_panel(fixture_db, info.panel_id)
    during = load_panel(_RebuiltBeforeTheRows(fixture_db, db_url, w), info.panel_id)
    assert during.n_rows == info.n_rows == before.n_rows
    assert during.student_ids.tolist() == before.student_ids.tolist()
    for col in ("student", "week", "score"):
        np.testing.assert_array_equal(getattr(during, col), getattr(before, col))
    assert load_panel(fixture_db, info.panel_id).n_rows < info.n_rows  # the new panel, read whole


def test_a_panel_rebuilt_while_it_is_read_in_a_callers_transaction_is_refused_not_mixed(fixture_db, db_url):
    """Inside a caller's open transaction (read committed) the two reads run in turn and may
    see different snapshots: a rebuild committed between them must not pair one panel's ids
    with the other's rows."""
    w = Window(MONDAY, 12)
    info = build_panel(fixture_db, w, "theta", now=NOW)
    fixture_db.commit()
    fixture_db.execute("SELECT 1")  # the caller's transaction is open
    with pytest.raises(ContractError, match="panel_id: was rebuilt while it was read"):
        load_panel(_RebuiltBeforeTheRows(fixture_db, db_url, w), info.panel_id)
    fixture_db.rollback()
    assert load_panel(fixture_db, info.panel_id).n_rows < info.n_rows  # the new panel, read whole


def test_load_panel_reads_on_two_connections_at_once_and_alone_when_it_cannot(fixture_db, db_url, monkeypatch):
    """The ids are read by a second connection while the first reads the rows (both in the
    server at once); where no second connection can be had, the first reads them too, in the
    same snapshot, and the panel is the same."""
    from growth_assets.defs.growth import panel as panel_mod

    info = build_panel(fixture_db, Window(MONDAY, 12), "theta", now=NOW)
    fixture_db.commit()
    seen = []
    real = panel_mod._ids_text

    def watched(c, panel_id):
        seen.append(c.pgconn.backend_pid)
        return real(c, panel_id)

    monkeypatch.setattr(panel_mod, "_ids_text", watched)
    both = load_panel(fixture_db, info.panel_id)
    assert seen and seen[-1] != fixture_db.pgconn.backend_pid

    def refused(*a, **k):
        raise psycopg.OperationalError("too many clients already")

    monkeypatch.setattr(panel_mod.psycopg, "connect", refused)
    alone = load_panel(fixture_db, info.panel_id)
    assert seen[-1] == fixture_db.pgconn.backend_pid
    assert alone.student_ids.tolist() == both.student_ids.tolist()
    for col in ("student", "week", "score"):
        np.testing.assert_array_equal(getattr(alone, col), getattr(both, col))


def test_rebuilding_a_panel_replaces_it(fixture_db):
    w = Window(MONDAY, 12)
    first = build_panel(fixture_db, w, "theta", now=NOW)
    again = build_panel(fixture_db, w, "theta", now=NOW)
    assert first.panel_id == again.panel_id
    assert load_panel(fixture_db, again.panel_id).n_rows == 6


def test_accuracy_panel_is_on_the_raw_0_1_scale(fixture_db):
    info = build_panel(fixture_db, Window(MONDAY, 12), "accuracy", now=NOW)
    panel = stored(fixture_db, info.panel_id)
    got = {(r.student_id, r.week): round(r.score, 9) for r in panel.itertuples()}
    # B wk 11 has attempts 10 / correct 5 from the helper's defaults
    assert got == {("A", 0): 0.25, ("B", 3): 0.8, ("B", 11): 0.5}
    assert panel["score"].between(0, 1).all()
    assert info.excluded["invalid_attempts"] == 1
    assert set(panel["source"]) == {"features_topic_daily"}


def test_lookback_shorter_window(fixture_db):
    info = build_panel(fixture_db, Window(MONDAY, 2), "theta", now=NOW)
    panel = stored(fixture_db, info.panel_id)
    # weeks starting 2026-11-09 (0) and 2026-11-16 (1)
    assert rows(panel) == {("B", 1): (0.9, "features_topic_daily"), ("C", 0): (1.1, "weekly_kpi")}


def test_partition_key_maps_to_the_window_that_ends_with_it():
    w = Window.for_partition("2026-11-16", 12)
    assert w.as_of == MONDAY and w.start == date(2026, 8, 31) and w.week_start == MONDAY
    with pytest.raises(ContractError, match="partition_key: must be a Monday"):
        Window.for_partition("2026-11-17", 12)
    with pytest.raises(ContractError, match="partition_key"):
        Window.for_partition("last week", 12)


def test_unknown_score_source_names_the_setting(conn):
    with pytest.raises(ContractError, match="BRMS_SCORE_SOURCE"):
        build_panel(conn, Window(MONDAY, 12), "zscore", now=NOW)


def test_every_reason_of_every_source_is_counted_once(conn):
    """The exclusion counts (rows of the sources the panel left out): each reason in each
    source that can have it, inside the window, before it and dated after now."""
    ma = lambda u, th, ts: {"user_id": u, "theta": th, "se": 0.2, "model": "m", "version": "v", "fitted_at": ts}  # noqa: E731
    insert(conn, "mirt_ability", [
        ma("", 1.0, "2026-09-01T00:00:00Z"), ma(None, 1.0, "2026-09-02T00:00:00Z"),  # 2 ids missing
        ma("A", float("nan"), "2026-09-03T00:00:00Z"),  # not finite
        ma("A", 5000.0, "2026-09-04T00:00:00Z"),  # out of BRMS_SCORE_RANGE
        ma(None, float("nan"), "2026-08-01T00:00:00Z"),  # before the window: not counted
        ma("A", 0.5, "2030-01-07T00:00:00Z"),  # dated after now
        ma("A", 0.5, "2026-09-05T00:00:00Z"),  # kept
        ma(None, float("nan"), "2026-09-06T00:00:00Z"),  # two faults: one row, counted once (its id)
        ma("", 5000.0, "2026-09-07T00:00:00Z"),  # the same
        ma("A", None, "2026-09-08T00:00:00Z"),  # no theta: no score, nothing left out
    ])
    sti = lambda u, th, ts: {"user_id": u, "topic_id": "t", "theta": th, "se": 0.3, "model": "m",  # noqa: E731
                             "version": "v", "fitted_at": ts}
    insert(conn, "student_topic_theta", [
        sti(None, 1.0, "2026-09-01T00:00:00Z"), sti("A", float("-inf"), "2026-09-02T00:00:00Z"),
        sti("A", -2000.0, "2026-09-03T00:00:00Z"), sti("A", 1.0, "2031-01-06T00:00:00Z"),
    ])
    ftd = lambda d, th, att=10, cor=5: {"user_id": "B", "topic_id": "t", "date": d, "attempts": att,  # noqa: E731
                                        "correct": cor, "avg_time_ms": 1000, "theta_estimate": th}
    insert(conn, "features_topic_daily", [
        ftd("2026-09-01", float("nan")), ftd("2026-09-02", 0.1, 0, 0), ftd("2026-09-03", 0.1, 3, 4),
        ftd("2026-09-04", 1500.0), ftd("2030-02-01", 0.1), ftd("2026-08-01", 0.1, 0, 0),
    ])
    insert(conn, "features_topic_daily", [  # an empty id: the panel drops it, so it is counted
        {"user_id": "", "topic_id": "t", "date": "2026-09-05", "attempts": 4, "correct": 2,
         "avg_time_ms": 1000, "theta_estimate": 0.4}])
    insert(conn, "weekly_kpi", [
        {"user_id": "C", "week_start": "2026-09-07", "kpis": '{"ability_estimate": 1e6}'},
        {"user_id": "C", "week_start": "2026-09-14", "kpis": '{"ability_estimate": 0.5}'},
        {"user_id": "C", "week_start": "2026-09-21", "kpis": '{"ability_estimate": "NaN"}'},  # not a number
        {"user_id": "", "week_start": "2026-09-28", "kpis": '{"ability_estimate": 0.3}'},  # no id
        {"user_id": "C", "week_start": "2026-10-05", "kpis": '{"P": 0.4}'},  # no score: nothing left out
        {"user_id": "C", "week_start": "2030-01-07", "kpis": '{"ability_estimate": 0.2}'},  # dated after now
    ])
    conn.commit()
    info = build_panel(conn, Window(MONDAY, 12), "theta", now=NOW)
    # the features rows with attempts 0 or correct > attempts have a theta: the theta panel keeps
    # them (they were counted as invalid_attempts), and each row is counted once
    assert info.excluded == {"null_user_id": 7, "non_finite_theta": 4, "invalid_attempts": 0,
                             "future_dated": 4, "out_of_range": 4}
    # the accuracy panel reads features_topic_daily alone: only its rows are counted
    info = build_panel(conn, Window(MONDAY, 12), "accuracy", now=NOW)
    assert info.excluded == {"null_user_id": 1, "non_finite_theta": 0, "invalid_attempts": 2,
                             "future_dated": 1, "out_of_range": 0}


def test_a_stored_row_whose_weeks_are_out_of_order_is_read_in_week_order(conn):
    """A student's arrays written out of week order (by hand, or an older writer) come back
    as rows in (student, week) order, each score with its own week; a week twice is refused."""
    conn.execute("INSERT INTO growth_panel (panel_id, student_id, weeks, scores, sources) VALUES"
                 " ('p', 'a', '{5,0,2}', '{1.5,0.5,1.0}', '{x,x,x}'), ('p', 'b', '{1,3}', '{2.0,3.0}', '{x,x}')")
    panel = load_panel(conn, "p")
    assert [(panel.student_ids[c], w, y) for c, w, y in zip(panel.student.tolist(), panel.week.tolist(),
                                                            panel.score.tolist())] == [
        ("a", 0, 0.5), ("a", 2, 1.0), ("a", 5, 1.5), ("b", 1, 2.0), ("b", 3, 3.0)]
    conn.execute("UPDATE growth_panel SET weeks = '{3,1,3}' WHERE student_id = 'a'")
    with pytest.raises(ContractError, match="duplicate student-week row"):
        load_panel(conn, "p")



def _panels(conn) -> dict[str, int]:
    return dict(conn.execute("SELECT m.panel_id, (SELECT count(*) FROM growth_panel p WHERE p.panel_id = m.panel_id)"
                             " FROM growth_panel_meta m").fetchall())


def test_prune_keeps_the_newest_windows_and_recent_builds_and_deletes_the_rest_whole(fixture_db):
    """``prune_panels``: the newest ``keep_weeks`` windows stay, and so does any panel built in
    the last ``keep_weeks`` weeks (a backfill's); every other panel loses its rows and its
    meta row, in one transaction, and is reported oldest window first."""
    conn = fixture_db
    assert prune_panels(conn, 2) == PrunedPanels((), 0, None)  # no panel stored yet
    mondays = [date(2026, 10, 26), date(2026, 11, 2), date(2026, 11, 9), date(2026, 11, 16), MONDAY]
    ids = {m: build_panel(conn, Window(m, 12), "theta", NOW).panel_id for m in mondays}
    conn.commit()
    before = _panels(conn)
    assert before.keys() == set(ids.values()) and all(n >= 2 for n in before.values())  # A and B, C in some
    # every panel built 30 days ago but 2026-11-02's (a backfill's, built now)
    conn.execute("UPDATE growth_panel_meta SET created_at = now() - interval '30 days' WHERE panel_id <> %s",
                 (ids[date(2026, 11, 2)],))
    conn.commit()
    pruned = prune_panels(conn, 2)  # keeps the windows ending 2026-11-16 and 2026-11-23
    gone = (ids[date(2026, 10, 26)], ids[date(2026, 11, 9)])
    assert pruned == PrunedPanels(gone, before[gone[0]] + before[gone[1]], MONDAY)
    assert _panels(conn) == {ids[m]: before[ids[m]] for m in (date(2026, 11, 2), date(2026, 11, 16), MONDAY)}
    assert conn.execute("SELECT count(*) FROM growth_panel WHERE panel_id = ANY(%s)",
                        (list(pruned.panel_ids),)).fetchone()[0] == 0
    assert prune_panels(conn, 2).panel_ids == ()  # nothing more to do
    # a week later the backfill's panel is old too, and one window fewer is kept
    later = datetime.now(timezone.utc) + timedelta(weeks=2, days=1)
    assert prune_panels(conn, 1, now=later).panel_ids == (ids[date(2026, 11, 2)], ids[date(2026, 11, 16)])
    assert _panels(conn) == {ids[MONDAY]: before[ids[MONDAY]]}


@pytest.mark.parametrize("keep", [0, -1, True, 1.5, "2", None])
def test_prune_refuses_a_retention_that_is_not_a_whole_number_of_weeks(conn, keep):
    with pytest.raises(ContractError) as e:
        prune_panels(conn, keep)
    assert e.value.field == "keep_weeks" and e.value.value == keep


@pytest.mark.parametrize("path", ["one statement", "halves"])
def test_a_panel_rebuilt_while_the_retention_runs_is_kept_whole_and_neither_fails(fixture_db, db_url, monkeypatch,
                                                                                  path):
    """A backfill rebuilds an old panel while ``prune_panels`` runs: the prune waits for the
    build and then keeps the panel (built just now), and neither is aborted. The builder took
    the rows' locks first and the meta row's last, the prune the other way round: a deadlock,
    in which the build was the one aborted and the old panel pruned."""
    import threading
    import time

    from growth_assets.db import connect
    from growth_assets.defs.growth import panel as panel_mod

    conn = fixture_db
    old = build_panel(conn, Window(date(2026, 10, 26), 12), "theta", NOW)
    build_panel(conn, Window(MONDAY, 12), "theta", NOW)
    conn.execute("UPDATE growth_panel_meta SET created_at = now() - interval '30 days' WHERE panel_id = %s",
                 (old.panel_id,))
    conn.commit()
    if path == "halves":
        monkeypatch.setattr(panel_mod, "SPLIT_SAMPLE_PERCENT", 100.0)
        monkeypatch.setattr(panel_mod, "SPLIT_MIN_SAMPLE", 1)
        owner, name = panel_mod._Halves, "store"
    else:
        monkeypatch.setattr(panel_mod, "SPLIT_MIN_SAMPLE", 10**12)
        owner, name = panel_mod, "_exclusions"  # called after the one statement stored the rows
    real, pruned, waited = getattr(owner, name), {}, []

    def prune():
        try:
            with connect(db_url) as c:
                pruned["ok"] = prune_panels(c, 2)
        except Exception as exc:  # noqa: BLE001  (reported by the assertion below)
            pruned["error"] = exc

    def rows_stored_then_prune(*a, **k):
        out = real(*a, **k)
        t = threading.Thread(target=prune)
        t.start()
        waited.append(t)
        with connect(db_url) as watch:  # until the prune waits for a lock the build holds
            deadline = time.monotonic() + 30
            while not watch.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                                    " AND datname = current_database()").fetchone()[0]:
                assert time.monotonic() < deadline and t.is_alive(), pruned
                time.sleep(0.02)
                watch.rollback()
        return out

    monkeypatch.setattr(owner, name, rows_stored_then_prune)
    rebuilt = build_panel(conn, Window(date(2026, 10, 26), 12), "theta", NOW)
    conn.commit()
    waited[0].join(30)
    assert pruned == {"ok": PrunedPanels((), 0, MONDAY)}
    assert _panels(conn)[old.panel_id] == rebuilt.n_students == old.n_students


@pytest.mark.parametrize("weeks, scores, field", [("{0,NULL,2}", "{1.0,2.0,3.0}", "int4"),
                                                  ("{0,1,2}", "{1.0,NULL,3.0}", "float8")])
def test_a_stored_null_element_is_refused_naming_the_student_and_the_null(conn, weeks, scores, field):
    """growth_panel's CHECK lets a NULL element in (0 <= ALL(..) is NULL). It was refused with
    the data's size alone ("291 bytes expected ... got 287"), naming neither the row nor NULL
    (found by review); the first row of another layout is now found and named."""
    for u, w, y in [("a", "{0,1}", "{1.0,2.0}"), ("bad-student", weeks, scores), ("c", "{0}", "{0.5}")]:
        conn.execute("INSERT INTO growth_panel (panel_id, student_id, weeks, scores, sources) VALUES"
                     " ('p', %s, %s::int[], %s::float8[], array_fill('mirt_ability'::text, ARRAY[cardinality(%s::int[])]))",
                     (u, w, y, w))
    conn.commit()
    with pytest.raises(ContractError, match=rf"row 1: {field}\[\] NULL flag is 1, expected 0 \(an element is NULL\)"
                                            r" \(student 'bad-student'\)"):
        load_panel(conn, "p")
