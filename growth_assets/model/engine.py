"""What every engine implements: a panel in, the spec §8 fit result out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import pandas as pd

from .contract import ContractError


@dataclass(frozen=True)
class FitSettings:
    """Sampling and prediction settings of one fit (spec §4, §6, §8)."""

    n_chains: int = 4
    n_samples: int = 2000  # iterations per chain, the first half warm-up (brms's default)
    seed: int = 1234
    horizon_week: int = 15
    target: float = 0.0
    lookback_weeks: int = 12
    run_id: str | None = None  # the engine makes one (``<engine>-YYYYMMDD-HHMMSS``) when None

    def __post_init__(self) -> None:
        if not 1 <= self.n_chains <= 8:
            raise ContractError("n_chains", "must be within 1..8", self.n_chains)
        if not 200 <= self.n_samples <= 20000:
            raise ContractError("n_samples", "must be within 200..20000", self.n_samples)
        if self.horizon_week < 0:
            raise ContractError("horizon_week", "must be >= 0", self.horizon_week)

    @property
    def n_warmup(self) -> int:
        return self.n_samples // 2


class Engine(Protocol):
    """An engine fits ``score ~ week + (week | student_id)`` with the contract's priors."""

    name: str  # "brms" | "native"

    def fit(self, panel: pd.DataFrame, settings: FitSettings) -> dict[str, Any]:
        """Fit a panel (columns student_id, week, score) and return the spec §8 dict.

        The result must pass ``contract.validate_fit_result``. Errors are raised, never
        returned inside the result.
        """
        ...
