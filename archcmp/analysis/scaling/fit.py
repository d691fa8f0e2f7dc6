"""Scaling-law fitters (numpy + scipy only).

Three fits, all done in log-loss space with a Huber penalty, the way Hoffmann et al. (2022,
App. D.2) and Besiroglu et al. (2024, "Chinchilla Scaling: A replication attempt") fit
approach 3:

* :func:`fit_power_law` -- ``L(x) = E + A * x**-alpha`` (used for L(N) and the L(C) frontier).
* :func:`compute_frontier` + :func:`fit_power_law` -- lower envelope of loss vs compute.
* :func:`fit_chinchilla` -- ``L(N, D) = E + A / N**alpha + B / D**beta``.

Approach 3, exactly as published: parameters ``a = log A, b = log B, e = log E, alpha, beta``;
predicted ``log L = logsumexp(a - alpha log N, b - beta log D, e)``; objective
``sum_i Huber_delta(pred_i - log L_i)`` with ``delta = 1e-3`` (a *sum*, not a mean -- Besiroglu
et al. traced Hoffmann et al.'s odd estimates partly to this and to early L-BFGS stopping);
minimised with L-BFGS from every point of an initialisation grid; the lowest objective wins.
Hoffmann's grid is ``alpha, beta in {0, .5, ..., 2}``, ``e in {-1, -.5, ..., 1}``,
``a, b in {0, 5, ..., 25}`` (4500 starts, :data:`HOFFMANN_GRID`).

Compute-optimal allocation (Hoffmann eq. 4) under ``C = k N D``::

    G = (alpha A / (beta B)) ** (1 / (alpha + beta))
    N_opt(C) = G (C / k) ** (beta / (alpha + beta))
    D_opt(C) = G**-1 (C / k) ** (alpha / (alpha + beta))

``k = 6`` is the dense-transformer rule of thumb; per architecture, pass
``k = flops_per_token / N`` measured from the runs (see :func:`flops_per_param`).

Every fit carries ``flags``: reasons it should not be trusted (:func:`degeneracy_flags`) --
points dropped as NaN/inf/non-positive, a flat or rising curve, too few points for the
parameters fitted, or too narrow a range of x (in decades). The numbers are still returned;
readers (the scaling table, the claims engine) show the flags and treat a flagged fit as
inconclusive.
"""
from __future__ import annotations

import contextlib
import ctypes
import itertools
import warnings
from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import minimize

DELTA = 1e-3

# Hoffmann et al. (2022) App. D.2 initialisation grid, columns (a, b, e, alpha, beta).
HOFFMANN_GRID = np.array(list(itertools.product(
    np.arange(0, 26, 5.0), np.arange(0, 26, 5.0), np.arange(-1, 1.01, 0.5),
    np.arange(0, 2.01, 0.5), np.arange(0, 2.01, 0.5))))
# A coarser grid (72 starts) that lands on the same optimum for Chinchilla-like data.
COARSE_GRID = np.array(list(itertools.product(
    [0.0, 10.0, 20.0], [0.0, 10.0, 20.0], [-0.5, 0.5], [0.2, 0.6], [0.2, 0.6])))
# Starts for the 3-parameter power law, columns (a, e, alpha).
POWER_LAW_GRID = np.array(list(itertools.product(
    [0.0, 5.0, 10.0, 20.0], [-1.0, 0.0, 1.0], [0.1, 0.4, 1.0])))

# Degeneracy thresholds (see :func:`degeneracy_flags`).
MIN_DECADES = 1.0        # x must span at least this many decades per fitted exponent's feature
MIN_RESIDUAL_DOF = 2     # points minus fitted parameters
MIN_FALL = 0.01          # the fitted curve must fall by >= 1% of its end value over the data range

# Tighter than scipy's defaults: the summed Huber objective is O(1e-3), and loose stopping is
# what Besiroglu et al. blame for part of Hoffmann et al.'s discrepancy.
_OPTS = {"maxiter": 3000, "maxfun": 10000, "ftol": 1e-12, "gtol": 1e-9}


def huber(r: np.ndarray, delta: float = DELTA) -> np.ndarray:
    """Elementwise Huber: r^2/2 inside [-delta, delta], delta(|r| - delta/2) outside."""
    ar = np.abs(r)
    return np.where(ar <= delta, 0.5 * r * r, delta * (ar - 0.5 * delta))


def _lse_objective(p, feats, log_l, delta):
    """Summed Huber loss of logsumexp(c_j - s_j * feat_j, e) vs log L, and its gradient.

    ``p = (c_1..c_m, e, s_1..s_m)``; ``feats`` is ``[m, n]`` (one row per feature, e.g. log N).
    Hand-written log-sum-exp (max-shifted) because this is the inner loop of every multistart.
    """
    m = feats.shape[0]
    c, e, s = p[:m], p[m], p[m + 1:]
    terms = c[:, None] - s[:, None] * feats
    top = np.maximum(terms.max(axis=0), e)
    ex = np.exp(terms - top)
    ee = np.exp(e - top)
    tot = ex.sum(axis=0) + ee
    r = top + np.log(tot) - log_l
    g = np.clip(r, -delta, delta) / tot  # huber'(r) * (1 / sum), times exp(term) = softmax weight
    gw = ex * g
    grad = np.concatenate([gw.sum(axis=1), [np.dot(ee, g)], -(gw * feats).sum(axis=1)])
    ar = np.abs(r)
    val = np.where(ar <= delta, 0.5 * r * r, delta * (ar - 0.5 * delta)).sum()
    return float(val), grad


@contextlib.contextmanager
def _single_thread_blas():
    """Pin OpenBLAS to one thread while fitting.

    scipy's L-BFGS-B calls BLAS on length-5 vectors; on a busy machine OpenBLAS's thread
    hand-offs made each iteration ~50x slower (3 ms vs 0.06 ms measured on 2 shared cores).
    Uses threadpoolctl when installed, else the set/get_num_threads symbols of the OpenBLAS
    libraries already mapped into the process (Linux); otherwise does nothing.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        threadpool_limits = None
    if threadpool_limits is not None:
        with threadpool_limits(1, user_api="blas"):
            yield
        return
    restore = []
    try:
        with open("/proc/self/maps") as fh:
            libs = {ln.split()[-1] for ln in fh if "openblas" in ln.lower() and ".so" in ln}
        for path in libs:
            lib = ctypes.CDLL(path)
            for sfx in ("", "64_"):
                for pre in ("openblas_", "scipy_openblas_"):
                    get_ = getattr(lib, f"{pre}get_num_threads{sfx}", None)
                    set_ = getattr(lib, f"{pre}set_num_threads{sfx}", None)
                    if get_ is not None and set_ is not None:
                        restore.append((set_, int(get_())))
                        set_(1)
    except (OSError, AttributeError, ValueError):
        pass
    try:
        yield
    finally:
        for set_, n in restore:
            set_(n)


def _multistart(feats, log_l, starts, delta):
    with _single_thread_blas():
        return _multistart_inner(feats, log_l, starts, delta)


def _multistart_inner(feats, log_l, starts, delta):
    best = None
    for x0 in np.atleast_2d(starts):
        with np.errstate(over="ignore", invalid="ignore"):
            res = minimize(_lse_objective, np.asarray(x0, float), args=(feats, log_l, delta),
                           jac=True, method="L-BFGS-B", options=_OPTS)
        if np.isfinite(res.fun) and (best is None or res.fun < best.fun):
            best = res
    if best is None:
        raise RuntimeError("every L-BFGS start diverged")
    return best


# ----------------------------------------------------------------------------- L(x) power law
@dataclass(frozen=True)
class PowerLawFit:
    """``L(x) = E + A * x**-alpha``."""

    E: float
    A: float
    alpha: float
    objective: float
    n_points: int
    flags: tuple = ()  # reasons not to trust the fit (empty: none found)
    dropped: int = 0   # input points dropped as NaN / inf / <= 0

    def predict(self, x):
        return self.E + self.A * np.asarray(x, float) ** -self.alpha

    def as_dict(self):
        return asdict(self)


def fit_power_law(x, L, *, delta: float = DELTA, starts=None) -> PowerLawFit:
    """Fit ``L = E + A x^-alpha`` (Huber on log L, L-BFGS multistart, like approach 3).

    Raises ``ValueError`` below 3 distinct usable x values (nothing to fit); otherwise returns
    the fit with ``flags`` naming any degeneracy (:func:`degeneracy_flags`)."""
    (x, L), dropped = clean_points(x, L)
    if len(x) < 3 or len(np.unique(x)) < 3:
        raise ValueError(f"power-law fit needs >= 3 distinct x values, got {len(np.unique(x))}"
                         + (f" ({dropped} dropped as NaN/inf/<=0)" if dropped else ""))
    starts = POWER_LAW_GRID if starts is None else np.atleast_2d(starts)
    res = _multistart(np.log(x)[None, :], np.log(L), starts, delta)
    a, e, alpha = res.x
    fit = PowerLawFit(E=float(np.exp(e)), A=float(np.exp(a)), alpha=float(alpha),
                      objective=float(res.fun), n_points=len(x), dropped=dropped)
    flags = degeneracy_flags([x], L, n_params=3, dropped=dropped, n_in=len(x) + dropped,
                             fitted=fit.predict(np.array([x.min(), x.max()])), exponents=[fit.alpha])
    return PowerLawFit(**{**asdict(fit), "flags": tuple(flags)})


def power_law_params(fit: PowerLawFit) -> np.ndarray:
    """Internal (a, e, alpha) vector, e.g. to warm-start bootstrap refits."""
    return np.array([np.log(fit.A), np.log(fit.E), fit.alpha])


# ----------------------------------------------------------------------------- L(C) frontier
def compute_frontier(C, L, *, decimals: float | None = 1, groups=None):
    """Lower envelope of loss vs compute: returns (C, L) of the frontier, sorted by C.

    Runs are grouped into compute budgets, by ``groups`` (labels, e.g. nominal IsoFLOP budgets)
    when given, else by rounding ``log10 C`` to ``decimals`` (``None``: each run is its own
    budget). Per budget the lowest-loss run is kept (with its own C); then only budgets that
    beat every cheaper one remain, so the frontier loss strictly decreases with C.
    """
    C, L = np.asarray(C, float).ravel(), np.asarray(L, float).ravel()
    if groups is None:
        groups = np.log10(C) if decimals is None else np.round(np.log10(C), int(decimals))
    groups = np.asarray(groups).ravel()
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(C) & (C > 0) & np.isfinite(L) & (L > 0)
    if not ok.all():
        warnings.warn(f"compute_frontier: dropped {(~ok).sum()} of {len(ok)} points (NaN/inf/<=0)", stacklevel=2)
    C, L, groups = C[ok], L[ok], groups[ok]
    best = {}
    for i, g in enumerate(groups):
        if g not in best or L[i] < L[best[g]]:
            best[g] = i
    idx = sorted(best.values(), key=lambda i: C[i])
    fc, fl, low = [], [], np.inf
    for i in idx:
        if L[i] < low:
            fc.append(C[i])
            fl.append(L[i])
            low = L[i]
    return np.asarray(fc), np.asarray(fl)


def fit_compute_frontier(C, L, *, decimals: float | None = 1, delta: float = DELTA) -> PowerLawFit:
    """Fit ``L(C) = E + A C^-gamma`` to :func:`compute_frontier` (gamma is ``.alpha``)."""
    fc, fl = compute_frontier(C, L, decimals=decimals)
    return fit_power_law(fc, fl, delta=delta)


# ----------------------------------------------------------------------------- approach 3
@dataclass(frozen=True)
class ChinchillaFit:
    """``L(N, D) = E + A / N**alpha + B / D**beta``."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float
    objective: float
    n_points: int
    flags: tuple = ()
    dropped: int = 0

    @property
    def params(self) -> np.ndarray:
        """Internal (a, b, e, alpha, beta) vector."""
        return np.array([np.log(self.A), np.log(self.B), np.log(self.E), self.alpha, self.beta])

    def predict(self, N, D):
        N, D = np.asarray(N, float), np.asarray(D, float)
        return self.E + self.A * N ** -self.alpha + self.B * D ** -self.beta

    def G(self) -> float:
        return (self.alpha * self.A / (self.beta * self.B)) ** (1.0 / (self.alpha + self.beta))

    def compute_optimal(self, C, k: float = 6.0):
        """(N_opt, D_opt, loss at the optimum) for budgets C under C = k N D."""
        return compute_optimal(self, C, k)

    def as_dict(self):
        return asdict(self)


def _from_params(p, objective, n, flags=(), dropped=0) -> ChinchillaFit:
    a, b, e, alpha, beta = (float(v) for v in p)
    return ChinchillaFit(E=float(np.exp(e)), A=float(np.exp(a)), B=float(np.exp(b)),
                         alpha=alpha, beta=beta, objective=float(objective), n_points=n,
                         flags=tuple(flags), dropped=dropped)


def chinchilla_objective(params, N, D, L, delta: float = DELTA) -> float:
    """Summed Huber loss of approach 3 at internal params (a, b, e, alpha, beta)."""
    feats = np.vstack([np.log(N), np.log(D)])
    return _lse_objective(np.asarray(params, float), feats, np.log(L), delta)[0]


def fit_chinchilla(N, D, L, *, delta: float = DELTA, starts="hoffmann") -> ChinchillaFit:
    """Approach-3 fit of ``L(N, D) = E + A/N^alpha + B/D^beta`` (see module docstring).

    ``starts``: ``"hoffmann"`` (4500-point grid), ``"coarse"`` (72 points), or an array of
    internal start vectors ``(a, b, e, alpha, beta)``.
    """
    (N, D, L), dropped = clean_points(N, D, L)
    if len(N) < 6 or len(np.unique(N)) < 2 or len(np.unique(D)) < 2:
        raise ValueError(f"approach 3 needs >= 6 runs with >= 2 distinct N and D; got {len(N)} runs, "
                         f"{len(np.unique(N))} N, {len(np.unique(D))} D"
                         + (f" ({dropped} dropped as NaN/inf/<=0)" if dropped else ""))
    if isinstance(starts, str):
        starts = {"hoffmann": HOFFMANN_GRID, "coarse": COARSE_GRID}[starts]
    feats = np.vstack([np.log(N), np.log(D)])
    res = _multistart(feats, np.log(L), starts, delta)
    fit = _from_params(res.x, res.fun, len(N), dropped=dropped)
    ends = fit.predict(np.array([N.min(), N.max()]), np.array([D.min(), D.max()]))
    flags = degeneracy_flags([N, D], L, n_params=5, dropped=dropped, n_in=len(N) + dropped,
                             fitted=ends, exponents=[fit.alpha, fit.beta])
    return _from_params(res.x, res.fun, len(N), flags, dropped)


def bootstrap_chinchilla(N, D, L, *, n: int = 100, seed: int = 0, delta: float = DELTA,
                         starts=None, point: ChinchillaFit | None = None) -> np.ndarray:
    """Bootstrap approach 3: resample runs with replacement, refit; returns ``[n, 5]`` array of
    (E, A, B, alpha, beta). Refits start from ``starts`` (default: the point estimate plus every
    8th point of the coarse grid -- 10 starts, a multistart that is ~450x cheaper than
    Hoffmann's grid; a resample's optimum is near the full-data one)."""
    (N, D, L), _ = clean_points(N, D, L)
    point = point or fit_chinchilla(N, D, L, delta=delta, starts="coarse")
    if starts is None:
        starts = np.vstack([point.params, COARSE_GRID[::8]])
    rng = np.random.default_rng(seed)
    out = np.full((n, 5), np.nan)
    for i in range(n):
        idx = rng.integers(0, len(N), len(N))
        if len(np.unique(N[idx])) < 2 or len(np.unique(D[idx])) < 2:
            continue
        f = fit_chinchilla(N[idx], D[idx], L[idx], delta=delta, starts=starts)
        out[i] = [f.E, f.A, f.B, f.alpha, f.beta]
    return out


def bootstrap_power_law(x, L, *, n: int = 100, seed: int = 0, delta: float = DELTA,
                        point: PowerLawFit | None = None) -> np.ndarray:
    """Bootstrap :func:`fit_power_law`; returns ``[n, 3]`` array of (E, A, alpha)."""
    (x, L), _ = clean_points(x, L)
    point = point or fit_power_law(x, L, delta=delta)
    starts = np.vstack([power_law_params(point), POWER_LAW_GRID[::4]])
    rng = np.random.default_rng(seed)
    out = np.full((n, 3), np.nan)
    for i in range(n):
        idx = rng.integers(0, len(x), len(x))
        if len(np.unique(x[idx])) < 3:
            continue
        f = fit_power_law(x[idx], L[idx], delta=delta, starts=starts)
        out[i] = [f.E, f.A, f.alpha]
    return out


def percentile_ci(samples, level: float = 0.95, min_valid: int = 2) -> np.ndarray:
    """Per-column (lo, hi) percentile interval over the finite rows; shape ``[2, n_cols]``.
    All-NaN when fewer than ``min_valid`` resamples could be fitted."""
    s = np.atleast_2d(np.asarray(samples, float))
    s = s[np.isfinite(s).all(axis=1)]
    if len(s) < max(1, min_valid):
        return np.full((2, s.shape[1]), np.nan)
    q = 50 * (1 - level)
    return np.percentile(s, [q, 100 - q], axis=0)


# ----------------------------------------------------------------------------- allocation
def compute_optimal(fit: ChinchillaFit, C, k: float = 6.0):
    """Closed-form optimum of ``L(N, D)`` subject to ``C = k N D``.

    Returns ``(N_opt, D_opt, L_opt)``; tokens per parameter is ``D_opt / N_opt``.
    """
    C = np.asarray(C, float)
    s = fit.alpha + fit.beta
    n_opt = fit.G() * (C / k) ** (fit.beta / s)
    d_opt = (C / k) ** (fit.alpha / s) / fit.G()
    return n_opt, d_opt, fit.predict(n_opt, d_opt)


def tokens_per_param(fit: ChinchillaFit, C, k: float = 6.0):
    n_opt, d_opt, _ = compute_optimal(fit, C, k)
    return d_opt / n_opt


def flops_per_param(flops_per_token, n_params) -> float:
    """``k`` for ``C = k N D``: median over runs of flops_per_token / N."""
    r = np.asarray(flops_per_token, float) / np.asarray(n_params, float)
    r = r[np.isfinite(r) & (r > 0)]
    return float(np.median(r)) if len(r) else 6.0


def clean_points(*cols):
    """Keep the rows where every column is finite and > 0 (logs are taken of all of them).

    Returns ``(tuple of cleaned arrays, number of rows dropped)`` so callers can report it."""
    arrs = [np.asarray(c, float).ravel() for c in cols]
    ok = np.ones(len(arrs[0]), bool)
    for a in arrs:
        with np.errstate(invalid="ignore"):
            ok &= np.isfinite(a) & (a > 0)
    return tuple(a[ok] for a in arrs), int((~ok).sum())


def degeneracy_flags(xs, L, *, n_params: int, dropped: int = 0, n_in: int | None = None,
                     fitted=None, exponents=()) -> list[str]:
    """Reasons a fit of ``L`` against the features ``xs`` (each a positive array) is not to be
    trusted. Each reason is one short phrase, e.g. ``"flat: ..."``:

    * ``dropped``: points removed before fitting (NaN, inf, <= 0);
    * ``too few points``: fewer than ``n_params + MIN_RESIDUAL_DOF`` points;
    * ``narrow range``: a feature spans fewer than ``MIN_DECADES`` decades;
    * ``rising``: the least-squares line of log L on log x rises by more than ``MIN_FALL`` over
      the data (loss grows with x), or a fitted exponent is below -1e-3;
    * ``flat``: the fitted curve (``fitted`` = its values at the smallest and largest x) falls by
      less than ``MIN_FALL`` of its end value, or a fitted exponent is within 1e-3 of 0.
    """
    L = np.asarray(L, float)
    flags = []
    if dropped:
        flags.append(f"dropped: {dropped} of {n_in if n_in is not None else len(L) + dropped} "
                     f"points NaN/inf/<=0")
    if len(L) < n_params + MIN_RESIDUAL_DOF:
        flags.append(f"too few points: {len(L)} for {n_params} parameters "
                     f"(need >= {n_params + MIN_RESIDUAL_DOF})")
    for x in xs:
        x = np.asarray(x, float)
        span = float(np.log10(x.max() / x.min())) if len(x) else 0.0
        if round(span, 2) < MIN_DECADES:
            flags.append(f"narrow range: x spans {span:.2f} decades (need >= {MIN_DECADES:g})")
    rising = False
    if len(xs) == 1 and len(L) >= 2 and np.ptp(np.log(xs[0])) > 0:
        slope = float(np.polyfit(np.log(xs[0]), np.log(L), 1)[0])
        if slope * np.ptp(np.log(xs[0])) > np.log1p(MIN_FALL):  # the trend line rises > MIN_FALL
            flags.append(f"rising: log L grows with log x (slope {slope:+.3g})")
            rising = True
    if not rising and any(e < -1e-3 for e in exponents):
        flags.append("rising: fitted exponent < 0 ("
                     + ", ".join(f"{e:.3g}" for e in exponents) + ")")
        rising = True
    if not rising:
        fall = None
        if fitted is not None:
            hi, lo = (float(v) for v in np.asarray(fitted, float))
            fall = (hi - lo) / lo if lo > 0 else None
        if (fall is not None and fall < MIN_FALL) or any(abs(e) < 1e-3 for e in exponents):
            flags.append("flat: fitted curve falls by "
                         + (f"{100 * fall:.2g}%" if fall is not None else "~0")
                         + " over the data range")
    return flags
