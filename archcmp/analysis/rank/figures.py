"""The rank probe's figures and its quality tables: heatmaps, singular spectra and metrics against
the step per figure group (a size; its head counts), rank collapse against depth, and effective rank
against the eval loss over checkpoints (``checkpoints.csv``, ``prefix_contrast.csv``,
``rank_quality.csv``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


# ----------------------------------------------------------------------------- grouping
def figure_groups(infos: list[dict]) -> dict[str, list[str]]:
    """Figure group -> run names: one group per size (runs with that size's most common head
    count), plus ``<size>-heads`` with every head count of the archs that have several."""
    df = pd.DataFrame(infos)
    groups: dict[str, list[str]] = {}
    for size, g in df.groupby("size", sort=False):
        modal = g["n_heads"].mode().iloc[0]
        groups[str(size)] = list(g.loc[g["n_heads"] == modal, "run"])
        multi = [a for a, ga in g.groupby("arch") if ga["n_heads"].nunique() > 1]
        if multi:
            groups[f"{size}-heads"] = list(g.loc[g["arch"].isin(multi), "run"])
    return groups


def _panel(df: pd.DataFrame, with_heads: bool) -> pd.Series:
    base = df["arch"] + (" " + df["heads_tag"] if with_heads else "")
    return np.where(df["kind"].isin(["self"]), base, base + "/" + df["kind"])


# ----------------------------------------------------------------------------- figures
def _collapse_figure(coll: pd.DataFrame, infos: list[dict], runs: list[str], path: Path) -> Path:
    from archcmp.analysis.rank.plots import pyplot
    from archcmp.analysis.common.capture import VARIANTS

    plt = pyplot()
    final = {i["run"]: i["final_step"] for i in infos}
    panels = [(r, s) for r in runs for s in coll.loc[coll["run"] == r, "stack"].unique()]
    cols = min(4, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.9 * rows), squeeze=False)
    for ax in axes.ravel()[len(panels):]:
        ax.axis("off")
    for ax, (run, stack) in zip(axes.ravel(), panels):
        g = coll[(coll["run"] == run) & (coll["stack"] == stack)]
        for i, v in enumerate(VARIANTS):
            for step, ls in ((0, "--"), (final[run], "-")):
                s = g[(g["variant"] == v) & (g["step"] == step)].groupby("layer")["relative"].mean()
                ax.semilogy(s.index, np.maximum(s.to_numpy(), 1e-12), ls=ls, marker="o", ms=3, color=f"C{i}",
                            label=f"{v} ({'init' if step == 0 else 'trained'})")
        r = g.iloc[0]
        ax.set_title(f"{r['arch']} {r['heads_tag']}" + ("" if stack == "stack" else f" [{stack}]"), fontsize=9)
        ax.set_xlabel("depth")
        ax.set_ylabel("relative residual")
    axes.ravel()[0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def make_figures(attn: pd.DataFrame, coll: pd.DataFrame, infos: list[dict], out: Path) -> dict[str, Path]:
    from archcmp.analysis.rank import plots as rank_plots

    plt = rank_plots.pyplot()
    final = {i["run"]: i["final_step"] for i in infos}
    attn = attn.assign(final=attn["step"] == attn["run"].map(final))
    figs: dict[str, Path] = {}
    for tag, runs in figure_groups(infos).items():
        g = attn[attn["run"].isin(runs)]
        g = g.assign(panel=_panel(g, tag.endswith("-heads")))
        for when, sel in (("init", g["step"] == 0), ("trained", g["final"])):
            p = out / f"heatmap_effective_rank_{tag}_{when}.png"
            plt.close(rank_plots.plot_rank_heatmaps(g[sel], "effective_rank", arch_col="panel", path=p))
            figs[p.stem] = p
            p = out / f"spectra_{tag}_{when}.png"
            fig = rank_plots.plot_singular_spectra(g[sel & (g["kind"] != "cross")], arch_col="panel", per_arch=3, path=p)
            fig.axes[0].set_title(f"{tag}: singular values at {when}", fontsize=9)
            fig.savefig(p, dpi=120)
            plt.close(fig)
            figs[p.stem] = p
        for metric in ("effective_rank", "log10_cond"):
            p = out / f"{metric}_vs_step_{tag}.png"
            v = g.assign(log10_cond=g["log10_cond"].replace(np.inf, 17.0))  # inf cond drawn at 1e17
            plt.close(rank_plots.plot_metric_vs_step(v, metric, arch_col="panel", path=p))
            figs[p.stem] = p
        p = out / f"rank_collapse_{tag}.png"
        figs[p.stem] = _collapse_figure(coll, infos, runs, p)
    return figs


def write_quality(attn: pd.DataFrame, infos: list[dict], out: Path) -> tuple[dict[str, Path], dict[str, pd.DataFrame]]:
    """``checkpoints.csv`` (effective rank relative to the uniform causal matrix per run, kind and
    step, with that step's eval loss when the run evaluated there), ``prefix_contrast.csv``,
    ``rank_quality.csv`` (Spearman per run and kind) and the figure ``rank_vs_eval_loss.png``.
    -> (figures, the frames by file stem)."""
    from archcmp.analysis.rank import quality as q
    from archcmp.analysis.rank.plots import plot_rank_vs_loss, pyplot

    runs = pd.DataFrame(infos)
    seeds = runs.set_index("run")["seed"] if "seed" in runs else pd.Series(0, index=runs["run"])
    means = q.checkpoint_means(attn.assign(seed=attn["run"].map(seeds)))
    evals = [q.read_evals(i["run_dir"]).assign(run=i["run"]) for i in infos if i.get("run_dir")]
    evals = pd.concat(evals, ignore_index=True) if evals else pd.DataFrame(columns=["run", "step", "eval_loss"])
    joined = q.join_evals(means, evals)
    frames = {"checkpoints": means.merge(evals, on=["run", "step"], how="left"),
              "prefix_contrast": q.prefix_contrast(means), "rank_quality": q.rank_quality(joined)}
    for stem, frame in frames.items():
        frame.to_csv(out / f"{stem}.csv", index=False, float_format="%.6g")
    if joined.empty:
        return {}, frames
    modal = runs.groupby("size")["n_heads"].agg(lambda s: s.mode().iloc[0])
    joined = joined[joined["n_heads"] == joined["size"].map(modal)]
    p = out / "rank_vs_eval_loss.png"
    pyplot().close(plot_rank_vs_loss(joined, q.REL, path=p))
    return {p.stem: p}, frames
