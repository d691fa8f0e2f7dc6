"""Per-example answer metrics, bootstrap CIs and scale-sweep smoothness indices.

NumPy/pandas only; works on *already decoded* outputs (the decoding module feeds it).
``per_example_metrics`` -> ``aggregate`` -> ``to_long`` gives the long format used by
``emergence_plots``; ``smoothness_table`` and ``pl_curves`` summarise a scale sweep.

Sequence conventions
--------------------
A batch of sequences is either a list of 1-D int sequences (ragged) or a 2-D array padded with
``pad_id`` (default 0 = PAD in ``archcmp.data.vocab``), optionally with explicit ``*_lengths``.
Without lengths, trailing ``pad_id`` tokens are stripped (interior pads count as tokens). With
``eos_id``, a sequence is cut right *after* its first EOS (EOS is kept, so targets that end in
EOS compare like-for-like and anything generated after EOS is ignored).

Length mismatch (documented choice)
-----------------------------------
* exact match: 1 iff same length and identical tokens.
* per-token accuracy: position-wise over the *target* length T: mean over j < T of
  1[j < len(pred) and pred[j] == target[j]]. A too-short prediction scores its missing
  positions as wrong; extra tokens beyond T are ignored (exact match and edit distance do
  penalise them). Empty target: 1.0 if the prediction is empty too, else 0.0.
* token edit distance: Levenshtein over tokens (unit insert/delete/substitute), full sequences.

Smoothness indices
------------------
``breakthroughness`` follows BIG-bench (Srivastava et al., 2022) as restated in Schaeffer,
Miranda & Koyejo (2023), eq. 1:  B = sign(argmax y - argmin y) * (max y - min y) /
sqrt(median_i (y_i - y_{i-1})^2), with y ordered by scale. If the median squared increment is
0 (e.g. a curve that is exactly flat for more than half of its steps) B is +-inf (0 if y is
constant). Caveat: B(p^L) >> B(p) only when the sweep ends while p is still rising (p^L near 0
for over half the sizes); if p saturates near 1 inside the sweep, p^L is itself a smooth shifted
sigmoid and the two B values are similar (see tests).

``linearity``: BIG-bench also defines a "linearity" score in its appendix on linearity and
breakthroughness (appendix B). Its exact formula could not be retrieved here (the stored copies of
the paper, the BIG-bench repository and their secondary sources that we searched hold no text of
that appendix), so this module does not claim to implement it. It offers two documented stand-in
indices instead, both "higher = closer to steady, straight-line improvement in log scale":

* ``method="r2"`` (default): R^2 of an ordinary least-squares fit of y on log10(scale)
  (on the index 0..n-1 when no scale is given, i.e. assuming log-spaced sizes). 1 for a
  straight line in log scale; a step in the middle of 10 points gives about 0.75.
  NaN if y is constant.
* ``method="increments"``: (sum_i w_i s_i)^2 / (sum_i w_i * sum_i w_i s_i^2) with slopes
  s_i = dy_i / dx_i and weights w_i = dx_i (dx in log10 scale; dx = 1 without scale). For equal
  spacing this is (y_n - y_1)^2 / ((n-1) * sum_i dy_i^2): 1 iff every step has the same
  slope, 1/(n-1) for a single step, near 0 for a flat noisy curve. NaN if y is constant.
  It uses the same increments as the breakthroughness denominator.

p^L check
---------
With independent token errors at accuracy p, exact match on an answer of L tokens is p^L.
``predict_exact_match`` predicts exact match from the token-correctness matrix either with the
pooled per-token accuracy (mean_i p^L_i over each example's length) or with per-position
accuracies (mean_i prod_{j < L_i} p_j). Gaps between observed and predicted point at
correlated errors (e.g. carry chains), i.e. structure beyond the pure metric artefact.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

PAD_ID = 0

__all__ = ["PAD_ID", "as_padded", "token_correct", "exact_match", "token_accuracy",
           "edit_distance", "levenshtein", "target_loglik", "mean_token_prob", "brier_score",
           "per_example_metrics", "bootstrap_ci", "aggregate", "to_long", "last_step",
           "breakthroughness", "linearity", "predict_exact_match", "pl_check", "pl_curves",
           "smoothness_table"]


# ----------------------------------------------------------------------------- sequences
def as_padded(seqs: Any, lengths: Any = None, pad_id: int | None = PAD_ID,
              eos_id: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(tokens [N, W] int64, lengths [N] int64)`` for ragged or padded input."""
    if isinstance(seqs, np.ndarray) and seqs.ndim == 2:
        arr = seqs.astype(np.int64, copy=True)
        width = arr.shape[1]
        if lengths is not None:
            lens = np.minimum(np.asarray(lengths, dtype=np.int64), width)
        elif pad_id is not None:
            nonpad = arr != pad_id
            last = width - 1 - np.argmax(nonpad[:, ::-1], axis=1)
            lens = np.where(nonpad.any(axis=1), last + 1, 0).astype(np.int64)
        else:
            lens = np.full(arr.shape[0], width, dtype=np.int64)
    else:
        rows = [np.asarray(s, dtype=np.int64).reshape(-1) for s in seqs]
        lens = np.array([len(r) for r in rows], dtype=np.int64)
        if lengths is not None:
            lens = np.minimum(np.asarray(lengths, dtype=np.int64), lens)
        width = int(lens.max()) if len(rows) else 0
        fill = -1 if pad_id is None else pad_id
        arr = np.full((len(rows), width), fill, dtype=np.int64)
        for i, r in enumerate(rows):
            arr[i, :lens[i]] = r[:lens[i]]
    if eos_id is not None and arr.size:
        cols = np.arange(arr.shape[1])
        is_eos = (arr == eos_id) & (cols[None, :] < lens[:, None])
        first = np.where(is_eos.any(axis=1), np.argmax(is_eos, axis=1) + 1, lens)
        lens = np.minimum(lens, first)
    return arr, lens


def _prep(pred, target, pred_lengths=None, target_lengths=None, pad_id=PAD_ID, eos_id=None):
    p, pl = as_padded(pred, pred_lengths, pad_id, eos_id)
    t, tl = as_padded(target, target_lengths, pad_id, eos_id)
    if len(p) != len(t):
        raise ValueError(f"{len(p)} predictions vs {len(t)} targets")
    return p, pl, t, tl


def _fit_width(arr: np.ndarray, width: int, fill: int = -1) -> np.ndarray:
    if arr.shape[1] >= width:
        return arr[:, :width]
    out = np.full((arr.shape[0], width), fill, dtype=arr.dtype)
    out[:, :arr.shape[1]] = arr
    return out


def _token_correct(p, pl, t, tl):
    width = t.shape[1]
    cols = np.arange(width)[None, :]
    mask = cols < tl[:, None]
    correct = mask & (cols < pl[:, None]) & (_fit_width(p, width) == t)
    return correct, mask


def token_correct(pred, target, **kw) -> tuple[np.ndarray, np.ndarray]:
    """``(correct [N, T], mask [N, T])`` position-wise over the target length (T = max len)."""
    return _token_correct(*_prep(pred, target, **kw))


def exact_match(pred, target, **kw) -> np.ndarray:
    """1.0 iff the prediction has the target's length and identical tokens, per example."""
    p, pl, t, tl = _prep(pred, target, **kw)
    width = max(p.shape[1], t.shape[1])
    cols = np.arange(width)[None, :]
    same = (_fit_width(p, width) == _fit_width(t, width)) | (cols >= tl[:, None])
    return ((pl == tl) & same.all(axis=1)).astype(np.float64)


def token_accuracy(pred, target, **kw) -> np.ndarray:
    """Position-wise accuracy over the target length (see module docstring), per example."""
    p, pl, t, tl = _prep(pred, target, **kw)
    correct, mask = _token_correct(p, pl, t, tl)
    n = mask.sum(axis=1)
    acc = correct.sum(axis=1) / np.maximum(n, 1)
    return np.where(n > 0, acc, (pl == 0).astype(np.float64))


def _levenshtein_batch(a, la, b, lb) -> np.ndarray:
    """Row-by-row Levenshtein DP, vectorised over pairs and over columns.

    The insertion recurrence cur[j] = min(tmp[j], cur[j-1] + 1) is the min-plus scan
    cur[j] = j + cummin_k<=j (tmp[k] - k), so each row is a handful of array ops.
    Entries read at (la, lb) never depend on padding beyond either length.
    """
    n, wa = a.shape
    wb = b.shape[1]
    out = lb.astype(np.int64).copy()                  # rows with la == 0
    j = np.arange(wb + 1, dtype=np.int64)[None, :]
    prev = np.broadcast_to(j, (n, wb + 1)).copy()
    for i in range(1, wa + 1):
        cost = (a[:, i - 1, None] != b).astype(np.int64)
        tmp = np.empty_like(prev)
        tmp[:, 0] = i
        tmp[:, 1:] = np.minimum(prev[:, :-1] + cost, prev[:, 1:] + 1)
        cur = j + np.minimum.accumulate(tmp - j, axis=1)
        done = la == i
        if done.any():
            out[done] = cur[done, lb[done]]
        prev = cur
    return out


def edit_distance(pred, target, **kw) -> np.ndarray:
    """Token-level Levenshtein distance per example (int64)."""
    return _levenshtein_batch(*_prep(pred, target, **kw))


def levenshtein(a: Sequence, b: Sequence) -> int:
    """Edit distance between two token sequences of hashable items (e.g. strings' chars)."""
    vocab: dict[Any, int] = {}
    ia = [vocab.setdefault(x, len(vocab)) for x in a]
    ib = [vocab.setdefault(x, len(vocab)) for x in b]
    return int(edit_distance([ia], [ib], pad_id=None)[0])


# ----------------------------------------------------------------------------- teacher forced
def _tf_mask(shape, target_lengths=None, mask=None) -> np.ndarray:
    if mask is not None:
        return np.asarray(mask, dtype=bool)
    if target_lengths is None:
        return np.ones(shape, dtype=bool)
    return np.arange(shape[1])[None, :] < np.asarray(target_lengths)[:, None]


def target_loglik(logp, target_lengths=None, mask=None) -> np.ndarray:
    """Sum over answer tokens of log p(correct token) from teacher forcing; ``logp`` [N, L]."""
    logp = np.asarray(logp, dtype=np.float64)
    m = _tf_mask(logp.shape, target_lengths, mask)
    return np.where(m, logp, 0.0).sum(axis=1)


def mean_token_prob(logp, target_lengths=None, mask=None) -> np.ndarray:
    """Mean over answer tokens of p(correct token); NaN for empty answers."""
    logp = np.asarray(logp, dtype=np.float64)
    m = _tf_mask(logp.shape, target_lengths, mask)
    n = m.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(m, np.exp(np.where(m, logp, 0.0)), 0.0).sum(axis=1) / n


def brier_score(probs, targets, target_lengths=None, mask=None) -> np.ndarray:
    """Mean over answer tokens of sum_v (p_v - 1[v = y])^2; ``probs`` [N, L, V], lower = better."""
    probs = np.asarray(probs, dtype=np.float64)
    y = np.asarray(targets, dtype=np.int64)[:, :probs.shape[1]]
    m = _tf_mask(y.shape, target_lengths, mask)
    safe_y = np.clip(np.where(m, y, 0), 0, probs.shape[2] - 1)
    p_y = np.take_along_axis(probs, safe_y[..., None], axis=2)[..., 0]
    per_tok = (probs ** 2).sum(axis=2) - 2.0 * p_y + 1.0
    n = m.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(m, per_tok, 0.0).sum(axis=1) / n


def per_example_metrics(pred, target, *, pred_lengths=None, target_lengths=None,
                        pad_id: int | None = PAD_ID, eos_id: int | None = None,
                        logp=None, probs=None) -> pd.DataFrame:
    """All per-example metrics as a DataFrame (one row per example).

    ``logp`` [N, L] / ``probs`` [N, L, V] are teacher-forced scores aligned with the target
    tokens (column j scores target token j); positions beyond the target length are ignored.
    """
    kw = dict(pred_lengths=pred_lengths, target_lengths=target_lengths, pad_id=pad_id,
              eos_id=eos_id)
    t, tl = as_padded(target, target_lengths, pad_id, eos_id)
    df = pd.DataFrame({
        "target_len": tl,
        "exact_match": exact_match(pred, target, **kw),
        "token_accuracy": token_accuracy(pred, target, **kw),
        "edit_distance": edit_distance(pred, target, **kw).astype(np.float64),
    })
    if logp is not None:
        lp = np.asarray(logp, dtype=np.float64)[:, :t.shape[1]]
        df["target_loglik"] = target_loglik(lp, tl)
        df["mean_token_prob"] = mean_token_prob(lp, tl)
    if probs is not None:
        df["brier"] = brier_score(probs, t, tl)
    return df


# ----------------------------------------------------------------------------- bootstrap
def bootstrap_ci(values, n: int = 1000, alpha: float = 0.05,
                 seed: int = 0) -> tuple[float, float, float]:
    """``(mean, lo, hi)``: percentile bootstrap CI of the mean; non-finite values dropped."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    v = v[np.isfinite(v)]
    m = v.size
    if m == 0:
        return (np.nan, np.nan, np.nan)
    mean = float(v.mean())
    if m == 1 or n <= 0:
        return (mean, mean, mean)
    rng = np.random.default_rng(seed)
    chunk = max(1, min(n, 2_000_000 // m))
    means = np.concatenate([v[rng.integers(0, m, size=(min(chunk, n - s), m))].mean(axis=1)
                            for s in range(0, n, chunk)])
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return (mean, float(lo), float(hi))


def aggregate(data: pd.DataFrame | Mapping[str, Any], metrics: Iterable[str] | None = None,
              n: int = 1000, alpha: float = 0.05, seed: int = 0) -> pd.DataFrame:
    """Mean and bootstrap CI per metric: columns ``metric, mean, lo, hi, n``.

    ``data``: per-example DataFrame (numeric columns except ``target_len``) or dict metric ->
    values. One seed for all metrics, so equal-length metrics share resamples (paired CIs).
    """
    if isinstance(data, pd.DataFrame):
        cols = list(metrics) if metrics is not None else [
            c for c in data.columns if pd.api.types.is_numeric_dtype(data[c]) and c != "target_len"]
        items = {c: data[c].to_numpy() for c in cols}
    else:
        items = {k: data[k] for k in (metrics if metrics is not None else data)}
    rows = []
    for name, vals in items.items():
        v = np.asarray(vals, dtype=np.float64).reshape(-1)
        mean, lo, hi = bootstrap_ci(v, n=n, alpha=alpha, seed=seed)
        rows.append({"metric": name, "mean": mean, "lo": lo, "hi": hi,
                     "n": int(np.isfinite(v).sum())})
    return pd.DataFrame(rows, columns=["metric", "mean", "lo", "hi", "n"])


def to_long(agg: pd.DataFrame, **keys: Any) -> pd.DataFrame:
    """Attach identifying columns (e.g. ``arch=..., params=..., step=...``) to ``aggregate``."""
    out = agg.copy()
    for k, v in keys.items():
        out.insert(0, k, v)
    return out


def last_step(df: pd.DataFrame, group: Sequence[str] = ("arch", "params")) -> pd.DataFrame:
    """Keep only the rows of the largest ``step`` within each group (no-op without ``step``)."""
    if "step" not in df.columns:
        return df
    group = [g for g in group if g in df.columns]
    if not group:
        return df[df["step"] == df["step"].max()]
    mx = df.groupby(group)["step"].transform("max")
    return df[df["step"] == mx]


# ----------------------------------------------------------------------------- smoothness
def _ordered(y, scale=None) -> tuple[np.ndarray, np.ndarray | None]:
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    x = None if scale is None else np.asarray(scale, dtype=np.float64).reshape(-1)
    if x is not None:
        order = np.argsort(x, kind="stable")
        y, x = y[order], x[order]
    keep = np.isfinite(y) if x is None else np.isfinite(y) & np.isfinite(x)
    return y[keep], (None if x is None else x[keep])


def breakthroughness(y, scale=None) -> float:
    """BIG-bench / Schaeffer et al. eq. 1 on y ordered by scale (sorted by ``scale`` if given)."""
    y, _ = _ordered(y, scale)
    if y.size < 2:
        return np.nan
    rng = y.max() - y.min()
    if rng == 0:
        return 0.0
    sign = np.sign(np.argmax(y) - np.argmin(y))
    denom = np.sqrt(np.median(np.diff(y) ** 2))
    return float(sign * np.inf) if denom == 0 else float(sign * rng / denom)


def linearity(y, scale=None, method: str = "r2") -> float:
    """Straight-line-ness in log scale, higher = more linear (see module docstring).

    NOT the BIG-bench linearity formula (uncertain, see docstring). ``method``: "r2" or
    "increments".
    """
    y, x = _ordered(y, scale)
    if y.size < 3 or np.ptp(y) == 0:
        return np.nan
    x = np.arange(y.size, dtype=np.float64) if x is None else np.log10(x)
    if method == "r2":
        xc, yc = x - x.mean(), y - y.mean()
        sxx = (xc ** 2).sum()
        if sxx == 0:
            return np.nan
        resid = yc - (xc * yc).sum() / sxx * xc
        return float(1.0 - (resid ** 2).sum() / (yc ** 2).sum())
    if method == "increments":
        dx, dy = np.diff(x), np.diff(y)
        if np.any(dx <= 0):
            raise ValueError("scales must be distinct for method='increments'")
        s = dy / dx
        return float((dx * s).sum() ** 2 / (dx.sum() * (dx * s ** 2).sum()))
    raise ValueError(f"unknown linearity method {method!r}")


def predict_exact_match(correct, mask, method: str = "pooled") -> float:
    """Exact match predicted from token correctness assuming independent token errors.

    pooled: p = sum(correct)/sum(mask); prediction = mean_i p ** L_i.
    positional: p_j = accuracy at position j over examples with L_i > j;
    prediction = mean_i prod_{j < L_i} p_j.
    """
    c = np.asarray(correct, dtype=bool)
    m = np.asarray(mask, dtype=bool)
    lens = m.sum(axis=1)
    if method == "pooled":
        p = (c & m).sum() / max(m.sum(), 1)
        return float(np.mean(p ** lens))
    if method == "positional":
        cnt = m.sum(axis=0)
        pj = np.where(cnt > 0, (c & m).sum(axis=0) / np.maximum(cnt, 1), 1.0)
        with np.errstate(divide="ignore"):
            logp = np.log(pj)                                  # zero accuracy -> -inf -> 0
        cum = np.concatenate([[0.0], np.cumsum(logp)])
        return float(np.mean(np.exp(cum[lens])))
    raise ValueError(f"unknown method {method!r}")


def pl_check(correct, mask, exact=None) -> dict[str, float]:
    """Observed exact match vs the two p^L predictions for one model.

    ``exact``: per-example exact match (use it when predictions may be longer than targets);
    otherwise observed = all target positions correct.
    """
    c, m = np.asarray(correct, bool), np.asarray(mask, bool)
    obs = (c | ~m).all(axis=1).astype(float) if exact is None else np.asarray(exact, float)
    return {
        "observed": float(obs.mean()),
        "token_accuracy": float((c & m).sum() / max(m.sum(), 1)),
        "predicted_pooled": predict_exact_match(c, m, "pooled"),
        "predicted_positional": predict_exact_match(c, m, "positional"),
        "mean_len": float(m.sum(axis=1).mean()),
    }


def pl_curves(records: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Both curves across a sweep. Each record: ``correct``, ``mask`` (optional ``exact``) plus
    identifying keys (e.g. ``arch``, ``params``, ``step``) copied to the output rows."""
    rows = []
    for r in records:
        keys = {k: v for k, v in r.items() if k not in ("correct", "mask", "exact")}
        rows.append({**keys, **pl_check(r["correct"], r["mask"], r.get("exact"))})
    return pd.DataFrame(rows)


def smoothness_table(long_df: pd.DataFrame, scale_col: str = "params",
                     value_col: str = "mean", group: Sequence[str] = ("arch", "metric"),
                     ) -> pd.DataFrame:
    """Breakthroughness and both linearity indices per (arch, metric) of a long DataFrame.

    Uses the last step per (arch, scale) when a ``step`` column is present, and the mean over
    rows sharing a scale (seeds). Note that for
    lower-is-better metrics (edit distance, Brier) breakthroughness is negative on improvement.
    """
    df = last_step(long_df, ("arch", scale_col, "metric"))
    # several seeds per scale (train.num_seeds): their mean is the curve's point at that scale
    df = df.groupby([*group, scale_col], as_index=False, sort=True)[value_col].mean()
    rows = []
    for key, g in df.groupby(list(group), sort=True):
        y, x = g[value_col].to_numpy(), g[scale_col].to_numpy()
        rows.append({**dict(zip(group, key if isinstance(key, tuple) else (key,))),
                     "n_scales": len(g), "breakthroughness": breakthroughness(y, x),
                     "linearity_r2": linearity(y, x, "r2"),
                     "linearity_increments": linearity(y, x, "increments")})
    return pd.DataFrame(rows)
