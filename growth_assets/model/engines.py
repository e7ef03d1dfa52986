"""Build an engine by name, without Dagster (the CLI and the Dagster resource both use this)."""

from __future__ import annotations

from ..settings import ENGINE_CHOICES, R_BRMS_TIMEOUT_SECS, NativeRuntime
from .contract import ContractError
from .engine import Engine


def make_engine(name: str, *, r_brms_base_url: str | None = None,
                r_brms_timeout_secs: float = R_BRMS_TIMEOUT_SECS,
                r_brms_internal_token: str | None = None, max_retries: int = 3,
                backoff_secs: float = 2.0, native: NativeRuntime | None = None) -> Engine:
    if name not in ENGINE_CHOICES:
        raise ContractError("GROWTH_ENGINE", f"must be one of {ENGINE_CHOICES}", name)
    if name == "native":
        from .native import NativeEngine

        return NativeEngine(native)
    if not r_brms_base_url:
        raise ContractError("R_BRMS_BASE_URL", "must be set to use the brms engine", None)
    from .brms_client import BrmsClient

    return BrmsClient(base_url=r_brms_base_url, timeout_secs=r_brms_timeout_secs, token=r_brms_internal_token,
                      max_retries=max_retries, backoff_secs=backoff_secs)
