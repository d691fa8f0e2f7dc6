"""Where the sharp metric's jump comes from: per-example features of arithmetic prompts, metrics
broken down by answer length / operand digits / carries, and smoothness with intervals over seeds.

* ``arithmetic_features``: from the prompt text "a<op>b=" the operand digit count (of the longer
  operand) and, for '+', the number of carries of the column addition (NaN for other prompts).
* ``by_group``: per (arch, size, seed, group value) means of the per-example metrics, then the mean
  and min..max over seeds -- the "per answer length / per digit count" tables.
* ``seed_smoothness``: breakthroughness and R^2 vs log10(params) of each metric's curve across
  sizes, (a) on the mean-over-seeds curve, (b) per seed (the curve through seed k of every size),
  (c) a bootstrap over seeds (each size's seeds resampled independently, the same resample for
  every metric, so differences between metrics are paired) giving 95% percentile intervals, and
  the paired interval of |B(sharp)| - |B(m)| for each smooth metric m.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import pandas as pd

from archcmp.analysis.emergence.metrics import breakthroughness, last_step, linearity

_PROMPT = re.compile(r"^\s*(\d+)\s*([+*\-])\s*(\d+)\s*=\s*$")


def carries(a: int, b: int) -> int:
    """Number of columns that produce a carry when adding non-negative ``a`` and ``b``."""
    n, c = 0, 0
    while a or b or c:
        c = int((a % 10 + b % 10 + c) >= 10)
        n += c
        a, b = a // 10, b // 10
    return n


def arithmetic_features(texts: Sequence[str]) -> pd.DataFrame:
    """``operand_digits`` and ``carries`` per prompt text (NaN where the text is not "a<op>b=")."""
    rows = []
    for t in texts:
        m = _PROMPT.match(t)
        if m is None:
            rows.append({"operand_digits": np.nan, "carries": np.nan})
            continue
        a, op, b = m.group(1), m.group(2), m.group(3)
        rows.append({"operand_digits": float(max(len(a), len(b))),
                     "carries": float(carries(int(a), int(b))) if op == "+" else np.nan})
    return pd.DataFrame(rows, columns=["operand_digits", "carries"])


def by_group(examples: pd.DataFrame, group: str, metrics: Sequence[str]) -> pd.DataFrame:
    """Final-step metrics per (arch, size, group value): seed means, then mean/min/max over seeds.

    ``examples``: the per-example frame (columns arch, size, params, seed, run, step, ``group``,
    metrics). -> columns arch, size, params, ``group``, n (examples per seed), n_seeds and for every
    metric ``<m>``, ``<m>_min``, ``<m>_max``.
    """
    d = examples[examples["step"] == examples.groupby("run")["step"].transform("max")]
    d = d[d[group].notna()]
    keys = ["arch", "size", "params", group]
    per_seed = d.groupby([*keys, "seed"], sort=True)[list(metrics)].mean()
    per_seed["n"] = d.groupby([*keys, "seed"], sort=True).size()
    g = per_seed.groupby(level=keys, sort=True)
    out = g[list(metrics)].mean()
    for m in metrics:
        out[f"{m}_min"] = g[m].min()
        out[f"{m}_max"] = g[m].max()
    out["n"] = g["n"].mean()
    out["n_seeds"] = g.size()
    return out.reset_index()


def _quantile(a: np.ndarray, q: float) -> float:
    """Quantile of the non-NaN values of ``a`` (NaN when there is none, e.g. a single size). B is
    +-inf for a curve flat over most of its steps; no interpolation, so an infinite end stays infinite."""
    a = a[~np.isnan(a)]
    return float(np.quantile(a, q, method="inverted_cdf")) if a.size else np.nan


def _curve_stats(y: np.ndarray, x: np.ndarray) -> tuple[float, float]:
    return breakthroughness(y, x), linearity(y, x, "r2")


def seed_smoothness(long_df: pd.DataFrame, metrics: Sequence[str], sharp: str = "exact_match",
                    n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> pd.DataFrame:
    """Breakthroughness B and R^2 (vs log10 params) per (arch, metric) with intervals over seeds.

    ``long_df``: the long metric frame (arch, params, seed, step, metric, mean); the final step of
    every run is used. Columns of the result: arch, metric, n_scales, n_seeds, B (mean curve),
    B_lo/B_hi (bootstrap over seeds), B_seeds (per-seed values, ';'-joined), abs_B, R2, R2_lo, R2_hi,
    and for every metric other than ``sharp`` ``gap`` = |B(sharp)| - |B(metric)| with gap_lo/gap_hi
    (paired bootstrap). Seed k's curve uses the k-th smallest seed of each size.
    """
    d = last_step(long_df[long_df["metric"].isin(metrics)], ("arch", "params", "seed", "metric"))
    rng = np.random.default_rng(seed)
    rows = []
    for arch, ga in d.groupby("arch", sort=True):
        # values[metric] : [n_sizes, n_seeds] (sizes by params, seeds sorted within each size)
        sizes = np.sort(ga["params"].unique())
        n_seeds = int(ga.groupby("params")["seed"].nunique().min())
        values = {}
        for m in metrics:
            gm = ga[ga["metric"] == m]
            if gm.empty:
                continue
            values[m] = np.stack([gm[gm["params"] == p].sort_values("seed")["mean"].to_numpy(float)[:n_seeds]
                                  for p in sizes])
        x = sizes.astype(float)
        idx = rng.integers(0, n_seeds, size=(n_boot, len(sizes), n_seeds))  # shared by all metrics
        boot = {}
        for m, v in values.items():
            curves = np.take_along_axis(v[None], idx, axis=2).mean(axis=2)  # [n_boot, n_sizes]
            boot[m] = np.array([_curve_stats(c, x) for c in curves])      # [n_boot, 2]
        q = (alpha / 2, 1 - alpha / 2)
        for m, v in values.items():
            b, r2 = _curve_stats(v.mean(axis=1), x)
            per_seed = [breakthroughness(v[:, k], x) for k in range(n_seeds)]
            row = {"arch": arch, "metric": m, "n_scales": len(sizes), "n_seeds": n_seeds, "B": b,
                   "B_lo": _quantile(boot[m][:, 0], q[0]), "B_hi": _quantile(boot[m][:, 0], q[1]),
                   "B_seeds": ";".join(f"{s:.3g}" for s in per_seed), "abs_B": abs(b), "R2": r2,
                   "R2_lo": _quantile(boot[m][:, 1], q[0]), "R2_hi": _quantile(boot[m][:, 1], q[1])}
            if m != sharp and sharp in values:
                gap = np.abs(boot[sharp][:, 0]) - np.abs(boot[m][:, 0])
                row.update(gap=abs(_curve_stats(values[sharp].mean(axis=1), x)[0]) - abs(b),
                           gap_lo=_quantile(gap, q[0]), gap_hi=_quantile(gap, q[1]))
            rows.append(row)
    return pd.DataFrame(rows)
