"""The panel of spec §1 as columns: what every engine is given.

Row ``i`` is ``(student_ids[student[i]], week[i], score[i])``: the ids are stored once
(sorted, unique) and each row holds an integer code, so a panel of millions of rows is
four numpy arrays, never one Python object per row. ``Panel.from_frame`` reads a
``student_id, week, score`` table (the CLI's CSV, a test's DataFrame); the weekly asset
builds it straight from PostgreSQL.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .contract import PANEL_COLUMNS, PanelError, prior_scales

MAX_WEEK = 2**31 - 1  # int4, as growth_panel stores weeks


def _is_number_text(v: object) -> bool:
    try:
        float(str(v))
    except ValueError:
        return False
    return True


def _numeric(df: pd.DataFrame, col: str) -> np.ndarray:
    """Column ``col`` as float64; a cell that is no number (a CSV's "12,5", "n/a") is a PanelError
    naming the cell as written: coerced first, it was reported as nan, which the file never said."""
    raw = df[col]
    num = pd.to_numeric(raw, errors="coerce")
    unread = np.flatnonzero(num.isna().to_numpy() & raw.notna().to_numpy())
    bad = np.array([i for i in unread if not _is_number_text(raw.iloc[i])], dtype=np.int64)
    if bad.size:
        raise PanelError(col, f"must be a number (rows {_shown(None, bad)})", raw.iloc[bad[0]])
    return num.to_numpy(dtype=np.float64)


def _shown(ids: np.ndarray, rows: np.ndarray, limit: int = 5) -> str:
    return ", ".join(str(int(r)) for r in rows[:limit]) + (" …" if rows.size > limit else "")


@dataclass(frozen=True, eq=False)
class WindowSums:
    """Per student (``student_ids``, sorted): rows n, sum of weeks, of squared weeks, of
    scores, of week * score."""

    student_ids: np.ndarray
    n: np.ndarray
    sw: np.ndarray
    sww: np.ndarray
    sy: np.ndarray
    swy: np.ndarray

    def for_students(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        """The four sums (sum_w, sum_ww, sum_y, sum_wy) for ``ids`` in that order; NaN for
        an id with no rows here."""
        ids = np.asarray(ids, dtype=object)
        names = ("sum_w", "sum_ww", "sum_y", "sum_wy")
        if ids is self.student_ids or (ids.size == self.student_ids.size and np.array_equal(ids, self.student_ids)):
            return dict(zip(names, (self.sw, self.sww, self.sy, self.swy)))  # the panel's own order (native)
        at = np.searchsorted(self.student_ids, ids) if self.student_ids.size else np.zeros(ids.size, dtype=np.int64)
        at = np.minimum(at, max(self.student_ids.size - 1, 0))
        found = (self.student_ids[at] == ids) if self.student_ids.size else np.zeros(ids.size, dtype=bool)
        return {name: np.where(found, col[at], np.nan) if col.size else np.full(ids.size, np.nan)
                for name, col in zip(names, (self.sw, self.sww, self.sy, self.swy))}


@dataclass(frozen=True, eq=False)
class Panel:
    """A checked panel (spec §1, §3); build it with ``from_frame`` or ``from_columns``."""

    student_ids: np.ndarray  # (S,) str, sorted, unique
    student: np.ndarray  # (N,) int64 code into student_ids
    week: np.ndarray  # (N,) int64 >= 0
    score: np.ndarray  # (N,) float64, finite

    @property
    def n_rows(self) -> int:
        return int(self.student.size)

    @property
    def n_students(self) -> int:
        return int(self.student_ids.size)

    def n_obs(self) -> np.ndarray:
        """Rows per student, in ``student_ids`` order."""
        return np.bincount(self.student, minlength=self.n_students).astype(np.int64)

    def window_sums(self) -> "WindowSums":
        """Each student's sums over her rows (``student_ids`` order): the five numbers a
        student's line posterior depends on, given the population (``model.lines``)."""
        S, w, y = self.n_students, self.week.astype(np.float64), self.score

        def total(weights: np.ndarray) -> np.ndarray:
            return np.bincount(self.student, weights=weights, minlength=S)

        return WindowSums(self.student_ids, self.n_obs(), total(w), total(w * w), total(y), total(w * y))

    def scales(self) -> tuple[float, float]:
        """(ybar, s) of spec §3."""
        return prior_scales(self.score)

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({"student_id": self.student_ids[self.student], "week": self.week,
                             "score": self.score})

    @classmethod
    def from_columns(cls, student_ids, student, week, score, *,
                     score_range: tuple[float, float] | None = None,
                     lookback_weeks: int | None = None, sort_rows: bool = False) -> "Panel":
        """Check coded columns against spec §1 and §3; raise PanelError naming the rows.
        ``sort_rows``: rows not in (student, week) order are put in it (as engines expect)."""
        ids = np.asarray(student_ids, dtype=object)
        code = np.asarray(student, dtype=np.int64)
        w = np.asarray(week)
        y = np.asarray(score, dtype=np.float64)
        if not (code.shape == w.shape == y.shape) or code.ndim != 1:
            raise PanelError("columns", "student, week and score must be 1-d and of one length",
                             (code.shape, w.shape, y.shape))
        if ids.size and (code.min(initial=0) < 0 or code.max(initial=0) >= ids.size):
            raise PanelError("student", "codes must index student_ids", (int(code.min()), int(code.max())))
        if ids.size > 1 and not all(isinstance(s, str) and s for s in ids):
            raise PanelError("student_id", "every id must be a non-empty string")
        if ids.size > 1 and not bool(np.all(ids[1:] > ids[:-1])):
            raise PanelError("student_ids", "must be sorted and unique")
        # weeks are int4 where they are stored; a larger one (1e19) became a negative int64 here
        if w.dtype.kind in "iu":  # integers: only the range to check (no float copies of every row)
            bad = (w < 0) | (w > MAX_WEEK)
        else:
            wf = w.astype(np.float64)
            bad = ~np.isfinite(wf) | (wf != np.floor(wf)) | (wf < 0) | (wf > MAX_WEEK)
        if bad.any():
            rows = np.flatnonzero(bad)
            raise PanelError("week", f"must be an integer within 0..{MAX_WEEK} (rows {_shown(ids, rows)})",
                             w[rows[0]])
        del bad
        w = w.astype(np.int64, copy=False) if w.dtype.kind in "iu" else wf.astype(np.int64)
        if lookback_weeks is not None and w.size and int(w.max()) >= lookback_weeks:
            rows = np.flatnonzero(w >= lookback_weeks)
            raise PanelError("week", f"must be < lookback_weeks={lookback_weeks} (rows {_shown(ids, rows)})",
                             int(w[rows[0]]))
        bad = ~np.isfinite(y)
        if bad.any():
            rows = np.flatnonzero(bad)
            raise PanelError("score", f"must be a finite number (rows {_shown(ids, rows)})", float(y[rows[0]]))
        if score_range is not None:
            lo, hi = score_range
            bad = (y < lo) | (y > hi)
            if bad.any():
                rows = np.flatnonzero(bad)
                raise PanelError("score", f"must be within [{lo:g}, {hi:g}] (rows {_shown(ids, rows)})",
                                 float(y[rows[0]]))
        if code.size:
            key = code * (int(w.max()) + 1) + w
            if not bool(np.all(key[1:] > key[:-1])):  # rows in (student, week) order need no sort
                order = np.argsort(key, kind="stable")
                dup = np.flatnonzero(key[order][1:] == key[order][:-1])
                if dup.size:
                    r = int(order[dup[0] + 1])
                    raise PanelError("student_id,week", "duplicate student-week row", (ids[code[r]], int(w[r])))
                if sort_rows:
                    code, w, y = code[order], w[order], y[order]
        if code.size < 3:
            raise PanelError("rows", "at least 3 rows are needed", int(code.size))
        present = int(np.count_nonzero(np.bincount(code, minlength=ids.size)))  # students with a row (no sort)
        if present < 2:
            raise PanelError("student_id", "at least 2 students are needed", present)
        if present != ids.size:
            raise PanelError("student_ids", "every listed student must have a row",
                             f"{ids.size - present} without rows")
        prior_scales(y)  # raises on s == 0
        return cls(ids, code, w, y)

    @classmethod
    def from_frame(cls, df: pd.DataFrame, **checks) -> "Panel":
        """A ``student_id, week, score`` table (any extra columns are ignored)."""
        missing = [c for c in PANEL_COLUMNS if c not in df.columns]
        if missing:
            raise PanelError("columns", f"panel lacks column(s) {missing}", list(df.columns))
        sid = df["student_id"]
        null = sid.isna().to_numpy() | (sid.astype(str).str.strip() == "").to_numpy()
        if null.any():
            rows = np.flatnonzero(null)
            raise PanelError("student_id", f"missing or empty id (rows {_shown(None, rows)})", int(null.sum()))
        codes, uniques = pd.factorize(sid.astype(str), sort=True)
        week, score = _numeric(df, "week"), _numeric(df, "score")
        return cls.from_columns(np.asarray(uniques, dtype=object), codes, week, score, **checks)
