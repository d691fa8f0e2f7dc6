"""Synthetic recovery tests for archcmp.analysis.scaling.fit (known truth, seeded noise)."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize_scalar

from archcmp.analysis.scaling import fit as sf

TRUE = dict(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)  # Hoffmann et al.'s fit


def law(N, D, p=TRUE):
    return p["E"] + p["A"] * N ** -p["alpha"] + p["B"] * D ** -p["beta"]


def grid_points(noise=0.005, seed=0):
    N, D = np.meshgrid(np.geomspace(1e7, 1e10, 8), np.geomspace(1e8, 1e12, 8))
    N, D = N.ravel(), D.ravel()
    rng = np.random.default_rng(seed)
    return N, D, law(N, D) * np.exp(rng.normal(0, noise, N.size))


@pytest.mark.parametrize("seed", [0, 1])
def test_approach3_recovers_known_parameters(seed):
    fit = sf.fit_chinchilla(*grid_points(seed=seed), starts="coarse")
    assert abs(fit.alpha - TRUE["alpha"]) < 0.02
    assert abs(fit.beta - TRUE["beta"]) < 0.02
    assert abs(fit.E - TRUE["E"]) < 0.03
    assert np.log(fit.A) == pytest.approx(np.log(TRUE["A"]), abs=0.3)
    assert np.log(fit.B) == pytest.approx(np.log(TRUE["B"]), abs=0.3)


def test_approach3_exact_on_noiseless_data():
    N, D, L = grid_points(noise=0.0)
    fit = sf.fit_chinchilla(N, D, L, starts="coarse")
    got = np.array([fit.E, fit.A, fit.B, fit.alpha, fit.beta])
    want = np.array([TRUE[k] for k in ("E", "A", "B", "alpha", "beta")])
    np.testing.assert_allclose(got, want, rtol=2e-3)
    np.testing.assert_allclose(fit.predict(N, D), L, rtol=1e-5)


def test_bootstrap_is_seeded_and_covers_truth():
    N, D, L = grid_points(noise=0.01, seed=3)
    point = sf.fit_chinchilla(N, D, L, starts="coarse")
    a = sf.bootstrap_chinchilla(N, D, L, n=12, seed=7, point=point, starts=point.params[None])
    b = sf.bootstrap_chinchilla(N, D, L, n=12, seed=7, point=point, starts=point.params[None])
    np.testing.assert_array_equal(a, b)
    assert a.shape == (12, 5) and np.isfinite(a).all()
    assert a[:, 3].std() > 0  # resampling actually changed the data
    lo, hi = sf.percentile_ci(a, 0.95)
    for j, name in enumerate(("E", "A", "B", "alpha", "beta")):
        assert lo[j] <= hi[j]
        # truth within the interval widened by a little (only 12 resamples)
        width = hi[j] - lo[j]
        assert lo[j] - width <= TRUE[name] <= hi[j] + width, name


def test_power_law_recovers_parameters():
    N = np.geomspace(1e5, 1e9, 12)
    rng = np.random.default_rng(0)
    L = (2.0 + 50.0 * N ** -0.3) * np.exp(rng.normal(0, 0.002, N.size))
    fit = sf.fit_power_law(N, L)
    assert abs(fit.alpha - 0.3) < 0.03
    assert abs(fit.E - 2.0) < 0.05
    assert np.log(fit.A) == pytest.approx(np.log(50.0), abs=0.3)
    ci = sf.percentile_ci(sf.bootstrap_power_law(N, L, n=20, seed=0, point=fit))
    assert ci[0, 2] <= fit.alpha <= ci[1, 2]


def test_power_law_rejects_too_few_points():
    with pytest.raises(ValueError):
        sf.fit_power_law([1e6, 1e7], [3.0, 2.5])
    with pytest.raises(ValueError):
        sf.fit_chinchilla([1e6] * 8, np.geomspace(1e8, 1e9, 8), np.linspace(3, 2, 8))


@pytest.mark.parametrize("k", [6.0, 8.5])
def test_compute_optimal_matches_brute_force(k):
    fit = sf.ChinchillaFit(objective=0.0, n_points=0, **TRUE)
    for C in (1e18, 1e21, 5.76e23):
        res = minimize_scalar(lambda ln: fit.predict(np.exp(ln), C / (k * np.exp(ln))),
                              bounds=(np.log(1e3), np.log(1e14)), method="bounded",
                              options={"xatol": 1e-10})
        n_bf = np.exp(res.x)
        n_opt, d_opt, l_opt = fit.compute_optimal(C, k)
        assert n_opt == pytest.approx(n_bf, rel=1e-3)
        assert k * n_opt * d_opt == pytest.approx(C, rel=1e-12)
        assert l_opt == pytest.approx(res.fun, rel=1e-9)
        assert sf.tokens_per_param(fit, C, k) == pytest.approx(d_opt / n_opt)
    # more FLOPs per token-parameter -> less data at the same budget -> higher loss
    assert fit.compute_optimal(1e21, 12.0)[2] > fit.compute_optimal(1e21, 6.0)[2]


def test_compute_frontier_envelope():
    C = np.array([1e15, 1.04e15, 3e15, 3.1e15, 1e16, 1.02e16, 3e16])
    L = np.array([3.0, 2.9, 2.95, 2.7, 2.8, 2.75, 2.5])
    fc, fl = sf.compute_frontier(C, L, decimals=1)
    # per budget: (1.04e15, 2.9), (3.1e15, 2.7), (1.02e16, 2.75) dominated, (3e16, 2.5)
    np.testing.assert_allclose(fc, [1.04e15, 3.1e15, 3e16])
    np.testing.assert_allclose(fl, [2.9, 2.7, 2.5])
    assert np.all(np.diff(fl) < 0)
    fc2, _ = sf.compute_frontier(C, L, groups=[1, 1, 2, 2, 3, 3, 4])
    np.testing.assert_allclose(fc2, fc)


def test_frontier_fit_recovers_compute_exponent():
    # IsoFLOP sweeps sampled from the law; the frontier follows L_opt(C) = E + K C^-gamma with
    # gamma = alpha beta / (alpha + beta).
    C_list, L_list = [], []
    for C in np.geomspace(1e17, 1e23, 13):
        N = np.geomspace(1e6, 1e12, 121)
        D = C / (6 * N)
        C_list.append(np.full(N.size, C))
        L_list.append(law(N, D))
    fit = sf.fit_compute_frontier(np.concatenate(C_list), np.concatenate(L_list), decimals=2)
    gamma = TRUE["alpha"] * TRUE["beta"] / (TRUE["alpha"] + TRUE["beta"])
    assert fit.alpha == pytest.approx(gamma, abs=0.01)
    assert fit.E == pytest.approx(TRUE["E"], abs=0.05)


def test_flops_per_param_is_median_ratio():
    assert sf.flops_per_param([600, 700, 6000], [100, 100, 1000]) == pytest.approx(6.0)
    assert sf.flops_per_param([np.nan], [100]) == 6.0


# ----------------------------------------------------------------------------- degenerate inputs
def test_well_posed_fit_has_no_flags():
    N = np.geomspace(1e5, 1e9, 12)
    fit = sf.fit_power_law(N, 2.0 + 50.0 * N ** -0.3)
    assert fit.flags == () and fit.dropped == 0


def test_constant_loss_is_flagged_flat():
    fit = sf.fit_power_law(np.geomspace(1e5, 1e9, 8), np.full(8, 3.0))
    assert any(f.startswith("flat") for f in fit.flags), fit.flags


def test_rising_loss_is_flagged_rising():
    N = np.geomspace(1e5, 1e9, 8)
    fit = sf.fit_power_law(N, 2.0 + 0.01 * np.log(N))
    assert any(f.startswith("rising") for f in fit.flags), fit.flags


def test_too_few_points_and_decades_are_flagged():
    # 4 points for 3 parameters: 1 residual degree of freedom; spanning half a decade
    N = np.geomspace(1e6, 10 ** 6.5, 4)
    fit = sf.fit_power_law(N, 2.0 + 50.0 * N ** -0.3)
    assert any(f.startswith("too few points: 4 for 3") for f in fit.flags), fit.flags
    assert any(f.startswith("narrow range: x spans 0.50") for f in fit.flags), fit.flags


def test_nan_inf_and_negative_points_are_dropped_and_reported():
    N = np.geomspace(1e5, 1e9, 9)
    L = 2.0 + 50.0 * N ** -0.3
    L[[1, 4, 7]] = [np.nan, np.inf, -1.0]
    fit = sf.fit_power_law(N, L)
    assert fit.dropped == 3 and fit.n_points == 6
    assert "dropped: 3 of 9 points NaN/inf/<=0" in fit.flags
    with pytest.raises(ValueError, match="3 dropped"):
        sf.fit_power_law(N[:5], np.array([3.0, np.nan, np.nan, np.nan, 2.0]))


def test_chinchilla_flags_missing_points():
    N, D, L = grid_points(noise=0.0)
    L = L.copy()
    L[0] = np.nan
    fit = sf.fit_chinchilla(N, D, L, starts="coarse")
    assert fit.dropped == 1 and fit.flags == ("dropped: 1 of 64 points NaN/inf/<=0",)


def test_compute_frontier_reports_dropped_points():
    with pytest.warns(UserWarning, match="dropped 2 of 5 points"):
        fc, fl = sf.compute_frontier([1e15, np.nan, 1e16, 1e17, 1e18], [3.0, 2.0, 2.5, -1.0, 2.0], decimals=1)
    np.testing.assert_allclose(fc, [1e15, 1e16, 1e18])
