"""The project's connections on a database or an environment unlike the tests' own: a
database in LATIN1, PGOPTIONS, a URL libpq refuses (each found by review, failing first)."""

import numpy as np
import psycopg
import pytest

from growth_assets.db import connect
from growth_assets.db.binary_copy import Column, copy_in, encode
from growth_assets.defs.growth.panel import load_panel
from growth_assets_tests.test_ops_edges import run


@pytest.fixture
def latin1_url(pg_admin_url):
    from growth_assets.db.migrate import migrate

    name = "latin1_edges"
    with psycopg.connect(pg_admin_url, autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        c.execute(f"CREATE DATABASE \"{name}\" TEMPLATE template0 ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C'")
    url = pg_admin_url.rsplit("/", 1)[0] + "/" + name
    migrate(url, apply_source_changes=True)
    try:
        yield url
    finally:
        with psycopg.connect(pg_admin_url, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_load_panel_in_a_latin1_database_reads_non_ascii_ids(latin1_url):
    """The ids' text COPY arrived in the database's encoding and was decoded as UTF-8:
    UnicodeDecodeError on 'é'. The project's connections now speak UTF-8."""
    with connect(latin1_url) as conn:
        for u, w, y in [("a", "{0,1}", "{1.0,2.0}"), ("é", "{0,1}", "{1.5,2.5}")]:
            conn.execute("INSERT INTO growth_panel (panel_id, student_id, weeks, scores, sources)"
                         " VALUES ('p', %s, %s::int[], %s::float8[], '{mirt_ability,mirt_ability}')", (u, w, y))
        conn.commit()
        assert load_panel(conn, "p").student_ids.tolist() == ["a", "é"]


def test_binary_copy_in_of_a_non_ascii_text_in_a_latin1_database(latin1_url):
    """Binary COPY writes text as UTF-8; a LATIN1 connection stored 'é' as 'Ã©', silently."""
    with connect(latin1_url) as conn:
        conn.execute("CREATE TEMP TABLE t (u text, x float8)")
        copy_in(conn, "t", ["u", "x"], [encode({"u": Column("text", np.array(["é"], dtype=object)),
                                                  "x": Column("float8", np.array([1.0]))})])
        assert conn.execute("SELECT u FROM t").fetchall() == [("é",)]


def test_pgoptions_of_the_environment_are_kept(empty_db_url, monkeypatch):
    """libpq reads PGOPTIONS when the connection string has no options; the project always
    wrote options= (its search_path), so the environment's settings were silently dropped."""
    monkeypatch.setenv("PGOPTIONS", "-c statement_timeout=1234")
    with psycopg.connect(empty_db_url) as c:  # plain libpq: honoured
        assert c.execute("SHOW statement_timeout").fetchone()[0] == "1234ms"
    with connect(empty_db_url) as c:
        assert c.execute("SHOW statement_timeout").fetchone()[0] == "1234ms"
        assert c.execute("SHOW search_path").fetchone()[0].startswith("growth")


def test_the_password_of_a_url_urlsplit_cannot_read_is_not_printed():
    """libpq quotes the whole URI it refused; urlsplit raises on '[' without ']', so the
    password was not found to hide and `db migrate` printed it."""
    out = run(["db", "migrate"], {"DATABASE_URL": "postgresql://app:S3cretPW@[::1/growth"})
    assert out.returncode == 1, out.stderr
    assert "S3cretPW" not in out.stderr + out.stdout and "app:***@" in out.stderr, out.stderr
