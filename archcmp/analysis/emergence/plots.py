"""Figures and markdown tables for the emergence probe.

Inputs are the long-format DataFrames built with ``emergence_metrics.aggregate`` +
``to_long``: columns ``arch, <scale_col> (default "params"), [step], metric, mean, lo, hi``.
Figures use ``matplotlib.figure.Figure`` directly (Agg canvas, no pyplot global state) and are
returned; pass ``out=`` to also save them.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from archcmp.analysis.emergence.metrics import last_step, smoothness_table

ARCH_ORDER = ("encoder", "decoder", "prefix_lm", "encdec")
LOWER_IS_BETTER = {"edit_distance", "brier"}

__all__ = ["ARCH_ORDER", "arch_colors", "plot_scaling_panels", "plot_pl_check",
           "plot_grokking", "markdown_table", "metric_table", "smoothness_markdown"]


def _archs(values) -> list[str]:
    present = list(dict.fromkeys(values))
    return [a for a in ARCH_ORDER if a in present] + sorted(a for a in present if a not in ARCH_ORDER)


def arch_colors(archs: Sequence[str]) -> dict[str, Any]:
    """Stable colour per architecture (the four known ones always get the same colour)."""
    palette = [f"C{i}" for i in range(10)]
    out, extra = {}, len(ARCH_ORDER)
    for a in archs:
        if a in ARCH_ORDER:
            out[a] = palette[ARCH_ORDER.index(a)]
        else:
            out[a] = palette[extra % 10]
            extra += 1
    return out


def _grid(n: int, ncols: int, size=(4.0, 3.2)) -> tuple[Figure, list]:
    ncols = max(1, min(ncols, n))
    nrows = int(np.ceil(n / ncols))
    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def _save(fig: Figure, out) -> Figure:
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=130)
    return fig


def plot_scaling_panels(df: pd.DataFrame, metrics: Sequence[str] | None = None,
                        scale_col: str = "params", out=None, ncols: int = 3,
                        title: str | None = None) -> Figure:
    """One panel per metric; x = scale (log), one line per arch with its CI band.

    Uses the last ``step`` per (arch, scale, metric) when a ``step`` column is present.
    """
    d = last_step(df, ("arch", scale_col, "metric"))
    metrics = list(metrics) if metrics is not None else list(dict.fromkeys(d["metric"]))
    archs = _archs(d["arch"])
    colors = arch_colors(archs)
    fig, axes = _grid(len(metrics), ncols)
    for ax, metric in zip(axes, metrics):
        dm = d[d["metric"] == metric]
        for arch in archs:
            g = dm[dm["arch"] == arch].sort_values(scale_col)
            if g.empty:
                continue
            x = g[scale_col].to_numpy(float)
            ax.plot(x, g["mean"], marker="o", ms=3, color=colors[arch], label=arch)
            if {"lo", "hi"} <= set(g.columns):
                ax.fill_between(x, g["lo"], g["hi"], color=colors[arch], alpha=0.2, lw=0)
        ax.set_xscale("log")
        arrow = " (lower = better)" if metric in LOWER_IS_BETTER else ""
        ax.set_title(metric + arrow, fontsize=10)
        ax.set_xlabel(scale_col)
        ax.grid(alpha=0.3)
    if axes:
        axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return _save(fig, out)


def plot_pl_check(curves: pd.DataFrame, scale_col: str = "params", out=None,
                  title: str | None = None) -> Figure:
    """Observed exact match vs the p^L predictions (``pl_curves`` output) per architecture.

    Left: linear y. Right: log y, where the small-scale end (exact match near 0) is visible.
    Solid = observed, dashed = pooled p^L, dotted = per-position prediction.
    """
    d = last_step(curves, ("arch", scale_col)) if "arch" in curves.columns else curves
    archs = _archs(d["arch"]) if "arch" in d.columns else [None]
    colors = arch_colors([a for a in archs if a is not None]) if archs != [None] else {None: "C0"}
    fig, axes = _grid(2, 2)
    styles = [("observed", "-", "observed"), ("predicted_pooled", "--", "p^L (pooled p)"),
              ("predicted_positional", ":", "prod_j p_j")]
    for ax, logy in zip(axes, (False, True)):
        for arch in archs:
            g = d if arch is None else d[d["arch"] == arch]
            g = g.sort_values(scale_col)
            x = g[scale_col].to_numpy(float)
            for col, ls, lab in styles:
                if col not in g.columns:
                    continue
                y = g[col].to_numpy(float)
                if logy:
                    y = np.where(y > 0, y, np.nan)
                name = lab if arch is None else f"{arch}: {lab}"
                ax.plot(x, y, ls=ls, marker="o" if col == "observed" else None, ms=3,
                        color=colors[arch], label=name)
        ax.set_xscale("log")
        if logy:
            ax.set_yscale("log")
        ax.set_xlabel(scale_col)
        ax.set_ylabel("exact match")
        ax.set_title("p^L check" + (" (log y)" if logy else ""), fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    if title:
        fig.suptitle(title)
    return _save(fig, out)


def plot_grokking(df: pd.DataFrame, step_col: str = "step", wd_col: str = "weight_decay",
                  train_col: str = "train_acc", val_col: str = "val_acc", out=None,
                  logx: bool = True, title: str | None = None) -> Figure:
    """Train and validation accuracy vs step, one panel per arch.

    ``df`` columns: ``arch, step, weight_decay, train_acc, val_acc`` (names configurable).
    ``weight_decay`` may be a bool or a value (0 = off). Colour = split, line style =
    weight decay (solid on, dashed off).
    """
    archs = _archs(df["arch"])
    fig, axes = _grid(len(archs), len(archs) if len(archs) <= 4 else 3)
    for ax, arch in zip(axes, archs):
        g = df[df["arch"] == arch]
        for wd, gw in g.groupby(wd_col, sort=True):
            on = bool(wd)
            gw = gw.sort_values(step_col)
            x = gw[step_col].to_numpy(float)
            if logx:
                x = np.where(x > 0, x, np.nan)
            tag = f"wd={wd}" if not isinstance(wd, (bool, np.bool_)) else ("wd on" if on else "wd off")
            ax.plot(x, gw[train_col], color="C0", ls="-" if on else "--", label=f"train, {tag}")
            ax.plot(x, gw[val_col], color="C3", ls="-" if on else "--", label=f"val, {tag}")
        if logx:
            ax.set_xscale("log")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(arch, fontsize=10)
        ax.set_xlabel(step_col)
        ax.set_ylabel("accuracy")
        ax.grid(alpha=0.3)
    if axes:
        axes[0].legend(fontsize=7)
    if title:
        fig.suptitle(title)
    return _save(fig, out)


# ----------------------------------------------------------------------------- tables
def markdown_table(df: pd.DataFrame, index: bool = True, floatfmt: str = ".3g") -> str:
    """Render a DataFrame as a GitHub markdown table (no ``tabulate`` dependency)."""
    def fmt(v):
        if isinstance(v, (float, np.floating)):
            return "nan" if np.isnan(v) else format(v, floatfmt)
        return str(v)
    cols = ([df.index.name or ""] if index else []) + [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join(["---"] * len(cols)) + "|"]
    for idx, row in df.iterrows():
        cells = ([fmt(idx)] if index else []) + [fmt(v) for v in row.tolist()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def metric_table(df: pd.DataFrame, scale: Any = None, scale_col: str = "params",
                 floatfmt: str = ".3g") -> str:
    """Markdown table metric x arch with ``mean [lo, hi]``.

    ``scale=None``: each arch at its largest scale (the scale is shown in the header).
    """
    d = last_step(df, ("arch", scale_col, "metric"))
    if scale is not None:
        d = d[d[scale_col] == scale]
    else:
        d = d[d[scale_col] == d.groupby("arch")[scale_col].transform("max")]
    archs = _archs(d["arch"])
    metrics = list(dict.fromkeys(d["metric"]))
    table = pd.DataFrame(index=pd.Index(metrics, name="metric"))
    for arch in archs:
        g = d[d["arch"] == arch].set_index("metric")
        sc = g[scale_col].iloc[0] if len(g) else np.nan
        cells = []
        for m in metrics:
            if m not in g.index:
                cells.append("")
                continue
            r = g.loc[m]
            cell = format(r["mean"], floatfmt)
            if "lo" in g.columns and np.isfinite(r["lo"]):
                cell += f" [{format(r['lo'], floatfmt)}, {format(r['hi'], floatfmt)}]"
            cells.append(cell)
        table[f"{arch} ({scale_col}={format(float(sc), '.3g')})"] = cells
    return markdown_table(table)


def smoothness_markdown(df: pd.DataFrame, scale_col: str = "params",
                        floatfmt: str = ".3g") -> str:
    """Markdown table: per metric, breakthroughness (B) and linearity R^2 (L) per arch.

    ``df`` is either a long metric DataFrame or an existing ``smoothness_table`` output.
    """
    sm = df if "breakthroughness" in df.columns else smoothness_table(df, scale_col=scale_col)
    archs = _archs(sm["arch"])
    metrics = list(dict.fromkeys(sm["metric"]))
    table = pd.DataFrame(index=pd.Index(metrics, name="metric"))
    for arch in archs:
        g = sm[sm["arch"] == arch].set_index("metric")
        table[f"{arch} B"] = [g.loc[m, "breakthroughness"] if m in g.index else np.nan
                              for m in metrics]
        table[f"{arch} L(R²)"] = [g.loc[m, "linearity_r2"] if m in g.index else np.nan
                                  for m in metrics]
    return markdown_table(table, floatfmt=floatfmt)
