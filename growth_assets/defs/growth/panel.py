"""The weekly panel (spec §1, §5): built and stored inside PostgreSQL, read back for a fit.

``build_panel`` aggregates the source tables in SQL and stores the result in
``growth_panel`` under a ``panel_id`` (source, lookback, window), so a step in another
process or pod reads exactly the rows that were built. No raw rows go through pandas.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timezone
from importlib import resources
from typing import Any

import numpy as np
import psycopg
from psycopg.pq import TransactionStatus
from psycopg.types.json import Jsonb

from ...db.binary_copy import CopyFormatError, copy_in, copy_out_tuples, decode_arrays
from ...db.connection import EXPORT_SNAPSHOT, in_snapshot
from ...model.chunks import usable_cores
from ...model.contract import ContractError
from ...model.panel import Panel
from ...model.window import Window, monday_of  # noqa: F401  (re-exported)
from ...settings import SCORE_RANGE, SCORE_SOURCES

log = logging.getLogger(__name__)

SOURCES = ("mirt_ability", "student_topic_theta", "features_topic_daily", "weekly_kpi")


@dataclass(frozen=True)
class PanelInfo:
    """What ``weekly_scores`` hands downstream: where the panel is, and what it holds."""

    panel_id: str
    as_of: date
    window_start: date
    window_end: date
    lookback_weeks: int
    score_source: str
    n_rows: int
    n_students: int
    rows_by_source: dict[str, int] = field(default_factory=dict)
    excluded: dict[str, int] = field(default_factory=dict)
    students_with_3_weeks: int = 0
    observations: int = 0
    non_finite: int = 0  # stored scores that are not finite (the panel query leaves them out: 0)

    @property
    def week_start(self) -> date:
        return self.window_end

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("as_of", "window_start", "window_end"):
            d[k] = d[k].isoformat()
        return d


@functools.cache
def _sql(name: str) -> str:
    """A query of sql/, without its comment lines and indentation (shorter text to send, and
    under psycopg's 4 KB cache of converted queries)."""
    text = (resources.files("growth_assets.defs.growth") / "sql" / name).read_text()
    return "\n".join(line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("--"))


_ALL_USERS = "%(users)s::text[] IS NULL OR "

# For the transaction that builds or reads a whole panel (millions of rows):
# - work_mem: its sorts in memory, not in batches on disk (the default 4 MB spills a million
#   students' panel to hundreds of files);
# - no hash aggregation: one sort by (student, week, source) serves both the per-source means
#   and the choice of the first source, where hashing millions of groups (sized from a window
#   the planner cannot see through the query's parameters) costs a second pass: 27 s instead
#   of 49 s for a million students here;
# - each scan from the table's first page: a scan that joins one already running (synchronized
#   scans, as the two halves' of ``_Halves`` or another session's) reads the rows in another
#   order, and a student-week's mean of several scores then differs in its last bits (a
#   million students' P moved by up to 1.6e-5 through the fit), so the same sources make the
#   same panel, bit for bit, by either path.
PANEL_SETTINGS = ("SELECT set_config('work_mem', '256MB', true), set_config('enable_hashagg', 'off', true),"
                  " set_config('synchronize_seqscans', 'off', true)")


def panel_query(score_source: str, *, for_users: bool = False, users_from: str | None = None) -> str:
    """The one query of spec §1/§5's student-week scores, for the panel and for the
    real-time path. Parameters: window_start, window_end (dates), now, users (NULL: all),
    score_lo, score_hi (BRMS_SCORE_RANGE; the accuracy query has no use for them).

    ``for_users``: the same query for a list of users only (``users`` must be an array): each
    source's filter is then just ``user_id = ANY(users)``, which a plan for the call's own ids
    answers from the user_id indexes, and for one user ``metrics._one_user_sql`` makes
    ``= users[1]``, which a prepared statement's generic plan answers from them without
    planning the query again (the ``users IS NULL OR`` of the whole-panel form needs a plan
    per call). ``users_from``: with ``for_users``, the users are instead the
    column ``ids`` (a text array) of the one row of this query, computed once (a CTE)."""
    if score_source not in SCORE_SOURCES:
        raise ContractError("BRMS_SCORE_SOURCE", f"must be one of {SCORE_SOURCES}", score_source)
    sql = _sql("panel_theta.sql" if score_source == "theta" else "panel_accuracy.sql")
    if for_users:
        assert _ALL_USERS in sql, "the panel query changed: update panel_query"
        sql = sql.replace(_ALL_USERS, "")
        if users_from is not None:
            sql = sql.replace("%(users)s::text[]", "(SELECT ids FROM for_users)::text[]")
            sql = (f"WITH for_users AS MATERIALIZED ({users_from}), {sql[len('WITH '):]}" if sql.startswith("WITH ")
                   else f"WITH for_users AS MATERIALIZED ({users_from}) {sql}")
    return sql


def panel_id_for(window: Window, score_source: str) -> str:
    return f"{score_source}:L{window.lookback_weeks}:{window.start.isoformat()}"


_PER_SOURCE = ", ".join(f"sum(by_{src}) AS {src}" for src in SOURCES)
_PER_STUDENT = ", ".join(f"count(*) FILTER (WHERE source = '{src}') AS by_{src}" for src in SOURCES)


def _students_sql(query: str) -> str:
    """A row per student of the panel query's rows (``query``): her weeks, scores, sources and
    observations as arrays (week order: the rows come sorted by student and week, so grouping
    them by student needs no second sort; load_panel checks the order it reads), and her
    counts (``_STATS`` sums them)."""
    return (f"SELECT student_id, array_agg(week) AS weeks, array_agg(score) AS scores, array_agg(source) AS sources,"
            f" array_agg(n)::integer[] AS observations, count(*) AS k, sum(n) AS n,"
            f" count(*) FILTER (WHERE score IN ('NaN', 'Infinity', '-Infinity')) AS nf, {_PER_STUDENT}"
            f" FROM ({query}) p GROUP BY student_id")


# the panel's counts over a relation of ``_students_sql``'s rows
_STATS = ("SELECT coalesce(sum(k), 0) AS n_rows, coalesce(sum(n), 0) AS observations,"
          " coalesce(sum(nf), 0) AS non_finite, count(*) AS n_students,"
          f" count(*) FILTER (WHERE k >= 3) AS students_with_3_weeks, {_PER_SOURCE} FROM {{students}}")
_STORED_COLUMNS = ("panel_id", "student_id", "weeks", "scores", "sources", "observations")

# each source's "every user" filter, which a half's range of ids replaces (``_half_query``)
_EVERY_USER = re.compile(r"\(%\(users\)s::text\[\] IS NULL OR (\w)\.user_id = ANY \(%\(users\)s::text\[\]\)\)")


@functools.cache
def _half_query(score_source: str) -> str:
    """``panel_query`` of the students whose ids, compared as bytes ("C", the panel's order),
    are in [id_lo, id_hi) (a NULL bound: none)."""
    sql = panel_query(score_source)
    out, n = _EVERY_USER.subn(r'((%(id_lo)s::text IS NULL OR \1.user_id COLLATE "C" >= %(id_lo)s::text)'
                              r' AND (%(id_hi)s::text IS NULL OR \1.user_id COLLATE "C" < %(id_hi)s::text))', sql)
    assert n > 0 and n == sql.count(_ALL_USERS), "the panel query changed: update _half_query"
    return out


# Two halves of the students, each read on a connection of its own: the panel query's scan,
# sort and grouping run in one server process, so one core of two did the whole build (a
# million students: the query alone 16.6-18.1 s, its two halves at once 10.4-11.3 s,
# benchmarks/results/panel_1207.md). The ids are split where a sample of the window's rows
# (SPLIT_SAMPLE_PERCENT of each source's pages) puts 45 % of them below: the smaller half is
# done first and is stored while the other still reads. A sample of fewer than
# SPLIT_MIN_SAMPLE rows (a small panel) is built by one statement.
SPLIT_SAMPLE_PERCENT = 1.0
SPLIT_MIN_SAMPLE = 2_000
# the sources sampled for the split, with their window's start
_SAMPLED = (("mirt_ability", "fitted_at >= (%(window_start)s::date)::timestamp AT TIME ZONE 'UTC'"),
            ("student_topic_theta", "fitted_at >= (%(window_start)s::date)::timestamp AT TIME ZONE 'UTC'"),
            ("features_topic_daily", "date >= %(window_start)s::date"))


def _split_sql(score_source: str) -> str:
    tables = _SAMPLED[2:] if score_source == "accuracy" else _SAMPLED
    sample = " UNION ALL ".join(
        f'SELECT user_id COLLATE "C" AS id FROM {t} TABLESAMPLE SYSTEM (%(percent)s) REPEATABLE (0)'
        f" WHERE {where} AND user_id <> ''" for t, where in tables)
    # a half keeps its rows in a temporary table: without the right to make one, no split
    return (f"SELECT CASE WHEN has_database_privilege(current_database(), 'TEMP') THEN count(*) ELSE 0 END,"
            f" percentile_disc(0.45) WITHIN GROUP (ORDER BY id) FROM ({sample}) s")


class _Halves:
    """The panel built in two halves of its students (split by ``_split``), each on a connection of
    its own in the builder's snapshot (``pg_export_snapshot``), and its exclusions counted on a
    third: the rows go into the builder's transaction by one COPY, half after half."""

    def __init__(self, conn: psycopg.Connection, score_source: str, params: dict, split: str, panel_id: str,
                 stack: contextlib.ExitStack) -> None:
        # each connection acts as the builder: its role (a session's SET ROLE, which ``_split``
        # checked TEMP for, not the login's) and its search_path
        snapshot, role, path = conn.execute(EXPORT_SNAPSHOT).fetchone()
        dsn, password = conn.info.dsn, conn.info.password
        with contextlib.ExitStack() as opened:  # if one cannot be had, those opened close at once
            self.conns = []
            for ro in (False, False, True):
                c = opened.enter_context(in_snapshot(dsn, password, snapshot, read_only=ro, role=role,
                                                     search_path=path))
                # each waits, idle in its transaction, until the builder has its rows: a
                # server's idle_in_transaction_session_timeout must not end it meanwhile
                c.execute("SELECT set_config('idle_in_transaction_session_timeout', '0', true)")
                self.conns.append(c)
            # closed last, after the threads that use them have stopped; a failed build first
            # cancels the reads it started
            stack.enter_context(opened.pop_all())
        self.pool = stack.enter_context(ThreadPoolExecutor(max_workers=3, thread_name_prefix="build_panel"))
        stack.callback(self._cancel)
        self.panel_id = panel_id
        query = _students_sql(_half_query(score_source))
        self.halves = [self.pool.submit(self._read, c, query, {**params, "id_lo": lo, "id_hi": hi})
                       for c, (lo, hi) in zip(self.conns, ((None, split), (split, None)))]
        self.excluded = self.pool.submit(_exclusions, self.conns[2], params, score_source)

    @staticmethod
    def _read(c: psycopg.Connection, query: str, params: dict) -> dict:
        c.execute(PANEL_SETTINGS)
        c.execute(f"CREATE TEMP TABLE growth_panel_half ON COMMIT DROP AS {query}", params)
        return _row(c.execute(_STATS.format(students="growth_panel_half")))

    def _rows(self, k: int) -> Iterator[bytes]:
        self.halves[k].result()  # this half read (its connection is free again)
        yield from copy_out_tuples(self.conns[k], f"SELECT %s, {', '.join(_STORED_COLUMNS[1:])}"
                                                  " FROM growth_panel_half", (self.panel_id,))

    def store(self, conn: psycopg.Connection) -> tuple[dict, dict]:
        """Both halves' rows into growth_panel on ``conn``; (the counts, the exclusions)."""
        first = min(range(2), key=lambda k: not self.halves[k].done())  # the one read already, if any
        copy_in(conn, "growth_panel", _STORED_COLUMNS, itertools.chain(self._rows(first), self._rows(1 - first)))
        a, b = (f.result() for f in self.halves)
        return {k: (a[k] or 0) + (b[k] or 0) for k in a}, self.excluded.result()  # a half may be empty

    def _cancel(self) -> None:
        for c, f in zip(self.conns, (*self.halves, self.excluded)):
            if not f.done():
                c.cancel_safe()


def _row(cur: psycopg.Cursor) -> dict:
    return dict(zip([c.name for c in cur.description], cur.fetchone()))


def _exclusions(conn: psycopg.Connection, params: dict, score_source: str) -> dict:
    """The rows of this panel's own sources that it left out, by reason (each row once)."""
    name = "panel_exclusions.sql" if score_source == "theta" else "panel_exclusions_accuracy.sql"
    return _row(conn.execute(_sql(name), params))


def _split(conn: psycopg.Connection, score_source: str, params: dict) -> str | None:
    """Where the students are split in two (``_Halves``), or None: one statement builds it."""
    n, split = conn.execute(_split_sql(score_source), {**params, "percent": SPLIT_SAMPLE_PERCENT}).fetchone()
    return split if n >= SPLIT_MIN_SAMPLE else None


def build_panel(
    conn: psycopg.Connection,
    window: Window,
    score_source: str = "theta",
    now: datetime | None = None,
    *,
    partition_key: str | None = None,
    dagster_run_id: str | None = None,
    score_range: tuple[float, float] = SCORE_RANGE,
) -> PanelInfo:
    """Aggregate the sources into the panel of ``window`` and store it; one transaction.

    On a connection with nothing of its caller's open, a large panel is read in two halves of
    its students on two more connections in this transaction's snapshot (``_Halves``: both
    cores of the server at work), and stored here by one COPY; inside a caller's transaction
    (whose own writes the other connections would not see), or where no other connection can
    be had, or for a small panel, one statement reads and stores it. Both give the same rows."""
    if score_source not in SCORE_SOURCES:
        raise ContractError("BRMS_SCORE_SOURCE", f"must be one of {SCORE_SOURCES}", score_source)
    now = now or datetime.now(timezone.utc)
    params = {
        "window_start": window.start,
        "window_end": window.end,
        "now": now,
        "users": None,  # everyone
        "score_lo": float(score_range[0]),
        "score_hi": float(score_range[1]),
    }
    panel_id = panel_id_for(window, score_source)
    idle = conn.info.transaction_status == TransactionStatus.IDLE
    with conn.transaction(), contextlib.ExitStack() as stack:
        conn.execute(PANEL_SETTINGS)
        halves = None
        split = _split(conn, score_source, params) if idle else None
        if split is not None:
            try:
                halves = _Halves(conn, score_source, params, split, panel_id, stack)
            except (psycopg.OperationalError, psycopg.errors.InsufficientPrivilege) as exc:
                # no more connections to be had, or none that may act as the builder's role
                log.info("the panel is built by one statement: no other connection (%s)", exc)
        # the panel's meta row is locked before its rows, as prune_panels locks them: a panel
        # rebuilt while the retention runs is then waited for and kept (the other order was a
        # deadlock, which aborted one of the two). A panel not stored yet (or pruned) has no row
        # to lock: one is made first (this transaction's until it commits, with the real
        # values below), so a second build of it waits here too instead of failing on the
        # first one's rows with a duplicate key
        conn.execute("INSERT INTO growth_panel_meta (panel_id, window_start, window_end, as_of, score_source, stats)"
                     " VALUES (%s, %s, %s, %s, %s, '{}') ON CONFLICT (panel_id) DO NOTHING",
                     (panel_id, window.start, window.end, window.as_of, score_source))
        conn.execute("SELECT 1 FROM growth_panel_meta WHERE panel_id = %(panel_id)s FOR UPDATE", {"panel_id": panel_id})
        conn.execute("DELETE FROM growth_panel WHERE panel_id = %(panel_id)s", {"panel_id": panel_id})
        if halves is not None:
            stats, excluded = halves.store(conn)
        else:
            stats = _row(conn.execute(
                f"WITH students AS ({_students_sql(panel_query(score_source))}),"
                " stored AS (INSERT INTO growth_panel (panel_id, student_id, weeks, scores, sources, observations)"
                " SELECT %(panel_id)s, student_id, weeks, scores, sources, observations FROM students RETURNING 1) "
                + _STATS.format(students="students").replace(
                    "count(*) AS n_students", "(SELECT count(*) FROM stored) AS n_students"),
                {**params, "panel_id": panel_id}))
            excluded = _exclusions(conn, params, score_source)
        info = PanelInfo(
            panel_id=panel_id,
            as_of=window.as_of,
            window_start=window.start,
            window_end=window.end,
            lookback_weeks=window.lookback_weeks,
            score_source=score_source,
            n_rows=int(stats["n_rows"]),
            n_students=int(stats["n_students"]),
            students_with_3_weeks=int(stats["students_with_3_weeks"]),
            rows_by_source={src: int(stats[src] or 0) for src in SOURCES},
            excluded={k: int(v) for k, v in excluded.items()},
            observations=int(stats["observations"]),
            non_finite=int(stats["non_finite"]),
        )
        conn.execute(
            """
            INSERT INTO growth_panel_meta (panel_id, window_start, window_end, as_of, score_source, stats,
                                           partition_key, dagster_run_id)
            VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
            ON CONFLICT (panel_id) DO UPDATE SET window_start = EXCLUDED.window_start,
                window_end = EXCLUDED.window_end, as_of = EXCLUDED.as_of,
                score_source = EXCLUDED.score_source, stats = EXCLUDED.stats, created_at = now(),
                partition_key = EXCLUDED.partition_key, dagster_run_id = EXCLUDED.dagster_run_id
            """,
            (panel_id, window.start, window.end, window.as_of, score_source, Jsonb(info.as_dict()),
             partition_key, dagster_run_id),
        )
    return info


@dataclass(frozen=True)
class PrunedPanels:
    """What ``prune_panels`` deleted: the panels (ids, oldest window first) and their rows."""

    panel_ids: tuple[str, ...]
    rows: int
    newest_window_end: date | None


def prune_panels(conn: psycopg.Connection, keep_weeks: int, now: datetime | None = None) -> PrunedPanels:
    """Delete the stored panels nobody needs any more; one transaction.

    A panel is kept while its window is among the ``keep_weeks`` newest weeks of any stored
    panel (its window_end no more than ``keep_weeks - 1`` weeks before the newest one's), or
    while it was built within the last ``keep_weeks`` weeks (a backfill's panel lives as long
    as a new one). Every other panel loses its rows and its ``growth_panel_meta`` row: a later
    ``brms_posterior`` of its partition asks for ``weekly_scores`` to be materialized again.
    Nothing else reads a panel after its fit is graded: the real-time path and the backtest use
    the window sums stored with each student's line. The panel of the newest fit of a partition
    that has no run record yet is kept (its grading reads the panel's window and counts).

    A panel rebuilt meanwhile (its meta stamped after the cut) is not deleted: the meta rows go
    first, each re-checked against the cut as it is locked, and only their panels' rows follow.
    """
    if isinstance(keep_weeks, bool) or not isinstance(keep_weeks, int) or keep_weeks < 1:
        raise ContractError("keep_weeks", "must be a whole number of weeks >= 1", keep_weeks)
    now = now or datetime.now(timezone.utc)
    with conn.transaction():
        newest = conn.execute("SELECT max(window_end) FROM growth_panel_meta").fetchone()[0]
        if newest is None:
            return PrunedPanels((), 0, None)
        gone = conn.execute(
            "DELETE FROM growth_panel_meta pm WHERE window_end <= %(newest)s::date - 7 * %(keep)s"
            " AND created_at < %(now)s::timestamptz - make_interval(weeks => %(keep)s)"
            # the panel of a stored fit not yet graded (a blocking check stopped its run) is
            # kept: growth_brms_meta records the fit with its panel's window and counts, and
            # a later run that selects only the downstream assets grades it. The newest fit of
            # its partition only: an older one is never graded (the latest fit is)
            " AND NOT EXISTS (SELECT 1 FROM growth_fit f WHERE f.panel_id = pm.panel_id"
            "   AND NOT EXISTS (SELECT 1 FROM growth_brms_meta m WHERE m.run_id = f.run_id)"
            "   AND NOT EXISTS (SELECT 1 FROM growth_fit g WHERE g.partition_key = f.partition_key"
            "                   AND g.created_at > f.created_at))"
            " RETURNING panel_id, window_end",
            {"newest": newest, "keep": keep_weeks, "now": now}).fetchall()
        ids = [panel_id for panel_id, _ in sorted(gone, key=lambda r: (r[1], r[0]))]
        rows = conn.execute("DELETE FROM growth_panel WHERE panel_id = ANY(%s)", (ids,)).rowcount if ids else 0
    return PrunedPanels(tuple(ids), rows, newest)


def panel_info(conn: psycopg.Connection, panel_id: str) -> PanelInfo | None:
    """What ``build_panel`` recorded of a stored panel (None: not built)."""
    row = conn.execute("SELECT stats FROM growth_panel_meta WHERE panel_id = %s", (panel_id,)).fetchone()
    if row is None:
        return None
    d = dict(row[0])
    for k in ("as_of", "window_start", "window_end"):
        d[k] = date.fromisoformat(d[k])
    return PanelInfo(**d)


# a panel's reads walk its key: a panel written moments ago has no statistics yet, and the
# planner would then sort a million wide rows instead (20 s against 1 s here)
_KEY_ORDER = "SELECT set_config('enable_sort', 'off', true), set_config('enable_bitmapscan', 'off', true)"


_ARRAY_FIELDS = ("int4", "float8")  # weeks, scores
_IDS_COUNTS = "SELECT student_id, cardinality(weeks) FROM growth_panel WHERE panel_id = %s ORDER BY student_id"


def _ids_text(conn: psycopg.Connection, panel_id: str) -> bytearray:
    """The panel's ids (key order), each with her number of weeks, as text COPY's bytes."""
    data = bytearray()
    with conn.cursor().copy(f"COPY ({_IDS_COUNTS}) TO STDOUT", (panel_id,)) as copy:
        for chunk in copy:
            data += chunk
    return data


def _decimal_counts(b: np.ndarray, first: np.ndarray, end: np.ndarray) -> np.ndarray:
    """The non-negative integers written in ASCII digits at ``b[first[i]:end[i]]``."""
    n_digits = end - first
    value = np.zeros(first.size, dtype=np.int64)
    for j in range(int(n_digits.max(initial=0))):
        more = n_digits > j
        value = np.where(more, value * 10 + b[np.where(more, first + j, 0)].astype(np.int64) - 48, value)
    return value


def _ids_and_counts(conn: psycopg.Connection, panel_id: str, data: bytearray | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """The panel's ids (key order) and each one's number of weeks from the text COPY of
    ``_ids_text`` (``data``, read here when None), split as a whole: no Python tuple per
    student, the counts' digits read as arrays. Text COPY escapes a backslash and control
    characters in an id (tab and newline appear only as its delimiters); a panel with such
    an id is read row by row instead, on ``conn``."""
    if data is None:
        data = _ids_text(conn, panel_id)
    if b"\\" not in data:
        b = np.frombuffer(data, dtype=np.uint8)
        tabs, ends = np.flatnonzero(b == 9), np.flatnonzero(b == 10)
        if tabs.size == ends.size:
            counts = _decimal_counts(b, tabs + 1, ends)
            del b, tabs, ends
            text = data.decode("utf-8")
            ids = np.empty(counts.size, dtype=object)
            ids[:] = text.replace("\t", "\n").split("\n")[0:-1:2]  # id, count, id, count, ..., ''
            return ids, counts
    rows = conn.execute(_IDS_COUNTS, (panel_id,)).fetchall()
    return (np.array([r[0] for r in rows], dtype=object),
            np.fromiter((r[1] for r in rows), dtype=np.int64, count=len(rows)))


_ARRAYS = "SELECT weeks, scores FROM growth_panel WHERE panel_id = %s ORDER BY student_id"
_BUILT = "SELECT created_at FROM growth_panel_meta WHERE panel_id = %s"


def _arrays(conn: psycopg.Connection, panel_id: str) -> bytearray:
    """Every student's weeks and scores, in key order, as one binary COPY."""
    buf = bytearray()  # grown in place (a large block is remapped, not copied)
    with conn.cursor().copy(f"COPY ({_ARRAYS}) TO STDOUT (FORMAT binary)", (panel_id,)) as copy:
        for chunk in copy:
            buf += chunk
    return buf


def _ids_in_snapshot(conninfo: str, password: str | None, snapshot: str, panel_id: str, role: str,
                     search_path: str) -> bytearray:
    """``_ids_text`` on a connection of its own, in the exported ``snapshot``, as the reader's
    role and with its search_path."""
    with in_snapshot(conninfo, password, snapshot, role=role, search_path=search_path) as other:
        other.execute(_KEY_ORDER)
        return _ids_text(other, panel_id)


def _read_both(conn: psycopg.Connection, panel_id: str) -> tuple[np.ndarray, np.ndarray, bytearray]:
    """The ids with their counts and the arrays, read at once on two connections in one
    snapshot (``pg_export_snapshot``): two server processes each walk the panel's key once,
    and the two reads see one panel whatever commits meanwhile. The other thread only
    collects bytes (the ids are split here, after both reads: splitting holds the GIL,
    which the rows' read needs). For a connection that is idle (no transaction of the
    caller's open: the isolation level is set by the first statement)."""
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        conn.execute(_KEY_ORDER)
        snapshot, role, path = conn.execute(EXPORT_SNAPSHOT).fetchone()
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="load_panel") as pool:
            ids = pool.submit(_ids_in_snapshot, conn.info.dsn, conn.info.password, snapshot, panel_id, role, path)
            try:
                buf = _arrays(conn, panel_id)
            except BaseException:
                ids.cancel()
                raise
            # the snapshot lives as long as this transaction: it ends after the other read
            try:
                text = ids.result()
            except psycopg.Error:  # no second connection to be had (a pooler, a full server):
                text = None  # read here, in the same snapshot
        student_ids, counts = _ids_and_counts(conn, panel_id, text)
    return student_ids, counts, buf


def _read_in_turn(conn: psycopg.Connection, panel_id: str) -> tuple[np.ndarray, np.ndarray, bytearray]:
    """The two reads one after the other, inside the caller's open transaction. They may
    see different snapshots (read committed): a rebuild of the panel committed between them
    would pair one panel's ids with another's rows. ``build_panel`` stamps the panel's meta in
    the transaction that writes its rows, so an unchanged stamp after both reads shows they
    read one panel; else ContractError, and nothing is fitted."""
    with conn.transaction():
        conn.execute(_KEY_ORDER)
        stamp = conn.execute(_BUILT, (panel_id,)).fetchone()
        student_ids, counts = _ids_and_counts(conn, panel_id)
        buf = _arrays(conn, panel_id)
        if conn.execute(_BUILT, (panel_id,)).fetchone() != stamp:
            raise ContractError("panel_id", "was rebuilt while it was read: materialize brms_posterior again",
                                panel_id)
    return student_ids, counts, buf


def load_panel(conn: psycopg.Connection, panel_id: str) -> Panel:
    """The stored panel as columns, checked (spec §1, §3): ids once, a code per row.

    Both reads follow the table's key (panel_id, student_id), ids compared as bytes, so
    neither sorts: the ids with their numbers of weeks, and every student's weeks and scores
    as arrays by binary COPY in the same order, decoded as whole columns. On an idle
    connection the two run at once on two connections sharing one snapshot (``_read_both``);
    inside a caller's transaction, one after the other (``_read_in_turn``)."""
    if conn.info.transaction_status == TransactionStatus.IDLE:
        ids, counts, buf = _read_both(conn, panel_id)
    else:
        ids, counts, buf = _read_in_turn(conn, panel_id)
    try:
        # weeks decoded straight to int64 (the Panel's dtype), chunks on the cores this process may use
        week, score = decode_arrays(buf, counts, _ARRAY_FIELDS, dtypes=(np.int64, None), workers=usable_cores())
    except CopyFormatError as e:
        who = f" (student {ids[e.row]!r})" if e.row is not None and e.row < ids.size else ""
        raise ContractError("growth_panel", f"a stored row is not (weeks int4[], scores float8[]): {e}{who}",
                            panel_id) from e
    del buf
    code = np.repeat(np.arange(ids.size, dtype=np.int64), counts)
    if ids.size > 1 and not bool(np.all(ids[1:] > ids[:-1])):  # code points, as "C" orders them
        order = np.argsort(ids, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(order.size)
        ids, code = ids[order], rank[code]
    return Panel.from_columns(ids, code, week, score, sort_rows=True)  # (student, week) order, as engines expect
