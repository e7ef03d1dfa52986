"""One fit, one typed result: what every engine returns and every writer stores.

``FitResult`` holds the run's identity, its settings, priors, the population summary, the
diagnostics and the per-student quantities as columns (``StudentLines``: numpy arrays,
not a list of dicts). It becomes the spec §8 JSON only at the edges (``to_json`` for
``growth-assets fit``; ``from_json`` for the R service's answer), and it is checked once,
where it enters (``fit_panel``), against the request it answers: the same students, the
same target, horizon, lookback and sampling settings, and row counts that agree with the
panel.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np

from .contract import (DIAGNOSTIC_FIELDS, ENGINES, FORMULA, MAX_POPULATION_DRAWS, POPULATION_DRAWS,
                       POPULATION_PARAMS, SUMMARY_FIELDS,
                       FitResultError, line_prediction, priors)
from .engine import Engine, FitSettings
from .panel import Panel

LINE_FIELDS = ("mean_a", "mean_b", "var_a", "var_b", "cov_ab", "mu", "sigma", "P")
# a line posterior's 2x2 covariance must be positive semi-definite up to rounding
_PSD_RTOL = 1e-9
_MU_ULPS = 64 * np.finfo(float).eps  # the rounding of mean_a + h mean_b against a mu of the draws


@dataclass(frozen=True)
class ParamSummary:
    mean: float
    sd: float
    q5: float
    q95: float
    rhat: float  # NaN: not computable (e.g. constant draws)
    ess_bulk: float
    ess_tail: float

    def as_dict(self) -> dict[str, float]:
        return {f: getattr(self, f) for f in SUMMARY_FIELDS}


@dataclass(frozen=True)
class Diagnostics:
    max_rhat: float
    min_ess_bulk: float
    min_ess_tail: float
    n_divergent: int
    n_max_treedepth: int
    elapsed_s: float = math.nan
    details: Mapping[str, Any] = field(default_factory=dict)  # engine-specific, stored as is

    def as_dict(self) -> dict[str, Any]:
        d = {f: getattr(self, f) for f in DIAGNOSTIC_FIELDS}
        d["elapsed_s"] = self.elapsed_s
        return {**dict(self.details), **d}


@dataclass(frozen=True, eq=False)
class StudentLines:
    """Per-student line posterior and the prediction at the horizon, as columns."""

    student_id: np.ndarray  # (S,) str
    n_obs: np.ndarray  # (S,) int64
    mean_a: np.ndarray
    mean_b: np.ndarray
    var_a: np.ndarray
    var_b: np.ndarray
    cov_ab: np.ndarray
    mu: np.ndarray
    sigma: np.ndarray
    P: np.ndarray

    def __len__(self) -> int:
        return int(self.student_id.size)

    def take(self, idx: np.ndarray) -> "StudentLines":
        return StudentLines(**{f.name: getattr(self, f.name)[idx] for f in fields(self)})


@dataclass(frozen=True, eq=False)
class FitResult:
    run_id: str
    engine: str
    engine_version: str
    priors: tuple[Mapping[str, Any], ...]
    seed: int
    n_chains: int
    n_samples: int
    n_warmup: int
    n_obs: int
    lookback_weeks: int
    horizon_week: int
    target: float
    summary: Mapping[str, ParamSummary]
    diagnostics: Diagnostics
    students: StudentLines
    population_draws: Mapping[str, np.ndarray] | None = None  # thinned, data units
    details: Mapping[str, Any] = field(default_factory=dict)  # engine notes (sampler, method)
    formula: str = FORMULA

    @property
    def n_students(self) -> int:
        return len(self.students)

    @property
    def kept_draws(self) -> int:
        return self.n_chains * (self.n_samples - self.n_warmup)

    def _check_ess(self, field: str, v: float) -> None:
        """An ESS within what posterior's definition gives the S kept draws: S / tau with
        tau >= 1 / log10 S (a hair more, for either engine's rounding); NaN (not computable)
        passes here: the checks fail it."""
        s = self.kept_draws
        most = s * math.log10(s) * (1 + 1e-9) if s > 1 else float(s)
        if v < 0 or v > most:
            raise FitResultError(field, f"must be within 0..{most:.0f} (posterior's ESS of the kept draws S is"
                                 " at most S log10 S)", v)

    def with_run_id(self, run_id: str) -> "FitResult":
        return replace(self, run_id=run_id)

    # --- the edges: spec §8 JSON ------------------------------------------------------------

    def header_json(self) -> dict[str, Any]:
        """Everything of §8 but the per-student predictions."""
        out = {
            "run_id": self.run_id, "engine": self.engine, "engine_version": self.engine_version,
            "formula": self.formula, "priors": [dict(p) for p in self.priors], "seed": self.seed,
            "n_chains": self.n_chains, "n_samples": self.n_samples, "n_warmup": self.n_warmup,
            "n_obs": self.n_obs, "n_students": self.n_students,
            "lookback_weeks": self.lookback_weeks, "horizon_week": self.horizon_week,
            "target": self.target,
            "posterior_summary": {p: s.as_dict() for p, s in self.summary.items()},
            "diagnostics": self.diagnostics.as_dict(),
            **dict(self.details),
        }
        if self.population_draws is not None:
            out["population_draws"] = {k: np.asarray(v, dtype=float).tolist()
                                       for k, v in self.population_draws.items()}
        return out

    def to_json(self) -> dict[str, Any]:
        s = self.students
        cols = [s.student_id.tolist(), s.n_obs.tolist()] + [getattr(s, f).tolist() for f in LINE_FIELDS]
        keys = ("student_id", "n_obs") + LINE_FIELDS
        return {**self.header_json(), "predictions": [dict(zip(keys, row)) for row in zip(*cols)]}

    @classmethod
    def from_json(cls, obj: Any) -> "FitResult":
        """Parse a spec §8 object; every missing or mistyped field is a FitResultError
        naming it (semantic checks against the request are ``validate``'s)."""
        if not isinstance(obj, Mapping):
            raise FitResultError("<root>", "fit result must be a JSON object", type(obj).__name__)
        for key in ("run_id", "engine", "engine_version", "formula"):
            if not isinstance(obj.get(key), str) or not obj.get(key):
                raise FitResultError(key, "missing or not a string", obj.get(key))
        if not isinstance(obj.get("priors"), list) or not obj["priors"]:
            raise FitResultError("priors", "missing or not a list", obj.get("priors"))
        ints = {k: _integer(obj, k) for k in ("seed", "n_chains", "n_samples", "n_warmup", "n_obs",
                                              "n_students", "lookback_weeks", "horizon_week")}
        summary_obj = obj.get("posterior_summary")
        if not isinstance(summary_obj, Mapping):
            raise FitResultError("posterior_summary", "missing or not an object")
        summary = {}
        for p in POPULATION_PARAMS:
            row = summary_obj.get(p)
            if not isinstance(row, Mapping):
                raise FitResultError(f"posterior_summary.{p}", "missing")
            summary[p] = ParamSummary(**{f: _number(row, f, f"posterior_summary.{p}.",
                                                    allow_null=f in ("rhat", "ess_bulk", "ess_tail"))
                                         for f in SUMMARY_FIELDS})
        d = obj.get("diagnostics")
        if not isinstance(d, Mapping):
            raise FitResultError("diagnostics", "missing or not an object")
        diag = Diagnostics(
            max_rhat=_number(d, "max_rhat", "diagnostics.", allow_null=True),
            min_ess_bulk=_number(d, "min_ess_bulk", "diagnostics.", allow_null=True),
            min_ess_tail=_number(d, "min_ess_tail", "diagnostics.", allow_null=True),
            n_divergent=_integer(d, "n_divergent", "diagnostics."),
            n_max_treedepth=_integer(d, "n_max_treedepth", "diagnostics."),
            elapsed_s=_number(d, "elapsed_s", "diagnostics.") if "elapsed_s" in d else math.nan,
            details={k: v for k, v in d.items() if k not in DIAGNOSTIC_FIELDS + ("elapsed_s",)})
        preds = obj.get("predictions")
        if not isinstance(preds, list):
            raise FitResultError("predictions", "missing or not a list")
        if len(preds) != ints["n_students"]:
            raise FitResultError("predictions", "one prediction per student is required",
                                 f"{len(preds)} predictions for n_students={ints['n_students']}")
        cols: dict[str, list] = {k: [] for k in ("student_id", "n_obs") + LINE_FIELDS}
        for i, pr in enumerate(preds):
            where = f"predictions[{i}]."
            if not isinstance(pr, Mapping):
                raise FitResultError(f"predictions[{i}]", "not an object")
            sid = pr.get("student_id")
            if not isinstance(sid, str) or not sid:
                raise FitResultError(f"{where}student_id", "missing or not a string", sid)
            if "\x00" in sid:  # no text column holds it, and numpy's str drops it at the end
                raise FitResultError(f"{where}student_id", "holds a NUL character", sid)
            cols["student_id"].append(sid)
            cols["n_obs"].append(_integer(pr, "n_obs", where))
            for f in LINE_FIELDS:
                cols[f].append(_number(pr, f, where))
        students = StudentLines(
            student_id=np.array(cols["student_id"], dtype=object),
            n_obs=np.array(cols["n_obs"], dtype=np.int64),
            **{f: np.array(cols[f], dtype=np.float64) for f in LINE_FIELDS})
        draws = obj.get("population_draws")
        if draws is not None:
            draws = _draws(draws)
        known = {"run_id", "engine", "engine_version", "formula", "priors", "target",
                 "posterior_summary", "diagnostics", "predictions", "population_draws", *ints}
        details = {k: v for k, v in obj.items() if k not in known}
        return cls(run_id=obj["run_id"], engine=obj["engine"], engine_version=obj["engine_version"],
                   formula=obj["formula"], priors=tuple(obj["priors"]), seed=ints["seed"],
                   n_chains=ints["n_chains"], n_samples=ints["n_samples"], n_warmup=ints["n_warmup"],
                   n_obs=ints["n_obs"], lookback_weeks=ints["lookback_weeks"],
                   horizon_week=ints["horizon_week"], target=_number(obj, "target", ""),
                   summary=summary, diagnostics=diag, students=students, population_draws=draws,
                   details=details)

    # --- the one check, where a result enters ----------------------------------------------

    def validate(self, panel: Panel | None = None, settings: FitSettings | None = None) -> "FitResult":
        """Check the result on its own (spec §8) and, given them, against the panel and
        settings it answers. Raises FitResultError naming the field; returns self."""
        if self.engine not in ENGINES:
            raise FitResultError("engine", f"must be one of {ENGINES}", self.engine)
        if self.formula != FORMULA:
            raise FitResultError("formula", f"must be {FORMULA!r}", self.formula)
        if not 0 <= self.n_warmup < self.n_samples:
            raise FitResultError("n_warmup", f"must be within 0..n_samples-1 ({self.n_samples})", self.n_warmup)
        for p, s in self.summary.items():
            for f in ("mean", "sd", "q5", "q95"):
                if not math.isfinite(getattr(s, f)):
                    raise FitResultError(f"posterior_summary.{p}.{f}", "must be finite", getattr(s, f))
            if s.sd < 0:
                raise FitResultError(f"posterior_summary.{p}.sd", "must be >= 0", s.sd)
            for f in ("ess_bulk", "ess_tail"):
                self._check_ess(f"posterior_summary.{p}.{f}", getattr(s, f))
            # NaN (not computable) passes here, the checks fail it; an infinite one has no JSON
            if s.rhat < RHAT_FLOOR or math.isinf(s.rhat):
                raise FitResultError(f"posterior_summary.{p}.rhat", f"must be finite, >= {RHAT_FLOOR} (or null)",
                                     s.rhat)
            if s.q5 > s.q95:
                raise FitResultError(f"posterior_summary.{p}.q95", f"must be >= q5 ({s.q5})", s.q95)
            lo, hi = _PARAM_RANGE.get(p, (-math.inf, math.inf))
            for f in ("mean", "q5", "q95"):
                v = getattr(s, f)
                if not lo <= v <= hi or (p == "sigma" and f == "mean" and v <= 0):
                    raise FitResultError(f"posterior_summary.{p}.{f}", f"must be within [{lo}, {hi}]"
                                         + (" and > 0" if p == "sigma" and f == "mean" else ""), v)
        self._validate_diagnostics()
        d = self.diagnostics
        for f in ("n_divergent", "n_max_treedepth"):
            v = getattr(d, f)
            if not 0 <= v <= self.kept_draws:
                raise FitResultError(f"diagnostics.{f}", f"must be within 0..{self.kept_draws} (the kept draws)", v)
        for f in ("min_ess_bulk", "min_ess_tail"):
            self._check_ess(f"diagnostics.{f}", getattr(d, f))
        if settings is not None:  # first: an answer to another question is that, above all
            self._validate_settings(settings)
        # the panel's own id array, in its order (the native engine's answer): the same
        # students, unique and sorted, without sorting a million strings to find out
        same = (panel is not None and len(self.students) == panel.n_students
                and np.array_equal(self.students.student_id, panel.student_ids))
        self._validate_students(unique_known=same)
        if self.population_draws is not None:
            self._validate_draws()
        if panel is not None:
            self._validate_panel(panel, same)
        return self

    def _validate_diagnostics(self) -> None:
        """The worst figures the checks read against the summary they sum up: both engines take
        max R-hat and min ESS over every sampled quantity, the summary's six among them, and
        make them null (NaN) if any is; so none of the summary may be worse, and a null there
        is a null here. R-hat is never far below 1."""
        d = self.diagnostics
        if d.max_rhat < RHAT_FLOOR or math.isinf(d.max_rhat):
            raise FitResultError("diagnostics.max_rhat", f"must be finite, >= {RHAT_FLOOR} (or null)", d.max_rhat)
        if d.elapsed_s < 0 or math.isinf(d.elapsed_s):  # NaN: not told
            raise FitResultError("diagnostics.elapsed_s", "must be finite and >= 0 (or absent)", d.elapsed_s)
        for f, worst, worse in (("rhat", "max_rhat", max), ("ess_bulk", "min_ess_bulk", min),
                                ("ess_tail", "min_ess_tail", min)):
            got = getattr(d, worst)
            vals = [(p, getattr(s, f)) for p, s in self.summary.items()]
            nan = [p for p, v in vals if math.isnan(v)]
            if nan and not math.isnan(got):
                raise FitResultError(f"diagnostics.{worst}", f"must be null: posterior_summary.{nan[0]}.{f} is", got)
            if nan or math.isnan(got):
                continue
            p, v = worse(vals, key=lambda t: t[1])
            if (v > got if worse is max else v < got) and abs(v - got) > 1e-9 * max(abs(v), 1.0):
                raise FitResultError(f"diagnostics.{worst}", f"must be {'>=' if worse is max else '<='} every"
                                     f" summary {f} (posterior_summary.{p}.{f} is {v})", got)

    def _validate_draws(self) -> None:
        """The population draws (optional in the contract): the six parameters, each the
        same number of finite draws within 1..MAX_POPULATION_DRAWS, sds >= 0, sigma > 0,
        |cor| <= 1; nothing else."""
        d = self.population_draws
        missing = [p for p in POPULATION_PARAMS if p not in d]
        if missing:
            raise FitResultError("population_draws", f"lacks {missing}")
        extra = sorted(set(d) - set(POPULATION_PARAMS))
        if extra:
            raise FitResultError("population_draws", f"has unknown parameters {extra}")
        sizes = {np.asarray(d[p]).shape for p in POPULATION_PARAMS}
        (shape,) = sizes if len(sizes) == 1 else (None,)
        if shape is None or len(shape) != 1 or not 1 <= shape[0] <= MAX_POPULATION_DRAWS:
            raise FitResultError("population_draws", f"must be 1..{MAX_POPULATION_DRAWS} draws of "
                                 "each parameter, the same number", sorted(sizes))
        want = min(POPULATION_DRAWS, self.kept_draws)  # thinned evenly (contract.thin_draws)
        if shape[0] != want:
            raise FitResultError("population_draws", f"must be {want} draws of each parameter (the"
                                 f" contract's {POPULATION_DRAWS}, or every kept draw if fewer)", shape[0])
        for p in POPULATION_PARAMS:
            a = np.asarray(d[p], dtype=np.float64)
            if not np.isfinite(a).all():
                raise FitResultError(f"population_draws.{p}", "must be finite", float(a[~np.isfinite(a)][0]))
        rules = (("sd_student_id__Intercept", lambda a: a >= 0, ">= 0"),
                 ("sd_student_id__week", lambda a: a >= 0, ">= 0"),
                 ("sigma", lambda a: a > 0, "> 0"),
                 ("cor_student_id__Intercept__week", lambda a: np.abs(a) <= 1, "within [-1, 1]"))
        for p, ok, what in rules:
            a = np.asarray(d[p], dtype=np.float64)
            bad = ~ok(a)
            if bad.any():
                raise FitResultError(f"population_draws.{p}", f"must be {what}", float(a[bad][0]))
        # a subset of the draws the summary sums up: their mean is within Monte Carlo error of
        # its mean, far less than 3 posterior sds (a summary of another fit, or a garbled one)
        for p in POPULATION_PARAMS:
            a, s = np.asarray(d[p], dtype=np.float64), self.summary[p]
            if abs(float(a.mean()) - s.mean) > 3 * max(s.sd, float(a.std())) + 1e-9 * (1 + abs(s.mean)):
                raise FitResultError(f"posterior_summary.{p}.mean", f"must be near its own draws' mean"
                                     f" ({float(a.mean()):.6g}, sd {float(a.std()):.3g})", s.mean)

    def _validate_students(self, unique_known: bool = False) -> None:
        s = self.students
        n = len(s)
        for f in ("n_obs",) + LINE_FIELDS:
            if getattr(s, f).shape != (n,):
                raise FitResultError(f"predictions.{f}", "one value per student is required",
                                     getattr(s, f).shape)
        if not unique_known:
            uniq, counts = np.unique(s.student_id.astype(str), return_counts=True)
            if (counts > 1).any():
                raise FitResultError("predictions.student_id", "duplicate student", uniq[counts > 1][0])
        for f in LINE_FIELDS:
            bad = ~np.isfinite(getattr(s, f))
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise FitResultError(f"predictions[{i}].{f}", f"must be finite (student {s.student_id[i]})",
                                     float(getattr(s, f)[i]))
        _first_bad(s, (s.P < 0) | (s.P > 1), "P", "must be within [0, 1]")
        # spec §2: sigma > 0 and tau > 0, so a line's posterior has a variance (> 0): none (P exactly
        # 0 or 1) is no posterior of this model
        _first_bad(s, ~(s.sigma > 0), "sigma", "must be > 0")
        _first_bad(s, ~(s.var_a > 0), "var_a", "must be > 0")
        _first_bad(s, ~(s.var_b > 0), "var_b", "must be > 0")
        tol = _PSD_RTOL * np.maximum(s.var_a * s.var_b, 1e-300)
        _first_bad(s, s.var_a * s.var_b - s.cov_ab**2 < -tol, "cov_ab",
                   "the line covariance must be positive semi-definite (cov_ab^2 <= var_a var_b)")
        _first_bad(s, s.n_obs < 1, "n_obs", "must be >= 1")
        mu, sigma, _ = line_prediction(s.mean_a, s.mean_b, s.var_a, s.var_b, s.cov_ab,
                                       self.horizon_week, self.target)
        # tolerances relative to the terms' own size: the engines compute mu and sigma from
        # draws, so they agree with the closed form up to rounding, not bit for bit
        h = float(self.horizon_week)
        # mu: within a millionth of the line's own sd, plus the rounding of the terms' size (64
        # ulps): relative to the terms alone, the tolerance grew with the scores' level, and with
        # scores near 1e6 a mu 2.8 sds off (with its P made to match) was accepted; at 1e-9 of
        # the level, 3 sds off of a line whose sd is 3e-4
        _first_bad(s, np.abs(mu - s.mu) > 1e-6 * s.sigma + _MU_ULPS * (np.abs(s.mean_a) + h * np.abs(s.mean_b)) + 1e-300,
                   "mu", f"must equal mean_a + h mean_b at the horizon week {self.horizon_week}")
        _first_bad(s, np.abs(sigma - s.sigma) > 1e-6 * (np.sqrt(s.var_a + h * h * s.var_b) + 1e-9), "sigma",
                   f"must be the sd of a + b h at the horizon week {self.horizon_week}")
        # P = Pr(line at the horizon >= target), the line's posterior of mean mu and sd sigma:
        # whatever its shape, Cantelli's inequality bounds P by (mu - target) / sigma (the
        # engines' P is within P_TOLERANCE of exact, their mu and sigma from the same draws)
        lam2, var = (s.mu - self.target) ** 2, s.sigma ** 2
        with np.errstate(divide="ignore", invalid="ignore"):  # mu above: P >= lam2/(var+lam2); below: P <= var/(..)
            low, high = lam2 / (var + lam2), var / (var + lam2)
        above, below = s.mu > self.target, s.mu < self.target
        _first_bad(s, (above & (s.P < low - _P_SLACK)) | (below & (s.P > high + _P_SLACK)), "P",
                   "is impossible for a line of this mu and sigma at the target (Cantelli's inequality:"
                   " the probability of the other side?)")

    def _validate_settings(self, st: FitSettings) -> None:
        want = {"n_chains": st.n_chains, "n_samples": st.n_samples, "n_warmup": st.n_warmup,
                "seed": st.seed, "horizon_week": st.horizon_week, "lookback_weeks": st.lookback_weeks}
        for k, v in want.items():
            if getattr(self, k) != v:
                raise FitResultError(k, f"the engine answered {getattr(self, k)}, the request asked for {v}",
                                     getattr(self, k))
        if not math.isclose(self.target, st.target, rel_tol=1e-12, abs_tol=1e-12):
            raise FitResultError("target", f"the engine answered {self.target}, the request asked for {st.target}",
                                 self.target)

    def _validate_priors(self, panel: Panel) -> None:
        """The priors recorded with the fit are spec §3's for this panel (its ybar and s): an
        engine that fitted under others (or records others) answers another model."""
        want = priors(*panel.scales())
        got = list(self.priors)
        if len(got) != len(want):
            raise FitResultError("priors", f"must be spec §3's {len(want)} priors for this panel", got)
        for k, (g, w) in enumerate(zip(got, want)):
            if not isinstance(g, Mapping):
                raise FitResultError(f"priors[{k}]", "must be an object", g)
            same = (all(g.get(f) == w.get(f) for f in ("class", "coef", "dist", "lb"))
                    and isinstance(g.get("args"), (list, tuple)) and len(g["args"]) == len(w["args"])
                    and all(_is_close(a, b) for a, b in zip(g["args"], w["args"])))
            if not same:
                raise FitResultError(f"priors[{k}]", f"must be spec §3's {w} for this panel (ybar, s of its"
                                     " scores)", dict(g))

    def _validate_panel(self, panel: Panel, same: bool = False) -> None:
        if same:
            got = want = None
        else:
            got = self.students.student_id.astype(str)
            want = panel.student_ids.astype(str)
        missing = np.array([]) if same else np.setdiff1d(want, got)
        extra = np.array([]) if same else np.setdiff1d(got, want)
        if missing.size or extra.size:
            raise FitResultError(
                "predictions.student_id",
                f"the students must be the panel's: {missing.size} missing (e.g. {missing[:3].tolist()}), "
                f"{extra.size} not in the panel (e.g. {extra[:3].tolist()})")
        if self.n_obs != panel.n_rows:
            raise FitResultError("n_obs", f"the panel has {panel.n_rows} rows", self.n_obs)
        n_obs = self.students.n_obs if same else self.students.n_obs[np.argsort(got, kind="stable")]
        want_n = panel.n_obs()
        bad = n_obs != want_n
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise FitResultError("predictions.n_obs",
                                 f"student {panel.student_ids[i]} has {want_n[i]} rows in the panel", int(n_obs[i]))
        self._validate_priors(panel)  # the panel's students first: which question it answers

    def sorted_by_student(self) -> "FitResult":
        order = np.argsort(self.students.student_id.astype(str), kind="stable")
        return replace(self, students=self.students.take(order))


def fit_panel(engine: Engine, panel: Panel, settings: FitSettings) -> FitResult:
    """Fit and accept a result: the one place a result is checked against its request.
    Returned with the students in the panel's (sorted) order."""
    result = engine.fit(panel, settings)
    if not isinstance(result, FitResult):
        raise FitResultError("<result>", f"engine {engine.name} returned {type(result).__name__}, not FitResult")
    if result.engine != engine.name:
        raise FitResultError("engine", f"the {engine.name} engine must answer engine {engine.name!r}",
                             result.engine)
    result = result.validate(panel, settings)
    if np.array_equal(result.students.student_id, panel.student_ids):
        return result
    return result.sorted_by_student()


RHAT_FLOOR = 0.9  # R-hat (split, rank-normalised) is about 1 and above; far below is no R-hat
_P_SLACK = 0.005  # the engines' P: the mean of Phi over 1000 draws, within 0.001 of exact
# the summary's parameters' ranges (sds and sigma >= 0, a correlation within [-1, 1])
_PARAM_RANGE = {"sd_student_id__Intercept": (0.0, math.inf), "sd_student_id__week": (0.0, math.inf),
                "sigma": (0.0, math.inf), "cor_student_id__Intercept__week": (-1.0, 1.0)}


def _first_bad(s: StudentLines, bad: np.ndarray, name: str, detail: str) -> None:
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise FitResultError(f"predictions[{i}].{name}", f"{detail} (student {s.student_id[i]})",
                             float(getattr(s, name)[i]))


def _number(obj: Mapping[str, Any], key: str, where: str, *, allow_null: bool = False) -> float:
    if key not in obj:
        raise FitResultError(f"{where}{key}", "missing key")
    v = obj[key]
    if v is None and allow_null:
        return math.nan
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise FitResultError(f"{where}{key}", "must be a plain JSON number", v)
    try:
        f = float(v)
    except OverflowError:  # an integer of hundreds of digits
        raise FitResultError(f"{where}{key}", "is beyond a float's range", f"{str(v)[:20]}...") from None
    if math.isinf(f):  # the JSON number 1e400: parsed as infinity, which no JSON written back can hold
        raise FitResultError(f"{where}{key}", "is beyond a float's range", v)
    return f


def _integer(obj: Mapping[str, Any], key: str, where: str = "") -> int:
    v = _number(obj, key, where)
    if not math.isfinite(v) or v != math.floor(v):
        raise FitResultError(f"{where}{key}", "must be an integer", v)
    return int(v)


def _draws(obj: Any) -> dict[str, np.ndarray]:
    if not isinstance(obj, Mapping):
        raise FitResultError("population_draws", "must be an object of equal-length arrays")
    out, length = {}, None
    for k, v in obj.items():
        if not isinstance(v, list) or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
            raise FitResultError(f"population_draws.{k}", "must be an array of numbers")
        try:
            a = np.asarray(v, dtype=np.float64)
        except OverflowError:
            raise FitResultError(f"population_draws.{k}", "holds a number beyond a float's range") from None
        if not np.isfinite(a).all():
            raise FitResultError(f"population_draws.{k}", "must be finite")
        if length is not None and a.size != length:
            raise FitResultError(f"population_draws.{k}", f"must have {length} draws like the others", a.size)
        length = a.size
        out[k] = a
    return out


def _is_close(a: Any, b: float) -> bool:
    """A recorded prior argument against the expected one: the engines compute ybar and s in
    double precision, in R or numpy, so the last bits may differ."""
    return isinstance(a, (int, float)) and not isinstance(a, bool) and math.isclose(
        float(a), b, rel_tol=1e-9, abs_tol=1e-12)
