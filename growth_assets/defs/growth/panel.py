"""The weekly panel (spec §1, §5): built and stored inside PostgreSQL, read back for a fit.

``build_panel`` aggregates the source tables in SQL and stores the result in
``growth_panel`` under a ``panel_id`` (source, lookback, window), so a step in another
process or pod reads exactly the rows that were built. No raw rows go through pandas.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timezone
from importlib import resources
from typing import Any

import numpy as np
import psycopg
from psycopg.types.json import Jsonb

from ...model.contract import ContractError
from ...model.panel import Panel
from ...model.window import Window, monday_of  # noqa: F401  (re-exported)
from ...settings import SCORE_RANGE, SCORE_SOURCES

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


def panel_query(score_source: str, *, for_users: bool = False) -> str:
    """The one query of spec §1/§5's student-week scores, for the panel and for the
    real-time path. Parameters: window_start, window_end (dates), now, users (NULL: all),
    score_lo, score_hi (BRMS_SCORE_RANGE; the accuracy query has no use for them).

    ``for_users``: the same query for a list of users only (``users`` must be an array): each
    source's filter is then just ``user_id = ANY(users)``, which a prepared statement's
    generic plan answers from the user_id indexes without planning the query again (the
    ``users IS NULL OR`` of the whole-panel form needs a plan per call: ~3 ms of the
    real-time path's ~4)."""
    if score_source not in SCORE_SOURCES:
        raise ContractError("BRMS_SCORE_SOURCE", f"must be one of {SCORE_SOURCES}", score_source)
    sql = _sql("panel_theta.sql" if score_source == "theta" else "panel_accuracy.sql")
    if for_users:
        assert _ALL_USERS in sql, "the panel query's user filter changed: update panel_query"
        sql = sql.replace(_ALL_USERS, "")
    return sql


def panel_id_for(window: Window, score_source: str) -> str:
    return f"{score_source}:L{window.lookback_weeks}:{window.start.isoformat()}"


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
    """Aggregate the sources into the panel of ``window`` and store it; one transaction."""
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
    query = panel_query(score_source)
    with conn.transaction():
        conn.execute("DELETE FROM growth_panel WHERE panel_id = %(panel_id)s", {"panel_id": panel_id})
        conn.execute(
            "INSERT INTO growth_panel (panel_id, student_id, week, score, source) "
            f"SELECT %(panel_id)s, student_id, week, score, source FROM ({query}) p",
            {**params, "panel_id": panel_id},
        )
        stats = conn.execute(
            """
            WITH per_student AS (
                SELECT student_id, count(*) AS weeks FROM growth_panel
                WHERE panel_id = %(panel_id)s GROUP BY student_id)
            SELECT (SELECT count(*) FROM growth_panel WHERE panel_id = %(panel_id)s),
                   (SELECT count(*) FROM per_student),
                   (SELECT count(*) FROM per_student WHERE weeks >= 3)
            """,
            {"panel_id": panel_id},
        ).fetchone()
        by_source = dict(
            conn.execute(
                "SELECT source, count(*) FROM growth_panel WHERE panel_id = %s GROUP BY source",
                (panel_id,),
            ).fetchall()
        )
        observations = conn.execute(
            f"SELECT coalesce(sum(n), 0) FROM ({query}) p", params
        ).fetchone()[0]
        excl_cur = conn.execute(_sql("panel_exclusions.sql"), params)
        excluded = dict(zip([c.name for c in excl_cur.description], excl_cur.fetchone()))
        info = PanelInfo(
            panel_id=panel_id,
            as_of=window.as_of,
            window_start=window.start,
            window_end=window.end,
            lookback_weeks=window.lookback_weeks,
            score_source=score_source,
            n_rows=int(stats[0]),
            n_students=int(stats[1]),
            students_with_3_weeks=int(stats[2]),
            rows_by_source={s: int(by_source.get(s, 0)) for s in SOURCES},
            excluded={k: int(v) for k, v in excluded.items()},
            observations=int(observations),
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


def panel_info(conn: psycopg.Connection, panel_id: str) -> PanelInfo | None:
    """What ``build_panel`` recorded of a stored panel (None: not built)."""
    row = conn.execute("SELECT stats FROM growth_panel_meta WHERE panel_id = %s", (panel_id,)).fetchone()
    if row is None:
        return None
    d = dict(row[0])
    for k in ("as_of", "window_start", "window_end"):
        d[k] = date.fromisoformat(d[k])
    return PanelInfo(**d)


# binary COPY of (int8 code, int4 week, float8 score): fixed-width tuples, read as one numpy
# array (no Python object per row)
_ROW = np.dtype([("nf", ">i2"), ("l0", ">i4"), ("code", ">i8"), ("l1", ">i4"), ("week", ">i4"),
                 ("l2", ">i4"), ("score", ">f8")])
_HEADER = 11 + 4 + 4  # signature, flags, header extension length (0)


def load_panel(conn: psycopg.Connection, panel_id: str) -> Panel:
    """The stored panel as columns, checked (spec §1, §3): ids once, a code per row."""
    ids = [r[0] for r in conn.execute(
        "SELECT DISTINCT student_id FROM growth_panel WHERE panel_id = %s ORDER BY student_id",
        (panel_id,)).fetchall()]
    buf = bytearray()
    with conn.cursor().copy(
        "COPY (SELECT (dense_rank() OVER (ORDER BY student_id COLLATE \"C\") - 1)::int8, week, score"
        " FROM growth_panel WHERE panel_id = %s ORDER BY student_id COLLATE \"C\", week)"
        " TO STDOUT (FORMAT binary)", (panel_id,)) as copy:
        for chunk in copy:
            buf += chunk
    body = memoryview(buf)[_HEADER:len(buf) - 2]  # the trailer is int16 -1
    rows = np.frombuffer(body, dtype=_ROW)
    ids_c = sorted(ids)  # Python's order is the C collation's for str (code points)
    return Panel.from_columns(np.asarray(ids_c, dtype=object), rows["code"].astype(np.int64),
                              rows["week"].astype(np.int64), rows["score"].astype(np.float64))
