"""Pictures of a fit and of a backtest, as the Dagster UI shows them inline: matplotlib
(headless Agg), a PNG as a data URI in markdown metadata, each kept under ``MAX_BYTES``.

Every function takes plain arrays (what the asset already holds or reads from its tables)
and returns the markdown of one picture.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # headless: no display in a run worker
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from ...model.contract import POPULATION_PARAMS  # noqa: E402

MAX_BYTES = 150_000
_DPI = (90, 72, 56)  # tried in turn until the PNG fits MAX_BYTES
BLUE, GREY, ORANGE = "#2b6cb0", "#718096", "#dd6b20"


def markdown_png(fig: Figure, alt: str) -> str:
    """``![alt](data:image/png;base64,…)``, the figure closed; lower resolution if needed."""
    try:
        for dpi in _DPI:
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
            data = buf.getvalue()
            if len(data) <= MAX_BYTES:
                break
    finally:
        plt.close(fig)
    return f"![{alt}](data:image/png;base64,{base64.b64encode(data).decode('ascii')})"


def _population_lines(draws: Mapping[str, np.ndarray], weeks: np.ndarray, rng: np.random.Generator):
    """The population mean line per draw (D, W) and one new student's line per draw (D, W)."""
    b0, b1 = np.asarray(draws["b_Intercept"]), np.asarray(draws["b_week"])
    t0, t1 = np.asarray(draws["sd_student_id__Intercept"]), np.asarray(draws["sd_student_id__week"])
    rho = np.asarray(draws["cor_student_id__Intercept__week"])
    z0, z1 = rng.standard_normal(b0.size), rng.standard_normal(b0.size)
    r0 = t0 * z0
    r1 = t1 * (rho * z0 + np.sqrt(np.maximum(1.0 - rho * rho, 0.0)) * z1)
    mean = b0[:, None] + b1[:, None] * weeks[None, :]
    student = mean + r0[:, None] + r1[:, None] * weeks[None, :]
    return mean, student


def population_picture(draws: Mapping[str, np.ndarray], horizon_week: int, window_weeks: int,
                       target: float, sample: Sequence[tuple[str, np.ndarray, np.ndarray, float, float]],
                       seed: int = 0) -> str:
    """The population line (posterior median, 90 % credible band of the mean line), the 50 %
    and 90 % bands of the students' lines over the window and up to the horizon, and a
    sample of students: (id, weeks, scores, posterior mean intercept, slope)."""
    weeks = np.arange(horizon_week + 1, dtype=np.float64)
    mean, student = _population_lines(draws, weeks, np.random.default_rng(seed))
    fig, ax = plt.subplots(figsize=(7.0, 3.8))
    q = np.quantile(student, [0.05, 0.25, 0.75, 0.95], axis=0)
    ax.fill_between(weeks, q[0], q[3], color=BLUE, alpha=0.12, lw=0, label="students' lines, 90 %")
    ax.fill_between(weeks, q[1], q[2], color=BLUE, alpha=0.25, lw=0, label="students' lines, 50 %")
    mq = np.quantile(mean, [0.05, 0.5, 0.95], axis=0)
    ax.fill_between(weeks, mq[0], mq[2], color=BLUE, alpha=0.5, lw=0)
    ax.plot(weeks, mq[1], color=BLUE, lw=2, label="population line (90 % credible)")
    colors = plt.get_cmap("tab10")
    for k, (sid, w, y, a, b) in enumerate(sample):
        c = colors(k % 10)
        ax.plot(w, y, "o", ms=3, color=c, alpha=0.8)
        ax.plot(weeks, a + b * weeks, color=c, lw=0.9, alpha=0.8, label=sid if k < 4 else None)
    ax.axvspan(window_weeks - 0.5, horizon_week + 0.5, color=GREY, alpha=0.08)
    ax.axvline(horizon_week, color=GREY, ls="--", lw=1)
    ax.axhline(target, color=ORANGE, ls=":", lw=1.2, label=f"target {target:g}")
    ax.set_xlim(-0.5, horizon_week + 0.5)
    ax.set_xlabel(f"week of the window (0..{window_weeks - 1}; horizon {horizon_week})")
    ax.set_ylabel("score")
    ax.set_title("population line and students' lines, with a sample of students", fontsize=10)
    ax.text(horizon_week - 0.2, ax.get_ylim()[1], "horizon", ha="right", va="top", fontsize=7, color=GREY)
    fig.legend(fontsize=7, ncol=4, loc="lower center", bbox_to_anchor=(0.5, -0.02), frameon=False)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    return markdown_png(fig, "population line")


def p_picture(p: np.ndarray, target: float, horizon: str) -> str:
    """The distribution of P over the students."""
    fig, ax = plt.subplots(figsize=(5.0, 2.6))
    ax.hist(np.asarray(p), bins=20, range=(0, 1), color=BLUE, alpha=0.85)
    ax.set_xlabel(f"P (score >= {target:g} in the week of {horizon})")
    ax.set_ylabel("students")
    ax.set_title(f"P of {np.asarray(p).size} students", fontsize=10)
    fig.tight_layout()
    return markdown_png(fig, "distribution of P")


def parameters_picture(draws: Mapping[str, np.ndarray]) -> str:
    """The posteriors of the six population parameters (the stored thinned draws)."""
    fig, axes = plt.subplots(2, 3, figsize=(7.5, 3.6))
    for ax, name in zip(axes.ravel(), POPULATION_PARAMS, strict=True):
        x = np.asarray(draws[name])
        ax.hist(x, bins=30, color=BLUE, alpha=0.85)
        ax.axvline(float(np.median(x)), color="black", lw=1)
        ax.set_title(name, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_yticks([])
    fig.suptitle(f"population parameters ({np.asarray(draws['sigma']).size} draws)", fontsize=10)
    fig.tight_layout()
    return markdown_png(fig, "population parameters")


def diagnostics_picture(rows: Sequence[Mapping]) -> str:
    """Diagnostics over the last runs (oldest first): dicts with ``label`` and ``max_rhat``,
    ``min_ess_bulk``, ``min_ess_tail``, ``n_divergent``, ``fit_seconds`` (None: unknown)."""
    x = np.arange(len(rows))
    labels = [r["label"] for r in rows]

    def col(k):
        return np.array([np.nan if r.get(k) is None else float(r[k]) for r in rows])

    fig, axes = plt.subplots(1, 4, figsize=(9.0, 2.4))
    series = [("max R-hat", ["max_rhat"], [1.01, 1.05]), ("min ESS", ["min_ess_bulk", "min_ess_tail"], [400, 100]),
              ("divergences", ["n_divergent"], []), ("fit seconds", ["fit_seconds"], [])]
    for ax, (title, keys, lines) in zip(axes, series):
        for k, style in zip(keys, ("o-", "s--")):
            ax.plot(x, col(k), style, ms=3, lw=1, color=BLUE, label=k if len(keys) > 1 else None)
        for v in lines:
            ax.axhline(v, color=ORANGE, ls=":", lw=1)
        if title in ("divergences", "fit seconds"):
            ax.set_ylim(bottom=0, top=max(1.0, float(np.nanmax(col(keys[0])) if rows else 1.0) * 1.15))
        ax.set_title(title, fontsize=9)
        ax.set_xticks(x, labels, rotation=60, fontsize=6)
        ax.tick_params(axis="y", labelsize=7)
        if len(keys) > 1:
            ax.legend(fontsize=6, frameon=False)
    fig.suptitle(f"diagnostics of the last {len(rows)} runs", fontsize=10)
    fig.tight_layout()
    return markdown_png(fig, "diagnostics trend")


def reliability_picture(model: Sequence[Mapping], baseline: Sequence[Mapping]) -> str:
    """Reliability diagram: observed frequency against mean predicted probability per bin."""
    fig, ax = plt.subplots(figsize=(4.2, 4.0))
    ax.plot([0, 1], [0, 1], color=GREY, ls=":", lw=1)
    for rows, color, label in ((model, BLUE, "model"), (baseline, ORANGE, "Normal baseline")):
        pts = [(r["mean_predicted"], r["observed"], r["students"]) for r in rows if r["students"]]
        if pts:
            px, py, n = map(np.asarray, zip(*pts))
            ax.plot(px, py, "o-", color=color, lw=1.2, label=label)
            ax.scatter(px, py, s=10 + 60 * n / n.max(), color=color, alpha=0.4)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("predicted probability of reaching the target")
    ax.set_ylabel("observed frequency")
    ax.set_title("reliability", fontsize=10)
    ax.legend(fontsize=8, frameon=False, loc="upper left")
    fig.tight_layout()
    return markdown_png(fig, "reliability diagram")


def pit_picture(model_counts: Sequence[int], baseline_counts: Sequence[int]) -> str:
    """PIT histograms (uniform when the predictive is calibrated)."""
    fig, axes = plt.subplots(1, 2, figsize=(7.0, 2.6), sharey=False)
    for ax, counts, color, title in ((axes[0], model_counts, BLUE, "model"),
                                     (axes[1], baseline_counts, ORANGE, "Normal baseline")):
        c = np.asarray(counts, dtype=float)
        k = c.size
        ax.bar((np.arange(k) + 0.5) / k, c, width=1 / k, color=color, alpha=0.85, edgecolor="white")
        if c.sum():
            ax.axhline(c.sum() / k, color="black", ls=":", lw=1)
        ax.set_xlim(0, 1)
        ax.set_title(f"PIT, {title} ({int(c.sum())} students)", fontsize=9)
        ax.set_xlabel("PIT = Pr(predicted <= realised)", fontsize=8)
    fig.tight_layout()
    return markdown_png(fig, "PIT histogram")
