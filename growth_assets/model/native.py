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

Configuration comes from ``settings.NativeRuntime`` (the settings module reads the
environment): the persistent caches' folder, the XLA CPU devices the chains are spread
over (JAX's public ``jax_num_cpu_devices``, applied when the engine is built, if JAX has
not started its backend yet), and whether chains run ``vectorized`` (split over the
devices, vmapped within) or ``sequential``.

Per-process fixed cost: tracing NUTS and lowering it take seconds, which JAX's persistent
compilation cache does not spare; the traced programs are therefore also kept as
``jax.export`` files (``programs``): a new process deserialises them, traces nothing, and
compiles from the persistent cache. ``sampler.program`` in a result says whether the
sampler was ``traced``, read from a ``file`` or reused from ``memory``.

The sampler is numpyro's NUTS through its public functional API
(``numpyro.infer.hmc.hmc``: ``init_kernel`` with warm-up adaptation, ``sample_kernel``),
looped with ``jax.lax.scan`` and vmapped over the chains of a device.

Reproducibility: the same panel, settings and seed give the same result on the same
machine with the same device count (recorded as ``sampler.n_devices``); a different
device layout batches the arithmetic differently and the chains drift apart in the last
digits, then anywhere.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..settings import NativeRuntime
from . import contract, native_math, programs
from .engine import FitSettings
from .panel import Panel
from .result import Diagnostics, FitResult, ParamSummary, StudentLines

MAX_TREE_DEPTH = 10  # Stan's default, as brms runs it
TARGET_ACCEPT = 0.8
P_TOLERANCE = native_math.P_TOLERANCE
student_predictions = native_math.student_predictions
_PARAM_NAMES = contract.POPULATION_PARAMS

log = logging.getLogger(__name__)
_lock = threading.Lock()
_configured: NativeRuntime | None = None


def configure(runtime: NativeRuntime) -> NativeRuntime:
    """Apply the runtime settings to JAX, once per process (later calls keep the first):
    the CPU device count (only before JAX starts its backend; afterwards JAX keeps what it
    has) and the persistent compilation cache (unless something configured one already)."""
    global _configured
    if _configured is not None:
        return _configured
    _configured = runtime
    import os

    n = runtime.devices or min(2, os.cpu_count() or 1)
    if n > 1:
        try:
            jax.config.update("jax_num_cpu_devices", int(n))
        except RuntimeError:  # the backend is up already: keep its devices
            log.debug("native engine: JAX backend already started; keeping %d device(s)",
                      jax.local_device_count())
    if runtime.cache_dir and not jax.config.jax_compilation_cache_dir:
        path = Path(runtime.cache_dir)
        try:
            path.mkdir(parents=True, exist_ok=True)
            jax.config.update("jax_compilation_cache_dir", str(path))
            jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
        except OSError as e:
            log.warning("native engine: no compilation cache at %s (%s)", path, e)
    return runtime


def _program_dir() -> Path | None:
    rt = _configured or NativeRuntime()
    return None if not rt.cache_dir else Path(rt.cache_dir) / "programs"


_diagnostics_module = None


def _diagnostics():
    """``native_diagnostics`` (arviz-stats, which imports half of SciPy: ~0.7 s), imported in
    a background thread from the start of a fit, so a new process pays it while it samples."""
    global _diagnostics_module
    if _diagnostics_module is None:
        import importlib

        _diagnostics_module = programs.ahead(lambda: importlib.import_module(f"{__package__}.native_diagnostics"))
    return _diagnostics_module


def engine_version() -> str:
    return f"native numpyro {programs.package_version('numpyro')} / jax {jax.__version__}"


# --- the model, in standardised units ------------------------------------------------------


# The six sampled quantities, unconstrained, in standardised units:
# q = (Intercept at the mean week, b_week, log sd_Intercept, x, w, log sigma)
# where sd_week = |x| (signed, linear: see below), cor = 2u - 1 with
# logit u = w / sqrt(1 + (kappa x)^2). The log density includes the Jacobians.
#
# Why the slope sd is not on the log scale: when every student has about the same slope,
# the data resolve sd_week only down to some small delta, and below it the posterior of
# log sd_week is its prior's exponential tail while above it the likelihood falls like
# exp(-c exp(4 log sd)): a wall that NUTS trajectories hit with a step size tuned to the
# bulk (divergences in about a third of such cohorts). On x, with sd_week = |x| and the
# covariance rho * sd_Intercept * x (so (x, rho) and (-x, -rho) are the same model, and the
# density of x is half the density of sd_week at |x|), the posterior near 0 is smooth and
# about Normal: no wall, no funnel. A cohort whose slope sd is well away from 0 sits on
# one of the two mirror sheets; every reported quantity (|x|, rho sign x) is the same on
# both.
#
# Why w: the data pin the correlation only when sd_week is large, so its conditional
# scale shrinks from its prior's (precision 1 in logit u) to ~1/(kappa |x|) (the data's
# precision (kappa x)^2): a funnel between x and logit u. w = logit u * sqrt(1 +
# (kappa x)^2) has about unit conditional scale throughout. kappa comes from a first
# Laplace fit with kappa = 0 (``laplace``); any kappa >= 0 is the same posterior (a
# bijection with its Jacobian), only the sampler's geometry depends on it.
_Q_NAMES = ("Intercept", "b_week", "log_sd_Intercept", "sd_week_signed", "w_cor", "log_sigma")
_LOG_2_OVER_PI = math.log(2.0 / math.pi)


def _cor_unscale(xp, x, w, kappa):
    """(logit u, log of |d logit u / d w|) from the sampler's w: logit u = w / f(x)."""
    f = xp.sqrt(1.0 + (kappa * x) ** 2)
    return w / f, -xp.log(f)


def log_posterior_q(q, wbar, kappa, totals, groups):
    """Unnormalised log posterior of q (standardised units, Jacobians included).

    Priors (spec §3 divided by s): Intercept ~ normal(0, 2.5), b_week ~ normal(0, 1),
    sd ~ half-Cauchy(0, 1) (both), sigma ~ half-Cauchy(0, 1); lkj(2) on the 2x2
    correlation, i.e. u = (1 + cor) / 2 ~ Beta(2, 2)."""
    ic, b, lt0, x, w, ls = (q[..., i] for i in range(6))
    tau0, sigma = jnp.exp(lt0), jnp.exp(ls)
    lu, log_jw = _cor_unscale(jnp, x, w, kappa)
    log_u, log_1mu = jax.nn.log_sigmoid(lu), jax.nn.log_sigmoid(-lu)
    u = jnp.exp(log_u)
    rho = 2.0 * u - 1.0

    def half_cauchy(x):  # log density of half-Cauchy(0, 1) at |x|
        return _LOG_2_OVER_PI - jnp.log1p(x * x)

    lp = (
        -0.5 * (ic / 2.5) ** 2 - 0.5 * b * b
        + half_cauchy(tau0) + lt0  # with |d tau0 / d log tau0|
        + half_cauchy(x)  # x -> |x| is two to one with |d|x|/dx| = 1: a constant factor
        + half_cauchy(sigma) + ls
        + math.log(6.0) + log_u + log_1mu  # Beta(2, 2) density 6 u (1 - u)
        + log_u + log_1mu + log_jw  # Jacobians of u = sigmoid(logit u), logit u = w / f
    )
    beta0 = ic - b * wbar  # brms centres week in the fixed effects
    # posterior_blocks sees only x^2 and rho * tau0 * x: the signed x is exact there
    return lp + native_math.collapsed_loglik(jnp, beta0, b, tau0, x, rho, sigma, groups, totals)


def population_from_q(q: np.ndarray, wbar: float, kappa: float) -> dict[str, np.ndarray]:
    """The brms parameters (standardised units) of sampler coordinates q (..., 6)."""
    x = q[..., 3]
    lu, _ = _cor_unscale(np, x, q[..., 4], kappa)
    b_week = q[..., 1]
    # a chain that ran off gives an infinite sd here, which the fit's check names (FitResultError):
    # numpy's overflow warning would only repeat it, unnamed, in the run's log
    with np.errstate(over="ignore"):
        tau0, sigma = np.exp(q[..., 2]), np.exp(q[..., 5])
    return {
        "intercept_c": q[..., 0],
        "beta1": b_week,
        "beta0": q[..., 0] - b_week * wbar,
        "tau0": tau0,
        "tau1": np.abs(x),
        "rho": np.tanh(0.5 * lu) * np.where(x < 0, -1.0, 1.0),  # (2 sigmoid - 1), mirrored
        "sigma": sigma,
    }


def _potential_gen(wbar, kappa, m, L, totals, count, n, sw, sww, gbar, scatter, yy):
    """The potential (minus the log posterior) of z, q = m + L z: an affine,
    constant-Jacobian reparametrisation, so the posterior is unchanged; m and L from a
    Laplace fit make z about standard normal and the step size independent of the cohort."""
    def potential(z):
        return -log_posterior_q(m + L @ z, wbar, kappa, totals,
                                (count, n, sw, sww, gbar, scatter, yy))

    return potential


def _neg_lp_and_grad(q, wbar, kappa, totals, groups):
    v, g = jax.value_and_grad(log_posterior_q)(q, wbar, kappa, totals, groups)
    return -v, -g


def _neg_hessian(q, wbar, kappa, totals, groups):
    return -jax.hessian(log_posterior_q)(q, wbar, kappa, totals, groups)


_LAPLACE = {"laplace_grad": _neg_lp_and_grad, "laplace_hessian": _neg_hessian}


def _program(name: str, args: tuple, retrace: bool = False):
    """A Laplace program (``_LAPLACE``), loaded or traced, compiled for ``args``' shapes."""
    with jax.enable_x64(True):
        call, _ = programs.program(name, lambda: _LAPLACE[name], args, static={},
                                   directory=_program_dir(), retrace=retrace)
        return call.lower(*args).compile()


def _laplace_data(wbar: float, kappa: float, totals: np.ndarray, groups: tuple) -> tuple:
    return (np.float64(wbar), np.float64(kappa), np.asarray(totals, dtype=np.float64),
            tuple(np.asarray(a, dtype=np.float64) for a in groups))


_Q0 = np.array([0.0, 0.0, math.log(0.5), 0.1, 0.0, math.log(0.5)])


def _laplace_mode(q0: np.ndarray, data: tuple, retrace: bool, ready: dict | None = None):
    from scipy.optimize import minimize

    proto = (q0,) + data
    ready = {} if retrace or ready is None else ready

    def get(name):
        return ready[name].result() if name in ready else _program(name, proto, retrace)

    neg_lp_and_grad = get("laplace_grad")

    def fun(q):
        v, g = neg_lp_and_grad(np.asarray(q, dtype=np.float64), *data)
        return float(v), np.asarray(g, dtype=np.float64)

    res = minimize(fun, q0, jac=True, method="L-BFGS-B",
                   options={"maxiter": 500, "gtol": 1e-9, "ftol": 1e-14})
    m = np.asarray(res.x, dtype=np.float64)
    H = np.asarray(get("laplace_hessian")(m, *data), dtype=np.float64)
    return res, m, 0.5 * (H + H.T)


def _inverse_cholesky(m: np.ndarray, H: np.ndarray) -> np.ndarray | None:
    """Cholesky factor of H^-1, or None when H is not a finite positive definite matrix
    at a finite m."""
    try:
        w, V = np.linalg.eigh(H)
    except np.linalg.LinAlgError:
        return None
    if not (np.all(np.isfinite(w)) and w.min() > 0 and np.all(np.isfinite(m))):
        return None
    cov = (V / w) @ V.T
    return np.linalg.cholesky(0.5 * (cov + cov.T))


def correlation_scale(m: np.ndarray, H: np.ndarray) -> float:
    """kappa of the correlation's coordinate w (see ``_Q_NAMES``) from a Laplace fit with
    kappa = 0 (w = logit u): the data's part of the curvature in logit u at the mode,
    H_44 minus the prior's 4 u (1 - u), is (2 u (1 - u))^2 (tau0 x)^2 I, I the data's
    information about the covariance; near u = 1/2 the data then add (kappa x)^2 to the
    prior's precision 1 with kappa^2 = tau0^2 I / 4. 0 when the data add nothing."""
    u = 1.0 / (1.0 + math.exp(-float(m[4])))
    data = float(H[4, 4]) - 4.0 * u * (1.0 - u)
    x2 = float(m[3]) ** 2
    if not (math.isfinite(data) and data > 0 and x2 > 0):
        return 0.0
    kappa = math.sqrt(0.25 * data / ((2.0 * u * (1.0 - u)) ** 2 * x2))
    return kappa if math.isfinite(kappa) else 0.0


def laplace(wbar: float, totals: np.ndarray, groups: tuple,
            ready: dict | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Mode and Cholesky factor of the inverse Hessian of the log posterior of q: the
    preconditioner (m, L) of the sampler, and in ``info["kappa"]`` the correlation's scale
    the coordinates use. Two fits: kappa = 0 (which gives kappa), then at kappa from the
    first mode mapped into the new coordinates. Falls back to a diagonal guess when the
    optimiser fails; correctness never depends on it, only speed. ``ready``: its programs,
    being compiled ahead (Futures by name)."""
    info: dict[str, Any] = {}
    m, L, kappa = _Q0, None, 0.0
    with jax.enable_x64(True):
        for stage in (0, 1):
            data = _laplace_data(wbar, kappa, totals, groups)
            try:
                res, m1, H = _laplace_mode(m, data, retrace=False, ready=ready)
            except jax.errors.JaxRuntimeError as e:  # a cached program that does not run
                log.warning("native engine: cached Laplace programs failed (%s); tracing again", e)
                res, m1, H = _laplace_mode(m, data, retrace=True)
            L = _inverse_cholesky(m1, H)
            info.update(converged=bool(res.success), n_iter=info.get("n_iter", 0) + int(res.nit))
            if L is None:
                m = np.where(np.isfinite(m1), m1, m)
                break
            m = m1
            if stage == 0:
                kappa = correlation_scale(m, H)
                if kappa == 0.0:
                    break
                f = math.sqrt(1.0 + (kappa * m[3]) ** 2)
                m = m.copy()
                m[4] *= f  # the same point in the new coordinates
    info["kappa"] = kappa
    if L is None:
        info["fallback"] = True
        rows = max(float(totals[0]), 1.0)
        return m, np.diag(np.full(6, 1.0 / math.sqrt(rows))), info
    return m, L, info


def _n_devices(n_chains: int, runtime: NativeRuntime) -> int:
    """How many XLA CPU devices the chains are spread over: the largest divisor of
    ``n_chains`` within the available devices (and ``GROWTH_NATIVE_DEVICES``)."""
    if runtime.chain_method == "sequential":
        return 1
    avail = jax.local_device_count()
    if runtime.devices:
        avail = min(avail, runtime.devices)
    return max(d for d in range(1, min(avail, n_chains) + 1) if n_chains % d == 0)


def _chains_program(n_warmup: int, n_draws: int, vectorized: bool = True):
    """Warm-up and sampling of a batch of chains as one function of ``(keys, data)``: each
    chain numpyro's NUTS (public ``hmc`` API: dual-averaging step size and diagonal mass
    matrix adapted over the warm-up, as Stan and brms do), initialised uniformly in
    (-2, 2) like numpyro's default; the batch vmapped (or, ``sequential``, one chain after
    the other). The data are arguments, not constants, so one program serves every cohort
    with the same padded group count."""
    from numpyro.infer.hmc import hmc

    init_kernel, sample_kernel = hmc(potential_fn_gen=_potential_gen, algo="NUTS")

    def one_chain(key, data):
        k_init, k_run = jax.random.split(key)
        z0 = jax.random.uniform(k_init, (6,), minval=-2.0, maxval=2.0, dtype=data[1].dtype)
        state = init_kernel(z0, n_warmup, max_tree_depth=MAX_TREE_DEPTH,
                            target_accept_prob=TARGET_ACCEPT, model_args=data, rng_key=k_run)

        def step(st, _):
            st = sample_kernel(st, model_args=data)
            return st, (st.z, st.diverging, st.num_steps)

        _, (z, div, steps) = jax.lax.scan(step, state, None, length=n_warmup + n_draws)
        return z[n_warmup:], div[n_warmup:], steps[n_warmup:]

    if vectorized:
        return jax.vmap(one_chain, in_axes=(0, None))
    return lambda keys, data: jax.lax.map(lambda k: one_chain(k, data), keys)


def _prng_key(seed: int) -> np.ndarray:
    """``jax.random.PRNGKey(seed % 2**32)`` as data (threefry: (0, seed)), made without a JAX
    dispatch (each eager JAX call compiles a small program in a new process)."""
    if str(jax.config.jax_default_prng_impl) != "threefry2x32":
        return np.asarray(jax.random.key_data(jax.random.PRNGKey(int(seed) % 2**32)))
    return np.array([0, int(seed) % 2**32], dtype=np.uint32)


def _sampler(n_chains: int, n_warmup: int, n_draws: int, n_dev: int, vectorized: bool,
             proto: tuple, retrace: bool = False):
    """The whole run, warm-up and sampling of every chain, as one compiled program of
    ``(key, data)``: chain k on key k of ``split(key, n_chains)`` (numpyro's rule), the chains
    split over ``n_dev`` devices (``shard_map``), batched within a device. Loaded from the
    program cache or traced, and compiled ahead of the call (from JAX's persistent cache).
    Returns (compiled program, where it came from)."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    mesh = Mesh(np.array(jax.local_devices()[:n_dev]), ("chains",))
    replicated, by_chain = NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec("chains"))

    def make():
        per_device = jax.shard_map(_chains_program(n_warmup, n_draws, vectorized), mesh=mesh,
                                   in_specs=(PartitionSpec("chains"), PartitionSpec()),
                                   out_specs=PartitionSpec("chains"), check_vma=False)
        return jax.jit(lambda key, data: per_device(jax.random.split(key, n_chains), data),
                       in_shardings=replicated, out_shardings=by_chain)

    static = {"n_chains": n_chains, "n_warmup": n_warmup, "n_draws": n_draws, "n_devices": n_dev,
              "vectorized": vectorized, "max_tree_depth": MAX_TREE_DEPTH,
              "target_accept_prob": TARGET_ACCEPT}
    with jax.enable_x64(True):
        call, origin = programs.program("nuts", make, proto, static=static, directory=_program_dir(),
                                        retrace=retrace, shardings=(replicated, by_chain))
        specs = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype,
                                                            sharding=replicated), proto)
        return call.lower(*specs).compile(), origin


def sample_hyperparameters(
    groups: native_math.Groups, wbar: float, settings: FitSettings,
    runtime: NativeRuntime | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Run NUTS; return (draws in standardised units, each (chains, draws); extra fields).

    The sampler program is loaded and compiled in a background thread while the Laplace
    fit runs. The draws are a deterministic function of data, settings, seed, machine and
    device count, whether the program was traced in this process or read from the cache."""
    runtime = runtime or _configured or NativeRuntime()
    n_chains = settings.n_chains
    n_draws = settings.n_samples - settings.n_warmup
    totals = np.asarray(native_math.panel_totals(groups), dtype=np.float64)
    gt = tuple(np.asarray(a, dtype=np.float64) for a in groups.as_tuple())
    n_dev = _n_devices(n_chains, runtime)
    vectorized = runtime.chain_method == "vectorized"
    key = _prng_key(settings.seed)
    proto = (key, (np.float64(wbar), np.float64(0.0), np.zeros(6), np.zeros((6, 6)), totals) + gt)
    with _lock:
        ready = programs.ahead(lambda: _sampler(n_chains, settings.n_warmup, n_draws, n_dev,
                                                vectorized, proto))
        lproto = (_Q0,) + _laplace_data(wbar, 0.0, totals, gt)
        lap = {name: programs.ahead(lambda name=name: _program(name, lproto)) for name in _LAPLACE}
        m, L, laplace_info = laplace(wbar, totals, gt, ready=lap)
        kappa = float(laplace_info.get("kappa", 0.0))
        args = (key, (np.float64(wbar), np.float64(kappa), np.asarray(m, dtype=np.float64),
                      np.asarray(L, dtype=np.float64), totals) + gt)
        with jax.enable_x64(True):
            try:
                run, origin = ready.result()
                out = run(*args)
            except jax.errors.JaxRuntimeError as e:  # a stored program that does not run here
                log.warning("native engine: stored sampler failed (%s); tracing again", e)
                run, origin = _sampler(n_chains, settings.n_warmup, n_draws, n_dev, vectorized,
                                       proto, retrace=True)
                out = run(*args)
            z, diverging, num_steps = (np.asarray(x) for x in out)
    z = z.astype(np.float64)
    q = m + z @ L.T  # (chains, draws, 6)
    draws = population_from_q(q, wbar, kappa)
    extra = {"diverging": diverging, "num_steps": num_steps, "laplace": laplace_info,
             "n_devices": n_dev, "program": origin}
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


@dataclass
class NativeFit:
    """The sampled hyperparameters of one panel, before they become a §8 result.

    ``predict(h, target)`` gives the per-student quantities for any horizon and target
    from the same draws (no refit)."""

    panel: native_math.Reduced
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

    def __init__(self, runtime: NativeRuntime | None = None, p_tolerance: float = P_TOLERANCE):
        if not 0.0 <= p_tolerance < 0.5:
            raise contract.ContractError("p_tolerance", "must be within [0, 0.5)", p_tolerance)
        self.p_tolerance = p_tolerance
        self.runtime = configure(runtime or NativeRuntime())
        _diagnostics()  # its import starts now, while the caller reads the panel

    def sample(self, panel: Panel, settings: FitSettings) -> NativeFit:
        """Sample the posterior of a checked panel."""
        t0 = time.perf_counter()
        _diagnostics()  # starts its import
        ybar, s = panel.scales()
        red = native_math.reduce_panel(panel, ybar, s)
        n_groups = int(red.group.max()) + 1
        groups = native_math.group_stats(red, pad_to=native_math.padded_size(n_groups))
        t1 = time.perf_counter()
        draws, extra = sample_hyperparameters(groups, red.wbar, settings, self.runtime)
        t2 = time.perf_counter()
        return NativeFit(red, draws, extra, n_groups, int(extra.pop("n_devices")),
                         {"prepare": t1 - t0, "sample": t2 - t1}, self.p_tolerance)

    def fit(self, panel: Panel, settings: FitSettings) -> FitResult:
        t0 = time.perf_counter()
        nf = self.sample(panel, settings)
        return self.result(nf, settings, t0=t0)

    def result(self, nf: NativeFit, settings: FitSettings, target: float | None = None,
               t0: float | None = None) -> FitResult:
        """The FitResult of a sampled fit (``elapsed_s`` counts from ``t0``, or is the
        sampling time plus this call when ``t0`` is None)."""
        if t0 is None:
            t0 = time.perf_counter() - sum(nf.timings.values())
        target = contract.check_target(settings.target if target is None else target)
        t2 = time.perf_counter()
        red = nf.panel
        pars = nf.population_draws()
        for p in _PARAM_NAMES:  # a chain that ran off (exp of an unbounded log sd) has no summary
            d = np.asarray(pars[p])
            if bad := int((~np.isfinite(d)).sum()):
                raise contract.FitResultError(
                    f"population_draws.{p}", f"the sampler ran off: {bad} of {d.size} draws are"
                    f" not finite ({int(np.asarray(nf.extra['diverging']).sum())} divergent transitions;"
                    f" {red.student_ids.size} students, {red.n_rows} rows: too few to identify"
                    " the model's variances?)")
        summarise = _diagnostics().result().summarise
        summary = {p: ParamSummary(**summarise(pars[p])) for p in _PARAM_NAMES}
        allstats = list(summary.values()) + [ParamSummary(**summarise(pars["Intercept"]))]
        n_steps = np.asarray(nf.extra["num_steps"]).astype(np.int64)
        preds, pinfo = nf.predict(float(settings.horizon_week), target)
        students = StudentLines(student_id=red.student_ids, n_obs=red.n_obs,
                                **{k: preds[k] for k in ("mean_a", "mean_b", "var_a", "var_b",
                                                         "cov_ab", "mu", "sigma", "P")})
        timings = dict(nf.timings)
        timings["students"] = time.perf_counter() - t2
        diagnostics = Diagnostics(
            max_rhat=_worst([d.rhat for d in allstats], max),
            min_ess_bulk=_worst([d.ess_bulk for d in allstats], min),
            min_ess_tail=_worst([d.ess_tail for d in allstats], min),
            n_divergent=int(np.asarray(nf.extra["diverging"]).sum()),
            # Stan's depth counts the doublings that completed: a transition hit the maximum only
            # when it took all 2^10 - 1 steps (one that U-turned or diverged inside the tenth
            # doubling, 512-1022 steps, reports depth 9; their bit length counted it)
            n_max_treedepth=int((n_steps >= 2 ** MAX_TREE_DEPTH - 1).sum()),
            elapsed_s=float(time.perf_counter() - t0),
            details={"timings_s": timings,
                     "parameters": "the six brms population parameters and the centred Intercept",
                     "max_tree_depth": MAX_TREE_DEPTH,
                     "mean_leapfrog_steps": float(n_steps.mean())})
        return FitResult(
            run_id=settings.run_id or contract.make_run_id("native"),
            engine="native", engine_version=engine_version(),
            priors=tuple(contract.priors(red.ybar, red.s)), seed=int(settings.seed),
            n_chains=int(settings.n_chains), n_samples=int(settings.n_samples),
            n_warmup=int(settings.n_warmup), n_obs=int(red.n_rows),
            lookback_weeks=int(settings.lookback_weeks), horizon_week=int(settings.horizon_week),
            target=float(target), summary=summary, diagnostics=diagnostics, students=students,
            population_draws=contract.thin_draws({p: pars[p] for p in _PARAM_NAMES}),
            details={
                "student_level": "rao-blackwellised",
                "student_level_note": (
                    "random effects integrated out; each student's line is the exact mixture over "
                    "hyperparameter draws of its conditional Normal posterior; mean/var/cov exact "
                    "(law of total variance); P = mean over draws of Phi, or a first- or second-order "
                    "Taylor form in the moments of z over the draws where its proven error bound "
                    f"is <= {nf.p_tolerance}"),
                "p_method": pinfo,
                "sampler": {
                    "algorithm": "NUTS (numpyro), q = m + L z preconditioned by a Laplace fit",
                    "laplace": nf.extra.get("laplace"),
                    "n_devices": nf.n_devices,
                    "n_groups": nf.n_groups,
                    # where the sampler program came from: "traced" in this process, "file"
                    # (the program cache, no tracing), "memory" (an earlier fit here)
                    "program": nf.extra.get("program"),
                },
            })


def _worst(xs: list[float], pick) -> float:
    """max R-hat / min ESS over the sampled quantities. Every quantity reported here is
    sampled (the six parameters and the centred intercept are functions of the draws of z),
    so one that posterior's definitions leave undefined (NaN: constant or non-finite draws,
    a stuck chain) makes the whole diagnostic NaN, and the checks fail it; it is never
    dropped."""
    return math.nan if any(not math.isfinite(x) for x in xs) else float(pick(xs))
