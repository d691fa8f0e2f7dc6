"""Readers for the evidence files the decision rules consume, and intervals over seeds.

Formats (all written by the experiments' analysis commands, e.g. ``archcmp-analyze seeds``):

* per-seed table (CSV): ``condition, group, seed, metric, value`` -- one number per seed of one
  group (an architecture, a setting) under one condition (a size, a budget, a task);
* ``criterion.json``: ``{"criterion": str, "met": bool, "n_seeds": int, ...numbers}``;
* fit table (CSV): ``fit, group, parameter, estimate, lo, hi, n_seeds, interval, n_points,
  flags`` (``flags``: ``;``-separated reasons the fit is not to be trusted, empty if none);
* hold-out prediction table (CSV): ``group, x_heldout, observed, predicted, lo, hi, n_seeds,
  n_fit_points, flags``.

A malformed file raises :class:`EvidenceError` with a one-line message naming file and column.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

SEED_COLUMNS = ("condition", "group", "seed", "metric", "value")
FIT_COLUMNS = ("fit", "group", "parameter", "estimate", "lo", "hi", "n_seeds", "interval", "n_points", "flags")
PREDICTION_COLUMNS = ("group", "x_heldout", "observed", "predicted", "lo", "hi", "n_seeds", "n_fit_points", "flags")
BOOTSTRAP_RESAMPLES = 2000


class EvidenceError(ValueError):
    """An evidence file exists but cannot be read as its format requires."""


def _read_csv(path: Path, columns) -> pd.DataFrame:
    try:
        df = pd.read_csv(path, dtype={"condition": str, "group": str, "metric": str, "fit": str,
                                      "parameter": str, "interval": str, "flags": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise EvidenceError(f"{path}: unreadable CSV ({' '.join(str(exc).split())})") from None
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise EvidenceError(f"{path}: missing column {missing[0]!r} (need {', '.join(columns)})")
    if "flags" in df:
        df["flags"] = df["flags"].fillna("")
    return df


def read_seed_table(path) -> pd.DataFrame:
    df = _read_csv(Path(path), SEED_COLUMNS)
    for col in ("seed", "value"):
        num = pd.to_numeric(df[col], errors="coerce")
        bad = df[col][num.isna() & df[col].notna()]
        if len(bad):
            raise EvidenceError(f"{path}: column {col!r} has non-numeric value {bad.iloc[0]!r}")
        df[col] = num
    dup = df.duplicated(["condition", "group", "seed", "metric"])
    if dup.any():
        r = df[dup].iloc[0]
        raise EvidenceError(f"{path}: duplicate row for condition={r['condition']!r}, group={r['group']!r}, "
                            f"seed={r['seed']!r}, metric={r['metric']!r}")
    return df


def read_fit_table(path) -> pd.DataFrame:
    return _read_csv(Path(path), FIT_COLUMNS)


def read_prediction_table(path) -> pd.DataFrame:
    return _read_csv(Path(path), PREDICTION_COLUMNS)


def read_criterion(path) -> dict:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EvidenceError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise EvidenceError(f"{path}: must hold a JSON object")
    for key, typ in (("criterion", str), ("met", bool), ("n_seeds", int)):
        v = data.get(key)
        if key == "met" and v is None and isinstance(data.get("status"), str):
            continue  # an experiment still running: met = null with a status saying how far it got
        if not isinstance(v, typ) or (typ is int and isinstance(v, bool)):
            raise EvidenceError(f"{path}: {key} = {v!r}: must be a {typ.__name__}")
    # Optional: whether the criterion's precondition held. false = the criterion was not judged
    # (met must then be false too); the verdict engine reads it as inconclusive, never refuted.
    pre = data.get("prerequisite_met", True)
    if not isinstance(pre, bool):
        raise EvidenceError(f"{path}: prerequisite_met = {pre!r}: must be a bool")
    if not pre and data["met"] is not False:
        raise EvidenceError(f"{path}: met = {data['met']!r} with prerequisite_met = false: a criterion "
                            "whose prerequisite failed is not judged, so met must be false")
    return data


def split_flags(flags) -> list[str]:
    if not isinstance(flags, str):
        return []
    return [f.strip() for f in flags.split(";") if f.strip()]


def mean_interval(x, level: float = 0.95, method: str = "t") -> tuple[float, float, float]:
    """(mean, lo, hi) over seeds. ``t``: Student-t interval; ``bootstrap``: percentile bootstrap
    of the mean with a fixed generator (same numbers every run). NaN bounds below 2 values or
    when the values are not all finite."""
    x = np.asarray(x, float)
    if len(x) == 0:
        return math.nan, math.nan, math.nan
    m = float(x.mean())
    if len(x) < 2 or not np.isfinite(x).all():
        return m, math.nan, math.nan
    if method == "bootstrap":
        ci = stats.bootstrap((x,), np.mean, n_resamples=BOOTSTRAP_RESAMPLES, confidence_level=level,
                             method="percentile", rng=np.random.default_rng(0)).confidence_interval
        return m, float(ci.low), float(ci.high)
    half = float(stats.t.ppf(0.5 + level / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return m, m - half, m + half


def welch_interval(a, b, level: float = 0.95) -> tuple[float, float, float]:
    """(mean(a) - mean(b), lo, hi), Welch's t interval for unpaired groups."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    d = float(a.mean() - b.mean())
    if len(a) < 2 or len(b) < 2:
        return d, math.nan, math.nan
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return d, d, d
    dof = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = float(stats.t.ppf(0.5 + level / 2, dof) * se)
    return d, d - half, d + half
