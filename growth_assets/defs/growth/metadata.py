"""Metadata as the Dagster UI shows it: numbers rounded to the digits that mean something."""

from __future__ import annotations

import math

import dagster as dg
import numpy as np


def rounded(x: float | None, decimals: int | None = None) -> float:
    """``decimals`` places, or 4 significant digits when None; NaN and None stay NaN."""
    if x is None:
        return math.nan
    x = float(x)
    if not math.isfinite(x) or x == 0:
        return x
    if decimals is None:
        decimals = max(0, 3 - int(math.floor(math.log10(abs(x)))))
    return round(x, decimals)


def num(x: float | None, decimals: int | None = None) -> dg.MetadataValue:
    """A float metadata value (plotted across materializations), rounded."""
    return dg.MetadataValue.float(rounded(x, decimals))


def p_histogram_md(p_or_counts: np.ndarray, bins: int = 10) -> str:
    """The distribution of P as a small markdown table (renders inline: under 1,000 chars).
    Takes the P values, or already the ``bins`` counts of [0, 0.1), …, [0.9, 1]."""
    a = np.asarray(p_or_counts)
    if a.dtype.kind in "iu" and a.size == bins:
        counts = a
    else:
        if a.size == 0:
            return "no students"
        counts, _ = np.histogram(a, bins=bins, range=(0.0, 1.0))
    if int(counts.sum()) == 0:
        return "no students"
    edges = np.linspace(0.0, 1.0, bins + 1)
    top = max(int(counts.max()), 1)
    lines = ["| P | students | |", "|---|---:|---|"]
    for c, lo, hi in zip(counts, edges[:-1], edges[1:]):
        lines.append(f"| {lo:.1f}–{hi:.1f} | {int(c)} | {'█' * round(12 * int(c) / top)} |")
    return "\n".join(lines)
