"""What every engine implements: a panel in, a ``FitResult`` out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from ..settings import HORIZON_WEEK, LOOKBACK_WEEKS, N_CHAINS, N_SAMPLES, SEED

if TYPE_CHECKING:
    from .panel import Panel
    from .result import FitResult


@dataclass(frozen=True)
class FitSettings:
    """Sampling and prediction settings of one fit (spec §4, §6, §8); the ranges are the
    settings module's (one statement of each)."""

    n_chains: int = N_CHAINS.default
    n_samples: int = N_SAMPLES.default  # iterations per chain, the first half warm-up (brms's)
    seed: int = SEED.default
    horizon_week: int = HORIZON_WEEK.default
    target: float = 0.0
    lookback_weeks: int = LOOKBACK_WEEKS.default
    run_id: str | None = None  # the engine makes one (``<engine>-YYYYMMDD-HHMMSS``) when None

    def __post_init__(self) -> None:
        from .contract import check_target

        object.__setattr__(self, "n_chains", N_CHAINS.check("n_chains", self.n_chains))
        object.__setattr__(self, "n_samples", N_SAMPLES.check("n_samples", self.n_samples))
        object.__setattr__(self, "seed", SEED.check("seed", self.seed))
        object.__setattr__(self, "horizon_week", HORIZON_WEEK.check("horizon_week", self.horizon_week))
        object.__setattr__(self, "lookback_weeks",
                           LOOKBACK_WEEKS.check("lookback_weeks", self.lookback_weeks))
        object.__setattr__(self, "target", check_target(self.target))

    @property
    def n_warmup(self) -> int:
        return self.n_samples // 2


class Engine(Protocol):
    """An engine fits ``score ~ week + (week | student_id)`` with the contract's priors."""

    name: str  # "brms" | "native"

    def fit(self, panel: "Panel", settings: FitSettings) -> "FitResult":
        """Fit a checked panel; errors are raised, never returned inside the result. The
        caller (``result.fit_panel``) checks the result against the request."""
        ...
