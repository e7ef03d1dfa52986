"""The native engine: spec §2-§3's model fitted in-process with NumPyro, no R.

``score ~ week + (week | student_id)`` with the contract's priors, exactly (not an
approximation of the model): the random effects are integrated out in closed form
(``native_math``), NUTS samples the six hyperparameters, and every student's line is
the exact average over the hyperparameter draws of its conditional Normal posterior
(Rao-Blackwellised), so no draws x students array is ever formed.

Like brms, the prior ``normal(ybar, 2.5 s)`` is on the intercept at the mean week of the
rows; ``b_Intercept`` reported is the intercept at week 0. Internally the scores are
standardised, ``(y - ybar) / s``: the priors then have fixed scales (``normal(0, 2.5)``,
``normal(0, 1)``, ``half-Cauchy(0, 1)``) and every cohort shares one compiled sampler.

NUTS runs on z with q = m + L z, q the six unconstrained parameters and (m, L) the mode
and Cholesky factor of the inverse Hessian of a Laplace fit. An affine map has a constant
Jacobian, so the posterior is exactly the same; it only spares the sampler a step size
that would otherwise shrink like 1/sqrt(cohort) (Stan's mass-matrix regularisation
assumes unit scales).

Configuration (environment):

- ``GROWTH_JAX_CACHE_DIR``: JAX's persistent compilation cache (default
  ``$XDG_CACHE_HOME/growth_assets/jax`` or ``~/.cache/growth_assets/jax``); ``off``
  disables it. Set once per process, only if nothing set one before.
- ``GROWTH_NATIVE_DEVICES``: XLA CPU devices the chains are spread over (default
  min(2, CPUs)); applied through ``XLA_FLAGS`` when this module is imported before JAX
  starts its backend (see ``ensure_host_devices``), else 1.
- ``GROWTH_NATIVE_CHAIN_METHOD``: ``vectorized`` (default; chains split over the
  devices, vmap within) or ``sequential`` (numpyro's own loop, not cached on disk).

Per-process fixed cost: tracing numpyro's NUTS and lowering it take ~3 s, which JAX's
persistent cache does not spare. The compiled programs (the whole sampler run, and the
Laplace fit's gradient and Hessian) are therefore kept as serialised executables next to
that cache, ``<GROWTH_JAX_CACHE_DIR>/native_exec`` (``native_export``): a new process
loads them (~0.3 s) and traces nothing; ``sampler.program`` in a result says whether the
sampler was ``traced``, loaded from a ``file`` or reused from ``memory``. Results are
bit-identical either way (the file holds the program the tracing process ran).

Reproducibility: the same panel, settings and seed give the same result on the same
machine with the same device count (recorded as ``sampler.n_devices``); a different
device layout batches the arithmetic differently and the chains drift apart in the last
digits, then anywhere.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from . import contract, native_diagnostics, native_export, native_math
from .engine import FitSettings

# numpyro is imported only where a sampler is traced: a process that loads the compiled
# sampler from the cache (native_export) never needs it.

MAX_TREE_DEPTH = 10  # Stan's default, as brms runs it
P_TOLERANCE = 1e-3  # max error of the cheap P; students above it get the exact mean over draws
_STUDENT_CHUNK = 100_000
_PARAM_NAMES = contract.POPULATION_PARAMS

log = logging.getLogger(__name__)
_lock = threading.Lock()
_mcmc_cache: dict[tuple, Any] = {}
_cache_configured = False


def ensure_host_devices(n: int | None = None) -> bool:
    """Ask XLA for ``n`` CPU devices (default ``GROWTH_NATIVE_DEVICES`` or min(2, CPUs)) so
    that chains run on several cores. Only possible before JAX's backend starts and when
    ``XLA_FLAGS`` does not already set a count (numpyro's ``set_host_device_count`` does
    the same); returns whether the flag is in place. Called when this module is imported."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" in flags:
        return True
    try:
        from jax._src import xla_bridge

        if xla_bridge.backends_are_initialized():
            return False
    except (ImportError, AttributeError):  # pragma: no cover - a JAX without the helper
        return False
    if n is None:
        raw = os.environ.get("GROWTH_NATIVE_DEVICES")
        n = int(raw) if raw else min(2, os.cpu_count() or 1)
    if n <= 1:
        return False
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={int(n)}".strip()
    return True


ensure_host_devices()


def jax_cache_dir() -> Path | None:
    """Where JAX's persistent compilation cache lives (None: disabled)."""
    raw = os.environ.get("GROWTH_JAX_CACHE_DIR")
    if raw is not None:
        return None if raw.strip().lower() in ("", "off", "none", "0") else Path(raw)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "growth_assets" / "jax"


def _configure_jax_cache() -> None:
    global _cache_configured
    if _cache_configured:
        return
    _cache_configured = True
    path = jax_cache_dir()
    if path is None or jax.config.jax_compilation_cache_dir:
        return
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def _x64():
    """A context in which JAX computes in float64 (the process-wide setting is untouched)."""
    ctx = getattr(jax, "enable_x64", None)
    if ctx is not None:
        return ctx(True)
    from jax.experimental import enable_x64  # older JAX

    return enable_x64()


def engine_version() -> str:
    return f"native numpyro {native_export.package_version('numpyro')} / jax {jax.__version__}"


# --- the model, in standardised units ------------------------------------------------------


# The six sampled quantities, unconstrained, in standardised units:
# q = (Intercept at the mean week, b_week, log sd_Intercept, log sd_week, logit u, log sigma)
# with cor = 2u - 1. The log density below includes the Jacobians of these transforms.
_Q_NAMES = ("Intercept", "b_week", "log_sd_Intercept", "log_sd_week", "logit_u", "log_sigma")
_LOG_2_OVER_PI = math.log(2.0 / math.pi)


def log_posterior_q(q, wbar, totals, groups):
    """Unnormalised log posterior of q (standardised units, Jacobians included).

    Priors (spec §3 divided by s): Intercept ~ normal(0, 2.5), b_week ~ normal(0, 1),
    sd ~ half-Cauchy(0, 1) (both), sigma ~ half-Cauchy(0, 1); lkj(2) on the 2x2
    correlation, i.e. u = (1 + cor) / 2 ~ Beta(2, 2)."""
    ic, b, lt0, lt1, lu, ls = (q[..., i] for i in range(6))
    tau0, tau1, sigma = jnp.exp(lt0), jnp.exp(lt1), jnp.exp(ls)
    log_u, log_1mu = jax.nn.log_sigmoid(lu), jax.nn.log_sigmoid(-lu)
    u = jnp.exp(log_u)
    rho = 2.0 * u - 1.0

    def half_cauchy(x, logx):  # log density of half-Cauchy(0, 1) at x, plus log|dx/dlogx|
        return _LOG_2_OVER_PI - jnp.log1p(x * x) + logx

    lp = (
        -0.5 * (ic / 2.5) ** 2 - 0.5 * b * b
        + half_cauchy(tau0, lt0) + half_cauchy(tau1, lt1) + half_cauchy(sigma, ls)
        + math.log(6.0) + log_u + log_1mu  # Beta(2, 2) density 6 u (1 - u)
        + log_u + log_1mu  # Jacobian of u = sigmoid(logit u)
    )
    beta0 = ic - b * wbar  # brms centres week in the fixed effects
    return lp + native_math.collapsed_loglik(jnp, beta0, b, tau0, tau1, rho, sigma, groups, totals)


def _model(wbar, m, L, totals, count, n, sw, sww, gbar, scatter, yy):
    """NUTS samples z with q = m + L z (an affine, constant-Jacobian reparametrisation:
    the posterior is unchanged; m and L from a Laplace fit make z about standard normal,
    so the sampler's step size does not shrink with the cohort)."""
    import numpyro
    import numpyro.distributions as dist
    from numpyro.distributions import constraints

    z = numpyro.sample("z", dist.ImproperUniform(constraints.real_vector, (), event_shape=(6,)))
    q = m + L @ z
    numpyro.factor("log_posterior",
                   log_posterior_q(q, wbar, totals, (count, n, sw, sww, gbar, scatter, yy)))


@jax.jit
def _neg_lp_and_grad(q, wbar, totals, groups):
    v, g = jax.value_and_grad(log_posterior_q)(q, wbar, totals, groups)
    return -v, -g


@jax.jit
def _neg_hessian(q, wbar, totals, groups):
    return -jax.hessian(log_posterior_q)(q, wbar, totals, groups)


def _executable_dir() -> Path | None:
    return native_export.exec_cache_dir(jax_cache_dir())


def _program(name: str, fn, args: tuple, retrace: bool = False):
    """``fn`` (jitted, one device) compiled for ``args``, via the executable cache."""
    exe, _ = native_export.compiled(name, lambda: fn, args, settings={}, retrace=retrace,
                                    devices=jax.devices()[:1], directory=_executable_dir())
    return exe


def _laplace_mode(q0: np.ndarray, data: tuple, retrace: bool):
    from scipy.optimize import minimize

    proto = (q0,) + data
    if not retrace:  # XLA loads it (without the GIL) while the optimiser runs
        native_export.prefetch("laplace_hessian", proto, settings={},
                               devices=jax.devices()[:1], directory=_executable_dir())
    neg_lp_and_grad = _program("laplace_grad", _neg_lp_and_grad, proto, retrace)

    def fun(q):
        v, g = neg_lp_and_grad(np.asarray(q, dtype=np.float64), *data)
        return float(v), np.asarray(g, dtype=np.float64)

    res = minimize(fun, q0, jac=True, method="L-BFGS-B",
                   options={"maxiter": 500, "gtol": 1e-9, "ftol": 1e-14})
    m = np.asarray(res.x, dtype=np.float64)
    H = np.asarray(_program("laplace_hessian", _neg_hessian, proto, retrace)(m, *data),
                   dtype=np.float64)
    return res, m, H


def laplace(wbar: float, totals: np.ndarray, groups: tuple) -> tuple[np.ndarray, np.ndarray, dict]:
    """Mode and Cholesky factor of the inverse Hessian of the log posterior of q: the
    preconditioner (m, L) of the sampler. Falls back to a diagonal guess when the
    optimiser fails; correctness never depends on it, only speed."""
    q0 = np.array([0.0, 0.0, math.log(0.5), math.log(0.1), 0.0, math.log(0.5)])
    with _x64():
        data = (np.float64(wbar), np.asarray(totals, dtype=np.float64),
                tuple(np.asarray(a, dtype=np.float64) for a in groups))
        try:
            res, m, H = _laplace_mode(q0, data, retrace=False)
        except jax.errors.JaxRuntimeError as e:  # a cached program that does not run
            log.warning("native engine: cached Laplace programs failed (%s); tracing again", e)
            res, m, H = _laplace_mode(q0, data, retrace=True)
    info = {"converged": bool(res.success), "n_iter": int(res.nit)}
    H = 0.5 * (H + H.T)
    try:
        w, V = np.linalg.eigh(H)
        ok = np.all(np.isfinite(w)) and w.min() > 0 and np.all(np.isfinite(m))
    except np.linalg.LinAlgError:
        ok = False
    if not ok:
        info["fallback"] = True
        rows = max(float(totals[0]), 1.0)
        m = np.where(np.isfinite(m), m, q0)
        return m, np.diag(np.full(6, 1.0 / math.sqrt(rows))), info
    cov = (V / w) @ V.T
    L = np.linalg.cholesky(0.5 * (cov + cov.T))
    return m, L, info


def _chain_method() -> str:
    m = os.environ.get("GROWTH_NATIVE_CHAIN_METHOD", "vectorized")
    if m not in ("vectorized", "sequential"):
        raise contract.ContractError("GROWTH_NATIVE_CHAIN_METHOD", "vectorized|sequential", m)
    return m


def _n_devices(n_chains: int) -> int:
    """How many XLA CPU devices the chains are spread over: the largest divisor of
    ``n_chains`` within the available devices (and ``GROWTH_NATIVE_DEVICES``)."""
    avail = jax.local_device_count()
    raw = os.environ.get("GROWTH_NATIVE_DEVICES")
    if raw:
        avail = min(avail, max(1, int(raw)))
    return max(d for d in range(1, min(avail, n_chains) + 1) if n_chains % d == 0)


_FIELDS = ("z", "diverging", "num_steps")


def _nuts_mcmc(n_chains: int, n_warmup: int, n_draws: int, chain_method: Any):
    from numpyro.infer import MCMC, NUTS

    kernel = NUTS(_model, max_tree_depth=MAX_TREE_DEPTH, target_accept_prob=0.8)
    return MCMC(kernel, num_warmup=n_warmup, num_samples=n_draws, num_chains=n_chains,
                chain_method=chain_method, progress_bar=False, jit_model_args=True)


def _by_device(fn):  # pragma: no cover - a marker: chains are mapped by _sampler_program
    raise NotImplementedError


def _mesh(n_dev: int):
    from jax.sharding import Mesh

    return Mesh(np.array(jax.devices()[:n_dev]), ("chains",))


def _sampler_program(n_chains: int, n_warmup: int, n_draws: int, n_dev: int):
    """The whole run, warm-up and sampling of every chain, as one jitted function of
    ``(key, data)``: chains split over ``n_dev`` devices (shard_map), vectorised (vmap)
    within a device, and each chain numpyro's own single-chain MCMC (the program numpyro's
    ``MCMC.run`` traces, with chain k on key k of ``split(key, n_chains)``).

    The data are arguments, not constants, so one compiled program serves every cohort
    with the same padded group count. Each chain returns its last state too: numpyro
    returns it, and dropping it changes XLA's fusion and the last digits of the draws."""
    from jax.sharding import NamedSharding, PartitionSpec

    mcmc = _nuts_mcmc(n_chains, n_warmup, n_draws, _by_device)

    def one_chain(key, data):
        states, last = mcmc._single_chain_mcmc((key, None, None), args=data, kwargs={},
                                               collect_fields=_FIELDS, remove_sites=())
        return ((states["z"]["z"], states["diverging"], states["num_steps"]),
                tuple(jax.tree.leaves(last)))

    mesh = _mesh(n_dev)
    chains = PartitionSpec("chains")
    per_device = jax.shard_map(jax.vmap(one_chain, in_axes=(0, None)), mesh=mesh,
                               in_specs=(chains, PartitionSpec()), out_specs=chains,
                               check_vma=False)

    def program(key, data):
        return per_device(jax.random.split(key, n_chains), data)

    return jax.jit(program, in_shardings=NamedSharding(mesh, PartitionSpec()),
                   out_shardings=NamedSharding(mesh, chains))


def _prng_key(seed: int) -> np.ndarray:
    """``jax.random.PRNGKey(seed % 2**32)`` (the default threefry key is (0, seed) for
    seeds below 2**32), made without a JAX dispatch."""
    s = int(seed) % (2**32)
    if str(jax.config.jax_default_prng_impl) == "threefry2x32":
        return np.array([0, s], dtype=np.uint32)
    return np.asarray(jax.random.key_data(jax.random.PRNGKey(s)))


def _get_mcmc(n_chains: int, n_warmup: int, n_draws: int, chain_method: str):
    """numpyro's MCMC for chain_method ``sequential`` (one device, chains one after the
    other); kept per shape of the run so that it keeps its compiled sampler."""
    key = (n_chains, n_warmup, n_draws, chain_method)
    mcmc = _mcmc_cache.get(key)
    if mcmc is None:
        mcmc = _mcmc_cache[key] = _nuts_mcmc(n_chains, n_warmup, n_draws, chain_method)
    return mcmc


def sample_hyperparameters(
    groups: native_math.Groups, wbar: float, settings: FitSettings
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Run NUTS; return (draws in standardised units, each (chains, draws); extra fields).

    Chain k gets key k of ``split(PRNGKey(seed), n_chains)`` (numpyro's own rule); the
    chains are spread over the host's XLA devices (see ``ensure_host_devices``). The draws
    are a deterministic function of data, settings, seed, machine and device count, whether
    the compiled sampler was traced in this process or loaded from the cache."""
    n_chains = settings.n_chains
    n_draws = settings.n_samples - settings.n_warmup
    totals = np.asarray(native_math.panel_totals(groups), dtype=np.float64)
    gt = tuple(np.asarray(a, dtype=np.float64) for a in groups.as_tuple())
    key = _prng_key(settings.seed)
    method = _chain_method()
    n_dev = _n_devices(n_chains) if method == "vectorized" else 1
    run_settings = {"n_chains": n_chains, "n_warmup": settings.n_warmup, "n_draws": n_draws,
                    "n_devices": n_dev, "max_tree_depth": MAX_TREE_DEPTH,
                    "target_accept_prob": 0.8}
    if method == "vectorized":  # load the compiled sampler while the Laplace fit runs
        with _x64():
            native_export.prefetch(
                "nuts", (key, (np.float64(wbar), np.zeros(6), np.zeros((6, 6)), totals) + gt),
                settings=run_settings, devices=jax.devices()[:n_dev],
                directory=_executable_dir())
    m, L, laplace_info = laplace(wbar, totals, gt)
    args = (np.float64(wbar), np.asarray(m, dtype=np.float64),
            np.asarray(L, dtype=np.float64), totals) + gt
    with _lock, _x64():
        if method == "vectorized":
            def run(retrace: bool):
                exe, info = native_export.compiled(
                    "nuts",
                    lambda: _sampler_program(n_chains, settings.n_warmup, n_draws, n_dev),
                    (key, args), settings=run_settings, devices=jax.devices()[:n_dev],
                    directory=_executable_dir(), retrace=retrace)
                (z, diverging, num_steps), _ = exe(key, args)
                return (np.asarray(z, dtype=np.float64), np.asarray(diverging),
                        np.asarray(num_steps)), info

            try:
                (z, diverging, num_steps), program = run(False)
            except jax.errors.JaxRuntimeError as e:  # a cached program that does not run
                log.warning("native engine: cached sampler failed (%s); tracing again", e)
                (z, diverging, num_steps), program = run(True)
            samples = {"z": z}
            extra = {"diverging": diverging, "num_steps": num_steps}
        else:
            program = {"source": "numpyro MCMC (sequential)"}
            mcmc = _get_mcmc(n_chains, settings.n_warmup, n_draws, method)
            mcmc.run(jnp.asarray(key), *args, extra_fields=("diverging", "num_steps"))
            samples = {k: np.asarray(v, dtype=np.float64)
                       for k, v in mcmc.get_samples(group_by_chain=True).items()}
            extra = {k: np.asarray(v)
                     for k, v in mcmc.get_extra_fields(group_by_chain=True).items()}
    q = m + samples["z"] @ L.T  # (chains, draws, 6)
    b_week = q[..., 1]
    draws = {
        "intercept_c": q[..., 0],
        "beta1": b_week,
        "beta0": q[..., 0] - b_week * wbar,
        "tau0": np.exp(q[..., 2]),
        "tau1": np.exp(q[..., 3]),
        "rho": np.tanh(0.5 * q[..., 4]),  # 2 sigmoid(x) - 1
        "sigma": np.exp(q[..., 5]),
    }
    extra["laplace"] = laplace_info
    extra["n_devices"] = n_dev
    extra["program"] = program
    return draws, extra


def brms_draws(draws: dict[str, np.ndarray], ybar: float, s: float) -> dict[str, np.ndarray]:
    """Standardised draws -> brms's parameters in the data's units."""
    return {
        "b_Intercept": ybar + s * draws["beta0"],
        "b_week": s * draws["beta1"],
        "sd_student_id__Intercept": s * draws["tau0"],
        "sd_student_id__week": s * draws["tau1"],
        "cor_student_id__Intercept__week": draws["rho"],
        "sigma": s * draws["sigma"],
        "Intercept": ybar + s * draws["intercept_c"],  # brms's centred intercept (sampled)
    }


def student_predictions(
    red: native_math.Panel,
    draws_flat: dict[str, np.ndarray],
    h: float,
    target: float,
    p_tolerance: float = P_TOLERANCE,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Rao-Blackwellised line posterior, mu, sigma and P per student (data units)."""
    ybar, s = red.ybar, red.s
    t_std = (target - ybar) / s
    n_groups = int(red.group.max()) + 1
    gs = native_math.group_stats(red)
    gm = native_math.group_moments(draws_flat, gs.n[:n_groups], gs.sw[:n_groups],
                                   gs.sww[:n_groups], h, t_std)
    S = len(red.student_ids)
    out = {k: np.empty(S) for k in ("mean_a", "mean_b", "var_a", "var_b", "cov_ab", "P")}
    bound = np.empty(S)
    for lo in range(0, S, _STUDENT_CHUNK):
        sl = slice(lo, min(S, lo + _STUDENT_CHUNK))
        ma, mb, va, vb, cab, p, bd = native_math.student_lines(gm, red.group[sl], red.g[sl])
        out["mean_a"][sl] = ybar + s * ma
        out["mean_b"][sl] = s * mb
        out["var_a"][sl] = s * s * va
        out["var_b"][sl] = s * s * vb
        out["cov_ab"][sl] = s * s * cab
        out["P"][sl] = p
        bound[sl] = bd
    exact = bound > p_tolerance
    if exact.any():
        idx = np.flatnonzero(exact)
        order = idx[np.argsort(red.group[idx], kind="stable")]
        grp = red.group[order]
        cuts = np.flatnonzero(np.diff(grp)) + 1
        for part in np.split(order, cuts):
            gi = red.group[part[0]]
            out["P"][part] = native_math.exact_p(
                draws_flat, gs.n[gi], gs.sw[gi], gs.sww[gi], red.g[part], h, t_std)
    mu, sd, _ = contract.line_prediction(
        out["mean_a"], out["mean_b"], out["var_a"], out["var_b"], out["cov_ab"], h, target)
    out["mu"], out["sigma"] = mu, sd
    out["P"] = np.clip(out["P"], 0.0, 1.0)
    info = {
        "p_tolerance": p_tolerance,
        "n_p_exact": int(exact.sum()),
        "max_p_bound_cheap": float(bound[~exact].max()) if (~exact).any() else 0.0,
    }
    return out, info


@dataclass
class NativeFit:
    """The sampled hyperparameters of one panel, before they become a §8 result.

    ``predict(h, target)`` gives the per-student quantities for any horizon and target
    from the same draws (no refit)."""

    panel: native_math.Panel
    draws: dict[str, np.ndarray]  # standardised units, each (chains, draws)
    extra: dict[str, Any]
    n_groups: int
    n_devices: int
    timings: dict[str, float]
    p_tolerance: float = P_TOLERANCE

    @property
    def flat_draws(self) -> dict[str, np.ndarray]:
        return {k: v.reshape(-1) for k, v in self.draws.items()}

    def population_draws(self) -> dict[str, np.ndarray]:
        """brms's parameters (data units), each (chains, draws)."""
        return brms_draws(self.draws, self.panel.ybar, self.panel.s)

    def predict(self, h: float, target: float) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return student_predictions(self.panel, self.flat_draws, float(h),
                                   contract.check_target(target), self.p_tolerance)


class NativeEngine:
    """In-process engine: collapsed random effects + NUTS (NumPyro) on the six
    hyperparameters + exact Rao-Blackwellised student lines."""

    name = "native"

    def __init__(self, p_tolerance: float = P_TOLERANCE):
        if not 0.0 <= p_tolerance < 0.5:
            raise contract.ContractError("p_tolerance", "must be within [0, 0.5)", p_tolerance)
        self.p_tolerance = p_tolerance

    def sample(self, panel: pd.DataFrame, settings: FitSettings) -> NativeFit:
        """Validate the panel (spec §1/§3; raises PanelError) and sample the posterior."""
        t0 = time.perf_counter()
        _configure_jax_cache()
        df = contract.validate_panel(panel)
        ybar, s = contract.prior_scales(df["score"].to_numpy())
        red = native_math.reduce_panel(df, ybar, s)
        del df
        n_groups = int(red.group.max()) + 1
        groups = native_math.group_stats(red, pad_to=native_math.padded_size(n_groups))
        t1 = time.perf_counter()
        draws, extra = sample_hyperparameters(groups, red.wbar, settings)
        t2 = time.perf_counter()
        return NativeFit(red, draws, extra, n_groups, int(extra.pop("n_devices")),
                         {"prepare": t1 - t0, "sample": t2 - t1}, self.p_tolerance)

    def fit(self, panel: pd.DataFrame, settings: FitSettings) -> dict[str, Any]:
        t0 = time.perf_counter()
        target = contract.check_target(settings.target)
        nf = self.sample(panel, settings)
        return self.result(nf, settings, target, t0)

    def result(self, nf: NativeFit, settings: FitSettings, target: float | None = None,
               t0: float | None = None) -> dict[str, Any]:
        """The spec §8 dict of a sampled fit (``elapsed_s`` counts from ``t0``, or is the
        sampling time plus this call when ``t0`` is None)."""
        if t0 is None:
            t0 = time.perf_counter() - sum(nf.timings.values())
        target = contract.check_target(settings.target if target is None else target)
        t2 = time.perf_counter()
        red = nf.panel
        pars = nf.population_draws()
        summary = {p: native_diagnostics.summarise(pars[p]) for p in _PARAM_NAMES}
        allstats = list(summary.values()) + [native_diagnostics.summarise(pars["Intercept"])]
        n_steps = np.asarray(nf.extra["num_steps"]).astype(np.int64)
        depth = np.floor(np.log2(np.maximum(n_steps, 1))).astype(np.int64) + 1  # bit length
        preds, pinfo = nf.predict(float(settings.horizon_week), target)
        t3 = time.perf_counter()
        predictions = [
            {"student_id": sid, "n_obs": n, "mean_a": ma, "mean_b": mb, "var_a": va,
             "var_b": vb, "cov_ab": cab, "mu": mu, "sigma": sg, "P": p}
            for sid, n, ma, mb, va, vb, cab, mu, sg, p in zip(
                red.student_ids.tolist(), red.n_obs.tolist(),
                preds["mean_a"].tolist(), preds["mean_b"].tolist(), preds["var_a"].tolist(),
                preds["var_b"].tolist(), preds["cov_ab"].tolist(), preds["mu"].tolist(),
                preds["sigma"].tolist(), preds["P"].tolist())
        ]
        timings = dict(nf.timings)
        timings.update({"students": t3 - t2, "assemble": time.perf_counter() - t3})
        return {
            "run_id": settings.run_id or contract.make_run_id("native"),
            "engine": "native",
            "engine_version": engine_version(),
            "formula": contract.FORMULA,
            "priors": contract.priors(red.ybar, red.s),
            "seed": int(settings.seed),
            "n_chains": int(settings.n_chains),
            "n_samples": int(settings.n_samples),
            "n_warmup": int(settings.n_warmup),
            "n_obs": int(red.n_rows),
            "n_students": int(len(red.student_ids)),
            "lookback_weeks": int(settings.lookback_weeks),
            "horizon_week": int(settings.horizon_week),
            "target": float(target),
            "posterior_summary": summary,
            "diagnostics": {
                "max_rhat": _nan_max([d["rhat"] for d in allstats]),
                "min_ess_bulk": _nan_min([d["ess_bulk"] for d in allstats]),
                "min_ess_tail": _nan_min([d["ess_tail"] for d in allstats]),
                "n_divergent": int(np.asarray(nf.extra["diverging"]).sum()),
                "n_max_treedepth": int((depth >= MAX_TREE_DEPTH).sum()),
                "elapsed_s": float(time.perf_counter() - t0),
                "timings_s": timings,
                "parameters": "the six brms population parameters and the centred Intercept",
                "max_tree_depth": MAX_TREE_DEPTH,
                "mean_leapfrog_steps": float(n_steps.mean()),
            },
            "predictions": predictions,
            "student_level": "rao-blackwellised",
            "student_level_note": (
                "random effects integrated out; each student's line is the exact mixture over "
                "hyperparameter draws of its conditional Normal posterior; mean/var/cov exact "
                "(law of total variance); P = mean over draws of Phi, or Phi(E z) where its "
                f"proven error bound is <= {nf.p_tolerance}"),
            "p_method": pinfo,
            "sampler": {
                "algorithm": "NUTS (numpyro), q = m + L z preconditioned by a Laplace fit",
                "laplace": nf.extra.get("laplace"),
                "n_devices": nf.n_devices,
                "n_groups": nf.n_groups,
                # where the compiled sampler came from: "traced" in this process, "file"
                # (the executable cache, no tracing), "memory" (an earlier fit here)
                "program": nf.extra.get("program", {}).get("source"),
                "program_loaded": (nf.extra.get("program", {}).get("source") == "file"
                                   or bool(nf.extra.get("program", {}).get("loaded"))),
            },
        }


def _nan_max(xs: list[float]) -> float:
    xs = [x for x in xs if math.isfinite(x)]
    return float(max(xs)) if xs else math.nan


def _nan_min(xs: list[float]) -> float:
    xs = [x for x in xs if math.isfinite(x)]
    return float(min(xs)) if xs else math.nan
