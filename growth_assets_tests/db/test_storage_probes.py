"""Rules of the storage layer no other test pinned (session 23's mutation probes: each test
fails on a mutant of the code, a plausible bug, that the suite let through): binary COPY's
signature, trailer and piece boundaries; an element type of the same width; a panel rebuilt
right after its ids were read; an exact duplicate that differs in one column; an INVALID key per
calibration; a plain index taken for a key; and direct checks of what other tests reach only
through a message."""

import contextlib

import numpy as np
import psycopg
import pytest

from growth_assets.db import connect, source_tables
from growth_assets.db.binary_copy import (SIGNATURE, TRAILER, Column, CopyFormatError, copy_in, copy_out_tuples,
                                          decode_arrays, encode)
from growth_assets_tests.db.test_binary_copy import _copy_out


# --- copy_out_tuples: signature, trailer, piece boundaries ------------------------------------

class _FakeConn:
    """A connection whose COPY TO STDOUT yields the given chunks (what a server, a pooler or a
    proxy could send: the layout is not the server's promise to this code alone)."""

    def __init__(self, chunks):
        self._chunks = chunks

    def cursor(self):
        return self

    @contextlib.contextmanager
    def copy(self, query, params=None):
        yield iter(self._chunks)


ROWS = b"".join(b"\x00\x01\x00\x00\x00\x04" + i.to_bytes(4, "big") for i in range(50))  # 50 int4 tuples


def test_copy_out_refuses_a_stream_without_its_trailer():
    with pytest.raises(CopyFormatError, match="ends without its trailer"):
        list(copy_out_tuples(_FakeConn([SIGNATURE + ROWS[:100], ROWS[100:]]), "q", piece_bytes=16))


def test_copy_out_refuses_a_stream_without_its_signature():
    with pytest.raises(CopyFormatError, match="starts with"):
        list(copy_out_tuples(_FakeConn([b"PGCOPY\n\xff\r\n\x00" + b"\x00" * 4 + b"\x00\x00\x00\x01" + ROWS,
                                        TRAILER]), "q"))


@pytest.mark.parametrize("cuts", [[3, 19], [11, 200, 299, 300], [len(SIGNATURE) + len(ROWS) + 1]])
def test_copy_out_pieces_are_the_tuples_exactly_wherever_the_chunks_and_pieces_end(cuts):
    """The stream cut anywhere (the trailer split over two chunks, the signature too), pieces
    of a few bytes: the pieces joined are the tuples, byte for byte, without signature/trailer."""
    whole = SIGNATURE + ROWS + TRAILER
    bounds = [0, *cuts, len(whole)]
    chunks = [whole[a:b] for a, b in zip(bounds, bounds[1:])]
    for piece_bytes in (1, 7, 64, 1 << 20):
        pieces = list(copy_out_tuples(_FakeConn(chunks), "q", piece_bytes=piece_bytes))
        assert b"".join(pieces) == ROWS, piece_bytes
        assert all(pieces)


def test_copy_out_then_copy_in_moves_every_row_at_small_pieces(conn):
    """A real server's stream in pieces of a few bytes: every row arrives, none changed."""
    conn.execute("CREATE TEMP TABLE a (i integer, s text)")
    conn.execute("CREATE TEMP TABLE b (i integer, s text)")
    conn.execute("INSERT INTO a SELECT g, repeat(chr(97 + g % 26), g % 37) FROM generate_series(1, 700) g")
    pieces = list(copy_out_tuples(conn, "SELECT i, s FROM a", piece_bytes=50))
    assert len(pieces) > 10
    copy_in(conn, "b", ["i", "s"], pieces)
    assert conn.execute("SELECT count(*) FROM (SELECT * FROM a EXCEPT SELECT * FROM b) d").fetchone()[0] == 0
    assert conn.execute("SELECT count(*) FROM b").fetchone()[0] == 700


# --- decode_arrays: an element type of the same width ----------------------------------------

@pytest.mark.parametrize("query, message", [
    # float4 is 4 bytes like int4, int8 8 bytes like float8: the sizes all match
    ("SELECT ARRAY[1.5, 2]::float4[], ARRAY[0.5, 1.5]::float8[]", r"row 0: int4\[\] element type is 700, expected 23$"),
    ("SELECT ARRAY[1, 2], ARRAY[1, 2]::int8[]", r"row 0: float8\[\] element type is 20, expected 701$"),
])
def test_arrays_of_another_element_type_of_the_same_width_are_refused(conn, query, message):
    """Without the element type's check, int8 elements read as float8 give 5e-324, 1e-323:
    scores silently wrong (and P with them)."""
    with pytest.raises(CopyFormatError, match=message):
        decode_arrays(_copy_out(conn, query), np.array([2]), ("int4", "float8"))


def test_arrays_read_back_whole_when_the_data_is_read_from_a_copy_in(conn):
    """encode -> server -> COPY out -> decode: each row's arrays in order (a sanity anchor)."""
    conn.execute("CREATE TEMP TABLE t (i integer)")
    copy_in(conn, "t", ["i"], [encode({"i": Column("int4", np.arange(3))})])
    w, y = decode_arrays(_copy_out(conn, "SELECT ARRAY[i, i + 1], ARRAY[i * 0.5, 2.0]::float8[] FROM t ORDER BY i"),
                         np.full(3, 2), ("int4", "float8"))
    assert w.tolist() == [0, 1, 1, 2, 2, 3] and y.tolist() == [0.0, 2.0, 0.5, 2.0, 1.0, 2.0]


# --- load_panel: counts of many digits -------------------------------------------------------

def test_load_panel_reads_students_with_ten_weeks_or_more(conn):
    """The weeks' counts come from text COPY digits: a student of 10..13 weeks (two digits)
    beside students of one week."""
    from growth_assets.defs.growth.panel import load_panel

    rows = {"s1": list(range(13)), "s2": [4], "s3": list(range(0, 20, 2)), "s4": [1, 3]}
    for u, w in rows.items():
        conn.execute("INSERT INTO growth_panel (panel_id, student_id, weeks, scores, sources)"
                     " VALUES ('p', %s, %s, %s, array_fill('mirt_ability'::text, ARRAY[%s]))",
                     (u, w, [0.25 * x for x in w], len(w)))
    conn.commit()
    panel = load_panel(conn, "p")
    got = {}
    for c, w, y in zip(panel.student.tolist(), panel.week.tolist(), panel.score.tolist()):
        got.setdefault(panel.student_ids[c], []).append((w, y))
    assert got == {u: [(x, 0.25 * x) for x in w] for u, w in rows.items()}


# --- migrate.pending: the record of an older layout ------------------------------------------

def test_pending_reads_the_record_where_a_move_would_bring_it_from(empty_db_url):
    """A database of the older layout (everything applied, in public): nothing is pending but
    the move; pending() must not say every migration is."""
    from growth_assets.db.migrate import migrate, pending, tables_to_move

    migrate(empty_db_url, schema="public")
    with psycopg.connect(empty_db_url) as c:
        c.execute("DROP SCHEMA IF EXISTS growth CASCADE")
    with connect(empty_db_url) as c:
        assert tables_to_move(c)[0] == "public"
        assert pending(c) == []


# --- source_tables.plan ------------------------------------------------------------------------

MIRT = ("CREATE TABLE mirt_ability (user_id text, theta float, se float, model text, version text,"
        " fitted_at timestamptz)")


def test_rows_that_differ_in_any_one_column_are_not_duplicates(empty_db_url):
    """The dedupe removes exact duplicates only: two calibrations equal in all but one column
    (the same theta a week later, of another student, model or version) are both kept."""
    base = ("u1", 0.5, 0.2, "m", "v", "2026-11-02T10:00Z")
    other = ("u2", 0.7, 0.3, "m2", "v2", "2026-11-09T10:00Z")
    rows = [base, base]  # one exact twin: deleted
    for j in (0, 3, 4, 5):  # each column of the key (rows equal in the key but not in theta stop it)
        rows.append(base[:j] + (other[j],) + base[j + 1:])
    with psycopg.connect(empty_db_url) as c:
        c.execute(MIRT)
        with c.cursor() as cur:
            cur.executemany("INSERT INTO mirt_ability VALUES (%s, %s, %s, %s, %s, %s)", rows)
    with connect(empty_db_url) as c:
        key = [x for x in source_tables.plan(c) if x.table == "mirt_ability" and x.destructive]
    done = source_tables.apply(empty_db_url, key)
    assert done[0].endswith("(1 duplicate row(s) deleted)"), done
    with psycopg.connect(empty_db_url) as c:
        assert c.execute("SELECT count(*) FROM mirt_ability").fetchone()[0] == len(rows) - 1


def test_an_invalid_key_per_calibration_is_rebuilt(empty_db_url):
    """A failed CREATE UNIQUE INDEX CONCURRENTLY (duplicates at the time) leaves the key
    INVALID; plan says 'rebuild it', and after apply the key is valid and enforced."""
    with psycopg.connect(empty_db_url, autocommit=True) as c:
        c.execute(MIRT)
        c.execute("INSERT INTO mirt_ability VALUES ('u1', 0.5, 0.2, 'm', 'v', '2026-11-02T10:00Z'),"
                  " ('u1', 0.5, 0.2, 'm', 'v', '2026-11-02T10:00Z')")
        with pytest.raises(psycopg.errors.UniqueViolation):
            c.execute("CREATE UNIQUE INDEX CONCURRENTLY mirt_ability_calibration_key ON mirt_ability"
                      " (user_id, model, version, fitted_at) NULLS NOT DISTINCT")
    valid = "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass('mirt_ability_calibration_key')"
    with connect(empty_db_url) as c:
        assert c.execute(valid).fetchall() == [(False,)]
        key = [x for x in source_tables.plan(c) if x.table == "mirt_ability" and x.destructive]
    assert len(key) == 1 and "INVALID" in key[0].what
    source_tables.apply(empty_db_url, key)
    with connect(empty_db_url) as c:
        assert c.execute(valid).fetchall() == [(True,)]
        assert not [x for x in source_tables.plan(c) if x.table == "mirt_ability" and x.destructive]
        with pytest.raises(psycopg.errors.UniqueViolation):
            c.execute("INSERT INTO mirt_ability VALUES ('u1', 0.5, 0.2, 'm', 'v', '2026-11-02T10:00Z')")


def test_a_plain_index_without_fitted_at_is_not_a_key_to_drop(empty_db_url):
    """Only unique keys without fitted_at keep one calibration per key: the platform's own
    non-unique index on user_id is not proposed for a (destructive) drop."""
    from growth_assets.db.migrate import migrate

    migrate(empty_db_url, apply_source_changes=True)
    with psycopg.connect(empty_db_url) as c:
        c.execute("CREATE INDEX mirt_ability_by_user ON mirt_ability (user_id)")
        c.execute("CREATE INDEX student_topic_theta_by_topic ON student_topic_theta (topic_id)")
    with connect(empty_db_url) as c:
        assert source_tables.plan(c) == []


def test_dropping_the_platforms_key_is_flagged_destructive(empty_db_url):
    with psycopg.connect(empty_db_url) as c:
        c.execute("CREATE TABLE mirt_ability (user_id text PRIMARY KEY, theta float, se float,"
                  " model text, version text, fitted_at timestamptz)")
    with connect(empty_db_url) as c:
        drops = [x for x in source_tables.plan(c) if any("DROP CONSTRAINT" in s for s in x.statements)]
    assert [x.table for x in drops] == ["mirt_ability"] and all(x.destructive for x in drops)


# --- load_panel inside a caller's transaction: the stamp taken before the first read ----------

def test_a_rebuild_committed_right_after_the_ids_are_read_is_refused(db_url, monkeypatch):
    """_read_in_turn: a rebuild committed between the ids' read and the rows' read must be
    refused, wherever it falls; the stamp must be the one seen before the ids were read."""
    from datetime import date, datetime, timezone

    from growth_assets.defs.growth import panel as panel_mod
    from growth_assets.defs.growth.panel import Window, build_panel, load_panel
    from growth_assets.model.contract import ContractError

    now = datetime(2026, 11, 24, 12, 0, tzinfo=timezone.utc)
    window = Window(date(2026, 11, 23), 12)
    with connect(db_url) as conn:
        conn.execute("INSERT INTO mirt_ability (user_id, theta, se, model, version, fitted_at) VALUES"
                     " ('A', 1.0, 0.2, 'm', 'v', '2026-09-01T00:00Z'), ('A', 2.0, 0.2, 'm', 'v', '2026-09-08T00:00Z'),"
                     " ('B', 0.5, 0.2, 'm', 'v', '2026-09-01T00:00Z'), ('C', 0.1, 0.2, 'm', 'v', '2026-09-15T00:00Z')")
        conn.commit()
        info = build_panel(conn, window, "theta", now=now)
        conn.commit()
        real = panel_mod._ids_and_counts

        def then_rebuilt(c, panel_id, data=None):
            out = real(c, panel_id, data)
            with connect(db_url) as other:  # another run of the partition commits a rebuild
                other.execute("DELETE FROM mirt_ability WHERE user_id = 'A' AND theta = 2.0")
                build_panel(other, window, "theta", now=now)
            return out

        monkeypatch.setattr(panel_mod, "_ids_and_counts", then_rebuilt)
        conn.execute("SELECT 1")  # the caller's transaction is open: the reads run in turn
        with pytest.raises(ContractError, match="was rebuilt while it was read"):
            load_panel(conn, info.panel_id)
