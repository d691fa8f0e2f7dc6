"""Rank comparisons that do not move with n, and rank against model quality.

* :func:`add_rel_causal`: effective rank divided by the effective rank of the uniform causal matrix
  of the same n (:func:`~archcmp.analysis.rank.metrics.uniform_causal_erank`), so blocks of
  different sizes (encoder n=64, decoder n=63, prefix block ~30) can be compared.
* :func:`checkpoint_means`: that ratio per (run, attention kind, step), mean over layers, heads and
  examples.
* :func:`prefix_contrast`: inside the prefix-LM's own matrices, the causal (target x target) block
  minus the bidirectional prefix block, per run and step: the same model, the same examples, only
  the mask differs.
* :func:`read_evals`, :func:`rank_quality`: eval loss at each checkpoint (``metrics.jsonl``) and the
  Spearman correlation, per run, between the ratio and eval loss over the checkpoints.
* :func:`over_seeds`: mean and 95% t-interval over seeds of any per-run column.

The frames are the long ``metrics.csv`` rows of :mod:`archcmp.analysis.rank.cli` plus a ``seed``
column per run.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from archcmp.analysis.rank.metrics import uniform_causal_erank
from archcmp.claims.evidence import mean_interval
from archcmp.tracking.base import read_jsonl

REL = "effective_rank_rel_causal"
RUN_KEYS = ["run", "arch", "size", "n_heads", "heads_tag", "seed"]


def add_rel_causal(attn: pd.DataFrame) -> pd.DataFrame:
    """``attn`` with column :data:`REL` (NaN for non-square blocks such as cross-attention)."""
    n = attn["n"].astype(int)
    ref = n.map(uniform_causal_erank)
    return attn.assign(**{REL: np.where(n == attn["n_k"].astype(int), attn["effective_rank"] / ref, np.nan)})


def checkpoint_means(attn: pd.DataFrame) -> pd.DataFrame:
    """Mean :data:`REL` and ``n`` per run, attention kind and step (square kinds only)."""
    a = attn if REL in attn else add_rel_causal(attn)
    a = a[a[REL].notna()]
    keys = [k for k in RUN_KEYS if k in a] + ["kind", "step"]
    return a.groupby(keys, sort=True).agg(**{REL: (REL, "mean"), "n": ("n", "mean")}).reset_index()


def prefix_contrast(means: pd.DataFrame) -> pd.DataFrame:
    """Per prefix-LM run and step: ``prefix`` and ``causal`` block ratios and ``causal_minus_prefix``."""
    m = means[means["kind"].isin(["prefix", "causal"])]
    if set(m["kind"]) != {"prefix", "causal"}:  # no prefix-LM run, or no targets in its probe texts
        return pd.DataFrame(columns=[*RUN_KEYS, "step", "prefix", "causal", "causal_minus_prefix"])
    keys = [k for k in RUN_KEYS if k in m] + ["step"]
    w = m.pivot_table(index=keys, columns="kind", values=REL).reset_index()
    w.columns.name = None
    w = w.dropna(subset=["prefix", "causal"])
    return w.assign(causal_minus_prefix=w["causal"] - w["prefix"])


def read_evals(run_dir: str | Path) -> pd.DataFrame:
    """``step, eval_loss, eval_accuracy`` of every evaluation in ``run_dir/metrics.jsonl`` (the
    last row of a step wins: a resumed run may log a step again)."""
    rows = [r for r in read_jsonl(Path(run_dir) / "metrics.jsonl") if "eval_loss" in r]
    d = pd.DataFrame([{"step": int(r["step"]), "eval_loss": float(r["eval_loss"]),
                       "eval_accuracy": float(r.get("eval_accuracy", np.nan))} for r in rows],
                     columns=["step", "eval_loss", "eval_accuracy"])
    return d.drop_duplicates("step", keep="last").sort_values("step", ignore_index=True)


def spearman(x, y) -> float:
    """Spearman rank correlation (average ranks for ties); NaN below 3 points or when either
    variable is constant."""
    x, y = pd.Series(np.asarray(x, float)), pd.Series(np.asarray(y, float))
    ok = x.notna() & y.notna()
    x, y = x[ok].rank(), y[ok].rank()
    if len(x) < 3 or x.nunique() < 2 or y.nunique() < 2:
        return np.nan
    return float(np.corrcoef(x, y)[0, 1])


def join_evals(means: pd.DataFrame, evals: pd.DataFrame) -> pd.DataFrame:
    """Checkpoint means with the eval loss/accuracy of the same run and step (inner join)."""
    return means.merge(evals, on=["run", "step"], how="inner")


def rank_quality(joined: pd.DataFrame) -> pd.DataFrame:
    """Per (run, kind): checkpoints used, Spearman of :data:`REL` vs eval loss over them, and the
    first and last ratio and loss."""
    rows = []
    keys = [k for k in RUN_KEYS if k in joined] + ["kind"]
    for key, g in joined.sort_values("step").groupby(keys, sort=True):
        rows.append({**dict(zip(keys, key)), "checkpoints": len(g),
                     "spearman_rel_vs_eval_loss": spearman(g[REL], g["eval_loss"]),
                     "first_step": int(g["step"].iloc[0]), "last_step": int(g["step"].iloc[-1]),
                     "rel_first": g[REL].iloc[0], "rel_last": g[REL].iloc[-1],
                     "eval_loss_first": g["eval_loss"].iloc[0], "eval_loss_last": g["eval_loss"].iloc[-1]})
    return pd.DataFrame(rows)


def over_seeds(table: pd.DataFrame, value: str, by: list[str]) -> pd.DataFrame:
    """Mean and 95% t-interval over seeds of ``value`` per ``by`` group (NaN bounds below 2 seeds)."""
    rows = []
    for key, g in table.groupby(by, sort=True):
        g = g[g[value].notna()]
        mean, lo, hi = mean_interval(g[value].to_numpy())
        rows.append({**dict(zip(by, key if isinstance(key, tuple) else (key,))), "n_seeds": int(g["seed"].nunique()),
                     "mean": mean, "lo": lo, "hi": hi})
    return pd.DataFrame(rows, columns=[*by, "n_seeds", "mean", "lo", "hi"])
