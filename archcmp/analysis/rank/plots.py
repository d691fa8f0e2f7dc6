"""Reporting for the attention-rank probe (:mod:`archcmp.analysis.rank.metrics`): markdown summary,
figures, and the causal-softmax determinant demo (re-exported by the package :mod:`archcmp.analysis.rank`).

All functions take the DataFrames produced by ``rank.attention_block_metrics`` /
``rank.rank_collapse_by_segment``, optionally concatenated over runs with an ``arch`` column
(and a ``step`` column for training curves).  A missing ``arch`` column is treated as a single
group called ``"all"``.  matplotlib is imported lazily with the Agg backend; every plotting
function returns the Figure and saves it when ``path`` is given.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from archcmp.analysis.rank.metrics import matrix_metrics

SUMMARY_METRICS = ("effective_rank", "stable_rank", "numerical_rank_f32", "numerical_rank_f64",
                   "log10_cond", "logdet_exact", "logdet_generic")


def _arch_groups(df: pd.DataFrame, arch_col: str):
    if arch_col in df.columns:
        return [(str(a), g) for a, g in df.groupby(arch_col, sort=True)]
    return [("all", df)]


def _fmt(x: float) -> str:
    if not np.isfinite(x):
        return str(x)
    return f"{x:.3g}" if abs(x) < 1e4 else f"{x:.3e}"


def markdown_table(df: pd.DataFrame, arch_col: str = "arch", metrics=SUMMARY_METRICS) -> str:
    """Markdown table, one row per architecture: mean ± std of each metric, fraction full rank.

    Non-finite values (e.g. ``log10_cond = inf`` for exactly singular matrices, NaN
    ``logdet_exact`` for non-triangular blocks) are left out of mean/std; the column
    ``n_inf_cond`` counts the infinite condition numbers so they are not silently dropped.
    ``full_f32`` / ``full_f64`` are the fractions of matrices whose numerical rank equals
    ``min(n, n_k)`` at the float32 / float64 tolerance; ``sign_mismatch`` is the fraction of
    triangular matrices where numpy's slogdet sign is not +1 (the exact determinant is > 0).
    """
    metrics = [m for m in metrics if m in df.columns]
    head = ["arch", "matrices"] + list(metrics) + ["full_f32", "full_f64", "n_inf_cond", "sign_mismatch"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arch, g in _arch_groups(df, arch_col):
        cells = [arch, str(len(g))]
        for m in metrics:
            v = g[m].to_numpy(dtype=float)
            v = v[np.isfinite(v)]
            cells.append(f"{_fmt(v.mean())} ± {_fmt(v.std())}" if v.size else "n/a")
        k = np.minimum(g["n"], g.get("n_k", g["n"]))
        cells.append(f"{np.mean(g['numerical_rank_f32'] == k):.3f}")
        cells.append(f"{np.mean(g['numerical_rank_f64'] == k):.3f}")
        cells.append(str(int(np.isinf(g["log10_cond"].to_numpy(float)).sum())) if "log10_cond" in g else "n/a")
        tri = g[g["is_triangular"].astype(bool)] if "is_triangular" in g else g.iloc[:0]
        cells.append(f"{np.mean(tri['slogdet_sign'] != 1):.3f}" if len(tri) else "n/a")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (imported on first use)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _finish(fig, path):
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def plot_rank_heatmaps(df: pd.DataFrame, metric: str = "effective_rank", arch_col: str = "arch",
                       path=None):
    """Layer x head heatmap of the mean ``metric``, one panel per architecture, shared colour scale."""
    plt = pyplot()
    groups = _arch_groups(df, arch_col)
    tables = [(a, g.groupby(["layer", "head"])[metric].mean().unstack("head")) for a, g in groups]
    finite = np.concatenate([t.to_numpy(float).ravel() for _, t in tables])
    finite = finite[np.isfinite(finite)]
    vmin, vmax = (finite.min(), finite.max()) if finite.size else (0, 1)
    fig, axes = plt.subplots(1, len(tables), figsize=(3.2 * len(tables) + 1.2, 3.4), squeeze=False,
                             constrained_layout=True)
    im = None
    for ax, (arch, t) in zip(axes[0], tables):
        im = ax.imshow(t.to_numpy(float), vmin=vmin, vmax=vmax, cmap="viridis", aspect="auto", origin="lower")
        ax.set_title(arch)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_xticks(range(t.shape[1]), t.columns)
        ax.set_yticks(range(t.shape[0]), t.index)
    fig.colorbar(im, ax=list(axes[0]), label=f"mean {metric}")
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def plot_singular_spectra(df: pd.DataFrame, arch_col: str = "arch", per_arch: int = 3, seed: int = 0,
                          path=None):
    """Singular values (log y, normalised by sigma_max) of ``per_arch`` random matrices per arch.

    Needs the ``sv`` column (``attention_block_metrics(..., keep_spectra=True)``).  Dotted
    lines mark the float32 and float64 relative rank tolerances of the largest plotted size.
    """
    plt = pyplot()
    if "sv" not in df.columns:
        raise ValueError("no 'sv' column: call attention_block_metrics(..., keep_spectra=True)")
    groups = _arch_groups(df, arch_col)
    fig, ax = plt.subplots(figsize=(6, 4))
    rng = np.random.default_rng(seed)
    nmax = 1
    for i, (arch, g) in enumerate(groups):
        pick = rng.choice(len(g), size=min(per_arch, len(g)), replace=False)
        for j, r in enumerate(pick):
            row = g.iloc[r]
            sv = np.asarray(row["sv"], float)
            nmax = max(nmax, int(row["n"]), int(row.get("n_k", row["n"])))
            with np.errstate(divide="ignore", invalid="ignore"):
                ax.semilogy(np.arange(1, sv.size + 1), sv / sv[0], color=f"C{i}", alpha=0.8,
                            label=arch if j == 0 else None)
    for eps, name in ((np.finfo(np.float32).eps, "f32 tol"), (np.finfo(np.float64).eps, "f64 tol")):
        ax.axhline(nmax * eps, ls=":", color="k", lw=0.8)
        ax.text(1, nmax * eps, name, va="bottom", fontsize=7)
    ax.set_xlabel("index i")
    ax.set_ylabel("sigma_i / sigma_max")
    ax.legend()
    return _finish(fig, path)


def plot_metric_vs_step(df: pd.DataFrame, metric: str = "effective_rank", step_col: str = "step",
                        arch_col: str = "arch", path=None):
    """Mean ``metric`` (± std band over layers/heads/examples) against training step, per arch."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (arch, g) in enumerate(_arch_groups(df, arch_col)):
        v = g[[step_col, metric]].replace([np.inf, -np.inf], np.nan)
        s = v.groupby(step_col)[metric].agg(["mean", "std"]).sort_index()
        ax.plot(s.index, s["mean"], marker="o", ms=3, color=f"C{i}", label=arch)
        ax.fill_between(s.index, s["mean"] - s["std"].fillna(0), s["mean"] + s["std"].fillna(0),
                        color=f"C{i}", alpha=0.15)
    ax.set_xlabel(step_col)
    ax.set_ylabel(metric)
    ax.legend()
    return _finish(fig, path)


def plot_residual_vs_depth(df: pd.DataFrame, value: str = "relative", arch_col: str = "arch",
                           path=None):
    """Rank-collapse residual (``rank_collapse_by_segment`` output) against layer, log y, per arch."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (arch, g) in enumerate(_arch_groups(df, arch_col)):
        s = g.groupby("layer")[value].agg(["mean", "min", "max"]).sort_index()
        ax.semilogy(s.index, s["mean"], marker="o", color=f"C{i}", label=arch)
        ax.fill_between(s.index, s["min"], s["max"], color=f"C{i}", alpha=0.15)
    ax.set_xlabel("layer (depth)")
    ax.set_ylabel(f"{value} residual ||X - 1x^T|| / ||X||" if value == "relative" else value)
    ax.legend()
    return _finish(fig, path)


# ----------------------------------------------------------------------------- causal demo
def causal_softmax(scores, causal: bool = True) -> np.ndarray:
    """Row softmax of ``scores [..., n, n]``, strictly-upper part masked (exact zeros) if causal."""
    s = np.asarray(scores)
    n = s.shape[-1]
    if causal:
        s = np.where(np.tril(np.ones((n, n), bool)), s, -np.inf)
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def causal_softmax_demo(n: int = 128, d: int = 16, seed: int = 0, construction: str = "scaled",
                        dtype: str = "float64", causal: bool = True) -> dict:
    """Exact vs generic log-determinant of one random causal softmax matrix.

    Construction: ``Q, K ~ N(0, 1)`` of shape ``[n, d]`` (``numpy.random.default_rng(seed)``,
    Q drawn first), scores ``Q K^T / sqrt(d)`` (``"scaled"``, the transformer convention, score
    std ~1) or ``Q K^T`` (``"unscaled"``, score std ~sqrt(d)); causal softmax computed in
    ``dtype`` (``"float32"`` mimics a captured model; the result is then cast to float64).
    ``causal=False`` gives the bidirectional softmax of the same scores for comparison
    (``logdet_exact``/``logdet_analytic`` are then NaN).

    The generic value is rounding noise for these matrices (condition numbers > 1e17): it
    changes with how the softmax is rounded, e.g. ``exp(s - lse)`` instead of
    ``exp(s - max) / sum``, and possibly with the LAPACK build.

    Returns a dict with ``logdet_exact`` (sum of log-diagonal of the stored matrix),
    ``logdet_analytic`` (sum of float64 log-softmax diagonal from the scores),
    ``slogdet_sign``/``logdet_generic`` (numpy), their difference, ``log10_cond``,
    numerical ranks at f32/f64 tolerance, the effective rank and the smallest diagonal entry.
    """
    rng = np.random.default_rng(seed)
    Q, K = rng.standard_normal((n, d)), rng.standard_normal((n, d))
    scale = {"scaled": 1.0 / np.sqrt(d), "unscaled": 1.0}[construction]
    S = (Q @ K.T) * scale
    P = causal_softmax(S.astype(dtype), causal).astype(np.float64)
    Sm = np.where(np.tril(np.ones((n, n), bool)) | (not causal), S, -np.inf)
    mx = Sm.max(axis=-1)
    lse = mx + np.log(np.exp(Sm - mx[:, None]).sum(axis=-1))
    m = matrix_metrics(P)
    analytic = float(np.sum(np.diag(S) - lse)) if causal else np.nan
    keys = ("logdet_exact", "slogdet_sign", "logdet_generic", "logdet_diff", "log10_cond",
            "numerical_rank_f32", "numerical_rank_f64", "effective_rank")
    return {"construction": construction, "dtype": dtype, "causal": causal, "n": n, "d": d, "seed": seed,
            "logdet_analytic": analytic, **{k: m[k].item() for k in keys}, "min_diag": float(np.diag(P).min())}


def causal_softmax_demo_table(seeds=range(4), constructions=("scaled", "unscaled"),
                              dtypes=("float64", "float32"), n: int = 128, d: int = 16,
                              causal=(True,)) -> pd.DataFrame:
    """:func:`causal_softmax_demo` over a grid of seeds / constructions / dtypes / masks."""
    return pd.DataFrame([causal_softmax_demo(n, d, s, c, t, m) for m in causal for c in constructions
                         for t in dtypes for s in seeds])


def plot_rank_vs_loss(joined: pd.DataFrame, rel: str = "effective_rank_rel_causal", path=None):
    """One panel per size: ``rel`` against eval loss at every checkpoint, a line per run (seed)
    joined in step order, a colour per arch/kind; the last checkpoint is drawn larger.
    ``joined`` has columns size, arch, kind, run, step, eval_loss and ``rel``."""
    plt = pyplot()
    sizes = list(dict.fromkeys(joined["size"]))
    labels = list(dict.fromkeys(joined["arch"] + np.where(joined["kind"] == "self", "", "/" + joined["kind"])))
    fig, axes = plt.subplots(1, len(sizes), figsize=(5.2 * len(sizes), 4.2), squeeze=False, sharey=True)
    for ax, size in zip(axes[0], sizes):
        g = joined[joined["size"] == size]
        for run_kind, r in g.sort_values("step").groupby(["run", "kind"], sort=False):
            lab = r["arch"].iloc[0] + ("" if run_kind[1] == "self" else "/" + run_kind[1])
            c = f"C{labels.index(lab) % 10}"
            ax.plot(r["eval_loss"], r[rel], marker="o", ms=3, lw=1, color=c, alpha=0.8)
            ax.plot(r["eval_loss"].iloc[-1:], r[rel].iloc[-1:], marker="o", ms=7, color=c)
        ax.set_title(f"{size}: one line per seed, larger dot = last checkpoint", fontsize=9)
        ax.set_xlabel("eval loss (nats / target token)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("effective rank / uniform causal of same n")
    handles = [plt.Line2D([], [], color=f"C{i % 10}", marker="o", label=lab) for i, lab in enumerate(labels)]
    axes[0][-1].legend(handles=handles, fontsize=7)
    return _finish(fig, path)
