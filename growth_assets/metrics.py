"""Goal-attainment probability ``P`` of a student, read or computed through a fallback chain.

The seed's call shape::

    from growth_assets.db import get_session
    from growth_assets.metrics import compute_goal_attainment_probability
    with get_session() as s:
        compute_goal_attainment_probability(s, "user-123", target=150.0)

``METRICS_USE_BAYESIAN`` and ``METRICS_DEFAULT_TARGET`` are read (``Settings.from_env()``) when
a function is called, never at import.

The chain (spec §6, §7), with METRICS_USE_BAYESIAN=true
--------------------------------------------------------

1. ``stored``: the ``P`` in ``weekly_kpi.kpis`` of the user's latest week (the row with the
   greatest ``week_start``; for :func:`calculate_and_store_weekly_kpi` and
   :func:`refresh_active_users`, the row of the week being written). It counts only if ALL
   of these hold:

   - ``P`` is a JSON number within [0, 1];
   - ``P_target`` is a JSON number equal to the requested target (relative/absolute tolerance
     1e-12: PostgreSQL keeps 15 significant digits when ``merge_weekly_kpi`` turns the double
     into jsonb);
   - ``P_run_id`` equals the ``run_id`` of the latest run with status ``passed`` (so a P of a
     superseded run, of a run that later failed, or with no run at all does not count);
   - ``P_source`` is the engine of that run (``brms``/``native``: written by the weekly
     graph) or ``posterior`` (written by :func:`calculate_and_store_weekly_kpi` from that
     run's posterior, path 2).

   Hence a stored ``P_source = 'normal'`` P never counts: it has no run (``P_run_id`` is
   null) and the Normal approximation is recomputed from the latest theta instead (cheap,
   and fresher than a stored copy). A legacy P without ``P_target`` never counts.

   With a run that kept population draws (below), a stored P also needs the requested
   horizon (``P_week``) and no score of the student since the run's window: otherwise it
   is recomputed (path ``update``), so during the week P follows the week's scores.

2. ``update`` (a run with population draws, ``growth_population_draws``: the native
   engine keeps 1000, ``contract.POPULATION_DRAWS``): the latest passed run's
   hyperparameter draws and ALL of the student's scores from the run's ``window_start`` up
   to now, exactly: per draw d the line is the conditional Normal (``model.lines``), and
   ``P = mean_d Phi((m_d(h) - target) / s_d(h))`` (within a proven 1e-3, the engine's own
   rule for its stored P: a first- or second-order Taylor form in the moments of z over the
   draws where its proven bound allows it, else the mean over draws; the 1000 draws' Monte
   Carlo error is larger), ``mu`` and ``sigma`` the
   mixture's (``native_math.predict_from_sums``). The scores are five sums per student:

   - a student of the run: the window as the run's fit saw it (its sums, kept beside her
     line in ``growth_student_posterior``), plus every week since the window, read through
     the panel's own query. A score dated inside the window that arrived after the fit is
     not folded in: the stored P (path 1) does not see it either, so both paths answer from
     the same data until the next fit;
   - any other user (not in the fit, or in a fit stored before the sums were kept): every
     week since ``window_start``, read through the panel's own query.

   One student's new scores move the population posterior by O(1/N), so the run's draws
   stay valid until the next fit (tested against a refit: within 0.02). ``horizon`` (a
   Monday; default the run's ``P_week``) gives P for any week: ``h`` = weeks from
   ``window_start``. The answer's ``n_new`` says how many weeks after the window it folded
   in. A user with no scores at all since ``window_start`` goes on to path 3. ``P_source``
   ``update``.

2'. ``run`` / ``population`` (a run without population draws: stored before they existed,
   or by an engine that gives none): the latest ``growth_brms_meta`` run with status ``passed``
   (the latest data window, ``window_end``: a backfill of an old week never outranks a newer
   window; then the greatest ``fitted_at``, then ``run_id``), at its ``horizon_week`` h, for the
   requested target, in closed form (:func:`contract.line_prediction`): the expected score
   ``a + b h`` is Normal with mean ``mean_a + h mean_b`` and variance
   ``var_a + 2 h cov_ab + h^2 var_b``; ``P = 1 - Phi((target - mu) / sigma)``. No network call.

   - ``run``: the student has a row in ``growth_student_posterior`` for that run: its line
     posterior (mean_a, mean_b, var_a, var_b, cov_ab) is used. (The stored ``"P"`` column is
     the engine's exact mixture P at the run's own target; the closed form above is used for
     every target so that one rule serves all targets; both agree within 0.02, tested.)
   - ``population``: the student was not in that fit but has scores since the run's
     ``window_start``. The line posterior comes from the run's population posterior (plug-in
     posterior means of ``b_Intercept``, ``b_week``, ``sd_student_id__Intercept`` (t0),
     ``sd_student_id__week`` (t1), ``cor_student_id__Intercept__week`` (rho), ``sigma``) and
     the student's own data, as the conditional Normal of the Gaussian mixed model::

         prior       (a, b) ~ N(beta, Sigma),  beta = (b_Intercept, b_week),
                     Sigma = [[t0^2, rho t0 t1], [rho t0 t1, t1^2]]
         data        y = X (a, b)' + e,  e ~ N(0, sigma^2 I),  X = [1, week]  (n x 2)
         posterior   cov = Sigma B^-1,  B = I + X'X Sigma / sigma^2 (no inverse of Sigma),
                     mean = c + cov X'y / sigma^2

     (``model.lines``, the same code the native engine averages over its draws). X'X and
     X'y are five sums per student, computed in SQL.

     The student's data: the student-week scores of the panel's own query (``panel_query``:
     for ``theta``, the first of mirt_ability, student_topic_theta, features_topic_daily's
     theta_estimate and weekly_kpi's ability_estimate per week; for ``accuracy``,
     correct / attempts), from the run's ``window_start`` up to now; ``week`` = whole weeks
     since ``window_start`` (weeks after the window count too, with their calendar index).
     So every student the fit could have seen, this path can serve. The plug-in ignores
     the hyperparameters' posterior uncertainty (the engines average over it), which for a
     cohort of tens of students or more is small against the student's own uncertainty
     (tested against a real native fit).

3. ``normal``: the Normal approximation (spec §7) from the user's latest ``mirt_ability`` row
   with a non-NULL theta: ``P = 1 - Phi((target - theta) / se)``; no such row, a non-finite
   theta or se, a theta outside BRMS_SCORE_RANGE, or ``se <= 0``: no P. Nor when the target is
   a share correct (the passed run's score source, else BRMS_SCORE_SOURCE, is ``accuracy``):
   a theta is on another scale.

With METRICS_USE_BAYESIAN=false only path 3 is tried. Nothing applies: ``P`` is None.

Every answer records which path gave it and why each earlier path did not apply
(:class:`GoalAnswer`); the single-user functions log it at INFO on the logger
``growth_assets.metrics``; the batch form logs one INFO summary (counts per path and per
reason) and each user's answer at DEBUG. A NaN/infinite target or an empty user id raises
:class:`ContractError` naming the field. Database errors propagate (nothing is swallowed).

Queries: one per path for any number of users (``= ANY(%s)``: the ids as one binary array,
encoded once per statement, ``_Ids``; for one user ``= (%s)[1]``, ``_one_user_sql``), never
one per user. The reads every user needs (the latest run, the stored P, the score sums, and
path 3's theta for those with no scores) go to the server together. On an idle session a call
that is not a batch sends them as one simple query (``_Trips``): its settings, then each read
as the EXECUTE of a statement it prepared in the session, one implicit transaction, one round
trip. Inside a caller's transaction they go in one pipeline, in a savepoint (``_reading``). A batch
(more than ``PREFETCH_THETA_MAX_USERS`` users) reads its run first, then its users in chunks
of ``BATCH_CHUNK_USERS``, each chunk's reads sent before the chunk ahead of it is answered,
so that the server and this process work at once (``_start_batch``); a batch of several
chunks on a session with nothing of its caller's open reads them on two connections that share
one snapshot, so that two server processes read while this one answers. A session whose
prepared statements do not stay from one transaction to the next (a pooler in transaction
mode) is read in a pipeline with nothing prepared, from the call that showed it on
(``_UNPREPARED``).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import gc
import hashlib
import json
import logging
import math
import re
import weakref
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from operator import attrgetter
from datetime import date, datetime, time, timedelta, timezone
from typing import Any, NamedTuple

import numpy as np
import psycopg
from psycopg.adapt import Dumper, PyFormat, Transformer
from psycopg.pq import Format, PipelineStatus, TransactionStatus
from psycopg.rows import tuple_row

from .db.connection import EXPORT_SNAPSHOT, SCHEMA_FIRST, in_snapshot
from .db.writers import check_monday, merge_weekly_kpi
from .model.contract import (ContractError, check_target, has_normal_approximation, line_prediction,
                             normal_approximation_p)
from .model.lines import conditional_line
from .model.native_math import P_TOLERANCE, predict_from_sums, standardised_draws
from .settings import Settings

log = logging.getLogger("growth_assets.metrics")

PATHS = ("stored", "update", "run", "population", "normal", "none")
_TARGET_RTOL = 1e-12


@dataclass(slots=True)
class GoalAnswer:
    """One user's goal-attainment probability and where it came from: a plain record with
    slots (a batch makes one per user, and a frozen dataclass's ``__init__`` costs six times
    as much: 0.5 s of a 100,000-user batch).

    ``path``: ``stored`` (a weekly_kpi P), ``run`` (the student's line posterior in the
    latest passed run), ``population`` (the run's population posterior + the student's own
    data), ``normal`` (spec §7) or ``none`` (P is None). ``reasons``: why each earlier path
    did not apply, in order. ``source``: the ``P_source`` this answer is stored under.
    ``p_week``: the Monday of the horizon week (paths stored/run/population).
    """

    user_id: str
    target: float
    P: float | None
    sigma: float | None = None
    mu: float | None = None
    path: str = "none"
    reasons: tuple[str, ...] = ()
    run_id: str | None = None
    source: str | None = None
    p_week: date | None = None
    kpi_week: date | None = None  # path stored: the weekly_kpi row it was read from
    n_obs: int | None = None  # path update/run/population: the student's observations (weeks)
    window_end: date | None = None  # path update/run/population: the data window of its run
    n_new: int | None = None  # path update: of n_obs, the weeks after the run's window


@dataclass
class _Run:
    run_id: str
    engine: str | None
    horizon_week: int | None
    window_start: date | None
    score_source: str | None
    summary_text: str | None  # its posterior_summary as JSON text, parsed when a path needs it
    window_end: date | None = None
    draws_version: str | None = None  # xmin of its growth_population_draws row; None: no draws

    @functools.cached_property
    def summary(self) -> dict[str, Any] | None:
        """posterior_summary (the plug-in path's; a call answered from the draws never parses it)."""
        return None if self.summary_text is None else json.loads(self.summary_text)

    @property
    def lookback_weeks(self) -> int | None:
        if self.window_start is None or self.window_end is None:
            return None
        return (self.window_end - self.window_start).days // 7

    def p_week(self, h: int) -> date | None:
        return self.window_start + timedelta(weeks=h) if self.window_start else None


# a user still pending in the chain: the reasons, so far, why earlier paths did not apply
_Pending = list


# --- argument checks ---------------------------------------------------------------------------


def _check_user(user_id: Any) -> str:
    if not isinstance(user_id, str) or not user_id.strip():
        raise ContractError("user_id", "missing or empty", user_id)
    if "\x00" in user_id:  # no PostgreSQL text holds it: the server's error failed a whole batch
        raise ContractError("user_id", "must not contain a NUL character", user_id)
    return user_id


def _resolve_target(target: Any, settings: Settings) -> float:
    return check_target(settings.metrics_default_target if target is None else target)


def _same_target(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=_TARGET_RTOL, abs_tol=_TARGET_RTOL)


@functools.lru_cache(maxsize=256)  # a batch's rows hold a few distinct weeks, many times
def _parse_date(v: str | None) -> date | None:
    try:
        return date.fromisoformat(v) if v else None
    except ValueError:
        return None


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


# --- the queries (one per path, for any number of users) ------------------------------------------


class _Ids:
    """A call's user ids as one binary ``text[]`` parameter, encoded once however many
    statements send it, when the first does: psycopg's own binary list dumper makes the bytes
    (through the session's adapters), and this holds them (dumping the list again in every
    statement costs ~0.06 s per statement at 100,000 ids). A call whose reads go as literals
    (``_Trips``) never encodes them."""

    __slots__ = ("_data", "_session", "n", "users")

    def __init__(self, session: psycopg.Connection, users: Sequence[str]) -> None:
        users = list(users)
        self.n, self.users, self._session, self._data = len(users), users, session, None

    @property
    def data(self) -> bytes:
        if self._data is None:
            # the dumper of a non-empty list of str: an empty list alone gets the text dumper
            dumper = Transformer.from_context(self._session).get_dumper(self.users or [""], PyFormat.BINARY)
            self._data = bytes(dumper.dump(self.users))
        return self._data


class _IdsDumper(Dumper):
    format = Format.BINARY
    oid = 1009  # text[]

    def dump(self, obj: _Ids) -> bytes:
        return obj.data


def _ids(session: psycopg.Connection, users: Sequence[str] | _Ids) -> _Ids:
    return users if isinstance(users, _Ids) else _Ids(session, users)


def _count(users: Sequence[str] | _Ids) -> int:
    return users.n if isinstance(users, _Ids) else len(users)


@functools.lru_cache(maxsize=64)
def _numbered(sql: str) -> tuple[str, tuple[str, ...]]:
    """``sql`` with PostgreSQL's own placeholders: each ``%(name)s`` as ``$n`` (one number per
    name), and the names in their numbers' order."""
    names: list[str] = []

    def number(m: re.Match) -> str:
        if m.group(1) not in names:
            names.append(m.group(1))
        return f"${names.index(m.group(1)) + 1}"

    text = re.sub(r"%\((\w+)\)s", number, sql)
    if "%" in text:
        raise ValueError(f"a placeholder other than %(name)s in {sql[:200]!r}")
    return text, tuple(names)


def _execute(session: psycopg.Connection, sql: str, params: dict[str, Any]) -> psycopg.RawCursor:
    """``session.execute(sql, params)`` through a raw cursor, the query converted once
    (``_numbered``): psycopg converts a query of more than 4 KB again on every execute (its
    cache of converted queries keeps only shorter ones), ~90 us of a call for the score
    query. Rows are tuples whatever the session's row factory. A batch's reads (``users`` of
    more than PREFETCH_THETA_MAX_USERS) come in binary: 200,000 rows for 100,000 users, no
    number parsed from its digits, ~0.1 s less of this process's time; a call of a few users
    reads text (binary cost it 5-20% more of this process's time, measured)."""
    trips = _trips_of(session)
    if trips is not None:
        return trips.send(sql, params)
    text, names = _numbered(sql)
    users = params.get("users")
    binary = users is not None and _count(users) > PREFETCH_THETA_MAX_USERS
    return psycopg.RawCursor(session, row_factory=tuple_row).execute(text, [params[n] for n in names], binary=binary,
                                                                     prepare=_prepare(session))


# --- a single call's reads: one simple query per round trip ----------------------------------
#
# On a session with nothing of its caller's open, a call of a few users (not a batch) sends each
# round trip as ONE simple query: the call's settings (``_CALL_CONFIG``), the PREPARE of any of
# its statements this session has not prepared yet, and an EXECUTE of each of its reads, with
# their parameters written as literals (psycopg's quoting). The server runs them as one implicit
# transaction, so the settings hold for the reads and end with them, as in ``_reading``; each
# statement keeps its generic plan in the session (SQL's PREPARE), as psycopg's own prepared
# statements do. psycopg's pipeline cost this process more than the reads it carried
# (measured 2026-12-08 on this machine, p50 of three trivial statements: 0.39-0.47 ms in a
# pipeline, 0.38 ms in three round trips, 0.14-0.19 ms as one simple query of four).

# each parameter's type in a PREPARE (a name not here is a KeyError at a call's first read)
_PARAM_TYPES = {"statement_timeout": "text", "lock_timeout": "text", "schema": "text", "plan_mode": "text",
                "users": "text[]", "kpi_week": "date", "run_id": "text", "kept": "boolean", "lookback": "integer",
                "window_start": "date", "window_end_run": "date", "window_end": "date", "now": "timestamptz",
                "score_lo": "float8", "score_hi": "float8"}
PREPARED_PREFIX = "growth_call_"


@functools.lru_cache(maxsize=64)
def _prepared(sql: str) -> tuple[str, str, tuple[str, ...]]:
    """(name, PREPARE statement, the parameters' names in their numbers' order) of ``sql`` as a
    statement prepared in a session. The name is a digest of the text: another text (another
    schema's, score source's or release's) is another statement, never a stale one."""
    text, names = _numbered(sql)
    types = ", ".join(_PARAM_TYPES[n] for n in names)
    name = PREPARED_PREFIX + hashlib.sha1(f"{types}\n{text}".encode()).hexdigest()[:24]
    return name, f"PREPARE {name}{f'({types})' if names else ''} AS {text}", names


# per session: the names of this module's statements it holds (absent: not known, read from
# pg_prepared_statements at the next call; an error in a round trip forgets them)
_PREPARED_IN: weakref.WeakKeyDictionary[psycopg.Connection, set[str]] = weakref.WeakKeyDictionary()
# sessions whose prepared statements did not stay from one round trip to the next (a pooler in
# transaction mode hands each transaction to any of its server connections): their calls send
# their reads in a pipeline, and nothing of theirs is prepared, by SQL or by psycopg
_UNPREPARED: weakref.WeakSet[psycopg.Connection] = weakref.WeakSet()


class _NotKept(Exception):
    """A round trip's prepared statements were not on the server it ran on, twice (``_UNPREPARED``)."""


def _not_kept(session: psycopg.Connection, exc: psycopg.Error) -> None:
    """Mark ``session`` as one whose prepared statements do not stay (``_UNPREPARED``), and say so."""
    _UNPREPARED.add(session)
    log.warning("the session's prepared statements do not stay from one round trip to the next (%s): a connection"
                " pooler in transaction mode? Its calls now send their reads unprepared, in a pipeline; set"
                " prepare_threshold = None on such a session", exc)


def _prepare(session: psycopg.Connection) -> bool | None:
    """The ``prepare`` of psycopg's ``execute`` for this session's reads: never for a session
    whose prepared statements do not stay, else psycopg's own rule (``prepare_threshold``)."""
    return False if session in _UNPREPARED else None


def _prepared_in(session: psycopg.Connection) -> set[str]:
    known = _PREPARED_IN.get(session)
    if known is None:  # tuples and $1 whatever the session's row and cursor factories
        rows = psycopg.RawCursor(session, row_factory=tuple_row).execute(
            "SELECT name FROM pg_prepared_statements WHERE starts_with(name, $1)", (PREPARED_PREFIX,),
            prepare=False).fetchall()
        known = _PREPARED_IN[session] = {r[0] for r in rows}
    return known


class _Rows:
    """A queued read's rows (``_Trips``), with the cursor's ``fetchall`` and ``fetchone``:
    fetching sends the round trip of every read queued so far, as a pipeline's fetch does."""

    __slots__ = ("trips", "rows")

    def __init__(self, trips: _Trips) -> None:
        self.trips, self.rows = trips, None

    def fetchall(self) -> list[tuple]:
        if self.rows is None:
            self.trips.flush()
        return self.rows

    def fetchone(self) -> tuple | None:
        rows = self.fetchall()
        return rows[0] if rows else None


class _Queued(NamedTuple):
    """A read of a call as its round trip sends it (``_Trips``)."""

    name: str  # of the statement prepared in the session (``_prepared``)
    prepare: str  # its PREPARE, sent if the session lacks it
    execute: str  # its EXECUTE, with the read's parameters as literals
    rows: _Rows


class _Trips:
    """The reads of a call queued for its next round trip (``_execute`` while ``_one_trip``
    is open on the session)."""

    def __init__(self, session: psycopg.Connection, config: dict[str, str]) -> None:
        self.session = session
        self.tx, self.encoding = Transformer.from_context(session), session.info.encoding
        self.queue: list[_Queued] = []
        self.config = self._queued(_CALL_CONFIG, config)

    def literal(self, value: Any) -> str:
        if isinstance(value, _Ids):
            value = value.users
        return self.tx.as_literal(value).decode(self.encoding)  # the session's client encoding

    def _queued(self, sql: str, params: dict[str, Any]) -> _Queued:
        name, prepare, names = _prepared(sql)
        args = ", ".join(self.literal(params[n]) for n in names)
        return _Queued(name, prepare, f"EXECUTE {name}({args})" if names else f"EXECUTE {name}", _Rows(self))

    def send(self, sql: str, params: dict[str, Any]) -> _Rows:
        self.queue.append(self._queued(sql, params))
        return self.queue[-1].rows

    def flush(self) -> None:
        """Send the queued reads (after the call's settings, and the PREPARE of the statements
        the session lacks) as one query, and give each its rows. A session that lost a statement
        (``DEALLOCATE``, a pooler's other server), or holds one this process did not know of, is
        sent the round trip again, as ``pg_prepared_statements`` then says."""
        queue, self.queue = self.queue, []
        for attempt in (1, 2):
            known = _prepared_in(self.session)
            prepares = {q.name: q.prepare for q in (self.config, *queue) if q.name not in known}
            # the settings first (a PREPARE resolves its tables by the search_path they set)
            first = ([prepares.pop(self.config.name)] if self.config.name in prepares else []) + [self.config.execute]
            cur = psycopg.Cursor(self.session, row_factory=tuple_row)  # whatever the session's cursor factory
            try:
                # no parameters: psycopg sends the text as it is, in one simple query
                cur.execute(";".join([*first, *prepares.values(), *(q.execute for q in queue)]), prepare=False)
            except (psycopg.errors.InvalidSqlStatementName, psycopg.errors.DuplicatePreparedStatement) as exc:
                # what this process knew of the session was wrong (another thread's call on it,
                # a DEALLOCATE): read again what it holds, and send the trip again
                _PREPARED_IN.pop(self.session, None)
                if attempt == 2:  # wrong again: the server changed under the session
                    _not_kept(self.session, exc)
                    raise _NotKept from exc
                continue
            except psycopg.Error:
                _PREPARED_IN.pop(self.session, None)  # which of its PREPAREs took is not known
                raise
            known.update(q.name for q in (self.config, *queue))
            for _ in range(len(first) + len(prepares)):  # the settings' row and the PREPAREs' statuses
                cur.nextset()
            for q in queue:
                q.rows.rows = cur.fetchall()
                cur.nextset()
            return


_TRIPS: contextvars.ContextVar[_Trips | None] = contextvars.ContextVar("growth_metrics_trips", default=None)


def _trips_of(session: psycopg.Connection) -> _Trips | None:
    """The one-trip block open on ``session`` (``_one_trip``), if any."""
    trips = _TRIPS.get()
    return trips if trips is not None and trips.session is session else None


@contextmanager
def _one_trip(session: psycopg.Connection, config: dict[str, str]) -> Iterator[None]:
    """The block of a call's reads on an idle session (``_Trips``): each round trip its own
    implicit transaction with the call's settings. A session without autocommit is switched
    to it for the block (psycopg would send a BEGIN of its own), idle before and after."""
    toggle = not session.autocommit
    if toggle:
        session.autocommit = True
    token = _TRIPS.set(_Trips(session, config))
    try:
        yield
    finally:
        _TRIPS.reset(token)
        if toggle and not session.closed:
            session.autocommit = False


@functools.lru_cache(maxsize=64)
def _one_user_sql(sql: str) -> str:
    """``sql`` for a call of one user: every ``= ANY(<the users' array>)`` becomes ``=
    (<the array>)[1]``. A call of one user runs on generic plans (``_plan_mode``), and a
    generic plan's planner sees ``= ANY($n)`` as ten ids of unknown length against a window
    of dates it cannot see either: it then estimated the date index of weekly_kpi (or
    mirt_ability) cheaper than ten lookups by id, and one call scanned every row of the
    week (26 ms instead of 0.3 at 100,000 users). ``= <one value>`` it estimates as one
    user's rows, which the id index answers, for any table of more than a few hundred users."""
    out = sql
    for arr in ("%(users)s::text[]", "(SELECT ids FROM for_users)::text[]", "(SELECT ids FROM no_scores)::text[]",
                "%(users)s"):
        typed = arr if arr.endswith("[]") else f"{arr}::text[]"
        for any_ in (f"= ANY ({arr})", f"= ANY({arr})"):
            out = out.replace(any_, f"= ({typed})[1]")
    assert "ANY" not in out, out
    return out


def _for(sql: str, users: Sequence[str] | _Ids) -> str:
    """``sql`` as it is sent for these users (``_one_user_sql`` for one)."""
    return _one_user_sql(sql) if _count(users) == 1 else sql


# The settings of a call, local to its read-only block (``_reading``): its timeouts, the
# project's schema first on the search_path, its plans (``_plan_mode``), and no parallel
# workers: a call's scans are of its own users' rows, and starting a worker cost more than the
# scan it shared (a Gather of 120-160 ms around a 7 ms scan of weekly_kpi in a batch).
_CALL_CONFIG = ("SELECT set_config('statement_timeout', %(statement_timeout)s, true),"
                " set_config('lock_timeout', %(lock_timeout)s, true),"
                f" {SCHEMA_FIRST},"
                " set_config('plan_cache_mode', %(plan_mode)s, true),"
                " set_config('max_parallel_workers_per_gather', '0', true)")


def _send_latest_runs(session: psycopg.Connection, schema: str, config: dict[str, str]) -> psycopg.Cursor:
    """The latest passed run and (run_id, status) of the latest run of any status
    (``_read_latest_runs``), read in the statement that sets the call's ``config``
    (``_CALL_CONFIG``: in force from the next statement on), so the two cost one round trip;
    in a call's one-trip block, whose every round trip begins with them (``_Trips``), without.
    Its tables are named with their schema: the search_path it sets is not in force for the
    statement itself."""
    q = f'"{schema}"'  # a checked identifier (settings.check_schema)
    cfg = "" if _trips_of(session) is not None else f"({_CALL_CONFIG}) cfg CROSS JOIN "
    return _execute(
        session, f"""
        SELECT r.* FROM {cfg}(
        (SELECT 'passed' AS which, run_id, engine, status, horizon_week, window_start,
                score_source, posterior_summary::text, window_end,
                (SELECT d.xmin::text FROM {q}.growth_population_draws d WHERE d.run_id = m.run_id)
         FROM {q}.growth_brms_meta m WHERE status = 'passed'
         ORDER BY window_end DESC NULLS LAST, fitted_at DESC NULLS LAST, run_id DESC LIMIT 1)
        UNION ALL
        (SELECT 'any', run_id, engine, status, NULL, NULL, NULL, NULL, NULL, NULL
         FROM {q}.growth_brms_meta
         ORDER BY window_end DESC NULLS LAST, fitted_at DESC NULLS LAST, run_id DESC LIMIT 1)) r
        """, config
    )


def _read_latest_runs(cur: psycopg.Cursor) -> tuple[_Run | None, tuple[str, str] | None]:
    """(the latest passed run, (run_id, status) of the latest run of any status)."""
    passed = latest = None
    for which, run_id, engine, status, h, ws, src, summary, we, draws_version in cur.fetchall():
        if which == "passed":
            passed = _Run(run_id, engine, h, ws, src, summary, we, draws_version)
        else:
            latest = (run_id, status)
    return passed, latest


# a JSON number's magnitude float8 holds: at most its greatest; below 1e-307 (its least normal
# number is 2.2e-308; the panel's query reads weekly_kpi's ability_estimate with the same bound)
# it is taken as 0 (a cast of 1e-400 fails: "out of range for type double precision")
FLOAT8_MAX, FLOAT8_TINY = "1.7976931348623157e308", "1e-307"


def _json_number(j: str) -> str:
    """SQL: the jsonb value ``j`` as float8 when it is a JSON number float8 can hold, else NULL
    (cast in the server: no JSON parsed in Python, one per row, for a batch of 100,000 rows).
    A JSON number has no range: beyond float8's (1e400) it is NULL, and one too small for it
    (1e-400) is 0; a plain cast failed the whole call, or batch, over one user's row."""
    return (f"CASE WHEN jsonb_typeof({j}) = 'number' THEN CASE WHEN abs({j}::numeric) < {FLOAT8_TINY} THEN 0::float8"
            f" WHEN abs({j}::numeric) <= {FLOAT8_MAX} THEN {j}::float8 END END")


# weekly_kpi's keys of path 1, each looked up in kpis once per row: the subqueries' OFFSET 0
# keeps the planner from folding their columns into the expressions that use them, each of
# which then looked its key up again (five times for P: 66 against 40 ms for 12,500 rows)
_STORED_FROM = ("(SELECT user_id, week_start, p, s, t, r, src, pw, {pn} AS pn FROM"
                " (SELECT user_id, week_start, kpis -> 'P' AS p, kpis -> 'sigma' AS s, kpis -> 'P_target' AS t,"
                " kpis ->> 'P_run_id' AS r, kpis ->> 'P_source' AS src, kpis ->> 'P_week' AS pw"
                " FROM weekly_kpi WHERE user_id = ANY(%(users)s){{week}} OFFSET 0) a OFFSET 0) b").format(pn=_json_number("p"))
# P as float8 when it is a number float8 can hold (binary in a batch: no digits parsed here),
# and in a last column its JSON text when it is another value (NULL: a number, absent or JSON
# null), so that a row is its tuple as it comes (``_stored_rows``: 0.2 against 1.6 us a row;
# P as text, parsed here, cost this process 30 ms and the server 10 ms a chunk of 12,500)
_STORED_KEYS = (f"pn, {_json_number('s')}, {_json_number('t')}, r, src, pw,"
                " CASE WHEN pn IS NULL AND jsonb_typeof(p) <> 'null' THEN p::text END")


def _stored_sql(kpi_week: date | None) -> str:
    """Per user: (week_start, P, sigma, P_target, P_run_id, P_source, P_week, P is a number) of
    the latest (or ``kpi_week``'s) weekly_kpi row. Parameters: users, kpi_week."""
    if kpi_week is None:
        return (f"SELECT DISTINCT ON (user_id) user_id, week_start, {_STORED_KEYS}"
                f" FROM {_STORED_FROM.format(week='')} ORDER BY user_id, week_start DESC")
    return (f"SELECT user_id, week_start, {_STORED_KEYS}"
            f" FROM {_STORED_FROM.format(week=' AND week_start = %(kpi_week)s')}")


def _send_stored(session: psycopg.Connection, users: list[str], kpi_week: date | None) -> psycopg.Cursor:
    return _execute(session, _for(_stored_sql(kpi_week), users), {"users": _ids(session, users), "kpi_week": kpi_week})


def _read_stored(cur: psycopg.Cursor) -> dict[str, tuple]:
    return _stored_rows(cur.fetchall())


def _stored_rows(rows: list[tuple]) -> dict[str, tuple]:
    """Per user: (week_start, P, sigma, P_target, P_run_id, P_source, P_week); P is a float,
    None (absent or JSON null) or, when it is another JSON value (or a number beyond float8's
    range), its text (``_STORED_KEYS``)."""
    return {r[0]: r[1:8] if r[8] is None else (r[1], r[8], *r[3:8]) for r in rows}


def _send_posterior(session: psycopg.Connection, run_id: str, users: list[str]) -> psycopg.Cursor:
    """Per user (``_read_rows``): the stored line posterior of the run (n_obs, mean_a, mean_b,
    var_a, var_b, cov_ab)."""
    return _execute(
        session, _for("SELECT user_id, n_obs, mean_a, mean_b, var_a, var_b, cov_ab FROM growth_student_posterior"
             " WHERE run_id = %(run_id)s AND user_id = ANY(%(users)s)", users),
        {"run_id": run_id, "users": _ids(session, users)},
    )


def _send_sums(session: psycopg.Connection, run: _Run, users: list[str],
               score_range: tuple[float, float], as_of: datetime | None = None) -> psycopg.Cursor:
    """Per user (``_read_rows``): (n weeks, sum w, sum w^2, sum y, sum w y, weeks after the
    window) of the student-week scores since the run's window_start up to now, through the
    panel's own query (the same four sources in the same priority, or accuracy, as the run's
    panel; weeks after the window keep their calendar index w). For a run without population
    draws (``_line_paths``), or one whose record has no window_end."""
    return _execute(session, _for(_sums_sql(run), users), _sums_params(session, run, users, score_range, as_of))


_SUMS_OF = ("SELECT student_id, count(*), sum(w)::float8, sum(w * w)::float8, sum(score), sum(w * score),"
            " count(*) FILTER (WHERE w >= %(lookback)s) FROM ({rows}) r GROUP BY 1")


def _sums_sql(run: _Run) -> str:
    from .defs.growth.panel import panel_query

    query = panel_query(run.score_source or "theta", for_users=True)
    return _SUMS_OF.format(rows=f"SELECT student_id, week AS w, score FROM ({query}) q")


def _sums_params(session: psycopg.Connection, run: _Run, users: list[str], score_range: tuple[float, float],
                 as_of: datetime | None = None) -> dict[str, Any]:
    now = _until(as_of)
    lookback = run.lookback_weeks
    return {"window_start": run.window_start, "window_end_run": run.window_end,
            "window_end": now.date() + timedelta(days=1), "now": now,
            "users": _ids(session, users), "score_lo": score_range[0], "score_hi": score_range[1], "run_id": run.run_id,
            "lookback": lookback if lookback is not None else 2**31 - 1, "kept": _kept_view(run, as_of)}


def _kept_view(run: _Run, as_of: datetime | None) -> bool:
    """Whether what the run kept of each student (her window sums, her line) may answer a call as
    of ``as_of``: not when that instant is before the run's window ended (a week that is over,
    ``_week_end``), whose kept view holds the weeks after it. A member was answered from them,
    and another user of the very same scores, from the sources, got another P."""
    return as_of is None or run.window_end is None or as_of >= datetime.combine(run.window_end, time(), timezone.utc)


def _until(as_of: datetime | None) -> datetime:
    """The instant the call's scores are read up to: ``as_of``, or now."""
    return as_of if as_of is not None else datetime.now(timezone.utc)


def _week_end(kpi_week: date | None) -> datetime | None:
    """What a P for ``kpi_week``'s row may know: the scores up to that week's end (None: up to
    now). A week that is over gets its P as of its end: a refresh re-run later wrote a later
    week's scores (a theta of the week after) into it."""
    if kpi_week is None:
        return None
    end = datetime.combine(kpi_week + timedelta(days=7), time(), timezone.utc) - timedelta(microseconds=1)
    return end if end < datetime.now(timezone.utc) else None  # its last instant (a date: its Sunday)


def _reads_key(run: _Run | None) -> tuple | None:
    """What the reads of a run with population draws depend on (None: not such a run)."""
    if run is None or run.window_start is None or run.window_end is None or run.draws_version is None:
        return None
    return (run.run_id, run.window_start, run.window_end, run.score_source, run.draws_version)


def _send_run_reads(session: psycopg.Connection, run: _Run, users: list[str] | _Ids,
                    score_range: tuple[float, float], as_of: datetime | None = None) -> tuple:
    """The reads of a run with population draws, in one statement (``_run_reads_sql``): every
    user's sums since the window's start and the latest theta of those who have none (path
    3's read, before it is known to be needed: a statement less)."""
    params = _sums_params(session, run, users, score_range, as_of)
    few = _count(users) <= PREFETCH_THETA_MAX_USERS
    return _execute(session, _for(_run_reads_sql(run.score_source or "theta", few), users), params), True


# the users of a call (``users``), each with the window sums the run (``run_id``) kept for her;
# NULL: not in its fit, or in a fit stored before the sums were kept, or a call the kept sums may
# not answer (``kept``: ``_kept_view``). Her window is then read from the sources, up to the call's instant.
_MEMBERS = ("SELECT u.id, p.n_obs, p.sum_w, p.sum_ww, p.sum_y, p.sum_wy FROM unnest(%(users)s::text[]) u(id)"
            " LEFT JOIN growth_student_posterior p"
            " ON %(kept)s AND p.run_id = %(run_id)s AND p.user_id = u.id AND p.sum_w IS NOT NULL")
_SUMS = ("SELECT student_id, count(*) AS n, sum(w)::float8 AS sw, sum(w * w)::float8 AS sww, sum(score) AS sy,"
         " sum(w * score) AS swy FROM (SELECT student_id, week + {offset} AS w, score FROM ({rows}) q) r GROUP BY 1")


# a call's sums in one pass over the window and the weeks since (``_run_reads_sql``'s ``few``):
# each of _SUMS' five, of the weeks since (s_) and of the window's (w_)
_PASS = ", ".join(f"{agg} FILTER (WHERE w {op} %(lookback)s){cast} AS {part}{name}"
                  for part, op in (("s_", ">="), ("w_", "<"))
                  for agg, cast, name in (("count(*)", "", "n"), ("sum(w)", "::float8", "sw"),
                                          ("sum(w * w)", "::float8", "sww"), ("sum(score)", "", "sy"),
                                          ("sum(w * score)", "", "swy")))


@functools.lru_cache(maxsize=8)
def _run_reads_sql(score_source: str, few: bool = False) -> str:
    """Per user with scores since the run's window_start: (user_id, n weeks, sum w, sum w^2,
    sum y, sum w y, weeks after the window, NULL, NULL); per user without: (user_id, six
    NULLs, theta, se) of her latest theta (``_THETA_SQL``), if any. The sums are of three
    disjoint parts, each read once: the window as the run's fit saw it, for a student of the
    run (``_MEMBERS``); the window from the sources, through the panel's query, for every
    other user; and every week since the window, from the sources, for every user (weeks
    keep their calendar index: w >= lookback). Parameters: ``_sums_params``. Made once per
    score source.

    ``few`` (a call of at most PREFETCH_THETA_MAX_USERS users): the same rows, with the sources
    read in one pass over the window and the weeks since for every user, a run's student then
    taking the run's window sums in place of the pass's. Its plan is half the size, and a
    prepared plan's executor start was most of a call's server time (0.05-0.1 ms less a call,
    measured 2026-12-08); a batch reads the window only for the users the run did not fit (at
    100,000 users, the window of the run's half is most of what a pass would read)."""
    from .defs.growth.panel import panel_query

    assert "ANY(%(users)s)" in _THETA_SQL
    theta = _THETA_SQL.replace("ANY(%(users)s)", "ANY((SELECT ids FROM no_scores)::text[])")
    nulls = "NULL::bigint, NULL::float8, NULL::float8, NULL::float8, NULL::float8, NULL::bigint"
    if few:
        rows = panel_query(score_source, for_users=True)
        return (
            f"WITH members AS MATERIALIZED ({_MEMBERS}),"
            f" pass AS MATERIALIZED (SELECT student_id, {_PASS}"
            f" FROM (SELECT student_id, week AS w, score FROM ({rows}) q) r GROUP BY 1),"
            " no_scores AS MATERIALIZED (SELECT coalesce(array_agg(m.id), '{}') AS ids FROM members m"
            " WHERE m.n_obs IS NULL AND NOT EXISTS (SELECT 1 FROM pass p WHERE p.student_id = m.id))"
            " SELECT m.id, coalesce(m.n_obs, p.w_n, 0) + coalesce(p.s_n, 0),"
            " coalesce(m.sum_w, p.w_sw, 0) + coalesce(p.s_sw, 0), coalesce(m.sum_ww, p.w_sww, 0) + coalesce(p.s_sww, 0),"
            " coalesce(m.sum_y, p.w_sy, 0) + coalesce(p.s_sy, 0), coalesce(m.sum_wy, p.w_swy, 0) + coalesce(p.s_swy, 0),"
            " coalesce(p.s_n, 0), NULL::float8, NULL::float8"
            " FROM members m LEFT JOIN pass p ON p.student_id = m.id"
            " WHERE m.n_obs IS NOT NULL OR p.student_id IS NOT NULL"
            f" UNION ALL SELECT t.user_id, {nulls}, t.theta, t.se FROM ({theta}) t")

    since = panel_query(score_source, for_users=True)
    assert "%(window_start)s" in since
    since = since.replace("%(window_start)s", "%(window_end_run)s")  # from the window's end up to now
    window = panel_query(score_source, for_users=True, users_from="SELECT coalesce(array_agg(id), '{}') AS ids"
                         " FROM members WHERE n_obs IS NULL")
    assert "%(window_end)s" in window
    window = window.replace("%(window_end)s", "%(window_end_run)s")  # the window only
    return (
        f"WITH members AS MATERIALIZED ({_MEMBERS}),"
        f" since AS MATERIALIZED ({_SUMS.format(offset='%(lookback)s', rows=since)}),"
        f" win AS MATERIALIZED ({_SUMS.format(offset='0', rows=window)}),"
        " no_scores AS MATERIALIZED (SELECT coalesce(array_agg(m.id), '{}') AS ids FROM members m"
        " WHERE m.n_obs IS NULL AND NOT EXISTS (SELECT 1 FROM since s WHERE s.student_id = m.id)"
        " AND NOT EXISTS (SELECT 1 FROM win w WHERE w.student_id = m.id))"
        " SELECT m.id, coalesce(m.n_obs, w.n, 0) + coalesce(s.n, 0), coalesce(m.sum_w, w.sw, 0) + coalesce(s.sw, 0),"
        " coalesce(m.sum_ww, w.sww, 0) + coalesce(s.sww, 0), coalesce(m.sum_y, w.sy, 0) + coalesce(s.sy, 0),"
        " coalesce(m.sum_wy, w.swy, 0) + coalesce(s.swy, 0), coalesce(s.n, 0), NULL::float8, NULL::float8"
        " FROM members m LEFT JOIN since s ON s.student_id = m.id LEFT JOIN win w ON w.student_id = m.id"
        " WHERE m.n_obs IS NOT NULL OR s.n IS NOT NULL OR w.n IS NOT NULL"
        f" UNION ALL SELECT t.user_id, {nulls}, t.theta, t.se FROM ({theta}) t")


def _read_run_reads(curs: tuple) -> tuple[dict[str, tuple], dict[str, tuple] | None]:
    """(every user's sums since the window's start, the prefetched thetas or None)."""
    cur, with_theta = curs
    return _run_reads_rows(cur.fetchall(), with_theta)


def _run_reads_rows(rows: list[tuple], with_theta: bool) -> tuple[dict[str, tuple], dict[str, tuple] | None]:
    if not with_theta:
        return {r[0]: tuple(r[1:]) for r in rows}, None
    sums: dict[str, tuple] = {}
    theta: dict[str, tuple] = {}
    for r in rows:
        if r[1] is None:  # a theta row (a sums row always has its count)
            theta[r[0]] = (r[7], r[8])
        else:
            sums[r[0]] = r[1:7]
    return sums, theta


def _read_rows(cur: psycopg.Cursor) -> dict[str, tuple]:
    """{first column: the rest} of a query's rows."""
    return {r[0]: tuple(r[1:]) for r in cur.fetchall()}


_DRAWS_CACHE: dict[tuple, tuple[dict[str, np.ndarray], tuple]] = {}
_DRAWS_CACHE_SIZE = 4


def _run_draws(session: psycopg.Connection, run: _Run, where: tuple) -> tuple[dict[str, np.ndarray], tuple] | None:
    """The run's thinned population draws (``growth_population_draws``) with their
    standardised form (``native_math.standardised_draws``), or None (a run stored before
    they existed, or by an engine that gave none). Kept in this process by ``where`` (server,
    database and schema: two schemas' rows of one run_id can share an xmin), run_id and the
    row's xmin: a rewritten row (a retried step) has another xmin and is read again; reading
    6 x 1000 doubles costs ~5 ms, a cache hit nothing."""
    from .db.writers import DRAW_COLUMNS
    from .model.contract import POPULATION_PARAMS

    if run.draws_version is None:
        return None
    key = (*where, run.run_id, run.draws_version)
    hit = _DRAWS_CACHE.get(key)
    if hit is not None:
        return hit
    row = _execute(session, f"SELECT xmin::text, {DRAW_COLUMNS} FROM growth_population_draws"
                   " WHERE run_id = %(run_id)s", {"run_id": run.run_id}).fetchone()
    if row is None:
        return None
    draws = {p: np.asarray(v, dtype=np.float64) for p, v in zip(POPULATION_PARAMS, row[1:], strict=True)}
    for a in draws.values():
        a.setflags(write=False)
    kept = (draws, standardised_draws(draws))
    if row[0] == run.draws_version:
        while len(_DRAWS_CACHE) >= _DRAWS_CACHE_SIZE:
            _DRAWS_CACHE.pop(next(iter(_DRAWS_CACHE)))
        _DRAWS_CACHE[key] = kept
    return kept


def _horizon_index(run: _Run, horizon: date | None) -> int | None:
    """The week index h of the requested horizon (a Monday) in the run's calendar, or the
    run's own horizon week (None: the run's record has none)."""
    if horizon is None:
        if run.horizon_week is None:  # the chain says so and goes on to the other paths
            return None
        return int(run.horizon_week)
    if run.window_start is None:
        raise ContractError("horizon", f"run {run.run_id} has no window_start to place it in", horizon)
    h = (horizon - run.window_start).days // 7
    if h < 0:
        raise ContractError("horizon", f"must not be before the run's window ({run.window_start})", horizon)
    return h


# per user: the latest calibration up to now (a future-dated row is not "latest") with a theta:
# (theta, se); the chain judges it (a NaN theta, or one outside BRMS_SCORE_RANGE, is no P, as a
# NaN se is: the range here skipped such a row for an older one). Parameters: users.
# of calibrations at the same latest instant (two models or versions), the one with the smallest
# usable se (then the lowest theta, model, version): every plan takes the same row (they took
# the first they met: a batch and single calls disagreed)
LATEST_THETA_ORDER = ("fitted_at DESC NULLS LAST, (se > 0 AND se < 'Infinity') DESC NULLS LAST, se, theta,"
                      " model, version")
_THETA_SQL = ("SELECT DISTINCT ON (user_id) user_id, theta, se FROM mirt_ability"
              " WHERE user_id = ANY(%(users)s) AND theta IS NOT NULL AND fitted_at <= %(now)s::timestamptz"
              f" ORDER BY user_id, {LATEST_THETA_ORDER}")


def _send_theta(session: psycopg.Connection, users: list[str], as_of: datetime | None = None) -> psycopg.Cursor:
    """Per user (``_read_rows``): ``_THETA_SQL``'s (theta, se)."""
    return _execute(session, _for(_THETA_SQL, users), {"users": _ids(session, users), "now": _until(as_of)})


# --- the mathematics ---------------------------------------------------------------------------


def population_line_posterior(
    summary: dict[str, Any], n: np.ndarray, sw: np.ndarray, sww: np.ndarray,
    sy: np.ndarray, swy: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(mean_a, mean_b, var_a, var_b, cov_ab) of a new student's line, vectorised: the
    conditional Normal of the mixed model (``model.lines``, the native engine's own code) at
    the plug-in posterior means of the population parameters."""
    def mean(name: str) -> float:
        try:
            v = summary[name]["mean"]
        except (KeyError, TypeError):
            raise ContractError(f"posterior_summary.{name}.mean", "missing in the run") from None
        if not _is_number(v):
            raise ContractError(f"posterior_summary.{name}.mean", "must be a finite number", v)
        return float(v)

    t0, t1 = mean("sd_student_id__Intercept"), mean("sd_student_id__week")
    rho, sigma = mean("cor_student_id__Intercept__week"), mean("sigma")
    if not (t0 >= 0 and t1 >= 0 and sigma > 0 and -1 <= rho <= 1):
        raise ContractError("posterior_summary", "sd's must be >= 0, sigma > 0 and |cor| <= 1",
                            (t0, t1, rho, sigma))
    return conditional_line(mean("b_Intercept"), mean("b_week"), t0, t1, rho, sigma,
                            *(np.asarray(x, dtype=float) for x in (n, sw, sww, sy, swy)))


# --- the reads of a call ---------------------------------------------------------------------------


class _Reads:
    """The queries of one call, each for all its users at once (one per path, never one per
    user), sent when the chain needs it, for the users still pending: a batch does not ask for
    what it will not use."""

    def __init__(self, session: psycopg.Connection, users: list[str], score_range: tuple[float, float],
                 as_of: datetime | None = None) -> None:
        self.session, self.users, self.score_range, self.as_of = session, users, score_range, as_of
        self.run: _Run | None = None
        self._sums: dict[str, tuple] | None = None
        self._stored: dict[str, tuple] = {}
        self._theta: dict[str, tuple] | None = None  # prefetched for the users the run did not fit

    def stored(self) -> dict[str, tuple]:
        return self._stored

    def sums(self) -> dict[str, tuple]:
        return self._sums or {}

    def sums_for(self, users: list[str]) -> dict[str, tuple]:
        if self._sums is not None:
            return self._sums
        return _read_rows(_send_sums(self.session, self.run, users, self.score_range, self.as_of))

    def posterior(self, users: list[str]) -> dict[str, tuple]:
        return _read_rows(_send_posterior(self.session, self.run.run_id, users))

    def theta(self, users: list[str]) -> dict[str, tuple]:
        if self._theta is not None and self._sums is not None and not any(u in self._sums for u in users):
            return self._theta
        return _read_rows(_send_theta(self.session, users, self.as_of))


@dataclass
class _Known:
    """What a call knows before the chain: the run, its horizon, its draws, and its reads."""

    reads: _Reads
    run: _Run | None = None
    latest: tuple[str, str] | None = None
    h: int | None = None
    p_week: date | None = None
    draws: tuple[dict[str, np.ndarray], tuple] | None = None  # (the draws, standardised): _run_draws


# The latest passed run a process last saw, per database and schema: the guess that lets a
# call send its reads in one round trip (``_start``). Only a guess: every call reads the
# latest run in the same round trip, and reads again what depended on a guess that was wrong.
_RUN_GUESS: dict[tuple, _Run] = {}


def _start(session: psycopg.Connection, users: list[str], use_bayesian: bool, score_range: tuple[float, float],
           kpi_week: date | None, horizon: date | None, schema: str, config: dict[str, str]) -> _Known:
    """The call's settings in force (``config``), its run, horizon and draws, and the reads
    every user needs (the stored P, and with population draws every user's score sums since
    the window's start). They go in one pipeline, so one round trip: the sums depend on the
    run's window, taken from the run the process saw last (``_RUN_GUESS``); if the latest run
    read in the same round trip is another, they are read again for it. The sums' statement
    also brings the latest theta of the users with no scores since the window (path 3's
    read)."""
    as_of = _week_end(kpi_week)
    reads = _Reads(session, users, score_range, as_of)
    known = _Known(reads)
    if not use_bayesian:
        if _trips_of(session) is None:  # a one-trip block sends the settings itself
            _execute(session, _CALL_CONFIG, config)
        return known
    if not users:
        return known
    key = (session.info.host, session.info.port, session.info.dbname, schema)
    guess = _RUN_GUESS.get(key)
    ids, got = _Ids(session, users), None
    # in the call's pipeline (``_reading``): sent together, one wait for all their rows
    runs_cur = _send_latest_runs(session, schema, config)
    stored_cur = _send_stored(session, ids, kpi_week)
    guessed = _send_run_reads(session, guess, ids, score_range, as_of) if _reads_key(guess) else None
    run, known.latest = _read_latest_runs(runs_cur)
    reads._stored = _read_stored(stored_cur)
    if guessed is not None:
        got = _read_run_reads(guessed)
    reads.run = run
    _know_run(session, known, run, key, horizon)
    if known.draws is None:
        return known
    if _reads_key(run) is not None:
        if got is None or _reads_key(guess) != _reads_key(run):  # the guess was another run
            got = _read_run_reads(_send_run_reads(session, run, ids, score_range, as_of))
        reads._sums, reads._theta = got
    elif run.window_start is not None:  # a run record without window_end: all from the sources
        reads._sums = _read_rows(_send_sums(session, run, ids, score_range, as_of))
    return known


def _know_run(session: psycopg.Connection, known: _Known, run: _Run | None, key: tuple,
              horizon: date | None) -> None:
    """``known``'s run, its horizon and its draws; the process's guess (``_RUN_GUESS``)."""
    known.run = run
    if run is None:
        _RUN_GUESS.pop(key, None)
        return
    _RUN_GUESS[key] = run
    known.h = _horizon_index(run, horizon)
    known.p_week = run.p_week(known.h) if known.h is not None else None
    known.draws = _run_draws(session, run, key)


# A call of more users than PREFETCH_THETA_MAX_USERS is a batch: it reads its run first, then
# its users in chunks of BATCH_CHUNK_USERS, and answers chunk k while the server reads the
# chunks after it (``_start_batch``). Each chunk's statements scan some tables whole
# (weekly_kpi, the weeks since the window), so smaller chunks cost the server more: measured at
# 100,000 users (interleaved in one process), chunks of 10,000 took 1.9 s of server CPU, of
# 20,000-25,000 1.1-1.2 s (one statement: 1.0-1.2 s); on two connections chunks of 25,000 had
# the shortest wall time (0.91-1.08 s, 20,000: 0.94-1.24 s, 10,000: 0.98-1.13 s).
# On two connections the servers, not this process, set the pace (2026-12-07, timed per chunk:
# this process waited for each chunk and answered it in 0.07-0.16 s, ~40% of the batch). A
# chunk's plan costs the server ~50 ms of its ~380 ms: the planner estimates each of the 25,000
# ids of every ``= ANY(<ids>)`` (43 ms for the sums' statement, 6 ms for the stored P's; 2 ms
# and 0.2 ms with the ids hidden from it in an InitPlan, ``= ANY((SELECT ids)::text[])``). That
# plan then looked every id up in the user_id indexes, which cost more than the time saved
# (interleaved, median server CPU per chunk: stored P 130 against 80 ms, sums 380 against 360).
BATCH_CHUNK_USERS = 25_000


def _start_batch(session: psycopg.Connection, users: list[str], score_range: tuple[float, float],
                 kpi_week: date | None, horizon: date | None, schema: str,
                 config: dict[str, str], two_readers: bool = False) -> Iterator[tuple[list[str], _Known]]:
    """``_start`` for a batch: (the chunk's users, what the chain needs for them) per chunk of
    ``BATCH_CHUNK_USERS``, in order. The latest run is read first (one round trip) and with it
    the run's draws. Then the first chunks' reads are sent, and each chunk's results, once
    received, are followed by the reads of a chunk further on before this chunk is answered:
    the server reads ahead while this process answers (one statement for all users made the
    process wait for the server, then the server wait for the process: 2.2-2.7 s for 100,000
    users; one chunk ahead on one connection 1.2-1.5 s).

    ``two_readers`` (a batch of more than one chunk, in a transaction of its own at
    REPEATABLE READ, ``_answers``): the chunks go in turn to this session and to a second
    connection that sees the same snapshot (``in_snapshot``), one chunk ahead on each, so two
    server processes read while this one answers (the server's reads, not this process, were
    what a batch waited for: 1.1 s of the server's CPU against 0.6-0.8 s of this process's).
    Where no second connection can be had, the batch reads on this session alone. A fetch
    in psycopg's pipeline waits for every statement sent before it on its connection, so
    each connection has only one chunk ahead. A run without population draws reads its
    other paths as it goes (``_Reads``)."""
    key = (session.info.host, session.info.port, session.info.dbname, schema)
    as_of = _week_end(kpi_week)
    base = _Known(None)
    runs_cur = _send_latest_runs(session, schema, config)
    # the snapshot, and the session's role and search_path (the call's: its schema first) for the
    # second connection to read as this one does
    snapshot_cur = _execute(session, EXPORT_SNAPSHOT, {}) if two_readers else None
    run, base.latest = _read_latest_runs(runs_cur)
    _know_run(session, base, run, key, horizon)
    with_draws = base.draws is not None

    def send(conn: psycopg.Connection, chunk: list[str], ids: _Ids) -> tuple:
        stored = _send_stored(conn, ids, kpi_week)
        sums = None
        if with_draws and _reads_key(run) is not None:
            sums = _send_run_reads(conn, run, ids, score_range, as_of)
        elif with_draws and run.window_start is not None:  # a run record without window_end
            sums = (_send_sums(conn, run, ids, score_range, as_of), False)
        return chunk, stored, sums

    chunks = [users[i:i + BATCH_CHUNK_USERS] for i in range(0, len(users), BATCH_CHUNK_USERS)]
    # the snapshot's row now, with nothing sent after it: a fetch in the pipeline waits for every
    # statement sent before it, and the first chunk's go next
    exported = snapshot_cur.fetchone() if snapshot_cur is not None and len(chunks) > 1 else None
    with contextlib.ExitStack() as stack:
        readers = [session]
        # the first chunk's reads go first: the server reads them while the second connection opens
        sent = {0: send(session, chunks[0], _Ids(session, chunks[0]))}
        if exported is not None:
            other = _second_reader(stack, session, exported, config)
            if other is not None:
                readers.append(other)
        n = len(readers)
        sent.update({k: send(readers[k], chunks[k], _Ids(readers[k], chunks[k])) for k in range(1, min(n, len(chunks)))})
        for k in range(len(chunks)):
            conn, ahead = readers[k % n], k + n
            # the chunk ahead's ids while the server reads this one
            ids = _Ids(conn, chunks[ahead]) if ahead < len(chunks) else None
            chunk, stored, sums = sent.pop(k)
            # this chunk's results first: a fetch in a pipeline waits for every statement sent
            # before it on its connection, so the chunk ahead is sent only now (its rows are
            # loaded after it is)
            stored_rows = _received(stored)
            sums_rows = _received(sums[0]) if sums is not None else None
            if ids is not None:
                sent[ahead] = send(conn, chunks[ahead], ids)
            reads = _Reads(session, chunk, score_range, as_of)
            reads.run = run
            reads._stored = _stored_rows(stored_rows())
            if sums_rows is not None:
                reads._sums, reads._theta = _run_reads_rows(sums_rows(), sums[1])
            yield chunk, _Known(reads, run, base.latest, base.h, base.p_week, base.draws)


def _second_reader(stack: contextlib.ExitStack, session: psycopg.Connection, exported: tuple[str, str, str],
                   config: dict[str, str]) -> psycopg.Connection | None:
    """A second connection in the session's snapshot, as its role and with its search_path
    (``exported``: ``EXPORT_SNAPSHOT``'s row; its connection string has neither a SET ROLE nor
    a search_path SET after connecting, and read other tables), with the call's settings, in a
    pipeline, closed with ``stack``; None (logged) if none can be had."""
    snapshot, role, path = exported
    try:
        other = stack.enter_context(in_snapshot(session.info.dsn, session.info.password, snapshot,
                                                role=role, search_path=path))
    except (psycopg.OperationalError, psycopg.errors.InsufficientPrivilege) as exc:
        log.info("a batch reads on one connection: no second one (%s)", exc)
        return None
    other.adapters.register_dumper(_Ids, _IdsDumper)
    stack.enter_context(other.pipeline())
    _execute(other, _CALL_CONFIG, config)
    return other


def _received(cur: psycopg.Cursor) -> Callable[[], list[tuple]]:
    """Wait for a statement's result; return what loads its rows (later: the result is in)."""
    first = cur.fetchone()
    return lambda: [] if first is None else [first, *cur.fetchall()]


@contextmanager
def _collector_paused(n_users: int) -> Iterator[None]:
    """A batch with Python's cyclic garbage collector paused (and resumed after it, if it
    ran before). A batch makes several objects per user (rows, answers, reasons), none of
    them in a cycle, and the collector, started every 700 new objects, went through all of
    them again and again: 0.5 of the 1.5 s of CPU of a 100,000-user batch. Resumed, it goes
    through them once."""
    if n_users <= PREFETCH_THETA_MAX_USERS or not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


# --- the chain -----------------------------------------------------------------------------


def _stored_reason(row: tuple | None, target: float, run: _Run | None, where: str,
                   p_week: date | None = None) -> str | None:
    """None if the stored P counts (path 1 rules), else why not. ``_chain`` tells most rows that
    count without it: each of its conditions is one of these rules."""
    if row is None:
        return f"stored: no weekly_kpi row ({where})"
    week, p, _sigma, p_target, p_run_id, p_source, _p_week = row
    at = f"weekly_kpi {week.isoformat()}"
    if p is None:
        return f"stored: no P in {at}"
    if not _is_number(p) or not 0.0 <= float(p) <= 1.0:
        shown = p if not isinstance(p, str) or len(p) <= 40 else f"{p[:20]}...{p[-8:]} ({len(p)} characters)"
        return f"stored: P in {at} is not a number within [0, 1] ({shown!r})"
    if not _is_number(p_target):
        return f"stored: P in {at} has no P_target (legacy row)"
    if not _same_target(float(p_target), target):
        return f"stored: P in {at} was computed for target {p_target}, not {target}"
    if run is None:
        return f"stored: P in {at} (run {p_run_id}) is not from a passed run: there is none"
    if p_run_id != run.run_id:
        return f"stored: P in {at} is from run {p_run_id}, not the latest passed run {run.run_id}"
    if p_source not in (run.engine, "posterior", "update"):
        return f"stored: P in {at} has P_source {p_source!r}, not {run.engine!r}, 'posterior' or 'update'"
    if p_week is not None and _parse_date(_p_week) != p_week:
        return f"stored: P in {at} is for the week of {_p_week}, not the requested {p_week.isoformat()}"
    return None


def _update_path(pending: dict[str, _Pending], out: dict[str, GoalAnswer], run: _Run,
                 draws: tuple[dict[str, np.ndarray], tuple], sums: dict[str, tuple], h: int, p_week: date | None,
                 target: float) -> None:
    """Path 2 with the run's population draws: every score of the student since the window's
    start (the window's and every week since), exactly, per draw (``native_math.predict_from_sums``)."""
    ids = [u for u in pending if u in sums]
    if len(ids) < len(pending):
        why = (f"update: the student has no scores since {run.window_start.isoformat()}" if run.window_start
               else f"update: run {run.run_id} has no window_start: no window to read scores of")
        for u, reasons in pending.items():
            if u not in sums:
                reasons.append(why)
    if not ids:
        return
    rows = [sums[u] for u in ids]
    arr = np.array(rows, dtype=float)[:, :5]
    mu, sd, p = predict_from_sums(draws[0], *arr.T, float(h), target, p_tolerance=P_TOLERANCE,
                                  standardised=draws[1])
    run_id, window_end = run.run_id, run.window_end
    # numpy's arrays as lists once (indexing them per user costs more than the rest of the loop)
    for u, row, pi, si, mi in zip(ids, rows, p.tolist(), sd.tolist(), mu.tolist()):
        out[u] = GoalAnswer(u, target, pi, si, mi, "update", tuple(pending.pop(u)), run_id, "update",
                            p_week, None, int(row[0]), window_end, int(row[5]))


def _line_paths(reads: _Reads, pending: dict[str, _Pending], out: dict[str, GoalAnswer],
                run: _Run, h: int, p_week: date | None, target: float) -> None:
    """Path 2 for a run without population draws: the student's stored line posterior
    (``run``), or the plug-in population posterior and the student's data (``population``)."""
    todo = list(pending)
    # a student's stored line saw her whole window: a call it may not answer (``_kept_view``) goes
    # to the population path, from her scores up to the call's instant
    kept = _kept_view(run, reads.as_of)
    post = reads.posterior(todo) if kept else {}
    if not kept:
        for u in todo:
            pending[u].append(f"run: the week asked for ends before run {run.run_id}'s window"
                              f" (ended {run.window_end}): its lines saw later scores")
    if post:
        ids = [u for u in todo if u in post]
        arr = np.array([post[u][1:] for u in ids], dtype=float)
        mu, sd, p = line_prediction(arr[:, 0], arr[:, 1], arr[:, 2], arr[:, 3], arr[:, 4], h, target)
        for i, u in enumerate(ids):
            out[u] = GoalAnswer(u, target, float(p[i]), float(sd[i]), float(mu[i]), "run",
                                tuple(pending.pop(u)), run.run_id, "posterior",
                                p_week, None, int(post[u][0]), run.window_end)
    todo = list(pending)
    if todo and run.window_start is None:
        for u in todo:
            pending[u].append(
                f"population: student not in run {run.run_id}, and the run has no window_start")
    elif todo:
        sums = reads.sums_for(todo)
        ids = [u for u in todo if u in sums]
        for u in todo:
            if u not in sums:
                pending[u].append(
                    f"population: student not in run {run.run_id} and has no scores since "
                    f"{run.window_start.isoformat()}")
        if ids:
            arr = np.array([sums[u][:5] for u in ids], dtype=float)
            ma, mb, va, vb, cab = population_line_posterior(
                run.summary or {}, arr[:, 0], arr[:, 1], arr[:, 2], arr[:, 3], arr[:, 4])
            mu, sd, p = line_prediction(ma, mb, va, vb, cab, h, target)
            for i, u in enumerate(ids):
                out[u] = GoalAnswer(u, target, float(p[i]), float(sd[i]), float(mu[i]),
                                    "population",
                                    tuple(pending.pop(u)) + (f"run: student not in run {run.run_id}",),
                                    run.run_id, "posterior", p_week, None, int(sums[u][0]),
                                    run.window_end)


# A call of one user runs its (auto-prepared) statements on their generic plans (each an index
# lookup by the one id, ``_one_user_sql``, whatever the id: planning the score query again costs
# more than running it). A call of more users is planned for its own ids and dates: a generic
# plan cannot see how many ids ``= ANY($n)`` holds, and guessed wrong (``_one_user_sql``).
GENERIC_PLAN_MAX_USERS = 1
# a call of at most this many users also reads path 3's theta in its first round trip
PREFETCH_THETA_MAX_USERS = 64


def _plan_mode(n_users: int) -> str:
    return "force_generic_plan" if n_users <= GENERIC_PLAN_MAX_USERS else "force_custom_plan"


def _answers(
    session: psycopg.Connection,
    user_ids: Sequence[str],
    target: float,
    settings: Settings,
    kpi_week: date | None = None,
    horizon: date | None = None,
) -> dict[str, GoalAnswer]:
    """The chain for many users, its reads in transactions of the session (a savepoint if
    the caller has one open; on an idle session a call of a few users has one per round trip,
    ``_one_trip``) with the settings' statement and lock timeouts: a stuck or locked database
    is an error within them, and the session is not left idle in a transaction. The project's
    schema goes first on the search_path for those transactions (set with the reads, no round
    trip of its own): a session another service opened, on ``public``, finds the project's
    tables without knowing where they are."""
    users = list(dict.fromkeys(user_ids))
    if not users:
        return {}
    use_bayesian, score_range = settings.metrics_use_bayesian, settings.score_range
    config = {"statement_timeout": f"{settings.db_statement_timeout_ms}ms",
              "lock_timeout": f"{settings.db_lock_timeout_ms}ms", "schema": f'"{settings.db_schema}"',
              "plan_mode": _plan_mode(len(users))}
    session.adapters.register_dumper(_Ids, _IdsDumper)  # a private type: nothing else of the session changes
    batch = use_bayesian and len(users) > PREFETCH_THETA_MAX_USERS
    # a batch of several chunks on a session with nothing of its caller's open reads on two
    # connections in one snapshot (``_start_batch``); in a caller's transaction, on the session
    # alone (a second connection would not see what the caller has not committed)
    two_readers = (batch and len(users) > BATCH_CHUNK_USERS
                   and session.info.transaction_status == TransactionStatus.IDLE)
    # a session whose caller turned psycopg's prepared statements off (``prepare_threshold =
    # None``: what a pooler in transaction mode needs, whose server connections change between
    # transactions) gets no prepared statement of this module either; nor does a session in
    # its caller's own pipeline (idle, yet no simple query can be sent in it), nor one whose
    # prepared statements did not stay (``_UNPREPARED``)
    def few() -> dict[str, GoalAnswer]:  # not a batch: the users' reads at once, then their chain
        known = _start(session, users, use_bayesian, score_range, kpi_week, horizon, settings.db_schema, config)
        return _chain(users, target, use_bayesian, kpi_week, known, settings.score_source)

    if (len(users) <= PREFETCH_THETA_MAX_USERS and session.info.transaction_status == TransactionStatus.IDLE
            and session.prepare_threshold is not None and session.pgconn.pipeline_status == PipelineStatus.OFF
            and session not in _UNPREPARED):
        try:
            with _one_trip(session, config):
                return few()
        except _NotKept:
            pass  # the call again, in a pipeline: its failed round trips only read
    while True:
        try:
            with _collector_paused(len(users)), _reading(session, snapshot=two_readers):
                if not batch:
                    return few()
                out: dict[str, GoalAnswer] = {}
                for chunk, known in _start_batch(session, users, score_range, kpi_week, horizon, settings.db_schema,
                                                 config, two_readers):
                    out.update(_chain(chunk, target, use_bayesian, kpi_week, known, settings.score_source))
                return out
        except psycopg.errors.InvalidSqlStatementName as exc:
            # a statement psycopg prepared in an earlier transaction was not on the server this
            # one ran on (a pooler in transaction mode): read again, nothing prepared
            if session in _UNPREPARED:
                raise
            _not_kept(session, exc)


_SAVEPOINT = "growth_metrics_call"


@contextmanager
def _reading(session: psycopg.Connection, snapshot: bool = False) -> Iterator[None]:
    """The block of a call's reads: one transaction (a savepoint of the caller's, if one is
    open), in one pipeline. Its start goes with the first reads and its end with the
    pipeline's last sync, so a call costs two round trips (``Connection.transaction()``'s own
    BEGIN and COMMIT cost two more, and so does psycopg's implicit BEGIN of a session without
    autocommit, which waits for a sync of its own: such a session is switched to autocommit
    for the block, idle before and after it). On an idle session the block is the pipeline's
    own implicit transaction (no BEGIN or ROLLBACK sent). It only reads, so it ends as a
    rollback: the call's settings (``_CALL_CONFIG``, local to its transaction) end with it,
    inside a caller's transaction too, and nothing the caller did is touched. A session in a
    failed transaction gets psycopg's own error. ``snapshot`` (a session that is idle): the
    transaction is REPEATABLE READ, one snapshot for all its statements, which it can export
    to a second connection (``_start_batch``)."""
    status = session.info.transaction_status
    toggle = False
    if status == TransactionStatus.INTRANS:
        begin = (f"SAVEPOINT {_SAVEPOINT}",)
        end = (f"ROLLBACK TO SAVEPOINT {_SAVEPOINT}", f"RELEASE SAVEPOINT {_SAVEPOINT}")
    elif status == TransactionStatus.IDLE and snapshot:
        begin = ("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY",)
        end, toggle = ("ROLLBACK",), not session.autocommit
    elif status == TransactionStatus.IDLE:
        # (a batch of one chunk; a call of fewer users goes by ``_one_trip``) no BEGIN nor
        # ROLLBACK: the statements a pipeline sends before its sync are one (implicit)
        # transaction, which fetching their rows does not end (psycopg flushes, it does not
        # sync); the pipeline's end syncs it. Only read, it ends as a rollback would, and the
        # call's settings with it.
        begin, end, toggle = (), (), not session.autocommit
    else:
        with session.transaction():
            yield
        return
    if toggle:
        session.autocommit = True
    try:
        with session.pipeline():
            for q in begin:
                session.execute(q, prepare=_prepare(session))
            yield
            for q in end:
                session.execute(q, prepare=_prepare(session))
    except BaseException:
        # the block is still open unless the error came before its BEGIN took (a session
        # idle again) or ended the caller's transaction too: end it, then raise the error
        now = session.info.transaction_status
        if not session.closed and (now != TransactionStatus.IDLE if status == TransactionStatus.IDLE
                                   else now in (TransactionStatus.INTRANS, TransactionStatus.INERROR)):
            try:
                for q in end:
                    session.execute(q, prepare=_prepare(session))
            except psycopg.Error as exc:  # the error that brought us here is the one to raise
                log.warning("could not end the call's transaction after an error: %s", exc)
        raise
    finally:
        if toggle and not session.closed and session.info.transaction_status == TransactionStatus.IDLE:
            session.autocommit = False


def _chain(users: list[str], target: float, use_bayesian: bool, kpi_week: date | None,
           known: _Known, score_source: str) -> dict[str, GoalAnswer]:
    pending: dict[str, _Pending] = {u: [] for u in users}
    out: dict[str, GoalAnswer] = {}
    if not users:
        return out
    reads = known.reads

    if use_bayesian:
        run, latest, h, p_week, draws = known.run, known.latest, known.h, known.p_week, known.draws
        where = "latest week" if kpi_week is None else f"week {kpi_week.isoformat()}"
        # the students' scores since the window's start: one query, for paths 1 and 2
        sums = reads.sums() if draws is not None else {}
        # 1. stored P
        stored = reads.stored()
        no_row = _stored_reason(None, target, run, where)  # the same words for every user without a row
        since: dict[int, str] = {}  # the words for n scores since the window, made once per n
        # a P that counts (most of a batch's rows) is told here, without a call per row; any
        # other row gets ``_stored_reason``'s words
        run_id = run.run_id if run is not None else None
        sources = (run.engine, "posterior", "update") if run is not None else ()
        for u in users:
            row = stored.get(u)
            if row is None:
                pending[u].append(no_row)
                continue
            p, p_target = row[1], row[3]
            if (run_id is not None and type(p) is float and 0.0 <= p <= 1.0 and type(p_target) is float
                    and (p_target == target or _same_target(p_target, target)) and row[4] == run_id
                    and row[5] in sources and (p_week is None or _parse_date(row[6]) == p_week)):
                why = None
            else:
                why = _stored_reason(row, target, run, where, p_week)
            if why is None and u in sums and (n := sums[u][5]) > 0:
                why = since.get(n) or since.setdefault(
                    n, f"stored: the student has {n} score(s) since the window of run {run.run_id}"
                       f" (ended {run.window_end})")
            if why is None:  # path 1 is the first: no reasons before it
                week, p, sigma, _t, p_run_id, p_source, p_week_s = row
                out[u] = GoalAnswer(u, target, p, sigma, None, "stored", (), p_run_id, p_source,
                                    _parse_date(p_week_s), week)
                del pending[u]
            else:
                pending[u].append(why)
        # 2. the latest passed run
        if pending and run is None:
            if latest is None:
                why = "run: no growth_brms_meta run"
            else:
                why = f"run: no run passed its checks (latest run {latest[0]} is {latest[1]})"
            for p in pending.values():
                p.append(why)
        elif pending and h is None:  # a record without horizon_week (nullable): no week to answer for
            why = f"run: run {run.run_id} has no horizon_week (name the week: horizon=)"
            for p in pending.values():
                p.append(why)
        elif pending and draws is not None:
            _update_path(pending, out, run, draws, sums, h, p_week, target)
        elif pending:
            _line_paths(reads, pending, out, run, h, p_week, target)
    else:
        for p in pending.values():
            p.append("METRICS_USE_BAYESIAN=false: Normal approximation only")

    # 3. Normal approximation (spec §7), for the users whose latest theta and se are usable.
    # The target is on the scale of the scores the model is fitted on (the passed run's, else
    # BRMS_SCORE_SOURCE): of accuracy scores, a share correct, which no theta estimates
    scale = (known.run.score_source if use_bayesian and known.run is not None else None) or score_source
    if pending and not has_normal_approximation(scale):
        for u in list(pending):
            reasons = pending.pop(u)
            reasons.append("normal: the target is a share correct (score source accuracy); mirt_ability's"
                           " theta is on another scale")
            out[u] = GoalAnswer(u, target, None, path="none", reasons=tuple(reasons))
    if pending:
        theta = reads.theta(list(pending))
        ok: list[str] = []
        for u in list(pending):
            if u not in theta:
                why = "normal: no theta in mirt_ability"
            else:
                th, se = theta[u]
                if se is None:
                    why = "normal: latest theta has no se"
                elif not (math.isfinite(th) and math.isfinite(se)):
                    why = f"normal: latest theta/se not finite ({th}, {se})"
                elif not reads.score_range[0] <= th <= reads.score_range[1]:
                    why = f"normal: latest theta {th} outside BRMS_SCORE_RANGE {list(reads.score_range)}"
                elif se <= 0:
                    why = f"normal: latest se <= 0 ({se})"
                else:
                    ok.append(u)
                    continue
            reasons = pending.pop(u)
            reasons.append(why)
            out[u] = GoalAnswer(u, target, None, path="none", reasons=tuple(reasons))
        if ok:
            arr = np.array([theta[u] for u in ok], dtype=float)
            p = normal_approximation_p(arr[:, 0], arr[:, 1], target)
            for u, pi, se, th in zip(ok, p.tolist(), arr[:, 1].tolist(), arr[:, 0].tolist()):
                out[u] = GoalAnswer(u, target, pi, se, th, "normal", tuple(pending.pop(u)), None, "normal")
    return {u: out[u] for u in users}


def _log_one(a: GoalAnswer) -> None:
    log.info("goal probability user=%s path=%s P=%s target=%s run_id=%s; earlier paths: %s",
             a.user_id, a.path, a.P, a.target, a.run_id, "; ".join(a.reasons) or "-")


# --- public API --------------------------------------------------------------------------------


def _check_horizon(horizon: Any) -> date | None:
    if horizon is None:
        return None
    if isinstance(horizon, str):
        try:
            horizon = date.fromisoformat(horizon)
        except ValueError:
            raise ContractError("horizon", "must be a date (the Monday of the week P is for)", horizon) from None
    if isinstance(horizon, datetime) or not isinstance(horizon, date):
        raise ContractError("horizon", "must be a date (the Monday of the week P is for)", horizon)
    return check_monday("horizon", horizon)


def explain_goal_attainment_probability(
    session: psycopg.Connection, user_id: str, target: float | None = None,
    horizon: date | str | None = None,
) -> GoalAnswer:
    """The answer of :func:`compute_goal_attainment_probability` with its path and reasons."""
    settings = Settings.from_env()
    user_id = _check_user(user_id)
    t = _resolve_target(target, settings)
    a = _answers(session, [user_id], t, settings, horizon=_check_horizon(horizon))[user_id]
    _log_one(a)
    return a


def compute_goal_attainment_probability(
    session: psycopg.Connection, user_id: str, target: float | None = None,
    horizon: date | str | None = None,
) -> float | None:
    """P(the student's expected score reaches ``target`` in the week starting ``horizon``,
    default the latest run's horizon week) through the chain of the module docstring, or
    None."""
    return explain_goal_attainment_probability(session, user_id, target, horizon).P


def compute_goal_attainment_probabilities(
    session: psycopg.Connection, user_ids: Iterable[str], target: float | None = None,
    *, kpi_week: date | None = None, horizon: date | str | None = None,
) -> dict[str, GoalAnswer]:
    """The batch form: ``{user_id: GoalAnswer}`` for many users, one query per path.

    ``kpi_week``: read path 1 from that week's weekly_kpi row instead of each user's latest;
    for a week that is over, P as of its end (the scores and thetas up to its last instant).
    Duplicates are answered once. Logs one INFO summary and each answer at DEBUG.
    """
    if isinstance(user_ids, (str, bytes)):
        raise ContractError("user_ids", "must be a collection of user ids, not one string", user_ids)
    settings = Settings.from_env()
    try:
        users = list(user_ids)
    except TypeError:  # None, a number: not a collection
        raise ContractError("user_ids", "must be a collection of user ids", user_ids) from None
    for u in users:  # _check_user's rule, without a call per user
        if type(u) is not str or not u.strip() or "\x00" in u:
            _check_user(u)
    t = _resolve_target(target, settings)
    if kpi_week is not None:
        check_monday("kpi_week", kpi_week)
    out = _answers(session, users, t, settings, kpi_week, _check_horizon(horizon))
    if log.isEnabledFor(logging.DEBUG):
        for a in out.values():
            log.debug("goal probability user=%s path=%s P=%s; earlier paths: %s",
                      a.user_id, a.path, a.P, "; ".join(a.reasons) or "-")
    paths = Counter(map(attrgetter("path"), out.values()))
    reasons: Counter[str] = Counter()
    for why, n in Counter(map(attrgetter("reasons"), out.values())).items():  # a few distinct lists
        for r in why:
            reasons[_reason_class(r)] += n
    log.info("goal probabilities for %d users, target=%s: paths %s; fall-through reasons %s",
             len(out), t, dict(paths), dict(reasons))
    return out


@functools.lru_cache(maxsize=4096)
def _reason_class(reason: str) -> str:
    """``path:kind`` of a reason (a batch's reasons are a few distinct strings, many times)."""
    return reason.split(":")[0] + ":" + _reason_kind(reason)


def _reason_kind(reason: str) -> str:
    """A short class of a reason, for the batch summary (no ids or numbers)."""
    r = reason.split(":", 1)[1]
    for key in ("no weekly_kpi row", "no P_target", "no P", "not a number", "target",
                "there is none", "not the latest passed run", "P_source", "no growth_brms_meta",
                "passed its checks", "no window_start", "no scores", "no theta", "no se",
                "not finite", "se <= 0", "Normal approximation only", "since the window",
                "not the requested"):
        if key in r:
            return key
    return "other"


def calculate_and_store_weekly_kpi(
    session: psycopg.Connection, user_id: str, week_start: date, target: float | None = None
) -> GoalAnswer:
    """Compute P and sigma through the chain and merge them into that week's ``weekly_kpi``.

    ``week_start`` must be a Monday that has begun (UTC; ContractError otherwise). A P
    already stored in that week's row that counts under the path-1 rules (same target, latest
    passed run) is reused and nothing is written. Otherwise the answer of paths 2/3 is merged with
    ``merge_weekly_kpi`` (other keys of ``kpis`` are kept): ``P_source`` ``update`` for path 2
    from the run's population draws (``posterior`` from a run without them), ``normal`` for
    path 3; ``P_week`` the Monday of the run's horizon week (path 2)
    or ``week_start`` (path 3, which has no horizon); ``P_run_id`` the run (path 2) or null.
    No P (path none): nothing is written. Returns the answer.
    """
    user_id = _check_user(user_id)
    _check_week_begun(week_start)
    settings = Settings.from_env()
    t = _resolve_target(target, settings)
    a = _answers(session, [user_id], t, settings, kpi_week=week_start)[user_id]
    _log_one(a)
    if a.P is not None and a.path != "stored":
        _store(session, [a], week_start, settings.db_schema)
    return a


def _check_week_begun(week_start: date) -> None:
    """A week whose P is written must be a Monday and must have begun (UTC): P computed now is
    no P of a week to come, and its row would show one (a mistyped year wrote 2062's)."""
    check_monday("week_start", week_start)
    if datetime.combine(week_start, time(), timezone.utc) > datetime.now(timezone.utc):
        raise ContractError("week_start", "is a week that has not begun (UTC): P is written into the"
                            " current week or one before it", week_start.isoformat())


def _store(session: psycopg.Connection, answers: list[GoalAnswer], week_start: date, schema: str) -> int:
    """The answers' P merged into ``week_start``'s rows (``merge_weekly_kpi``, the run records
    read in ``schema``: the session's search_path need not hold it), in one transaction.

    A P is computed now, from the latest passed run: one whose data window ends after
    ``week_start`` holds data from after that week, and is refused (ContractError naming the
    week and the window) before anything is written. A refresh run late (a weekday's tick
    re-executed after the next Monday's run) wrote it, and the merge guard then kept it over
    that week's own P when its partition was backfilled."""
    groups: dict[tuple, list[tuple[str, float, float | None]]] = {}
    for a in answers:
        if a.P is None or a.path == "stored":
            continue
        if a.window_end is not None and a.window_end > week_start:
            raise ContractError("week_start", f"is before the data window of run {a.run_id}, which ends"
                                f" {a.window_end.isoformat()}: P computed now is not that week's P (refresh the"
                                " current week, or backfill the partition whose P that week holds)",
                                week_start.isoformat())
        key = (a.target, a.p_week or week_start, a.run_id, a.source, a.window_end)
        groups.setdefault(key, []).append((a.user_id, a.P, a.sigma))
    n = 0
    with session.transaction():
        for (t, p_week, run_id, source, window_end), rows in groups.items():
            n += merge_weekly_kpi(session, rows, week_start=week_start, target=t, p_week=p_week,
                                  run_id=run_id, source=source, window_end=window_end, schema=schema)
    return n


def active_users(session: psycopg.Connection, week_start: date) -> list[str]:
    """Users with rows in mirt_ability (fitted_at in the week, UTC) or features_topic_daily
    (date in the week) during the week starting ``week_start``."""
    check_monday("week_start", week_start)
    ts0 = datetime.combine(week_start, time(), timezone.utc)
    rows = session.cursor(row_factory=tuple_row).execute(  # whatever the session's row factory
        """
        SELECT user_id FROM mirt_ability
        WHERE fitted_at >= %(ts0)s AND fitted_at < %(ts1)s AND user_id <> ''
        UNION
        SELECT user_id FROM features_topic_daily
        WHERE date >= %(d0)s AND date < %(d1)s AND user_id <> ''
        """,
        {"ts0": ts0, "ts1": ts0 + timedelta(weeks=1), "d0": week_start,
         "d1": week_start + timedelta(weeks=1)},
    ).fetchall()
    users = [r[0] for r in rows if r[0] is not None]
    ok = [u for u in users if u.strip()]  # _check_user's rule: one blank id stopped everyone's refresh
    if len(ok) < len(users):
        log.warning("active_users week=%s: %d blank user id(s) left out", week_start, len(users) - len(ok))
    return sorted(ok)


def refresh_active_users(
    session: psycopg.Connection, week_start: date, target: float | None = None
) -> dict[str, int]:
    """P for every user active in the week (see :func:`active_users`), through the batch
    form (path 1 read from that week's row), merged into that week's ``weekly_kpi`` rows in
    one transaction. Returns counts: users, one per path, and ``written``."""
    _check_week_begun(week_start)
    settings = Settings.from_env()
    t = _resolve_target(target, settings)
    with session.transaction():
        users = active_users(session, week_start)
        answers = compute_goal_attainment_probabilities(session, users, t, kpi_week=week_start)
        written = _store(session, list(answers.values()), week_start, settings.db_schema)
    counts = {p: 0 for p in PATHS}
    counts.update(Counter(a.path for a in answers.values()))
    counts["users"] = len(answers)
    counts["written"] = written
    log.info("refresh_active_users week=%s target=%s: %s", week_start, t, counts)
    return counts


__all__ = [
    "GoalAnswer",
    "active_users",
    "calculate_and_store_weekly_kpi",
    "compute_goal_attainment_probabilities",
    "compute_goal_attainment_probability",
    "explain_goal_attainment_probability",
    "population_line_posterior",
    "refresh_active_users",
]
