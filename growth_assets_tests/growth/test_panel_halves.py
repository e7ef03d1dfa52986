"""build_panel in two halves of its students, on two more connections in one snapshot: the
same panel as one statement builds, from one state of the sources, or nothing."""

import time

import psycopg
import pytest

from growth_assets.db import connect
from growth_assets.defs.growth import panel as panel_mod
from growth_assets.defs.growth.panel import Window, build_panel, panel_info
from growth_assets.demo.cohort import seed_cohort
from growth_assets_tests.growth.test_panel import MONDAY, NOW, fixture_db  # noqa: F401  (a fixture)

WINDOW = Window(MONDAY, 12)


@pytest.fixture
def halves(monkeypatch):
    """Every panel split (a sample of every page, however small), and the builds that were."""
    monkeypatch.setattr(panel_mod, "SPLIT_SAMPLE_PERCENT", 100.0)
    monkeypatch.setattr(panel_mod, "SPLIT_MIN_SAMPLE", 1)
    stored = []
    real = panel_mod._Halves.store

    def store(self, conn):
        stored.append(self)
        return real(self, conn)

    monkeypatch.setattr(panel_mod._Halves, "store", store)
    return stored


def _one_statement(monkeypatch):
    monkeypatch.setattr(panel_mod, "SPLIT_MIN_SAMPLE", 10**12)


def _stored(conn, panel_id: str) -> list[tuple]:
    return conn.execute("SELECT student_id, weeks, scores, sources, observations FROM growth_panel"
                        " WHERE panel_id = %s ORDER BY student_id", (panel_id,)).fetchall()


def _build(conn, source: str = "theta", window: Window = WINDOW):
    info = build_panel(conn, window, source, NOW)
    conn.commit()
    return info, _stored(conn, info.panel_id)


@pytest.mark.parametrize("source", ["theta", "accuracy"])
def test_two_halves_store_the_rows_and_counts_of_one_statement(fixture_db, halves, monkeypatch, source):  # noqa: F811
    two = _build(fixture_db, source)
    assert len(halves) == 1
    _one_statement(monkeypatch)
    one = _build(fixture_db, source)
    assert len(halves) == 1  # the second build did not split
    assert two == one and one[0].n_students >= 2
    assert panel_info(fixture_db, one[0].panel_id) == one[0]


def test_a_cohorts_panel_in_halves_is_the_one_statements_and_each_half_is_a_share(db_url, halves, monkeypatch):
    with connect(db_url) as conn:
        seed_cohort(conn, 3000, 12, seed=4, as_of=MONDAY)
        split = panel_mod._split(conn, "theta", {"window_start": WINDOW.start})
        conn.rollback()  # idle again: a build in a caller's transaction would not split
        two = _build(conn)
        _one_statement(monkeypatch)
        one = _build(conn)
    assert len(halves) == 1 and two == one and one[0].n_students > 2900
    ids = [r[0] for r in one[1]]
    below = sum(i < split for i in ids) / len(ids)  # python compares str by code point, as "C"
    assert 0.3 < below < 0.6, below  # the sample's 45 %


def test_the_halves_read_the_sources_as_they_were_when_the_build_began(fixture_db, db_url, halves, monkeypatch):  # noqa: F811
    """A score committed while the halves read (after the builder's snapshot) is in neither."""
    real = panel_mod._Halves._read

    def read_after_a_commit(c, query, params):
        with connect(db_url) as other:
            other.execute("INSERT INTO mirt_ability (user_id, theta, se, model, version, fitted_at)"
                          " VALUES ('A', 3.25, 0.2, 'late', 'v', '2026-10-06T12:00:00Z')"
                          " ON CONFLICT DO NOTHING")
        return real(c, query, params)

    monkeypatch.setattr(panel_mod._Halves, "_read", staticmethod(read_after_a_commit))
    info, rows = _build(fixture_db)
    assert len(halves) == 1
    assert fixture_db.execute("SELECT count(*) FROM mirt_ability WHERE model = 'late'").fetchone()[0] == 1
    a = dict((r[0], r) for r in rows)["A"]
    assert 5 not in a[1]  # 2026-10-06 is week 5: not in the panel that began before it
    monkeypatch.setattr(panel_mod._Halves, "_read", staticmethod(real))
    _, again = _build(fixture_db)
    assert 5 in dict((r[0], r) for r in again)["A"][1]  # a build after the commit has it


def test_without_more_connections_one_statement_builds_the_same_panel(fixture_db, halves, monkeypatch):  # noqa: F811
    two = _build(fixture_db)

    def refused(*a, **k):
        raise psycopg.OperationalError("too many clients already")

    monkeypatch.setattr(panel_mod.psycopg, "connect", refused)
    alone = _build(fixture_db)
    assert len(halves) == 1 and alone == two


def test_inside_a_callers_transaction_one_statement_builds_it(fixture_db, halves):  # noqa: F811
    """The other connections would not see what the caller has not committed."""
    fixture_db.execute("INSERT INTO mirt_ability (user_id, theta, se, model, version, fitted_at)"
                       " VALUES ('E', 0.5, 0.2, 'm', 'v', '2026-10-06T12:00:00Z')")
    info, rows = _build(fixture_db)  # the insert is the caller's, not yet committed
    assert not halves and "E" in [r[0] for r in rows]


def test_a_half_that_fails_leaves_the_stored_panel_as_it_was_and_no_reader_behind(fixture_db, db_url,  # noqa: F811
                                                                                   halves, monkeypatch):
    _one_statement(monkeypatch)
    before = _build(fixture_db)
    monkeypatch.setattr(panel_mod, "SPLIT_MIN_SAMPLE", 1)
    real = panel_mod._Halves._read

    def second_half_fails(c, query, params):
        if params["id_lo"] is not None:
            c.execute("SELECT 1 / 0")
        return real(c, query, params)

    monkeypatch.setattr(panel_mod._Halves, "_read", staticmethod(second_half_fails))
    fixture_db.execute("INSERT INTO mirt_ability (user_id, theta, se, model, version, fitted_at)"
                       " VALUES ('A', 3.25, 0.2, 'late', 'v', '2026-10-06T12:00:00Z')")
    fixture_db.commit()
    with pytest.raises(psycopg.errors.DivisionByZero):
        build_panel(fixture_db, WINDOW, "theta", NOW)
    fixture_db.rollback()
    assert (panel_info(fixture_db, before[0].panel_id), _stored(fixture_db, before[0].panel_id)) == before
    with connect(db_url) as c:
        others = c.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                           " AND pid NOT IN (pg_backend_pid(), %s)", (fixture_db.info.backend_pid,)).fetchone()[0]
    assert others == 0


def test_the_student_at_the_split_is_in_exactly_one_half(db_url, halves):
    """The halves' ranges are [.., split) and [split, ..): the student at the split is in one."""
    with connect(db_url) as conn:
        seed_cohort(conn, 400, 12, seed=9, as_of=MONDAY)
        split = panel_mod._split(conn, "theta", {"window_start": WINDOW.start})
        conn.rollback()
        info, rows = _build(conn)
    ids = [r[0] for r in rows]
    assert len(halves) == 1 and split in ids and len(ids) == len(set(ids)) == info.n_students


def test_a_role_that_may_not_make_temporary_tables_gets_the_panel_by_one_statement(fixture_db, halves):  # noqa: F811
    """A half keeps its rows in a temporary table: a builder whose role lacks TEMP on the
    database does not split, and its panel is built all the same."""
    conn = fixture_db
    role = f"growth_no_temp_{conn.info.backend_pid}"
    db = conn.execute("SELECT current_database()").fetchone()[0]
    conn.execute(f'REVOKE TEMPORARY ON DATABASE "{db}" FROM PUBLIC')
    conn.execute(f"CREATE ROLE {role} NOLOGIN")
    try:
        conn.execute(f"GRANT USAGE ON SCHEMA public, growth TO {role}")
        conn.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public, growth TO {role}")
        conn.execute(f"GRANT INSERT, UPDATE, DELETE ON growth_panel, growth_panel_meta TO {role}")
        conn.execute(f"SET ROLE {role}")
        conn.commit()
        assert not conn.execute("SELECT has_database_privilege(current_database(), 'TEMP')").fetchone()[0]
        conn.rollback()
        info, rows = _build(conn)
        assert not halves and info.n_students >= 2 and len(rows) == info.n_students
    finally:
        conn.rollback()
        conn.execute("RESET ROLE")
        conn.execute(f"DROP OWNED BY {role}")
        conn.execute(f"DROP ROLE {role}")
        conn.execute(f'GRANT TEMPORARY ON DATABASE "{db}" TO PUBLIC')
        conn.commit()


def test_a_half_waiting_its_turn_outlives_the_servers_idle_in_transaction_timeout(fixture_db, db_url,  # noqa: F811
                                                                                   halves, monkeypatch):
    """The second half, read, waits idle in its transaction while the builder stores the
    first (seconds at a million students): a server whose idle_in_transaction_session_timeout
    is shorter must not end it, and so the build."""
    db = fixture_db.execute("SELECT current_database()").fetchone()[0]
    fixture_db.execute(f"ALTER DATABASE \"{db}\" SET idle_in_transaction_session_timeout = '300ms'")
    fixture_db.commit()
    real = panel_mod._Halves._rows

    def slow_rows(self, k):
        yield from real(self, k)
        time.sleep(1.0)  # the builder busy with this half; the other half and the exclusions idle

    monkeypatch.setattr(panel_mod._Halves, "_rows", slow_rows)
    with connect(db_url) as conn:  # a new session: the database's setting applies to it
        info, rows = _build(conn)
    assert len(halves) == 1 and info.n_students >= 2 and len(rows) == info.n_students


def test_when_a_later_connection_is_refused_the_ones_opened_close_before_one_statement_builds(
        db_url, halves, monkeypatch):
    """The second of the three connections refused (a server at max_connections): the first,
    already open in the builder's snapshot, must not wait idle in its transaction through the
    one statement's build (a server's idle_in_transaction_session_timeout ended it there, and
    its close then failed the build: nothing stored). It closes before the build goes on."""
    with connect(db_url) as c:
        seed_cohort(c, 600, 12, seed=4, as_of=MONDAY)
        db = c.execute("SELECT current_database()").fetchone()[0]
        c.execute(f"ALTER DATABASE \"{db}\" SET idle_in_transaction_session_timeout = '300ms'")
        c.commit()
    real_connect, calls = psycopg.connect, []

    def second_refused(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise psycopg.OperationalError("too many clients already")
        return real_connect(*a, **k)

    real_students = panel_mod._students_sql

    def slow_students(query):  # the one statement takes 1 s (a large panel)
        return real_students(query).replace(" FROM (", " FROM (SELECT q.* FROM pg_sleep(1.0), (", 1) \
            .replace(") p GROUP BY", ") q) p GROUP BY", 1)

    with connect(db_url) as conn:  # a new session: the database's setting applies to it
        monkeypatch.setattr(panel_mod.psycopg, "connect", second_refused)
        monkeypatch.setattr(panel_mod, "_students_sql", slow_students)
        info, rows = _build(conn)
    assert len(calls) == 2 and not halves
    assert info.n_students == 600 and len(rows) == 600


def test_a_builder_under_set_role_splits_as_that_role(fixture_db, db_url, halves, monkeypatch):  # noqa: F811
    """The halves act as the builder's role (and search_path), not its login's: a login without
    TEMP on the database whose session SET ROLE to a role with it splits (the halves made their
    temporary tables as the login, were refused, and the build failed where one statement builds
    the panel), and the panel is the one statement's."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    conn = fixture_db
    db = conn.execute("SELECT current_database()").fetchone()[0]
    pid = conn.info.backend_pid
    login, builder = f"growth_login_{pid}", f"growth_builder_{pid}"
    conn.execute(f'REVOKE TEMPORARY ON DATABASE "{db}" FROM PUBLIC')
    conn.execute(f"CREATE ROLE {builder} NOLOGIN")
    conn.execute(f"CREATE ROLE {login} LOGIN NOINHERIT IN ROLE {builder}")
    conn.execute(f'GRANT TEMPORARY ON DATABASE "{db}" TO {builder}')
    for r in (login, builder):
        conn.execute(f"GRANT USAGE ON SCHEMA public, growth TO {r}")
        conn.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public, growth TO {r}")
    conn.execute(f"GRANT INSERT, UPDATE, DELETE ON growth_panel, growth_panel_meta TO {builder}")
    conn.commit()
    try:
        with connect(make_conninfo("", **{**conninfo_to_dict(db_url), "user": login})) as c:
            c.execute(f"SET ROLE {builder}")
            c.commit()
            two = _build(c)
            assert len(halves) == 1
            _one_statement(monkeypatch)
            one = _build(c)
        assert two == one and one[0].n_students >= 2
    finally:
        conn.rollback()
        conn.execute(f"DROP OWNED BY {login}, {builder}")
        conn.execute(f"DROP ROLE {login}")
        conn.execute(f"DROP ROLE {builder}")
        conn.execute(f'GRANT TEMPORARY ON DATABASE "{db}" TO PUBLIC')
        conn.commit()


def _two_builds_at_once(db_url: str, window, monkeypatch) -> dict:
    """Build ``window``'s panel twice at once: A first, B once A's transaction holds its new
    rows (its exclusions held a second); the errors of each, by name."""
    import threading

    real = panel_mod._exclusions
    first_stored = threading.Event()

    def slow_exclusions(c, params, source):
        if not first_stored.is_set():
            first_stored.set()
            time.sleep(1.0)
        return real(c, params, source)

    monkeypatch.setattr(panel_mod, "_exclusions", slow_exclusions)
    errors: dict = {}

    def run(name):
        try:
            with connect(db_url) as c:
                c.execute("SET deadlock_timeout = '100ms'")
                build_panel(c, window, "theta", NOW)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors[name] = exc

    a = threading.Thread(target=run, args=("A",))
    a.start()
    assert first_stored.wait(30)
    b = threading.Thread(target=run, args=("B",))
    b.start()
    a.join(30), b.join(30)
    return errors


def test_two_builds_of_a_panel_not_stored_yet_take_turns(fixture_db, db_url, halves, monkeypatch):  # noqa: F811
    """Two runs build one panel not stored yet (its first build, or after the retention) at
    once: its meta row's FOR UPDATE locked nothing, and the second failed on the first's rows
    with a duplicate key (found by review). It now waits for the first and replaces its rows."""
    fixture_db.commit()
    errors = _two_builds_at_once(db_url, WINDOW, monkeypatch)
    assert not errors, errors
    with connect(db_url) as c:
        info = panel_info(c, panel_mod.panel_id_for(WINDOW, "theta"))
        assert info is not None and len(_stored(c, info.panel_id)) == info.n_students > 0


def test_two_rebuilds_of_a_stored_panel_take_turns(fixture_db, db_url, monkeypatch):  # noqa: F811
    """build_panel locks the panel's meta row FOR UPDATE before its rows. With ``FOR SHARE`` (a
    mutant no other test caught) two rebuilds of a stored panel (a backfill re-run beside a
    retry) both got the share lock; B's DELETE then waited for A's rows while A's final meta
    upsert waited for B's share lock: a deadlock, one build aborted."""
    monkeypatch.setattr(panel_mod, "SPLIT_MIN_SAMPLE", 10**12)  # one statement
    first = build_panel(fixture_db, WINDOW, "theta", NOW)
    fixture_db.commit()
    errors = _two_builds_at_once(db_url, WINDOW, monkeypatch)
    assert not errors, errors
    with connect(db_url) as c:
        info = panel_info(c, first.panel_id)
        assert info is not None and info.n_students == first.n_students
        assert len(_stored(c, first.panel_id)) == first.n_students
